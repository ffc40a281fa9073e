"""Lesion-level false-positive filter of mip-pet-2d (issue 16): fit on the training split, one validation measure.

1. The card's network (fp32, no flips, ``Segmenter.predict``) over every dev image of the card's own
   split, training and validation, patients and controls; probability maps cached in ``--cache``.
2. Every predicted lesion (8-connected, at the card's threshold) gets ``lesion_filter.FEATURES``
   and a label: true when it overlaps the truth (controls: all false).
3. A logistic regression (numpy, L2), or with ``--network`` the small CNN of ``lesion_net`` on each
   lesion's patch and features, is fitted on the TRAINING split's lesions; 5-fold cross-validation by
   image inside the training split gives out-of-fold scores.
4. Each variant's setting is chosen on the training split by one rule (``RULE``): the lesion
   filter's threshold and the 'any tumour' gate on out-of-fold scores, a higher probability
   threshold and a minimum size directly.
5. The validation split is measured once, every variant by the same code: patient Dice, lesions
   found, control false-positive pixels, with bootstrap intervals; the ship rule (``SHIP_RULE``)
   decides whether the filter goes into the card (``--write-card``).

Writes ``docs/mip-pet-2d-lesion-filter.md`` and ``docs/figures/mip-lesion-filter-*.png``. Run from
the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/mip_lesion_filter.py --cache /tmp/mipfp-cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from TumorSegLib.lesion_filter import FEATURES  # noqa: E402

TOLERANCE = 0.005  # Dice a setting may cost on the training split (rule) and on validation (ship rule)
FOLDS = 5
L2 = 1.0  # ridge penalty on the standardised coefficients (not the intercept)
RESAMPLES = 4000
NETWORK = {"channels": [8, 16, 32, 32], "patch": 64, "pool": 2}  # --network: lesion_net's shape (128 px, pooled)
NETWORK_TRAINING = {"epochs": 20, "batch": 64, "lr": 1e-3, "weight_decay": 1e-4, "seed": 0}
SCORE_GRID = np.round(np.arange(0.0, 0.91, 0.02), 2)
GRIDS = {  # candidate settings of each variant, least to most aggressive
    "probability threshold": [float(t) for t in np.round(np.arange(0.50, 0.96, 0.05), 2)],
    "min size (px)": [0, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200],
    "lesion filter, per lesion": [(float(t), 0.0) for t in SCORE_GRID],
    "'any tumour' gate": [(0.0, float(g)) for g in SCORE_GRID],
    "lesion filter + gate": [(float(t), float(g)) for g in SCORE_GRID for t in SCORE_GRID[SCORE_GRID <= 0.6]],
}
CANDIDATE = "lesion filter + gate"
RULE = (f"for each variant, among the settings of its grid whose mean Dice over the TRAINING patients (lesion scores "
        f"out-of-fold) is at most {TOLERANCE} below the card's own training mean Dice, the one with the most clean "
        "training controls (ties: the higher training Dice, then the earlier, least aggressive setting)")
SHIP_RULE = (f"the lesion filter (the only candidate for the card) is shipped when, on the validation split, (1) its "
             f"mean patient Dice is at most {TOLERANCE} below the card's, (2) the paired bootstrap 95 % interval of "
             "the change in the fraction of clean controls lies above 0, and (3) the median false-positive pixels "
             "of the controls is not higher than the card's")


# ---- data -----------------------------------------------------------------------------------
def split_of(card, data_root) -> list:
    """[(case, 'train' | 'validation')] of the card's own split, patients first."""
    from TumorSegLib.training.config import config_from_dict
    from TumorSegLib.training.data import config_split, find_cases

    config = config_from_dict(card.provenance["config"], data_root=data_root)
    split = config_split(config, find_cases(config))
    return [(c, "train") for c in split.train] + [(c, "validation") for c in split.validation]


def out_of_fold_networks(paths: list, data_root, main: list, cache: Path) -> dict:
    """Training case name -> (Segmenter, cache folder) of the inner-fold card (``data.inner_folds``) that validated it.

    Every training case of the main card's split must be validated by exactly one of the cards, and no card may
    have seen a case of the main card's validation split."""
    from TumorSegLib.cards import load_card
    from TumorSegLib.engine import Segmenter

    held_out = {c.name for c, side in main if side == "validation"}
    owner = {}
    for number, path in enumerate(paths):
        card = load_card(path)
        split = split_of(card, data_root)
        if held_out & {c.name for c, _ in split}:
            raise SystemExit(f"{path}: its split touches the validation split; train it with data.inner_folds")
        segmenter, folder = Segmenter(card, "cpu", backend="torch"), cache / f"oof{number}"
        folder.mkdir(exist_ok=True)
        for case, side in split:
            if side == "validation":
                if case.name in owner:
                    raise SystemExit(f"{case.name} is validated by two of the --oof-cards")
                owner[case.name] = (segmenter, folder)
    missing = [c.name for c, side in main if side == "train" and c.name not in owner]
    if missing:
        raise SystemExit(f"{len(missing)} training cases are validated by none of the --oof-cards, e.g. {missing[0]}")
    return owner


def probability(segmenter, case, image, cache: Path) -> np.ndarray:
    path = cache / f"{Path(case.name).name.split('.')[0]}.npy"
    if not path.exists():
        overrides = {"precision": "fp32", "flip_axes": [], "min_lesion_px": 0, "lesion_filter": False}
        np.save(path, segmenter.predict(image, overrides=overrides).probability.astype(np.float32))
    return np.load(path)


def load_records(card, data_root, cache: Path, oof_cards=None, training_only: bool = False, **extras) -> tuple:
    """(records, {record's case: case}) of every image of the card's split (training only with ``training_only``),
    patients first; with ``oof_cards`` the training images' maps are the inner-fold networks' (out of fold).
    ``extras``: ``record``'s keyword arguments."""
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.training.transforms import read_pair

    cache.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(card, "cpu", backend="torch")
    records, cases = [], {}
    split = split_of(card, data_root)
    fold_networks = out_of_fold_networks(oof_cards, data_root, split, cache) if oof_cards else {}
    for case, side in split:
        if side == "validation" and training_only:
            continue
        image, truth = read_pair(case)
        network, folder = fold_networks.get(case.name, (segmenter, cache))
        records.append(record(case, side, image, truth, probability(network, case, image, folder), card, **extras))
        cases[records[-1]["case"]] = case
    return records, cases


def record(case, side: str, image, truth, prob, card, patches: bool = False, gate=None) -> dict:
    """One image: its lesions at the card's threshold (features, true and false pixels, true lesions touched;
    with ``patches`` also ``lesion_patches`` of ``NETWORK``'s shape; with ``gate``, an image gate's network shape,
    also the image's ``image_gate.gate_input``) and the same counts at every probability threshold of ``GRIDS``."""
    from TumorSegLib.image_gate import gate_input
    from TumorSegLib.lesion_filter import lesion_features, lesion_patches
    from TumorSegLib.measure import label_lesions
    from TumorSegLib.preprocess import normalize_intensity

    truth_labels, truth_count = label_lesions(truth)
    uptake = normalize_intensity(image.array, card)

    def lesions(threshold):
        labels, count = label_lesions(prob >= threshold)
        flat, inside = labels.ravel(), truth.ravel()
        tp = np.bincount(flat[inside], minlength=count + 1)[1:]
        area = np.bincount(flat, minlength=count + 1)[1:]
        touched = [set(np.unique(truth_labels[(labels == k) & truth]).tolist()) for k in range(1, count + 1)]
        return labels, count, tp, area - tp, touched

    labels, count, tp, fp, touched = lesions(card.threshold)
    by_threshold = {}
    for t in GRIDS["probability threshold"]:
        _, _, t_tp, t_fp, t_touched = lesions(t) if t != card.threshold else (None, None, tp, fp, touched)
        by_threshold[float(t)] = (int(t_tp.sum()), int(t_fp.sum()), len(set().union(*t_touched)))
    return {"case": Path(case.name).name.split(".")[0], "split": side, "control": case.mask is None,
            "truth_px": int(truth.sum()), "truth_lesions": truth_count,
            "features": lesion_features(labels, count, prob, uptake), "tp": tp, "fp": fp, "touched": touched,
            "area": tp + fp, "by_threshold": by_threshold,
            "patches": lesion_patches(labels, count, prob, uptake, NETWORK["patch"], NETWORK["pool"]) if patches
            else None, "gate": None if gate is None else gate_input(uptake, prob, gate)}


# ---- logistic regression --------------------------------------------------------------------
def standardisation(x: np.ndarray) -> tuple:
    """(mean, scale) of each column of ``x``; a constant column gets scale 1."""
    scale = x.std(axis=0)
    return x.mean(axis=0), np.where(scale == 0, 1.0, scale)


def rounded(values) -> list:
    """Numbers as a card stores them (6 decimals)."""
    return [round(float(v), 6) for v in values]


def fit(x: np.ndarray, y: np.ndarray, names) -> dict:
    """L2 logistic regression by Newton steps on the standardised features ``names`` (columns of ``x`` in
    ``lesion_filter.FEATURES`` order); a lesion_filter spec (threshold 0.5)."""
    x = x[:, [FEATURES.index(name) for name in names]]
    mean, scale = standardisation(x)
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], L2)
    penalty[0] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"features": list(names), "mean": rounded(mean), "scale": rounded(scale), "coef": rounded(w[1:]),
            "intercept": round(float(w[0]), 6), "threshold": 0.5, "image_threshold": 0.0}


def fit_regression(records: list) -> tuple:
    """(spec, None): the regression on every feature, fitted on ``records``' lesions."""
    x, y = stack(records)
    return fit(x, y, FEATURES), None


def fit_network(records: list) -> tuple:
    """(spec without its file, trained ``LesionNet``): the CNN of ``NETWORK``'s shape on ``records``' lesion
    patches and standardised features (BCE, AdamW, a random left-right flip per batch; ``NETWORK_TRAINING``)."""
    import torch

    from TumorSegLib.lesion_filter import standardised
    from TumorSegLib.lesion_net import LesionNet

    x, y = stack(records)
    mean, scale = standardisation(x)
    spec = {"features": list(FEATURES), "mean": rounded(mean), "scale": rounded(scale), "network": dict(NETWORK),
            "threshold": 0.5, "image_threshold": 0.0}
    t = NETWORK_TRAINING
    torch.manual_seed(t["seed"])
    rng = np.random.default_rng(t["seed"])
    patches = torch.from_numpy(np.concatenate([r["patches"] for r in records]))
    features = torch.from_numpy(standardised(x, spec).astype(np.float32))
    network = LesionNet(NETWORK["channels"], len(FEATURES))

    def logits_of(batch):
        inputs = patches[batch]
        if rng.random() < 0.5:
            inputs = torch.flip(inputs, dims=[3])
        return network(inputs, features[batch])

    return spec, train_binary(network, y, logits_of, t, rng)


def train_binary(network, labels: np.ndarray, logits_of, training: dict, rng, cosine: bool = False):
    """``network`` trained with BCE against 0/1 ``labels`` and AdamW (``training``: epochs, batch, lr,
    weight_decay; with ``cosine`` a cosine schedule over the epochs), on batches of indices shuffled by ``rng``;
    ``logits_of(batch)`` gives the network's logits of one batch, augmented as the caller wants. Returned in eval
    mode."""
    import torch

    targets = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    optimizer = torch.optim.AdamW(network.parameters(), training["lr"], weight_decay=training["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, training["epochs"]) if cosine else None
    for _ in range(training["epochs"]):
        network.train()
        for batch in np.array_split(rng.permutation(len(targets)), max(1, len(targets) // training["batch"])):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits_of(batch), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if schedule is not None:
            schedule.step()
    return network.eval()


def score_of(r: dict, spec: dict, network) -> np.ndarray:
    """The lesion scores of one record by a fitted filter (``network`` None: the regression)."""
    from TumorSegLib.lesion_filter import scores, standardised
    from TumorSegLib.lesion_net import lesion_net_scores

    if network is None:
        return scores(r["features"], spec)
    if not len(r["tp"]):
        return np.zeros(0)
    return lesion_net_scores(network, r["patches"], standardised(r["features"], spec))


def out_of_fold_scores(records: list, fitter) -> list:
    """Per training image, its lesions' scores from the filter ``fitter`` fitted on the other folds (images
    shuffled, seed 0)."""
    fold_of = image_folds(len(records))
    result = [None] * len(records)
    for fold in range(FOLDS):
        spec, network = fitter([r for r, f in zip(records, fold_of) if f != fold])
        for i in np.flatnonzero(fold_of == fold):
            result[i] = score_of(records[i], spec, network)
    return result


def image_folds(count: int) -> np.ndarray:
    """The fold (0..FOLDS-1) of each of ``count`` images: shuffled with seed 0, then dealt round the folds."""
    fold_of = np.empty(count, dtype=int)
    fold_of[np.random.default_rng(0).permutation(count)] = np.arange(count) % FOLDS
    return fold_of


def stack(records: list) -> tuple:
    x = np.vstack([r["features"] for r in records])
    y = np.concatenate([r["tp"] > 0 for r in records]).astype(np.float64)
    return x, y


# ---- variants -------------------------------------------------------------------------------
def outcome(r: dict, keep: np.ndarray) -> dict:
    """Dice, false-positive pixels and true lesions found of one image with the lesions in ``keep`` kept."""
    tp, fp = int(r["tp"][keep].sum()), int(r["fp"][keep].sum())
    found = set().union(*[r["touched"][k] for k in np.flatnonzero(keep)])
    return counts(r, tp, fp, len(found))


def counts(r: dict, tp: int, fp: int, found: int) -> dict:
    fn = r["truth_px"] - tp
    dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"case": r["case"], "control": r["control"], "dice": dice,
            "fp_px": fp, "found": found, "lesions": r["truth_lesions"]}


def variant_outcomes(name: str, setting, records: list, lesion_scores: list) -> list:
    """Per-image outcomes of one variant at one setting ((lesion threshold, image threshold) for the filter)."""
    result = []
    for r, s in zip(records, lesion_scores):
        if name == "card":
            result.append(outcome(r, np.ones(len(r["tp"]), dtype=bool)))
        elif name == "min size (px)":
            result.append(outcome(r, r["area"] >= setting))
        elif name == "probability threshold":
            result.append(counts(r, *r["by_threshold"][setting]))
        else:  # the filter's two thresholds
            lesion, image = setting
            result.append(outcome(r, filter_keeps(s, lesion, image)))
    return result


def filter_keeps(scores: np.ndarray, lesion: float, image: float) -> np.ndarray:
    """The lesions a filter keeps: those scoring at least ``lesion``, none where the best scores below ``image``."""
    return (scores >= lesion) & (len(scores) > 0 and scores.max() >= image)


def mean_dice(outcomes: list) -> float:
    return float(np.mean([o["dice"] for o in outcomes if not o["control"]]))


def clean_fraction(outcomes: list) -> float:
    return float(np.mean([o["fp_px"] == 0 for o in outcomes if o["control"]]))


def choose_setting(name: str, records: list, lesion_scores: list, reference: float) -> tuple:
    """(setting, curve of (setting, training Dice, clean fraction)) by ``RULE``."""
    curve = []
    for setting in GRIDS[name]:
        outcomes = variant_outcomes(name, setting, records, lesion_scores)
        curve.append((setting, mean_dice(outcomes), clean_fraction(outcomes)))
    allowed = [c for c in curve if c[1] >= reference - TOLERANCE] or curve[:1]
    best = max(allowed, key=lambda c: (round(c[2], 9), round(c[1], 9)))  # max keeps the first of ties
    return best[0], curve


# ---- validation summary ---------------------------------------------------------------------
def summary(outcomes: list, reference: list, rng_seed: int = 0) -> dict:
    """Figures of one variant with bootstrap 95 % intervals (patients and controls resampled apart)."""
    rng = np.random.default_rng(rng_seed)
    dice = np.array([o["dice"] for o in outcomes if not o["control"]])
    dice_ref = np.array([o["dice"] for o in reference if not o["control"]])
    fp = np.array([o["fp_px"] for o in outcomes if o["control"]], dtype=np.float64)
    clean_ref = np.array([o["fp_px"] == 0 for o in reference if o["control"]], dtype=np.float64)
    p = rng.integers(0, len(dice), (RESAMPLES, len(dice)))
    c = rng.integers(0, len(fp), (RESAMPLES, len(fp)))
    clean = (fp == 0).astype(np.float64)

    def interval(values):
        return [float(v) for v in np.percentile(values, (2.5, 97.5))]

    patients = [o for o in outcomes if not o["control"]]
    return {
        "patients": len(patients),
        "dice_mean": float(dice.mean()), "dice_ci": interval(dice[p].mean(axis=1)),
        "dice_change": float((dice - dice_ref).mean()), "dice_change_ci": interval((dice - dice_ref)[p].mean(axis=1)),
        "patients_up": int(np.sum(dice - dice_ref > 1e-9)), "patients_down": int(np.sum(dice - dice_ref < -1e-9)),
        "found": sum(o["found"] for o in patients), "lesions": sum(o["lesions"] for o in patients),
        "patient_fp_px_mean": float(np.mean([o["fp_px"] for o in patients])),
        "control_fp_median": float(np.median(fp)), "control_fp_median_ci": interval(np.median(fp[c], axis=1)),
        "control_fp_mean": float(fp.mean()), "control_fp_mean_ci": interval(fp[c].mean(axis=1)),
        "clean": int(clean.sum()), "controls": len(fp), "clean_ci": interval(clean[c].mean(axis=1)),
        "clean_change_ci": interval((clean - clean_ref)[c].mean(axis=1)),
    }


def ships(s: dict, card: dict) -> tuple:
    checks = [("Dice", s["dice_mean"] >= card["dice_mean"] - TOLERANCE),
              ("clean controls", s["clean_change_ci"][0] > 0),
              ("control median FP", s["control_fp_median"] <= card["control_fp_median"])]
    failed = [name for name, ok in checks if not ok]
    return not failed, ("every condition holds" if not failed else "fails on " + ", ".join(failed))


# ---- report ---------------------------------------------------------------------------------
BIAS_NOTE = (
    "The training-split lesions come from a network that was trained on those very images (each training "
    "patient was drawn about 60 times, each control about 7 times): on them, true lesions get higher "
    "probabilities and more complete masks than on unseen images, and the false positives left are the ones "
    "the network could not fit away. The regression therefore trusts the probability features more than it "
    "should, and the thresholds chosen there cost less Dice on the training patients than they do on unseen "
    "patients (a weak tumour prediction on an unseen patient scores lower and is gated away more often). The "
    "validation figures above are the honest ones; the held-out test split is the final check. The filter "
    "belongs to these weights: a retrained network needs the filter fitted again (so it is not in "
    "`mip-pet-2d.train.json`).\n\n")
OUT_OF_FOLD_NOTE = (
    "The training-split lesions were predicted out of fold (`--oof-cards`): each training image by the inner-fold "
    "network that never saw it, so their probabilities are those of unseen images. Those networks were trained on "
    "part of the training split and are not the card's network; the validation figures above, of the card's own "
    "network with this filter, say whether the fit carries over. The filter belongs to the card's weights: a "
    "retrained network needs the filter fitted again (so it is not in `mip-pet-2d.train.json`).\n\n")


def table(summaries: dict, settings: dict) -> list:
    lines = ["| variant (setting chosen on training) | mean Dice (95 % CI) | ΔDice vs card (95 % CI; up/down) | "
             "lesions found | FP px per patient | control FP px median (95 % CI) | control FP px mean (95 % CI) | "
             "clean controls (95 % CI) |\n|---|---|---|---|---|---|---|---|\n"]
    for name, s in summaries.items():
        setting = "" if settings.get(name) is None else f" ({setting_text(settings[name])})"
        lines.append(
            f"| {name}{setting} | {s['dice_mean']:.3f} ({s['dice_ci'][0]:.3f}..{s['dice_ci'][1]:.3f}) | "
            f"{s['dice_change']:+.4f} ({s['dice_change_ci'][0]:+.3f}..{s['dice_change_ci'][1]:+.3f}; "
            f"{s['patients_up']}/{s['patients_down']}) | {s['found']}/{s['lesions']} | {s['patient_fp_px_mean']:.1f} | "
            f"{s['control_fp_median']:.0f} ({s['control_fp_median_ci'][0]:.0f}..{s['control_fp_median_ci'][1]:.0f}) | "
            f"{s['control_fp_mean']:.1f} ({s['control_fp_mean_ci'][0]:.1f}..{s['control_fp_mean_ci'][1]:.1f}) | "
            f"{s['clean']}/{s['controls']} ({100 * s['clean_ci'][0]:.0f}..{100 * s['clean_ci'][1]:.0f} %) |\n")
    return lines


def setting_text(setting) -> str:
    if isinstance(setting, (tuple, list)):
        return f"lesion {setting[0]:g}, image {setting[1]:g}"
    return f"{setting:g}"


def coefficient_lines(spec: dict) -> list:
    if "network" in spec:
        shape = spec["network"]
        return [f"The filter's network (`TumorSegLib/lesion_net.py`): convolutions of {shape['channels']} channels "
                f"on a {shape['patch'] * shape['pool']}-pixel square around each lesion pooled to {shape['patch']} "
                f"(uptake, probability, the lesion, row and lateral position), joined with the {len(spec['features'])} "
                f"standardised features; trained {NETWORK_TRAINING} on all training lesions, weights "
                f"`{shape['file']}`.\n"]
    lines = ["| feature | mean | scale | coefficient (per scale) |\n|---|---|---|---|\n"]
    for name, m, s, w in zip(spec["features"], spec["mean"], spec["scale"], spec["coef"]):
        lines.append(f"| {name} | {m:.3f} | {s:.3f} | {w:+.3f} |\n")
    lines.append(f"| intercept | | | {spec['intercept']:+.3f} |\n")
    return lines


def overlay(case, before: np.ndarray, after: np.ndarray, label: str, path: Path, step: str = "the filter") -> Path:
    """The MIP as stored, then the card's mask and the mask after ``step`` as red outlines (truth green), side by
    side."""
    from evaluate_mip_pet import panels
    from TumorSegLib.training.transforms import read_pair

    image, truth = read_pair(case)
    return panels(image, truth, [(before, f"card: {int(before.sum())} px"),
                                 (after, f"with {step}: {int(after.sum())} px")], label, path)


def masks_of(case, card, spec: dict, cache: Path, network=None) -> tuple:
    """(card mask, filtered mask, seconds the filter took) of one image from its cached probability, by the
    engine's own filter."""
    from TumorSegLib.lesion_filter import filter_lesions
    from TumorSegLib.preprocess import normalize_intensity
    from TumorSegLib.training.transforms import read_pair

    image, _ = read_pair(case)
    prob = np.load(cache / f"{Path(case.name).name.split('.')[0]}.npy")
    before = prob >= card.threshold
    tick = time.perf_counter()
    after = filter_lesions(before, prob, normalize_intensity(image.array, card), spec, [], network)
    return before, after, time.perf_counter() - tick


def shown_cases(records: list, outcomes: dict) -> list:
    """(tag, record, title): the validation control with the card's median false-positive pixels and the
    validation patient whose Dice the filter lowers most (the first patient when it lowers none)."""
    card, filtered = outcomes["card"], outcomes[CANDIDATE]
    controls = sorted((o["fp_px"], i) for i, o in enumerate(card) if o["control"])
    control = controls[(len(controls) - 1) // 2][1]
    patients = [i for i, o in enumerate(card) if not o["control"]]
    patient = min(patients, key=lambda i: (filtered[i]["dice"] - card[i]["dice"], i))
    return [("control", records[control], f"{records[control]['case']} (control, card's median FP)"),
            ("patient", records[patient],
             f"{records[patient]['case']}: Dice {card[patient]['dice']:.3f} -> {filtered[patient]['dice']:.3f}")]


def where_lines(train: list) -> list:
    """Where the card's false positives on the training controls lie: share of their pixels per fifth of the body."""
    vertical = np.concatenate([r["features"][:, FEATURES.index("vertical")] for r in train if r["control"]])
    area = np.concatenate([r["area"] for r in train if r["control"]])
    bands = np.clip((vertical * 5).astype(int), 0, 4)
    shares = np.bincount(bands, area, 5) / area.sum()
    return ["Where the card's false positives on the training controls lie (share of their pixels per fifth of the "
            "body's height, top to bottom): " + ", ".join(f"{100 * v:.0f} %" for v in shares) + ".\n\n"]


def gated_lines(validation: list, outcomes: dict) -> list:
    """The validation patients who lose every lesion the card found to the filter."""
    lost = [r["case"] for r, before, after in zip(validation, outcomes["card"], outcomes[CANDIDATE])
            if not r["control"] and before["found"] and not after["found"]]
    return [f"Validation patients left with no lesion found by the filter: {', '.join(lost) if lost else 'none'}.\n\n"]


def report_text(fitted: dict, summaries: dict, accepted: bool, why: str, figures: list, extra: list) -> str:
    spec, settings, training = fitted["spec"], fitted["settings"], fitted["training"]
    card, chosen = summaries["card"], summaries[CANDIDATE]
    text = [
        "# mip-pet-2d: lesion-level false-positive filter (issue 16)\n\n",
        "Made by `Testing/benchmarks/mip_lesion_filter.py` in one run from the cached fp32 probability maps of the "
        "card's network (no flips) over every dev image of the card's own split"
        + (" (training images: the inner-fold networks of --oof-cards instead, out of fold)" if fitted["out_of_fold"]
           else "")
        + "; every figure below was measured by that script. The filter is `TumorSegLib/lesion_filter.py`: a "
        + ("small CNN (`lesion_net`)" if "network" in spec else "logistic regression")
        + " on each predicted lesion (8-connected) with a per-lesion threshold and an image-level "
        "'any tumour' gate on the best lesion score; the engine applies it after the other post-processing on "
        "whole-image runs (not ROIs or clicks), so a MIP of a 3D PET is filtered before its lesions are traced "
        "into the volume.\n\n",
        "## Rules, fixed before the validation split was looked at\n\n",
        f"- Fit: {'the CNN on the patches and' if 'network' in spec else f'L2 logistic regression (penalty {L2}) on'}"
        " the standardised features of the "
        f"{fitted['training_lesions']} lesions {fitted['source']} on the {fitted['training_images']} TRAINING images "
        f"({fitted['training_true_lesions']} overlap the truth); {FOLDS}-fold cross-validation by image inside the "
        "training split gives out-of-fold "
        "scores for choosing the thresholds.\n",
        f"- Setting of each variant: {RULE}.\n",
        f"- Ship: {SHIP_RULE}.\n\n",
        "## Training split (settings chosen here)\n\n",
        f"Card on the training patients: mean Dice {fitted['training_card_dice']:.4f}.\n\n",
        "| variant | setting | training mean Dice | clean training controls |\n|---|---|---|---|\n",
        *[f"| {name} | {setting_text(settings[name])} | {training[name][0]:.4f} | {100 * training[name][1]:.1f} % |\n"
          for name in GRIDS],
        "\nSettings of the filter are (per-lesion threshold, image threshold). "
        + ("" if "network" in spec else "Coefficients of the shipped regression (score = sigmoid(intercept + sum "
                                        "coef * (x - mean) / scale)):") + "\n\n",
        *coefficient_lines(spec),
        "\n## Validation split (measured once)\n\n",
        f"{card['patients']} patients, {card['controls']} controls. ΔDice is the paired change per patient against "
        "the card; intervals are bootstrap 95 % "
        f"({RESAMPLES} resamples; patients and controls resampled apart). 'lesions found' = true lesions touched by "
        "the prediction.\n\n",
        *table(summaries, {k: v for k, v in settings.items()}),
        f"\nDecision: the candidate ({CANDIDATE}) is **{'shipped' if accepted else 'not shipped'}**: {why}.\n\n",
        "Against the targets (mean Dice >= 0.80; control median FP 0 with >= 75 % clean): card "
        f"{card['dice_mean']:.3f}, "
        f"median {card['control_fp_median']:.0f} px, {card['clean']}/{card['controls']} clean; with the filter "
        f"{chosen['dice_mean']:.3f}, median {chosen['control_fp_median']:.0f} px, "
        f"{chosen['clean']}/{chosen['controls']} "
        "clean.\n\n",
        *extra,
        "## Bias of the fit\n\n",
        OUT_OF_FOLD_NOTE if fitted["out_of_fold"] else BIAS_NOTE,
        "## Figures\n",
    ]
    for path, title in figures:
        text.append(f"\n{title}: the MIP, the card's mask, the filtered mask (red; truth green):\n\n"
                    f"![{title}](figures/{path.name})\n")
    return "".join(text)


def validation_figures(summaries: dict, names: dict) -> dict:
    """{key: the figures a card's provenance keeps of the validation summary ``names[key]``}."""
    return {key: {k: summaries[name][k] for k in ("dice_mean", "found", "lesions", "control_fp_median",
                                                   "control_fp_mean", "clean", "controls")}
            for key, name in names.items()}


def write_card(card, spec: dict, fitted: dict, summaries: dict, network=None) -> None:
    """Store the filter in the card's post-processing (a network's weights beside the card) and its fit and
    validation figures in its provenance."""
    from TumorSegLib.cards import sha256

    if network is not None:
        import torch

        path = card.path.parent / spec["network"]["file"]
        torch.save(network.state_dict(), path)
        spec["network"]["sha256"] = sha256(path)
    data = json.loads(card.path.read_text())
    data["postprocessing"]["lesion_filter"] = spec
    data["provenance"]["lesion_filter"] = {
        "fitted_on": f"{fitted['training_lesions']} lesions {fitted['source']} on the {fitted['training_images']} "
                     "training images of this card's split", "rule": RULE, "ship_rule": SHIP_RULE,
        "command": "Testing/benchmarks/mip_lesion_filter.py --cache DIR --write-card"
                   + (" --oof-cards ..." if fitted["out_of_fold"] else "") + (" --network" if network else ""),
        "validation": validation_figures(summaries, {"without_filter": "card", "with_filter": CANDIDATE}),
    }
    card.path.write_text(json.dumps(data, indent=2) + "\n")


def parser_for(doc: str) -> argparse.ArgumentParser:
    """The arguments every fitting script of the MIP card takes: the map cache, the data and the report folder."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="folder for the probability maps (outside the repository)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "dmiai2023-mip-pet" / "dev"))
    parser.add_argument("--out", default=str(REPO / "docs"))
    return parser


def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("--card", help="card file to fit the filter for (default: the shipped mip-pet-2d); "
                                       "--write-card writes into that file")
    parser.add_argument("--oof-cards", nargs="+", metavar="CARD",
                        help="inner-fold cards (data.inner_folds) whose out-of-fold maps replace the card's own on "
                             "the training split: the filter is fitted on lesions no network saw in training")
    parser.add_argument("--network", action="store_true",
                        help="fit the small CNN of lesion_net on each lesion's patch and features instead of the "
                             "regression (its weights are written beside the card)")
    parser.add_argument("--training-only", action="store_true",
                        help="fit and choose settings; do not look at validation")
    parser.add_argument("--write-card", action="store_true",
                        help="store the filter in the card when the ship rule accepts it")
    args = parser.parse_args(argv)

    import torch

    from TumorSegLib.cards import find_card, load_card

    torch.set_num_threads(1)
    card = load_card(args.card) if args.card else find_card("mip-pet-2d")
    cache = Path(args.cache)
    records, cases = load_records(card, args.data_root, cache, args.oof_cards, args.training_only,
                                  patches=args.network)
    train = [r for r in records if r["split"] == "train"]
    x, y = stack(train)
    fitter = fit_network if args.network else fit_regression
    oof = out_of_fold_scores(train, fitter)
    spec, lesion_net = fitter(train)
    if lesion_net is not None:
        spec["network"]["file"] = f"{card.name}-lesion-filter.pt"
    reference = mean_dice(variant_outcomes("card", None, train, oof))
    settings, curves = {"card": None}, {}
    for name in GRIDS:
        settings[name], curves[name] = choose_setting(name, train, oof, reference)
    spec["threshold"], spec["image_threshold"] = settings[CANDIDATE]
    fitted = {"training_lesions": len(y), "training_true_lesions": int(y.sum()), "training_images": len(train),
              "out_of_fold": bool(args.oof_cards), "source": (
                  f"the {len(args.oof_cards)} inner-fold networks predict, each on the images it never saw,"
                  if args.oof_cards else "the card predicts"),
              "training_card_dice": reference, "settings": settings, "spec": spec,
              "training": {name: next(c[1:] for c in curves[name] if c[0] == settings[name]) for name in GRIDS}}
    print(json.dumps({k: v for k, v in fitted.items() if k != "training_curves"}, indent=1), file=sys.stderr)
    if args.training_only:
        print(json.dumps(fitted, indent=1))
        return 0

    validation = [r for r in records if r["split"] == "validation"]
    final_scores = [score_of(r, spec, lesion_net) for r in validation]
    outcomes = {name: variant_outcomes(name, settings[name], validation, final_scores) for name in settings}
    summaries = {name: summary(o, outcomes["card"]) for name, o in outcomes.items()}
    accepted, why = ships(summaries[CANDIDATE], summaries["card"])
    print(json.dumps({"summaries": summaries, "ship": [accepted, why]}, indent=1))
    out = Path(args.out)
    figures = [(overlay(cases[r["case"]], *masks_of(cases[r["case"]], card, spec, cache, lesion_net)[:2], title,
                        out / "figures" / f"mip-lesion-filter-{tag}.png"), title)
               for tag, r, title in shown_cases(validation, outcomes)]
    seconds = np.median([masks_of(cases[r["case"]], card, spec, cache, lesion_net)[2] for r in validation])
    extra = where_lines(train) + gated_lines(validation, outcomes) + [
        f"Time of the filter itself (features and regression, `filter_lesions`): median {1000 * seconds:.1f} ms per "
        "validation image on this CPU, which other jobs shared (indicative).\n\n"]
    (out / "mip-pet-2d-lesion-filter.md").write_text(report_text(fitted, summaries, accepted, why, figures, extra))
    if args.write_card and accepted:
        write_card(card, spec, fitted, summaries, lesion_net)
    return 0


if __name__ == "__main__":
    sys.exit(main())
