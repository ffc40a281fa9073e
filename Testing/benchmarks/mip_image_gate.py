"""Whole-image 'any tumour' gate of mip-pet-2d (issue 16): fit on the training split, one validation measure.

1. Probability maps as in ``mip_lesion_filter.py``: the card's network on the validation split; on the training
   split, with ``--oof-cards``, the inner-fold networks, each on the images it never saw (cached in ``--cache``).
2. The card's own post-processing (its lesion filter) on every image: the reference the gate adds to.
3. The gate (``gate_net.GateNet`` of ``GATE``'s shape on ``image_gate.gate_input``: uptake and probability,
   max-pooled) is trained to tell patients (any tumour) from controls on the TRAINING images (``GATE_TRAINING``);
   5-fold cross-validation by image gives out-of-fold scores, on which its threshold and the size of lesion that
   protects an image from it (``protect_px``) are chosen by ``RULE``; the gate that ships is trained the same way
   on all training images.
4. The validation split is measured once: the card against the card with the gate, by the same code; the ship rule
   (``mip_lesion_filter.SHIP_RULE``, the gate in the filter's place) decides whether the gate goes into the card
   (``--write-card``; its weights beside the card).

Writes ``docs/mip-pet-2d-image-gate.md`` and ``docs/figures/mip-image-gate-*.png``. Run from the repository root::

    .venv/bin/python Testing/benchmarks/mip_image_gate.py --cache DIR --oof-cards runs/mip5/fold{0..4}/mip-pet-2d.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mip_lesion_filter import (FOLDS, RESAMPLES, SHIP_RULE, TOLERANCE, clean_fraction, filter_keeps,  # noqa: E402
                               image_folds, load_records, mean_dice, outcome, overlay, parser_for, score_of, ships,
                               summary, table, train_binary, validation_figures)

GATE = {"channels": [16, 32, 64, 64], "height": 1024, "width": 400, "pool": 4}
GATE_TRAINING = {"epochs": 30, "batch": 16, "lr": 1e-3, "weight_decay": 1e-4, "shift_rows": 12, "scale": 0.1,
                 "seed": 0}
GRID = [float(g) for g in np.round(np.arange(0.0, 0.91, 0.01), 2)]
PROTECT_GRID = [None, 5000, 3000, 2000, 1500, 1000, 700, 500, 400, 300, 200, 150, 100, 75, 50, 30, 20, 10]
RULE = (f"among the settings (protect_px in {PROTECT_GRID}, None for no protection; gate threshold "
        f"{GRID[0]:g}..{GRID[-1]:g} in steps of 0.01) whose mean Dice over the TRAINING patients (gate scores "
        f"out-of-fold, the card's lesion filter on the maps) is at most {TOLERANCE} below the card's own training mean "
        "Dice and which leave no training patient without a lesion the card found, the one with the most clean "
        "training controls (ties: the higher training Dice, then the weaker protection, then the lower threshold)")
CANDIDATE = "card + image gate"
GATE_SHIP_RULE = SHIP_RULE.replace("the lesion filter (the only candidate for the card)", "the image gate").replace(
    "the filter", "the gate")


def card_keeps(records: list, card) -> list:
    """Per image, the lesions the card's own post-processing keeps (its lesion filter; all where it has none)."""
    spec = card.postprocessing.lesion_filter
    if not spec:
        return [np.ones(len(r["tp"]), dtype=bool) for r in records]
    if "network" in spec:
        raise SystemExit("the card's lesion filter is a network: give a card with a regression filter")
    return [filter_keeps(score_of(r, spec, None), spec["threshold"], spec["image_threshold"]) for r in records]


def gated(records: list, keeps: list, gate_scores, threshold: float, protect_px=None) -> list:
    """Per-image outcomes with the card's lesions and, where the image's gate score is below ``threshold`` and none
    of those lesions has ``protect_px`` pixels, none."""
    protect = np.inf if protect_px is None else protect_px
    return [outcome(r, keep & ((score >= threshold) | (r["area"][keep].max(initial=0) >= protect)))
            for r, keep, score in zip(records, keeps, gate_scores)]


def emptied(before: list, after: list) -> list:
    """The patients (case names) with a true lesion found in ``before`` and none in ``after``."""
    return [a["case"] for a, b in zip(after, before) if not a["control"] and b["found"] and not a["found"]]


def fit_gate(records: list):
    """``GateNet`` trained on ``records``' gate inputs, patient 1 and control 0 (BCE, AdamW, cosine; per batch a
    random left-right flip, a vertical shift of up to ``shift_rows`` pooled rows and an intensity scale)."""
    import torch

    from TumorSegLib.gate_net import GateNet

    t = GATE_TRAINING
    torch.manual_seed(t["seed"])
    rng = np.random.default_rng(t["seed"])
    inputs = torch.from_numpy(np.stack([r["gate"] for r in records]))
    network = GateNet(GATE["channels"])

    def logits_of(batch):
        x = inputs[batch]
        if rng.random() < 0.5:
            x = torch.flip(x, dims=[3])
        x = torch.roll(x, int(rng.integers(-t["shift_rows"], t["shift_rows"] + 1)), dims=2)
        return network(x * float(rng.uniform(1 - t["scale"], 1 + t["scale"])))

    return train_binary(network, [0.0 if r["control"] else 1.0 for r in records], logits_of, t, rng, cosine=True)


def scores_of(network, records: list) -> np.ndarray:
    from TumorSegLib.gate_net import gate_scores

    return gate_scores(network, np.stack([r["gate"] for r in records]))


def out_of_fold_gate_scores(records: list, fitter=fit_gate) -> np.ndarray:
    """Per training image, its score by the gate ``fitter`` trained on the other folds (images shuffled, seed 0)."""
    fold_of = image_folds(len(records))
    result = np.zeros(len(records))
    for fold in range(FOLDS):
        network = fitter([r for r, f in zip(records, fold_of) if f != fold])
        inside = np.flatnonzero(fold_of == fold)
        result[inside] = scores_of(network, [records[i] for i in inside])
    return result


def choose_setting(records: list, keeps: list, gate_scores: np.ndarray) -> tuple:
    """((protect_px, threshold), curve of (protect_px, threshold, training Dice, clean fraction, patients emptied))
    by ``RULE``."""
    before = gated(records, keeps, gate_scores, 0.0)
    curve = []
    for protect in PROTECT_GRID:
        for threshold in GRID:
            outcomes = gated(records, keeps, gate_scores, threshold, protect)
            curve.append((protect, threshold, mean_dice(outcomes), clean_fraction(outcomes),
                          len(emptied(before, outcomes))))
    allowed = [c for c in curve if c[2] >= mean_dice(before) - TOLERANCE and not c[4]]
    best = max(allowed, key=lambda c: (round(c[3], 9), round(c[2], 9)))  # max keeps the first of ties
    return best[:2], curve


def curve_png(curve: list, chosen: tuple, path: Path) -> Path:
    """Training Dice and clean controls over the threshold, at the chosen protection and without one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for protect, style in ((None, "--"), (chosen[0], "-")):
        thresholds, dice, clean = (np.array(v) for v in zip(*[c[1:4] for c in curve if c[0] == protect]))
        name = "no protection" if protect is None else f"protect_px {protect}"
        axis.plot(thresholds, dice, "C0" + style, label=f"training mean patient Dice (out of fold), {name}")
        axis.plot(thresholds, clean, "C1" + style, label=f"training clean controls (fraction), {name}")
    axis.axvline(chosen[1], color="grey", linestyle=":", label=f"chosen threshold {chosen[1]:g}")
    axis.set_xlabel("image gate threshold")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def report_text(fitted: dict, summaries: dict, accepted: bool, why: str, figures: list, seconds: float) -> str:
    card, chosen = summaries["card"], summaries[CANDIDATE]
    lost = fitted["emptied_patients"]
    text = [
        "# mip-pet-2d: whole-image 'any tumour' gate (issue 16)\n\n",
        "Made by `Testing/benchmarks/mip_image_gate.py` in one run from the cached fp32 probability maps (no flips) of "
        "every dev image of the card's own split (training images: " + fitted["source"] + "); every figure below was "
        "measured by that script. The gate is `TumorSegLib/image_gate.py` with the network of `gate_net.py`: a "
        f"small CNN (channels {GATE['channels']}) on the whole image (uptake and the network's probability, "
        f"max-pooled by {GATE['pool']} on a {GATE['height']} x {GATE['width']} canvas) that scores whether the image "
        "holds any tumour; an image scoring below the threshold loses every lesion, unless one of its lesions has at "
        "least protect_px pixels. The engine applies it after the lesion filter on whole-image runs.\n\n",
        "## Rules, fixed before the validation split was looked at\n\n",
        f"- Fit: the gate trained ({GATE_TRAINING}) on the {fitted['training_images']} TRAINING images "
        f"({fitted['training_patients']} patients, {fitted['training_images'] - fitted['training_patients']} "
        f"controls); {FOLDS}-fold cross-validation by image gives out-of-fold scores (AUC patient against control "
        f"{fitted['training_auc']:.3f}).\n",
        f"- Setting: {RULE}.\n",
        f"- Ship: {GATE_SHIP_RULE}.\n\n",
        "## Training split (setting chosen here)\n\n",
        f"The card (with its lesion filter) on the training images: mean patient Dice {fitted['training_card'][0]:.4f}, "
        f"{100 * fitted['training_card'][1]:.1f} % clean controls; with the gate at the chosen setting (protect_px "
        f"{fitted['setting'][0]}, threshold {fitted['setting'][1]:g}): {fitted['training_chosen'][0]:.4f}, "
        f"{100 * fitted['training_chosen'][1]:.1f} %.\n\n",
        "![threshold curve](figures/mip-image-gate-curve.png)\n\n",
        "## Validation split (measured once)\n\n",
        f"{card['patients']} patients, {card['controls']} controls. ΔDice is the paired change per patient against "
        f"the card; intervals are bootstrap 95 % ({RESAMPLES} resamples; patients and controls resampled apart). "
        "'lesions found' = true lesions touched by the prediction.\n\n",
        *table(summaries, {}),
        f"\nDecision: the gate is **{'shipped' if accepted else 'not shipped'}**: {why}.\n\n",
        "Against the targets (mean Dice >= 0.80; control median FP 0 with >= 75 % clean): card "
        f"{card['dice_mean']:.3f}, median {card['control_fp_median']:.0f} px, {card['clean']}/{card['controls']} "
        f"clean; with the gate {chosen['dice_mean']:.3f}, median {chosen['control_fp_median']:.0f} px, "
        f"{chosen['clean']}/{chosen['controls']} clean.\n\n",
        f"Validation patients the gate empties: {', '.join(lost) if lost else 'none'}.\n\n",
        f"Time of the gate itself (`apply_gate`): median {1000 * seconds:.1f} ms per validation image on this CPU "
        "(indicative: other jobs shared it).\n\n",
        "The training images' maps come from networks that never saw them, as a new image's do; the gate belongs to "
        "the card's weights: a retrained network needs the gate fitted again (so it is not in "
        "`mip-pet-2d.train.json`).\n\n## Figures\n",
    ]
    for path, title in figures:
        text.append(f"\n{title}: the MIP, the card's mask, the mask with the gate (red; truth green):\n\n"
                    f"![{title}](figures/{path.name})\n")
    return "".join(text)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def gate_spec(setting: tuple, network: dict) -> dict:
    """The card's ``postprocessing.image_gate`` for a (protect_px, threshold) setting."""
    protect, threshold = setting
    return {"network": network, "threshold": threshold, **({} if protect is None else {"protect_px": protect})}


def write_card(card, network, setting: tuple, fitted: dict, summaries: dict) -> None:
    """Store the gate in the card's post-processing (its weights beside the card) and its fit and validation
    figures in its provenance."""
    import torch

    from TumorSegLib.cards import sha256

    path = card.path.parent / f"{card.name}-image-gate.pt"
    torch.save(network.state_dict(), path)
    data = json.loads(card.path.read_text())
    data["postprocessing"]["image_gate"] = gate_spec(setting, {"file": path.name, "sha256": sha256(path), **GATE})
    data["provenance"]["image_gate"] = {
        "fitted_on": f"the {fitted['training_images']} training images of this card's split; maps by "
                     + fitted["source"], "training": GATE_TRAINING, "rule": RULE, "ship_rule": GATE_SHIP_RULE,
        "command": "Testing/benchmarks/mip_image_gate.py --cache DIR --oof-cards ... --write-card",
        "validation": validation_figures(summaries, {"without_gate": "card", "with_gate": CANDIDATE}),
    }
    card.path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("--card", help="card file to fit the gate for (default: the shipped mip-pet-2d)")
    parser.add_argument("--oof-cards", nargs="+", metavar="CARD", required=True,
                        help="inner-fold cards (data.inner_folds) whose out-of-fold maps stand for the card's own on "
                             "the training split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-card", action="store_true", help="store the gate in the card when the rule ships it")
    args = parser.parse_args(argv)

    import torch

    from TumorSegLib.cards import find_card, load_card
    from TumorSegLib.image_gate import apply_gate
    from TumorSegLib.lesion_filter import filter_lesions
    from TumorSegLib.preprocess import normalize_intensity
    from TumorSegLib.training.transforms import read_pair

    torch.set_num_threads(args.threads)
    card = load_card(args.card) if args.card else find_card("mip-pet-2d")
    if card.postprocessing.image_gate:
        raise SystemExit(f"{card.path} has an image gate already")
    records, cases = load_records(card, args.data_root, Path(args.cache), args.oof_cards, gate=GATE)
    train = [r for r in records if r["split"] == "train"]
    train_keeps = card_keeps(train, card)
    oof = out_of_fold_gate_scores(train)
    setting, curve = choose_setting(train, train_keeps, oof)
    network = fit_gate(train)
    fitted = {"source": f"the {len(args.oof_cards)} inner-fold networks, each on the images it never saw",
              "training_images": len(train), "training_patients": sum(not r["control"] for r in train),
              "training_auc": auc(oof, np.array([not r["control"] for r in train])), "setting": setting,
              "training_card": curve[0][2:4], "training_chosen": next(c[2:4] for c in curve if c[:2] == setting)}
    print(json.dumps(fitted, indent=1), file=sys.stderr)

    validation = [r for r in records if r["split"] == "validation"]
    keeps = card_keeps(validation, card)
    scores = scores_of(network, validation)
    outcomes = {"card": gated(validation, keeps, scores, 0.0), CANDIDATE: gated(validation, keeps, scores, *setting[::-1])}
    summaries = {name: summary(o, outcomes["card"]) for name, o in outcomes.items()}
    accepted, why = ships(summaries[CANDIDATE], summaries["card"])
    fitted["emptied_patients"] = emptied(*outcomes.values())
    print(json.dumps({"summaries": summaries, "ship": [accepted, why]}, indent=1))

    out = Path(args.out)
    curve_png(curve, setting, out / "figures" / "mip-image-gate-curve.png")
    spec, seconds, pictures = gate_spec(setting, GATE), [], []
    for r, before, after in zip(validation, *outcomes.values()):
        image, _ = read_pair(cases[r["case"]])
        prob, uptake = np.load(Path(args.cache) / f"{r['case']}.npy"), normalize_intensity(image.array, card)
        mask = prob >= card.threshold
        if card.postprocessing.lesion_filter:
            mask = filter_lesions(mask, prob, uptake, card.postprocessing.lesion_filter, [])
        tick = time.perf_counter()
        kept = apply_gate(mask, prob, uptake, spec, network, [])
        seconds.append(time.perf_counter() - tick)
        if len(pictures) < 3 and not np.array_equal(mask, kept):
            title = f"{r['case']}: " + (f"{before['fp_px']} -> {after['fp_px']} FP px" if r["control"] else
                                        f"Dice {before['dice']:.3f} -> {after['dice']:.3f}")
            pictures.append((overlay(cases[r["case"]], mask, kept, title,
                                     out / "figures" / f"mip-image-gate-{len(pictures)}.png", "the gate"), title))
    (out / "mip-pet-2d-image-gate.md").write_text(
        report_text(fitted, summaries, accepted, why, pictures, float(np.median(seconds))))
    if args.write_card and accepted:
        write_card(card, network, setting, fitted, summaries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
