"""Validation report of the MIP-PET model (issue 5): variants, baseline, figures, from the card.

The validation patients and controls of the card's own training split (``TumorSegLib.training``:
the card's provenance config, same seed; every validation control, not only the ones training
validated on) are segmented by ``Segmenter.predict`` on the CPU in several variants measured in
the same run:

- network passes: the card as it is (with its lesion filter, ``lesion_filter``, and image gate,
  ``image_gate``), and in bf16; without them: fp32 plain and with a left-right test-time flip
  (``flip_axes [1]``); bf16 autocast with and without the engine's fp32 re-check of outputs near
  the threshold; time per image of each;
- post-processing on the fp32 passes: lesions smaller than ``MIN_SIZES`` pixels removed
  (``min_lesion_px``, the engine's ``postprocess`` on the pass's probability, exactly what
  ``predict`` with that override returns);
- the organisers' baseline ``mask = img < 50``.

Per variant: patient-level Dice (mean, median, quartiles), sensitivity and precision, lesion
detection, false-positive pixels on the controls, and the paired change of each patient's Dice
against the plain fp32 pass (mean with a bootstrap 95 % interval). Writes
``docs/mip-pet-2d-report.md``, ``docs/figures/mip-*.png`` (Dice histogram; best, median and worst
patient and the worst control with truth and prediction outlines) and, with ``--rows``, the
per-case rows as JSON. Run from the repository root::

    .venv/bin/python Testing/benchmarks/evaluate_mip_pet.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import paired

REPO = Path(__file__).resolve().parents[2]
MIN_SIZES = (10, 20)  # pixels
PLAIN = {"flip_axes": [], "min_lesion_px": 0, "lesion_filter": False, "image_gate": False}  # the network alone
PASSES = (  # (name, overrides, min-size variants): the network passes; "card" keeps the card's own settings
    ("card", {}, False),
    ("card in bf16", {"precision": "bf16"}, False),
    ("fp32", {"precision": "fp32", **PLAIN}, True),
    ("fp32 + LR flip", {"precision": "fp32", **PLAIN, "flip_axes": [1]}, True),
    ("bf16 + fp32 re-check", {"precision": "bf16", "recheck_margin": 0.05, **PLAIN}, False),
    ("bf16, no re-check", {"precision": "bf16", "recheck_margin": 0.0, **PLAIN}, False),
)
REFERENCE = "fp32"
RECHECK = "bf16 + fp32 re-check"
RAW_BF16 = "bf16, no re-check"
BASELINE = "baseline img < 50"
TARGET_DICE = 0.80  # issue 16's target (with control median FP 0 and >= 75 % of controls clean)
TARGET_CLEAN = 0.75
GAIN = 0.01  # a change is adopted only when it raises mean Dice by more than this (and spares the controls)


def default_data_root(card) -> Path:
    """The config's ``data.root``; a relative root is taken from the repository root (where training ran)."""
    root = Path(card.provenance["config"]["data"]["root"]).expanduser()
    return root if root.is_absolute() else REPO / root


def case_id(case) -> str:
    return Path(case.name).name.split(".")[0]


def row_of(case, mask, truth, image, seconds=None) -> dict:
    from TumorSegLib.metrics import case_metrics

    return {"case": case_id(case), **case_metrics(mask, truth, image, recist=False), "seconds": seconds}


def evaluate_case(segmenter, case) -> tuple:
    """({variant: row}, {variant: mask}, image, truth) of one case: every pass, its min-size variants, the baseline."""
    from TumorSegLib.engine import settings_for
    from TumorSegLib.postprocess import postprocess
    from TumorSegLib.training.transforms import read_pair

    image, truth = read_pair(case)
    rows, masks, probabilities = {}, {}, {}
    for name, overrides, sized in PASSES:
        tick = time.perf_counter()
        prediction = segmenter.predict(image, overrides=overrides)
        seconds = time.perf_counter() - tick
        rows[name], masks[name] = row_of(case, prediction.mask, truth, image, seconds), prediction.mask
        probabilities[name] = prediction.probability
        for size in MIN_SIZES if sized else ():
            settings = settings_for(segmenter.card, {**overrides, "min_lesion_px": size})
            mask = postprocess(prediction.probability >= settings.threshold, image, settings.postprocessing, [])
            variant = f"{name}, min {size} px"
            rows[variant], masks[variant] = row_of(case, mask, truth, image), mask
    # an image re-checked in fp32 has exactly the fp32 probability
    rows[RECHECK]["fp32_probability"] = bool(np.abs(probabilities[RECHECK] - probabilities["fp32"]).max() < 1e-6)
    masks[BASELINE] = image.array < 50
    rows[BASELINE] = row_of(case, masks[BASELINE], truth, image)
    return rows, masks, image, truth


def summary(rows: list) -> dict:
    """Patient Dice distribution, overlap, detection, controls' false-positive pixels, time."""
    from TumorSegLib.metrics import summarize

    patients = [r for r in rows if not r["control"]]
    controls = np.array([r["fp_voxels"] for r in rows if r["control"]], dtype=np.int64)
    dice = [r["dice"] for r in patients]
    times = [r["seconds"] for r in rows if r["seconds"] is not None]
    base = summarize(rows)
    return {
        "patients": len(patients), "controls": len(controls),
        "dice_mean": base["dice_mean"], "dice_median": base["dice_median"],
        "dice_q1": float(np.percentile(dice, 25)), "dice_q3": float(np.percentile(dice, 75)),
        "dice_min": min(dice), "dice_max": max(dice),
        "sensitivity_mean": base["sensitivity_mean"],
        "precision_mean": float(np.mean([r["precision"] if r["precision"] is not None else 0.0 for r in patients])),
        "tp_lesions": sum(r["tp_lesions"] for r in patients), "fn_lesions": sum(r["fn_lesions"] for r in patients),
        "fp_lesions_patients": sum(r["fp_lesions"] for r in patients),
        "lesion_sensitivity": base["lesion_sensitivity"],
        "control_fp_px_median": float(np.median(controls)) if len(controls) else None,
        "control_fp_px_mean": float(np.mean(controls)) if len(controls) else None,
        "controls_zero_fp": int(np.count_nonzero(controls == 0)),
        "control_fp_lesions": sum(r["fp_lesions"] for r in rows if r["control"]),
        "seconds_median": float(np.median(times)) if times else None,
    }


def paired_change(rows: dict, variant: str, reference: str = REFERENCE) -> dict:
    """Per-patient Dice change of ``variant`` against ``reference``: mean, bootstrap 95 % interval, wins/losses."""
    return paired.paired_change([r["dice"] for r in rows[variant] if not r["control"]],
                                [r["dice"] for r in rows[reference] if not r["control"]])


def spares_controls(s: dict, ref: dict) -> bool:
    return s["control_fp_px_median"] <= ref["control_fp_px_median"] and s["controls_zero_fp"] >= ref["controls_zero_fp"]


def choose(summaries: dict, changes: dict) -> tuple:
    """The fp32 variant to ship: the best mean Dice among those that gain more than ``GAIN`` over plain
    fp32 with a bootstrap interval above zero and controls no worse; plain fp32 when none does."""
    ref = summaries[REFERENCE]
    adopted = [v for v in changes if v.startswith("fp32") and changes[v]["mean"] > GAIN and changes[v]["low"] > 0
               and spares_controls(summaries[v], ref)]
    if not adopted:
        return REFERENCE, f"no variant gains more than {GAIN} mean Dice over plain fp32 with a bootstrap interval above 0 " \
                          "and controls no worse"
    best = max(adopted, key=lambda v: summaries[v]["dice_mean"])
    return best, f"gains {changes[best]['mean']:+.4f} mean Dice (95 % interval {changes[best]['low']:+.4f}.." \
                 f"{changes[best]['high']:+.4f}) over plain fp32, controls no worse"


# ---- figures ------------------------------------------------------------------------------
GREYS = 64  # grey levels of the figures' palette; then green, red, white, black
GREEN, RED, WHITE, BLACK = GREYS, GREYS + 1, GREYS + 2, GREYS + 3
PALETTE = [round(i * 255 / (GREYS - 1)) for i in range(GREYS) for _ in range(3)] + [0, 170, 0, 230, 0, 0, 255, 255, 255,
                                                                                    0, 0, 0]


def outlines(image, label: str, truth=None, pred=None):
    """The MIP as stored (inverted grey) with the truth's outline just outside it in green and the
    prediction's just inside it in red (so both show where they coincide); a palette image."""
    from PIL import Image as PILImage, ImageDraw
    from scipy import ndimage

    grey = np.clip(np.asarray(image.array, dtype=np.float32), 0, 255)
    index = np.round(grey * (GREYS - 1) / 255).astype(np.uint8)
    if truth is not None:
        index[ndimage.binary_dilation(truth) & ~truth] = GREEN
        index[pred & ~ndimage.binary_erosion(pred)] = RED
    picture = PILImage.fromarray(np.pad(index, ((28, 0), (0, 0)), constant_values=WHITE), mode="P")
    picture.putpalette(PALETTE)
    draw = ImageDraw.Draw(picture)
    draw.text((4, 2), label, fill=BLACK)
    if truth is not None:
        draw.text((4, 14), "truth (outer ring)", fill=GREEN)
        draw.text((130, 14), "prediction (inner ring)", fill=RED)
    return picture


def side_by_side(image, truth, pred, label: str, path: Path) -> Path:
    """The plain MIP beside the same MIP with outlines (so the uptake under them stays visible), as PNG."""
    return panels(image, truth, [(pred, label)], "MIP as stored (inverted: high uptake dark)", path)


def panels(image, truth, predictions: list, title: str, path: Path) -> Path:
    """The plain MIP (labelled ``title``), then one outlined panel per (prediction, label), side by side, as PNG."""
    from PIL import Image as PILImage

    sheets = [outlines(image, title)] + [outlines(image, label, np.asarray(truth, dtype=bool),
                                                  np.asarray(pred, dtype=bool)) for pred, label in predictions]
    sheet = PILImage.new("P", (sum(p.width for p in sheets) + 6 * (len(sheets) - 1), sheets[0].height), WHITE)
    sheet.putpalette(PALETTE)
    for number, panel in enumerate(sheets):
        sheet.paste(panel, (number * (panel.width + 6), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def dice_histogram(rows: dict, variants: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    bins = np.linspace(0, 1, 21)
    for variant in variants:
        values = [r["dice"] for r in rows[variant] if not r["control"]]
        axis.hist(values, bins=bins, histtype="step", linewidth=2, label=f"{variant} (mean {np.mean(values):.3f})")
    axis.axvline(TARGET_DICE, color="grey", linestyle="--", linewidth=1, label=f"target mean {TARGET_DICE}")
    axis.set_xlabel("Dice per validation patient")
    axis.set_ylabel("patients")
    axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


# ---- report -------------------------------------------------------------------------------
def fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def variant_table(summaries: dict, changes: dict) -> list:
    head = ("| variant | mean Dice | median | Q1 | Q3 | min | sensitivity | precision | lesions found | "
            "FP lesions (patients) | control FP px median | mean | controls with 0 FP | ΔDice vs fp32 (95 % CI) | "
            "s/image |\n|---|" + "---|" * 14 + "\n")
    lines = [head]
    for name, s in summaries.items():
        change = changes.get(name)
        delta = "-" if change is None else f"{change['mean']:+.4f} ({change['low']:+.3f}..{change['high']:+.3f}; " \
                                           f"{change['better']} up / {change['worse']} down)"
        lines.append(f"| {name} | {fmt(s['dice_mean'])} | {fmt(s['dice_median'])} | {fmt(s['dice_q1'])} | "
                     f"{fmt(s['dice_q3'])} | {fmt(s['dice_min'])} | {fmt(s['sensitivity_mean'])} | "
                     f"{fmt(s['precision_mean'])} | {s['tp_lesions']}/{s['tp_lesions'] + s['fn_lesions']} | "
                     f"{s['fp_lesions_patients']} | {fmt(s['control_fp_px_median'], 0)} | "
                     f"{fmt(s['control_fp_px_mean'], 1)} | {s['controls_zero_fp']}/{s['controls']} | {delta} | "
                     f"{fmt(s['seconds_median'], 3)} |\n")
    return lines


def first_controls_fp(rows: list, count) -> float | None:
    """Mean FP pixels of the first ``count`` validation controls (the ones training validated on)."""
    controls = [r["fp_voxels"] for r in rows if r["control"]][: int(count or 0)]
    return float(np.mean(controls)) if controls else None


def card_precision(card) -> str:
    """What the card's ``inference.precision`` runs as on this CPU (the engine's rule in ``device.autocast_dtype``)."""
    import torch

    from TumorSegLib.device import autocast_dtype

    precision = card.inference.precision.value
    dtype = autocast_dtype(torch.device("cpu"), precision)
    recheck = " with the fp32 re-check" if card.inference.recheck_margin > 0 else ""
    return f"{precision!r} runs as {'fp32' if dtype is None else 'bf16 autocast' + recheck} on this CPU"


def precision_lines(card, summaries: dict, changes: dict, rows: dict) -> list:
    """fp32 against bf16 (with and without the engine's fp32 re-check): Dice change and time."""
    def seconds(name):
        return fmt(summaries[name]["seconds_median"], 3)

    recheck, raw = changes[RECHECK], changes[RAW_BF16]
    rechecked = sum(r["fp32_probability"] for r in rows[RECHECK])
    lines = [
        "## Precision\n\n",
        f"- fp32: {seconds('fp32')} s per image.\n",
        f"- bf16 autocast with the engine's fp32 re-check: {seconds(RECHECK)} s, "
        f"ΔDice {recheck['mean']:+.4f} ({recheck['better']} patients up, {recheck['worse']} down). The re-check "
        "recomputes a network call in fp32 when any output pixel lies within the margin (0.05) of the threshold; a "
        "whole-image model makes one call per image, and "
        f"{rechecked}/{len(rows[RECHECK])} images were computed again (their probability equals the fp32 one).\n",
        f"- bf16 without the re-check (`recheck_margin` 0): {seconds(RAW_BF16)} s, ΔDice {raw['mean']:+.4f} "
        f"(95 % interval {raw['low']:+.4f}..{raw['high']:+.4f}; {raw['better']} up, {raw['worse']} down).\n",
    ]
    lines.append(f"- the card's precision {card_precision(card)} ({seconds('card')} s).\n\n")
    return lines


def post_text(card) -> str:
    """The card's post-processing in words: its non-default settings, the lesion filter and image gate by their
    thresholds."""
    post = {k: v for k, v in card.postprocessing.to_dict().items() if v and k not in ("lesion_filter", "image_gate")}
    spec, gate = card.postprocessing.lesion_filter, card.postprocessing.image_gate
    if spec:
        post["lesion_filter"] = f"{'CNN' if 'network' in spec else 'logistic regression'} on " \
                                f"{len(spec['features'])} features, lesion threshold {spec['threshold']:g}, " \
                                f"image threshold {spec['image_threshold']:g}"
    if gate:
        post["image_gate"] = f"whole-image CNN, threshold {gate['threshold']:g}" + (
            f", lesions of {gate['protect_px']} px protect an image" if "protect_px" in gate else "")
    return json.dumps(post, ensure_ascii=False) if post else "{} (none)"


def report_text(card, rows, summaries, changes, chosen, figures, environment, cases_note) -> str:
    shipped = summaries["card"]
    recorded = card.provenance.get("validation", {})
    inference = {k: v for k, v in card.inference.to_dict().items() if k in ("flip_axes", "precision")}
    text = [
        "# mip-pet-2d: validation report\n\n",
        "Made by `Testing/benchmarks/evaluate_mip_pet.py` from the card "
        f"`{card.path.name if card.path else card.name}` (weights sha256 `{(card.weights.sha256 or '?')[:16]}…`); "
        "every figure below was measured by that script in one run.\n\n",
        f"Data: DM i AI 2023 MIP-PET PNGs, {cases_note}. The split is the training's own "
        "(`TumorSegLib.training.data.split_cases`, patient level, seed "
        f"{card.provenance['config']['data']['split_seed']}). Dice is per patient image (the competition's score), "
        "controls are judged by their false-positive pixels.\n\n",
        "## Targets\n\n",
        f"- mean Dice >= {TARGET_DICE} on the validation patients: card as shipped {fmt(shipped['dice_mean'])} — "
        f"{'met' if shipped['dice_mean'] >= TARGET_DICE else 'NOT met'}.\n",
        f"- median false-positive pixels on the validation controls = 0: card as shipped "
        f"{fmt(shipped['control_fp_px_median'], 0)} — "
        f"{'met' if shipped['control_fp_px_median'] == 0 else 'NOT met'}.\n",
        f"- at least {TARGET_CLEAN:.0%} of the validation controls without false positives: card as shipped "
        f"{shipped['controls_zero_fp']}/{shipped['controls']} — "
        f"{'met' if shipped['controls_zero_fp'] >= TARGET_CLEAN * shipped['controls'] else 'NOT met'}.\n",
        f"- the organisers' baseline `img < 50` on the same patients: mean Dice "
        f"{fmt(summaries[BASELINE]['dice_mean'])}.\n",
        f"- consistency: the training recorded validation mean Dice {fmt(recorded.get('dice_mean'), 4)} (epoch "
        f"{recorded.get('epoch', '?')}; controls: mean {fmt(recorded.get('control_fp_pixels_mean'), 1)} FP pixels on the "
        f"first {recorded.get('controls', '?')} validation controls); re-measured here: {fmt(shipped['dice_mean'], 4)} with "
        f"the card's settings, {fmt(summaries[RAW_BF16]['dice_mean'], 4)} in bf16 without the fp32 re-check (the "
        f"training's engine had none yet), mean {fmt(first_controls_fp(rows[RAW_BF16], recorded.get('controls')), 1)} "
        "FP pixels on the same controls.\n\n",
        "## Variants (same run, same cases)\n\n",
        f"`card` = the card's own settings (inference {json.dumps(card.inference.to_dict())}; precision {card_precision(card)}; "
        f"post-processing {post_text(card)}); `card in bf16` the same in bf16 autocast; the other passes set "
        "precision and flips explicitly, with no size filter unless named and without the lesion filter and image "
        "gate (so `fp32` is the card before them; their own reports are `mip-pet-2d-lesion-filter.md` and "
        "`mip-pet-2d-image-gate.md`). "
        "'min N px' removes predicted lesions (8-connected) under N pixels (`postprocessing.min_lesion_px`: the PNG "
        "has no pixel spacing, so the rule is in pixels; `min_lesion_ml` does not apply to 2D images). Sensitivity "
        "and precision are means over patients (precision 0 for an empty prediction); lesions found = true "
        "8-connected lesions touched by the prediction. ΔDice = mean per-patient change against plain fp32, bootstrap "
        "95 % interval over patients.\n\n",
        *variant_table(summaries, changes),
        f"\nTime: {environment}.\n\n",
        *precision_lines(card, summaries, changes, rows),
        "## Choice of the shipped settings\n\n",
        f"Rule (set before the full run): adopt a flip or size filter only when it raises mean Dice by more than {GAIN} "
        "over plain fp32, with the bootstrap interval above zero, and leaves the controls no worse (median FP pixels "
        f"not higher, no fewer controls without FP). Result: **{chosen[0]}** — {chosen[1]}.\n\n",
        f"The card as measured has inference {json.dumps(inference) if inference else '{} (defaults)'} and "
        f"post-processing {post_text(card)}. Choosing settings on the validation split makes "
        "the figures of the chosen variant slightly optimistic; the held-out test split of the data set "
        "(36 patients, 85 controls, kept outside the developers' copy) is the unbiased check.\n\n",
        "## Figures\n",
    ]
    for path, title in figures:
        text.append(f"\n{title}:\n\n![{title}](figures/{path.name})\n")
    return "".join(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mip-pet-2d", help="card name or path to a card (.json)")
    parser.add_argument("--models-dir", help="folder of the cards (default: the installed ones)")
    parser.add_argument("--data-root", help="the data set's dev folder (default: the card's data.root)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--limit", type=int, help="only the first N patients and N controls (a quick look)")
    parser.add_argument("--out", default=str(REPO / "docs"), help="report folder (figures go to OUT/figures)")
    parser.add_argument("--curve", help="the training run's curve.png, copied to OUT/figures/mip-pet-2d-curve.png "
                                        "(without it, a curve already there is kept in the report)")
    parser.add_argument("--rows", help="write per-case rows and summaries as JSON here")
    args = parser.parse_args(argv)

    import torch

    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.training.data import card_validation_cases

    torch.set_num_threads(args.threads)
    card = find_card(args.model, args.models_dir)
    cases = card_validation_cases(card, args.data_root or default_data_root(card))
    patients, controls = [c for c in cases if c.mask is not None], [c for c in cases if c.mask is None]
    if args.limit:
        patients, controls = patients[: args.limit], controls[: args.limit]
    segmenter = Segmenter(card, "cpu")
    evaluate_case(segmenter, patients[0])  # warm-up: the first call pays one-off set-up costs
    rows, kept = {}, {}
    for number, case in enumerate(patients + controls):
        case_rows, masks, image, truth = evaluate_case(segmenter, case)
        for variant, row in case_rows.items():
            rows.setdefault(variant, []).append(row)
        kept[case_id(case)] = (case, masks)
        print(f"{number + 1}/{len(patients) + len(controls)} {case_id(case)} "
              + " ".join(f"{v}: {case_rows[v]['dice']:.3f}" for v in ("card", "fp32", "fp32 + LR flip", BASELINE)),
              file=sys.stderr, flush=True)
    summaries = {variant: summary(r) for variant, r in rows.items()}
    changes = {variant: paired_change(rows, variant) for variant in rows if variant != REFERENCE}
    chosen = choose(summaries, changes)

    out, figures_dir = Path(args.out), Path(args.out) / "figures"
    figures = [(dice_histogram(rows, ["card", chosen[0], BASELINE] if chosen[0] != "card" else ["card", BASELINE],
                               figures_dir / "mip-dice-histogram.png"), "Dice per validation patient")]
    shown = [r for r in rows["card"] if not r["control"]]
    ordered = sorted(shown, key=lambda r: (r["dice"], r["case"]))
    picks = [("best", ordered[-1]), ("median", ordered[(len(ordered) - 1) // 2]), ("worst", ordered[0])]
    control_rows = [r for r in rows["card"] if r["control"]]
    if control_rows:
        picks.append(("control-worst", max(control_rows, key=lambda r: (r["fp_voxels"], r["case"]))))
    for tag, row in picks:
        case, masks = kept[row["case"]]
        from TumorSegLib.training.transforms import read_pair

        image, truth = read_pair(case)
        label = (f"{row['case']}: Dice {row['dice']:.3f}" if not row["control"]
                 else f"{row['case']}: {row['fp_voxels']} FP px")
        path = side_by_side(image, truth, masks["card"], label, figures_dir / f"mip-{tag}.png")
        figures.append((path, f"{tag.replace('-', ' ')} ({'control' if row['control'] else 'patient'}, card settings): "
                              f"{label}"))
    if control_rows and card.postprocessing.lesion_filter:  # before / after the lesion filter and image gate
        plain = sorted((r for r in rows[REFERENCE] if r["control"]), key=lambda r: (r["fp_voxels"], r["case"]))
        row = plain[(len(plain) - 1) // 2]
        case, masks = kept[row["case"]]
        from TumorSegLib.training.transforms import read_pair

        image, truth = read_pair(case)
        path = panels(image, truth, [(masks[REFERENCE], f"without the lesion filter and gate: {row['fp_voxels']} FP px"),
                                     (masks["card"], f"card (with them): {int(masks['card'].sum())} FP px")],
                      f"{row['case']} (control)", figures_dir / "mip-control-filter.png")
        figures.append((path, f"the validation control with the median false-positive pixels before the lesion filter "
                              f"({row['case']}): the MIP, without the filter and gate, with them"))
    curve = figures_dir / "mip-pet-2d-curve.png"
    if args.curve:
        curve.write_bytes(Path(args.curve).read_bytes())
    if curve.is_file():  # given now, or kept from the report of the training run
        figures.append((curve, "training curve (loss per epoch, validation mean Dice every 5 epochs)"))
    environment = (f"median seconds per image of `Segmenter.predict` (PNG already read; mean image "
                   f"{np.mean([kept[r['case']][1]['card'].size for r in rows['card']]) / 1e3:.0f} k pixels), CPU "
                   f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {args.threads} thread(s), "
                   "one warm-up call; the CPU was shared with other work, so times are indicative")
    cases_note = (f"{len(patients)} validation patients and {len(controls)} validation controls"
                  + (" (a --limit run: NOT the full validation split)" if args.limit else ""))
    if args.rows:  # first: the measurements outlive a failure in the report
        Path(args.rows).write_text(json.dumps({"rows": rows, "summaries": summaries, "changes": changes,
                                               "chosen": chosen}, indent=2, default=float))
    out.mkdir(parents=True, exist_ok=True)
    (out / "mip-pet-2d-report.md").write_text(report_text(card, rows, summaries, changes, chosen, figures, environment,
                                                          cases_note))
    print(json.dumps({"summaries": summaries, "chosen": chosen}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
