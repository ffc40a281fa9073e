"""Validation report of ``ct-liver-lesion-2d`` the way LiTS reports it (issue 18).

The validation scans of the card's own training split (its provenance config, same seed: never a
scan on both sides) are segmented slice by slice with the engine, on the CPU, in fp32: the tumour
mask of the card and the liver: the Liver segment its run gives when the card names its organ
(``output.within.organ``), else the same network's channel 1 or the organ of the card its
``inference.organ_from`` names. Figures:

- per-scan tumour Dice: true positives, predicted and true pixels summed over all slices of a scan,
  Dice of the sums; the mean over scans with tumour (LiTS "Dice per case") and the global Dice
  (all slices of all scans pooled);
- liver Dice, per scan and global, alike;
- lesion detection: connected tumour regions (8-connected) per slice: a true region is found when
  the prediction overlaps it, a predicted region is false when it overlaps no true one;
- the dev folder holds every tumour slice of a scan but only a subset of the others (every 4th
  liver-only slice, a few without liver; ``dev/slices.csv``), so the false positives of the missing
  slices are not seen. The "weighted" figures count each stored slice for all slices of its kind
  (tumour / liver only / no liver) in its scan, an estimate of the whole-scan figures.

Then the model runs on a whole abdominal CT without labels (the TotalSegmentator example): tumour
volume there (all false positive unless that patient has liver lesions), liver volume and side.

With ``--folds`` (the cards of a cross-validation's runs) each scan is segmented by the fold that held
it out, and those out-of-fold rows replace the card's own validation; ``--before`` compares on the
scans the card before was measured on.

Writes ``docs/liver-report.md`` (keeping its hand-written candidates section, ``kept_sections``), overlays
``docs/figures/liver-*.png`` and, with ``--json``, the figures. Run from the repository root::

    .venv/bin/python Testing/benchmarks/evaluate_liver.py --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
NAME = "ct-liver-lesion-2d"
LIVER = 1  # the network's liver channel
COPIES = ("LPS", "SAR", "ILP")  # axis codes of flipped and permuted copies of the example CT
KEPT_FROM = "## Candidates"  # the report's hand-written sections start here (``kept_sections``)
SMALL_PX = 100  # LiTS pictures: tumour regions below 100 pixels (about 64 mm^2 at 0.8 mm) are "small"


def liver_card(card):
    """The card whose mask is the liver: the ``inference.organ_from`` card's organ channel, else this card's own
    channel 1 (``cards.only_channel``)."""
    from TumorSegLib.cards import only_channel, organ_card

    return organ_card(card) or only_channel(card, LIVER)


def weights_sha256(card) -> str:
    """The SHA-256 of each weights file of the card, joined by '+' (one for a single network)."""
    return "+".join(member.sha256 or "" for member in card.weights.members)


def short_sha256(joined: str) -> str:
    return " + ".join(f"`{sha[:12]}...`" for sha in joined.split("+"))


def scan_of(case) -> str:
    return re.search(r"volume-(\d+)_slice_(\d+)", case.name).group(1)


def slice_of(case) -> int:
    return int(re.search(r"volume-(\d+)_slice_(\d+)", case.name).group(2))


def first_slices(cases: list, count: int) -> list:
    """The first ``count`` cases of each scan."""
    seen = defaultdict(int)
    kept = []
    for case in cases:
        seen[scan_of(case)] += 1
        if seen[scan_of(case)] <= count:
            kept.append(case)
    return kept


def slice_weights(root: Path) -> dict:
    """(scan, kind) -> all slices of that kind in the scan / stored slices of that kind (dev/slices.csv)."""
    total, stored = defaultdict(int), defaultdict(int)
    with open(root / "slices.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            kind = "tumour" if int(row["tumour_px"]) else "liver" if int(row["liver_px"]) else "none"
            total[row["volume"], kind] += 1
            stored[row["volume"], kind] += row["included"] != "no"
    return {key: total[key] / stored[key] for key in total if stored[key]}


def evaluate_slice(segmenters: dict, case, card) -> dict:
    """Pixel counts and lesion detection of one validation slice (and the arrays for overlays).

    ``segmenters``: "tumour" (the card), "liver" (``liver_card``; None when the card's own run gives the liver,
    ``ModelCard.organ``) and "ungated" (channel 0 without the tumour-in-liver rule, to measure what that rule does).
    """
    from TumorSegLib.metrics import case_metrics
    from TumorSegLib.training.transforms import read_channels

    image, (tumour, liver) = read_channels(case, card, [[2], [1, 2]])
    fp32 = {"precision": "fp32"}
    result = segmenters["tumour"].predict(image, overrides=fp32)
    predicted, ungated = result.mask, segmenters["ungated"].predict(image, overrides=fp32).mask
    predicted_liver = result.organ if segmenters["liver"] is None else \
        segmenters["liver"].predict(image, overrides=fp32).mask
    lesions = case_metrics(predicted, tumour, image, recist=False)
    sizes = region_sizes(tumour)
    found = region_sizes(tumour & predicted, labels_of=tumour)
    return {
        "scan": scan_of(case), "slice": slice_of(case),
        "kind": "tumour" if tumour.any() else "liver" if liver.any() else "none",
        "tp": int(np.count_nonzero(predicted & tumour)), "pred": int(predicted.sum()), "true": int(tumour.sum()),
        "liver_tp": int(np.count_nonzero(predicted_liver & liver)), "liver_pred": int(predicted_liver.sum()),
        "liver_true": int(liver.sum()),
        "ungated_tp": int(np.count_nonzero(ungated & tumour)), "ungated_pred": int(ungated.sum()),
        "lesions": len(sizes), "found": len(found), "fp_lesions": lesions["fp_lesions"],
        "small_lesions": sum(1 for s in sizes.values() if s < SMALL_PX),
        "small_found": sum(1 for label in found if sizes[label] < SMALL_PX),
        "arrays": (image.array, tumour, predicted, predicted_liver),
    }


def validation_rows(card, root: Path, slices_per_scan: int | None) -> list:
    """``evaluate_slice`` rows of the validation slices of the card's own split, each naming the card."""
    from TumorSegLib.cards import only_channel
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.networks import load_network
    from TumorSegLib.training.data import card_validation_cases

    cases = card_validation_cases(card, data_root=root)
    if slices_per_scan:
        cases = first_slices(cases, slices_per_scan)
    network = load_network(card, "cpu")  # the card's own networks read once (PyTorch fp32: the report's figures)
    liver = None if card.organ else liver_card(card)
    segmenters = {name: c and Segmenter(c, device="cpu", network=network if c.name == card.name else None,
                                        backend="torch")
                  for name, c in (("tumour", card), ("liver", liver), ("ungated", only_channel(card, 0)))}
    return [{**evaluate_slice(segmenters, case, card), "validated_by": str(card.path)} for case in cases]


def region_sizes(mask: np.ndarray, labels_of: np.ndarray | None = None) -> dict:
    """Label -> pixel count of the 8-connected regions of ``labels_of`` (default ``mask``) that ``mask`` touches."""
    from TumorSegLib.measure import label_lesions

    labels, _ = label_lesions(mask if labels_of is None else labels_of)
    touched = np.unique(labels[mask & (labels > 0)])
    counts = np.bincount(labels.ravel())
    return {int(label): int(counts[label]) for label in touched}


def dice_of(tp: float, pred: float, true: float):
    return None if pred + true == 0 else 2.0 * tp / (pred + true)


def scan_figures(rows: list, weights: dict) -> list:
    """Per scan: tumour and liver Dice pooled over its slices, stored and weighted."""
    figures = []
    for scan in sorted({r["scan"] for r in rows}, key=int):
        mine = [r for r in rows if r["scan"] == scan]
        entry = {"scan": scan, "slices": len(mine), "tumour_slices": sum(r["kind"] == "tumour" for r in mine)}
        for prefix, keys in (("", ("tp", "pred", "true")), ("liver_", ("liver_tp", "liver_pred", "liver_true")),
                             ("ungated_", ("ungated_tp", "ungated_pred", "true"))):
            sums = [sum(r[k] for r in mine) for k in keys]
            weighted = [sum(r[k] * weights.get((scan, r["kind"]), 1.0) for r in mine) for k in keys]
            entry[f"{prefix}dice"] = dice_of(*sums)
            entry[f"{prefix}dice_weighted"] = dice_of(*weighted)
            entry[f"{prefix}true_px"] = sums[2]
        entry["fp_px_non_tumour_slices"] = sum(r["pred"] for r in mine if r["kind"] != "tumour")
        figures.append(entry)
    return figures


def mean_of(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summary(rows: list, scans: list) -> dict:
    with_tumour = [s for s in scans if s["true_px"] > 0]
    pooled = [sum(r[k] for r in rows) for k in ("tp", "pred", "true")]
    pooled_liver = [sum(r[k] for r in rows) for k in ("liver_tp", "liver_pred", "liver_true")]
    lesions, found = sum(r["lesions"] for r in rows), sum(r["found"] for r in rows)
    small, small_found = sum(r["small_lesions"] for r in rows), sum(r["small_found"] for r in rows)
    fp = sum(r["fp_lesions"] for r in rows)
    return {
        "scans": len(scans), "scans_with_tumour": len(with_tumour), "slices": len(rows),
        "tumour_slices": sum(r["kind"] == "tumour" for r in rows),
        "dice_per_scan_mean": mean_of(s["dice"] for s in with_tumour),
        "dice_per_scan_median": float(np.median([s["dice"] for s in with_tumour])) if with_tumour else None,
        "dice_per_scan_mean_weighted": mean_of(s["dice_weighted"] for s in with_tumour),
        "dice_global": dice_of(*pooled),
        "ungated_dice_per_scan_mean": mean_of(s["ungated_dice"] for s in with_tumour),
        "ungated_fp_px_per_non_tumour_slice": float(np.mean([r["ungated_pred"] for r in rows if r["kind"] != "tumour"]
                                                            or [0])),
        "liver_dice_per_scan_mean": mean_of(s["liver_dice"] for s in scans),
        "liver_dice_per_scan_mean_weighted": mean_of(s["liver_dice_weighted"] for s in scans),
        "liver_dice_global": dice_of(*pooled_liver),
        "lesions": lesions, "lesions_found": found, "lesion_sensitivity": found / lesions if lesions else None,
        "lesions_100px_or_more": lesions - small,
        "lesion_sensitivity_100px_or_more": (found - small_found) / (lesions - small) if lesions > small else None,
        "false_positive_regions": fp,
        "lesion_precision": found / (found + fp) if found + fp else None,
        "fp_px_per_non_tumour_slice": float(np.mean([r["pred"] for r in rows if r["kind"] != "tumour"] or [0])),
    }


def overlay(path: Path, rows: list) -> Path:
    """The scan's slice with the most tumour: R-channel grey, truth green, tumour red, liver blue (outlines)."""
    from PIL import Image as PILImage
    from scipy import ndimage

    row = max(rows, key=lambda r: r["true"])
    picture, truth, predicted, liver = row["arrays"]
    grey = np.clip((picture + 45) / 150 * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for mask, colour in ((liver, (60, 120, 255)), (truth, (40, 220, 40)), (predicted, (240, 40, 40))):
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        rgb[edge] = colour
    PILImage.fromarray(rgb).resize((256, 256), PILImage.BILINEAR).save(path, optimize=True)
    return path


def example_ct(card, path: Path, figure: Path, data_root: Path) -> dict:
    """On a whole CT without labels: tumour (false-positive) and liver volume, the liver's place, the
    time, the liver masks of flipped and permuted copies of the volume mapped back (differing voxels), and
    the tumour volume once the volume's intensities are moved so that its liver has the training livers' median."""
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.io import read_image
    from TumorSegLib.measure import label_lesions
    from TumorSegLib.overlay import overlay_png
    from TumorSegLib.preprocess import reorient

    image = read_image(path)
    fp32 = {"precision": "fp32"}
    segmenter = Segmenter(card, device="cpu")
    started = time.perf_counter()
    result = segmenter.predict(image, overrides=fp32)
    seconds = time.perf_counter() - started
    tumour = result.mask
    if card.organ:
        liver = result.organ
        liver_of = lambda volume: segmenter.predict(volume, overrides=fp32).organ  # noqa: E731
    else:
        liver_segmenter = Segmenter(liver_card(card), device="cpu")
        liver_of = lambda volume: liver_segmenter.predict(volume, overrides=fp32).mask  # noqa: E731
        liver = liver_of(image)
    copies = {}
    for codes in COPIES:
        copy, _ = reorient(image, codes)
        expected = reorient(image.with_array(liver.astype(np.uint8)), codes)[0].array.astype(bool)
        copies[codes] = int(np.count_nonzero(liver_of(copy) != expected))
    millilitres = image.voxel_volume / 1000.0
    body = image.to_world(np.argwhere(image.array > -300))
    centre = image.to_world(np.argwhere(liver)).mean(axis=0) if liver.any() else None
    overlay_png(figure, image, tumour, window=(-160, 240), organ=liver)
    level = training_liver_hu(card, data_root)
    median = float(np.median(image.array[liver])) if liver.any() else None
    moved = None if median is None or card.preprocessing.organ_level else Segmenter(card, device="cpu").predict(
        image.with_array((image.array + np.float32(level - median)).astype(np.float32)), overrides=fp32).mask
    return {
        "file": f"{path.parent.name}/{path.name}", "shape": list(image.shape),
        "spacing_mm": [round(float(s), 3) for s in image.spacing],
        "tumour_ml": float(tumour.sum() * millilitres), "tumour_regions": label_lesions(tumour)[1],
        "liver_ml": float(liver.sum() * millilitres), "liver_voxels": int(liver.sum()),
        "liver_centre_minus_body_centre_mm": None if centre is None else
        [round(float(c), 1) for c in centre - np.median(body, axis=0)],
        "copies_differing_liver_voxels": copies,
        "seconds_tumour_run": round(seconds, 2),
        "liver_median_hu": median, "training_liver_median_hu": level,
        "tumour_ml_liver_moved_to_training_level": None if moved is None else float(moved.sum() * millilitres),
    }


def training_liver_hu(card, data_root: Path) -> float:
    """Median over the training scans of the card's split of each scan's median liver HU (truth labels, pictures)."""
    from TumorSegLib.training.config import config_from_dict
    from TumorSegLib.training.data import config_split, find_cases
    from TumorSegLib.training.transforms import read_channels

    config = config_from_dict(card.provenance["config"], data_root=data_root)
    values = {}
    for case in config_split(config, find_cases(config)).train:
        image, (_, liver) = read_channels(case, card, [[2], [1]])  # liver without tumour
        if liver.any():
            values.setdefault(scan_of(case), []).append(image.array[liver > 0])
    return float(np.median([np.median(np.concatenate(v)) for v in values.values()]))


def window_limit(card) -> str:
    """The Limits line on the pictures' HU window and what it hides."""
    low, high = card.preprocessing.picture.window
    lines = [f"- The pictures clip HU to {low:g}..{high:g}. Most enhanced LiTS livers lie at or above 105 HU, the R "
             "window's ceiling: where a liver and its tumour both lie above it, the pictures cannot show the tumour "
             "(the R channel of validation scans 35 and 39; `docs/ship-rules.md`, fifteenth candidate)."]
    level = card.preprocessing.organ_level
    if level:
        lines.append(f"On HU volumes the input is first moved so that the liver's median is {level.value:g} HU, then "
                     "windowed, so a liver and tumour above the ceiling stay visible there.")
    return " ".join(lines)


BEFORE_ROWS = (("tumour Dice per scan, mean", "dice_per_scan_mean"), ("tumour Dice, global", "dice_global"),
               ("liver Dice per scan, mean", "liver_dice_per_scan_mean"),
               ("tumour regions found", "lesion_sensitivity"), ("precision of regions", "lesion_precision"),
               ("false-positive pixels per slice without tumour", "fp_px_per_non_tumour_slice"))


def before_lines(result: dict, before: dict | None) -> list:
    """A table of the card before this one (its ``--json`` figures, same script and data) against this one."""
    if before is None:
        return []
    rows = [(name, before["summary"][key], result["summary_on_before_scans"][key]) for name, key in BEFORE_ROWS]
    rows.append(("tumour on the example CT (mL; no labels)", before["example_ct"]["tumour_ml"],
                 result["example_ct"]["tumour_ml"]))
    return ["## Against the card it replaced", "",
            f"Both measured by this script on the same slices, the {before['summary']['scans']} validation scans of the "
            f"card before (weights sha256 {short_sha256(before['weights_sha256'])})"
            + (", this card's by the fold that held each scan out." if result["folds"] else "."),
            "", "| figure | before | this card |", "|---|---|---|",
            *[f"| {name} | {figure(b)} | {figure(a)} |" for name, b, a in rows], ""]


def figure(value, digits: int = 3) -> str:
    """A report figure: ``digits`` decimals, or n/a where the slices give none (e.g. no tumour)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def intensity_lines(ct: dict) -> list:
    """How far the example CT's liver lies from the training livers, and what moving it there does."""
    if ct.get("liver_median_hu") is None:
        return []
    if ct["tumour_ml_liver_moved_to_training_level"] is None:  # the card moves its input itself (organ_level)
        return [f"Its predicted liver has a median of {ct['liver_median_hu']:.0f} HU; the training scans' livers "
                f"{ct['training_liver_median_hu']:.0f} HU (median over scans of each scan's median). This card moves "
                "the input to that level itself (`preprocessing.organ_level`), so the figures above are already "
                "those of the moved volume.", ""]
    return [f"Its predicted liver has a median of {ct['liver_median_hu']:.0f} HU; the training scans' livers "
            f"{ct['training_liver_median_hu']:.0f} HU (median over scans of each scan's median; most are at or near "
            "the 105 HU top of the pictures' window, enhanced). With the volume's intensities moved so that its liver "
            f"lies at that level, the same model marks {ct['tumour_ml_liver_moved_to_training_level']:.1f} mL as "
            f"tumour instead of {ct['tumour_ml']:.1f} mL: part of the false tumour is a liver darker than the "
            "livers of training; the rest (3 mm voxels? disease? the file has no labels) is not explained here.", ""]


def cascade_lines(card) -> list:
    """What finds the liver, for a card that takes it from another card (``inference.organ_from``)."""
    source = card.inference.organ_from
    if source is None:
        return []
    within = card.output.within
    largest = " (on a 3D volume its largest connected region, `output.within.largest_component`)" \
        if within is not None and within.largest_component else ""
    segment = (" The liver figures are those of the Liver segment a run gives (`output.within.organ`): that liver, "
               "post-processed as its card does and joined with the tumour mask (on the example CT its largest 3D "
               "region).") if card.organ else ""
    return [f"A cascade: the liver (the liver figures below, the tumour-in-liver rule and the organ level) is that of "
            f"`{source}` (`inference.organ_from`), run whole at {spacing_text(liver_card(card))}; the tumour is this "
            f"card's networks' at {spacing_text(card)}, inside that liver{largest}.{segment}", ""]


def spacing_text(card) -> str:
    return " x ".join(f"{s:g}" for s in card.preprocessing.spacing) + " mm"


def report_text(card, result: dict, before: dict | None = None) -> str:
    s, scans, ct = result["summary"], result["scans"], result["example_ct"]
    training = card.provenance.get("training", {})

    lines = [
        "# ct-liver-lesion-2d: validation report (LiTS slices)", "",
        f"Produced by `Testing/benchmarks/evaluate_liver.py` on {result['machine']} from the published card "
        f"(weights sha256 {short_sha256(weights_sha256(card))}), CPU, fp32. Training: {training.get('epochs')} "
        f"epochs, {training.get('steps')} steps on a shared 2-core CPU ({training.get('stopped')})"
        + (f"; an ensemble of {len(card.weights.members)} networks (the figures count the first one's training)"
           if card.weights.ensemble else "") + ".", "",
    ] + before_lines(result, before) + [
        "Data: LiTS 2017 training scans as windowed JPEG slices (`../shared/data/lits-liver-2d`, 26 dev scans; "
        "LiTS terms: non-commercial research use, CC BY-NC-SA 4.0, cite Bilic et al., MedIA 2023). "
        + (f"Validation: {result['folds']}-fold cross-validation by scan, each of the {s['scans']} scans segmented by "
           "the fold's network that never saw it (out of fold), so these figures are those of one network on scans "
           "it never saw (an ensemble of the folds' networks cannot be measured on these scans): "
           if result["folds"] else f"Validation = the {s['scans']} scans the training split held out (by scan, seed "
           "20240607): ")
        + f"{s['slices']} stored slices, {s['tumour_slices']} with tumour.", "",
    ] + cascade_lines(card) + [
        "How it was trained: the card's `provenance.config.notes` and `provenance.command`. Loss and validation Dice "
        "(per-slice mean, the training loop's selection figure) per epoch of its run (retrained candidates that "
        "were measured and not shipped, and why: `docs/ship-rules.md`):", "",
        "![training curve](figures/liver-training-curve.png)", "",
        "## LiTS figures", "",
        "| figure | stored slices | weighted to whole scans |", "|---|---|---|",
        f"| tumour Dice per scan, mean over {s['scans_with_tumour']} scans with tumour | {figure(s['dice_per_scan_mean'])} "
        f"| {figure(s['dice_per_scan_mean_weighted'])} |",
        f"| tumour Dice per scan, median | {figure(s['dice_per_scan_median'])} | |",
        f"| tumour Dice, global (all slices pooled) | {figure(s['dice_global'])} | |",
        f"| liver Dice per scan, mean | {figure(s['liver_dice_per_scan_mean'])} | {figure(s['liver_dice_per_scan_mean_weighted'])} |",
        f"| liver Dice, global | {figure(s['liver_dice_global'])} | |",
        f"| tumour regions found (2D, 8-connected) | {s['lesions_found']} / {s['lesions']} = "
        f"{figure(s['lesion_sensitivity'])} | |",
        f"| regions of >= {SMALL_PX} px found | {figure(s['lesion_sensitivity_100px_or_more'])} of "
        f"{s['lesions_100px_or_more']} | |",
        f"| false-positive regions / precision of regions | {s['false_positive_regions']} / "
        f"{figure(s['lesion_precision'])} | |",
        f"| mean false-positive pixels per slice without tumour | {figure(s['fp_px_per_non_tumour_slice'], 1)} | |",
        f"| without the tumour-in-liver rule (output.within; the card's own networks): tumour Dice per scan, mean | "
        f"{figure(s['ungated_dice_per_scan_mean'])} | |",
        f"| without the rule: false-positive pixels per slice without tumour | "
        f"{figure(s['ungated_fp_px_per_non_tumour_slice'], 1)} | |",
        "", "Targets (issue 18): mean per-scan tumour Dice >= 0.65, liver Dice >= 0.93. "
        f"Reached: tumour {'yes' if (s['dice_per_scan_mean'] or 0) >= 0.65 else 'no'}, "
        f"liver {'yes' if (s['liver_dice_per_scan_mean'] or 0) >= 0.93 else 'no'}.", "",
        "\"Weighted\": the dev folder stores every tumour slice but only every 4th liver-only slice and a few slices "
        "without liver; each stored slice is counted for all slices of its kind in its scan (`dev/slices.csv`), which "
        "estimates the whole-scan Dice including false positives on slices that are not stored.", "",
        "## Per scan", "",
        "| scan | stored slices | tumour slices | tumour px | tumour Dice | weighted | liver Dice | FP px on non-tumour slices |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in scans:
        tumour = (f"{figure(e['dice'])} | {figure(e['dice_weighted'])}" if e["true_px"] else "no tumour | no tumour")
        lines.append(f"| {e['scan']} | {e['slices']} | {e['tumour_slices']} | {e['true_px']} | {tumour} | "
                     f"{figure(e['liver_dice'])} | {e['fp_px_non_tumour_slices']} |")
    lines += ["", "## Overlays (best, median and worst scan by tumour Dice)", "",
              "Each shows the scan's slice with the most tumour (R channel, W150/L30): truth green, predicted tumour "
              "red, predicted liver blue (outlines).", ""]
    for label, path in result["figures"].items():
        lines.append(f"![{label}](figures/{Path(path).name}) {label}")
        lines.append("")
    lines += ["## Whole abdominal CT without labels", "",
              f"`{ct['file']}` (TotalSegmentator example, shape {ct['shape']}, spacing {ct['spacing_mm']} mm), the whole "
              f"volume without a click: tumour {ct['tumour_ml']:.2f} mL in {ct['tumour_regions']} region(s) (false "
              f"positive as far as known: the file has no labels); liver {ct['liver_ml']:.0f} mL, its centre "
              f"{ct['liver_centre_minus_body_centre_mm']} mm (RAS) from the body's median point (positive x = patient "
              f"right, positive z = superior); {ct['seconds_tumour_run']} s for the tumour run on this CPU (indicative: "
              "shared machine). Flipped and permuted copies of the volume (axis codes: voxels whose liver label "
              f"differs after mapping back, of {ct['liver_voxels']}): {ct['copies_differing_liver_voxels']}.", "",
              *intensity_lines(ct),
              "Overlay: predicted tumour (red) and liver (blue outline) in the axial, coronal and sagittal planes "
              "through the largest tumour region (patient right on the image left).", "",
              "![example CT liver](figures/liver-example-ct.png)", "",
              "## Limits", "",
              "- The pictures carry no spacing: they are taken as 0.8 mm pixels (LiTS in-plane spacing is about "
              "0.55-1.0 mm), so scans at other spacings were seen 0.7-1.25x too large or small in training; scale "
              "augmentation (15 %) covers part of that. Areas of JPEG inputs assume 0.8 mm.",
              "- Slices only: neighbouring slices as channels (2.5D) cannot be trained on this folder, which holds the "
              "neighbours (2 slices apart) of 487 of its 547 tumour slices but of 1 of its 294 liver-only slices, so "
              "a 2.5D model would see context almost only where there is tumour. "
              f"Validation on {s['scans']} scans ({s['scans_with_tumour']} with tumour), so the figures have wide "
              "uncertainty.",
              window_limit(card), ""]
    return "\n".join(lines)


def kept_sections(report: Path) -> str:
    """The hand-written end of an existing report, from its ``KEPT_FROM`` heading on (the candidates measured and
    judged by the ship rules), carried over to the new report; "" when there is none."""
    text = report.read_text() if report.is_file() else ""
    start = text.find(KEPT_FROM)
    return "\n" + text[start:] if start >= 0 else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card", help="card file (default: the shipped ct-liver-lesion-2d)")
    parser.add_argument("--data-root", default=str(SHARED / "lits-liver-2d" / "dev"))
    parser.add_argument("--example-ct", default=str(SHARED / "totalseg-example-ct" / "example_ct.nii.gz"))
    parser.add_argument("--report", default=str(REPO / "docs" / "liver-report.md"))
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument("--slices-per-scan", type=int, help="only the first N stored slices of each scan (a quick check)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--before", help="the --json figures of the card this one replaces: a before/after table")
    parser.add_argument("--folds", nargs="+", metavar="CARD",
                        help="cross-validation: the card of each fold's run; each segments the scans its fold held out "
                             "and those rows (out of fold) replace the card's own validation")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from TumorSegLib.cards import find_card, load_card

    if args.threads:
        torch.set_num_threads(args.threads)
    card = load_card(args.card) if args.card else find_card(NAME)
    root = Path(args.data_root)
    folds = [load_card(path) for path in args.folds or ()]
    rows = [row for validated in folds or [card] for row in validation_rows(validated, root, args.slices_per_scan)]
    if len({r["scan"] for r in rows}) != len({(r["scan"], r["validated_by"]) for r in rows}):
        raise SystemExit("the folds' validation scans overlap: not a cross-validation")
    weights = slice_weights(root)
    scans = scan_figures(rows, weights)
    before = json.loads(Path(args.before).read_text()) if args.before else None
    figures_dir = Path(args.report).parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    ranked = sorted((s for s in scans if s["true_px"]), key=lambda s: s["dice"], reverse=True)
    figures = {}
    picks = (("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])) if ranked else ()
    for label, entry in picks:
        title = f"{label}: scan {entry['scan']}, tumour Dice {entry['dice']:.3f}"
        path = figures_dir / f"liver-{label}.png"
        figures[title] = str(overlay(path, [r for r in rows if r["scan"] == entry["scan"]]))
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "weights_sha256": weights_sha256(card), "folds": len(folds), "summary": summary(rows, scans),
              "scans": scans, "figures": figures,
              "example_ct": example_ct(card, Path(args.example_ct), figures_dir / "liver-example-ct.png", root)}
    if before:  # this card's figures on the slices the card before it was measured on
        compared = [r for r in rows if r["scan"] in {s["scan"] for s in before["scans"]}]
        result["summary_on_before_scans"] = summary(compared, scan_figures(compared, weights))
    Path(args.report).write_text(report_text(card, result, before) + kept_sections(Path(args.report)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    print(json.dumps(result["example_ct"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
