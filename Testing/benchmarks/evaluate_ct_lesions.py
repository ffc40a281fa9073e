"""Validation report of the CT lung-lesion models (issue 6), reproduced from the published cards.

For each card (default ``ct-lung-lesion-3d`` and ``ct-lung-lesion-2d``) the validation patients of
its own training split (``TumorSegLib.training``: the card's provenance config, same seed) are
segmented by click-to-segment, one click per nodule (the mask voxel nearest the mask's centroid,
in world mm), on the CPU. Per case: Dice, the RECIST longest diameter (sum over lesions, as RECIST
sums them) against the mask's, the relative volume error and the time of ``Segmenter.predict``.
Then both models run on a whole CT without tumour labels (false positives: lesions, volume, time).

Writes ``docs/ct-lung-lesion-report.md``, overlay PNGs ``docs/figures/ct-*.png`` (truth, 3D and 2D
masks of the typical and the worst case of each model, and the whole-CT false positives) and,
with ``--rows``, the per-case rows as JSON; with ``--before`` (rows of an earlier run) the paired change per
model, the statistic of the ship rules (``docs/ship-rules.md``). Run from the repository root::

    .venv/bin/python Testing/benchmarks/evaluate_ct_lesions.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import paired

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
MODELS = ("ct-lung-lesion-3d", "ct-lung-lesion-2d")
SMALL_MM = 10.0  # RECIST: a lesion is measurable from 10 mm longest diameter on CT


def case_id(case) -> str:
    return Path(case.name).name.split(".")[0]


def click_point(image, truth: np.ndarray) -> np.ndarray:
    """World position of the lesion voxel nearest the lesion's centroid (a click on the nodule)."""
    voxels = np.argwhere(truth)
    centre = image.to_world(voxels.mean(axis=0))
    world = image.to_world(voxels)
    return world[int(np.argmin(np.linalg.norm(world - centre, axis=1)))]


def longest_diameter_sum(mask: np.ndarray, image) -> float:
    """RECIST sum of longest diameters (mm) of the mask's lesions."""
    from TumorSegLib.measure import measure_lesions

    return float(sum(lesion.recist_long_mm for lesion in measure_lesions(image.with_array(mask)).lesions))


def evaluate_case(segmenter, case) -> tuple:
    """(row of figures, predicted mask) of one validation case."""
    from TumorSegLib.metrics import case_metrics
    from TumorSegLib.training.transforms import read_pair

    image, truth = read_pair(case)
    point = click_point(image, truth)
    tick = time.perf_counter()
    prediction = segmenter.predict(image, point=point)
    seconds = time.perf_counter() - tick
    metrics = case_metrics(prediction.mask, truth, image, recist=False)
    truth_d, pred_d = longest_diameter_sum(truth, image), longest_diameter_sum(prediction.mask, image)
    row = {"case": case_id(case), "patient": case.patient, "dice": metrics["dice"],
           "truth_ml": metrics["truth_volume_ml"], "pred_ml": metrics["pred_volume_ml"],
           "relative_volume_error": metrics["relative_volume_error"], "truth_recist_mm": truth_d,
           "pred_recist_mm": pred_d, "recist_abs_error_mm": abs(pred_d - truth_d), "fp_lesions": metrics["fp_lesions"],
           "seconds": seconds, "point": point.round(2).tolist()}
    return row, prediction.mask


def summary(rows: list) -> dict:
    def median(key):
        return float(statistics.median(r[key] for r in rows)) if rows else None

    return {"cases": len(rows), "dice_mean": float(np.mean([r["dice"] for r in rows])) if rows else None,
            "dice_median": median("dice"), "recist_abs_error_mm_median": median("recist_abs_error_mm"),
            "relative_volume_error_median": median("relative_volume_error"), "seconds_median": median("seconds")}


def whole_volume(segmenter, path: Path) -> dict:
    """A whole-CT run without point or ROI: lesions, volume, time and the engine's notes."""
    from TumorSegLib.io import read_image
    from TumorSegLib.measure import measure_lesions

    image = read_image(path, "CT")
    tick = time.perf_counter()
    prediction = segmenter.predict(image)
    seconds = time.perf_counter() - tick
    readouts = measure_lesions(image.with_array(prediction.mask.astype(np.uint8)))
    volumes = sorted((lesion.volume_ml for lesion in readouts.lesions), reverse=True)
    return {"lesions": len(volumes), "volume_ml": float(sum(volumes)), "largest_ml": volumes[:5],
            "seconds": seconds, "notes": prediction.notes, "image": image, "mask": prediction.mask}


def panel(image, mask: np.ndarray, label: str, window, scale: int):
    """An overlay (three orthogonal views) as a PIL image with a label, scaled by ``scale``."""
    from PIL import Image as PILImage, ImageDraw

    from TumorSegLib.overlay import overlay_png

    with tempfile.TemporaryDirectory() as folder:
        path = overlay_png(Path(folder) / "panel.png", image, mask, window)
        picture = PILImage.open(path).convert("RGB")
        picture.load()
    picture = picture.resize((picture.width * scale, picture.height * scale), PILImage.NEAREST)
    ImageDraw.Draw(picture).text((3, 2), label, fill=(255, 255, 0))
    return picture


def stack(path: Path, panels: list) -> Path:
    from PIL import Image as PILImage

    width, height = max(p.width for p in panels), sum(p.height + 2 for p in panels)
    sheet = PILImage.new("RGB", (width, height))
    top = 0
    for picture in panels:
        sheet.paste(picture, (0, top))
        top += picture.height + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def pick_cases(rows_by_model: dict) -> list:
    """(figure name, case, title): the typical (Dice nearest the median) and the worst case of each model."""
    chosen = []
    for name, rows in rows_by_model.items():
        tag = name.rsplit("-", 1)[-1]
        median = statistics.median(r["dice"] for r in rows)
        typical = min(rows, key=lambda r: (abs(r["dice"] - median), r["case"]))
        worst = min(rows, key=lambda r: (r["dice"], r["case"]))
        chosen += [(f"ct-{tag}-typical", typical["case"], f"typical {tag.upper()} case"),
                   (f"ct-{tag}-worst", worst["case"], f"worst {tag.upper()} case")]
    return chosen


TARGETS = (("mean Dice", "dice_mean", 1, 0.82), ("median abs. RECIST error (mm)", "recist_abs_error_mm_median", -1, 1.5),
           ("median relative volume error", "relative_volume_error_median", -1, 0.15))
COMPARED = TARGETS[:2] + (("median Dice", "dice_median", 1, None),) + TARGETS[2:] + (
    ("median time per lesion (s)", "seconds_median", -1, None),)


def target_lines(name: str, values: dict) -> list:
    """'met' / 'not met' for each of issue 6's targets (sign 1: at least, -1: at most)."""
    return [f"- {name}: {label} {fmt(values[key])} ({'>=' if sign > 0 else '<='} {limit:g}): "
            f"{'met' if sign * (values[key] - limit) >= 0 else 'NOT met'}\n" for label, key, sign, limit in TARGETS]


def wins(challenger: str, reference: str, summaries: dict, strata: dict) -> list:
    """Where ``challenger`` beats ``reference``: overall and per nodule size, per compared figure."""
    found = []
    groups = [("all nodules", summaries)] + [(stratum, {n: strata[n][stratum] for n in strata})
                                               for stratum in strata[reference]]
    for group, values in groups:
        for label, key, sign, _ in COMPARED:
            a, b = values[challenger][key], values[reference][key]
            if a is not None and b is not None and sign * (a - b) > 0:
                found.append(f"{label}, {group}: {fmt(a)} vs {fmt(b)}")
    return found


def changes_against(rows: dict, before: dict) -> dict:
    """Per model in both: the paired per-nodule change of Dice against ``before`` (rows of an earlier run of this
    script, ``--rows``) and the median RECIST errors of both runs."""
    changes = {}
    for name in rows.keys() & before.keys():
        old = {r["case"]: r for r in before[name]}
        if sorted(old) != sorted(r["case"] for r in rows[name]):
            raise SystemExit(f"{name}: the rows before hold other nodules than this run; no paired comparison")
        changes[name] = {**paired.paired_change([r["dice"] for r in rows[name]], [old[r["case"]]["dice"] for r in rows[name]]),
                         "dice_mean_before": float(np.mean([r["dice"] for r in before[name]])),
                         "recist_abs_error_mm_median_before": statistics.median(r["recist_abs_error_mm"] for r in before[name])}
    return changes


def change_lines(changes: dict, summaries: dict, before_path) -> list:
    text = [f"\n## Against the rows before (`{Path(before_path).name}`, the same clicks)\n\n",
            "| model | mean Dice before | now | change (paired bootstrap 95 % interval; nodules up / down) | "
            "median RECIST error before (mm) | now |\n|---|---|---|---|---|---|\n"]
    for name, c in sorted(changes.items()):
        text.append(f"| {name} | {fmt(c['dice_mean_before'], 4)} | {fmt(summaries[name]['dice_mean'], 4)} | "
                    f"{c['mean']:+.4f} ({c['low']:+.4f}..{c['high']:+.4f}; {c['better']} / {c['worse']}) | "
                    f"{fmt(c['recist_abs_error_mm_median_before'], 2)} | {fmt(summaries[name]['recist_abs_error_mm_median'], 2)} |\n")
    return text


def weights_megabytes(card) -> float:
    """Size of every weights file a run of the card reads: its own (all of an ensemble) and its averaged cards'."""
    from TumorSegLib.cards import partner_cards, verified_weights

    cards = [card] + [partner for partner, _ in partner_cards(card)]
    return sum(path.stat().st_size for c in cards for path in verified_weights(c)) / 1e6


def fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_text(cards: dict, summaries: dict, strata: dict, wholes: dict, figures: list, environment: dict,
                ct_path: Path, changes: dict, before_path) -> str:
    names = list(cards)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"

    def line(label, values):
        return f"| {label} | " + " | ".join(values) + " |\n"

    text = ["# CT lung-lesion models: validation report\n\n",
            "Made by `Testing/benchmarks/evaluate_ct_lesions.py` from the published cards in `Resources/Models/`; "
            "every figure below was measured by that script.\n\n",
            f"Data: LIDC-IDRI nodule crops (`../shared/data/lidc-nodule-vois/dev`), the validation patients of each "
            f"card's own training split (patient-level, seed {cards[names[0]].provenance['config']['data']['split_seed']}; "
            f"{summaries[names[0]]['cases']} nodules of "
            f"{len(cards[names[0]].provenance['training_data']['validation_patients'])} patients). One click per nodule "
            "(`Segmenter.predict(image, point=...)`) at the mask voxel nearest the mask's centroid; the card's context box "
            "around it covers the whole crop.\n\n",
            "## Accuracy and speed (click-to-segment, CPU)\n\n", head]
    rows = [("mean Dice", "dice_mean", 3), ("median Dice", "dice_median", 3),
            ("median abs. error of RECIST longest diameter (mm)", "recist_abs_error_mm_median", 2),
            ("median relative volume error", "relative_volume_error_median", 3),
            ("median time per lesion (s)", "seconds_median", 3)]
    for label, key, digits in rows:
        text.append(line(label, [fmt(summaries[n][key], digits) for n in names]))
    text.append(line("training: validation mean Dice in the card (whole crop)",
                     [fmt(cards[n].provenance["validation"]["dice_mean"]) for n in names]))
    text.append(line("weights (MB, every file of an ensemble and of the cards averaged with it)",
                     [f"{weights_megabytes(cards[n]):.1f}" for n in names]))
    text.append(f"\nTime: {environment}.\n")
    if changes:
        text += change_lines(changes, summaries, before_path)
    text.append("\n## Targets (issue 6)\n\n")
    text += target_lines(names[0], summaries[names[0]])
    for name in names[1:]:
        better = wins(name, names[0], summaries, strata)
        text.append(f"\nWhere {name} beats {names[0]}: " + ("; ".join(better) if better else "nowhere") + ".\n")
    text += ["\n## By nodule size (truth RECIST longest diameter)\n\n", head]
    for label, key in (("cases", "cases"), ("mean Dice", "dice_mean"), ("median Dice", "dice_median"),
                       ("median abs. RECIST error (mm)", "recist_abs_error_mm_median"),
                       ("median relative volume error", "relative_volume_error_median")):
        for stratum in strata[names[0]]:
            values = [str(strata[n][stratum][key]) if key == "cases" else fmt(strata[n][stratum][key])
                      for n in names]
            text.append(line(f"{label}, {stratum}", values))
    text += [f"\n## Whole CT without a point: false positives (`{ct_path.name}`, a CT without tumour labels)\n\n",
             head]
    text.append(line("lesions reported", [str(wholes[n]["lesions"]) for n in names]))
    text.append(line("total volume (mL)", [fmt(wholes[n]["volume_ml"], 2) for n in names]))
    text.append(line("largest lesions (mL)", [", ".join(fmt(v, 2) for v in wholes[n]["largest_ml"]) for n in names]))
    text.append(line("time (s)", [fmt(wholes[n]["seconds"], 1) for n in names]))
    for name in names:
        for note in wholes[name]["notes"]:
            text.append(f"\n- {name}: {note}")
    text.append("\n\n## Figures\n")
    for path, title in figures:
        text.append(f"\n{title}:\n\n![{title}](figures/{path.name})\n")
    return "".join(text)


def strata_of(rows: list) -> dict:
    return {f"< {SMALL_MM:g} mm": summary([r for r in rows if r["truth_recist_mm"] < SMALL_MM]),
            f">= {SMALL_MM:g} mm": summary([r for r in rows if r["truth_recist_mm"] >= SMALL_MM])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--models-dir", help="folder of the cards (default: the installed ones)")
    parser.add_argument("--data-root", help="LIDC dev folder (default: the cards' data.root)")
    parser.add_argument("--ct", default=str(SHARED / "totalseg-example-ct" / "example_ct.nii.gz"),
                        help="whole CT without lesions for the false-positive run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--limit", type=int, help="evaluate only the first N validation cases (a quick look)")
    parser.add_argument("--report", default=str(REPO / "docs" / "ct-lung-lesion-report.md"))
    parser.add_argument("--figures", default=str(REPO / "docs" / "figures"))
    parser.add_argument("--rows", help="write per-case rows and summaries as JSON here")
    parser.add_argument("--before", help="rows of an earlier run (--rows): report the paired change per model")
    args = parser.parse_args(argv)

    import torch

    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.training.data import card_validation_cases
    from TumorSegLib.training.transforms import read_pair

    torch.set_num_threads(args.threads)
    cards = {name: find_card(name, args.models_dir) for name in args.models}
    segmenters = {name: Segmenter(card, "cpu") for name, card in cards.items()}
    cases = card_validation_cases(cards[args.models[0]], args.data_root)[: args.limit]
    for name in args.models[1:]:
        if [c.name for c in card_validation_cases(cards[name], args.data_root)][: len(cases)] != [c.name for c in cases]:
            raise SystemExit(f"{name} was validated on other cases than {args.models[0]}: no side-by-side report")
    rows, masks = {name: [] for name in cards}, {}
    for number, case in enumerate(cases):
        for name, segmenter in segmenters.items():
            if number == 0:  # warm-up: the first call pays one-off set-up costs
                evaluate_case(segmenter, case)
            row, mask = evaluate_case(segmenter, case)
            rows[name].append(row)
            masks[(name, row["case"])] = mask
        print(f"{number + 1}/{len(cases)} {rows[args.models[0]][-1]['case']} "
              + " ".join(f"{n}: {rows[n][-1]['dice']:.3f}" for n in cards), file=sys.stderr, flush=True)
    summaries = {name: summary(r) for name, r in rows.items()}
    changes = changes_against(rows, json.loads(Path(args.before).read_text())["rows"]) if args.before else {}
    strata = {name: strata_of(r) for name, r in rows.items()}
    wholes = {name: whole_volume(segmenter, Path(args.ct)) for name, segmenter in segmenters.items()}

    figures, by_case = [], {case_id(case): case for case in cases}
    window = cards[args.models[0]].preprocessing.intensity.window
    for figure, case_name, title in pick_cases(rows):
        image, truth = read_pair(by_case[case_name])
        dice = {n: next(r["dice"] for r in rows[n] if r["case"] == case_name) for n in cards}
        panels = [panel(image, truth, f"{case_name} truth", window, 3)]
        panels += [panel(image, masks[(n, case_name)], f"{n} Dice {dice[n]:.2f}", window, 3) for n in cards]
        figures.append((stack(Path(args.figures) / f"{figure}.png", panels), f"{title}: {case_name}"))
    ct_panels = [panel(wholes[n]["image"], wholes[n]["mask"], f"{n}: {wholes[n]['lesions']} lesions", window, 2)
                 for n in cards]
    figures.append((stack(Path(args.figures) / "ct-whole-volume-false-positives.png", ct_panels),
                    "whole CT, no point: what each model reports (views through the centre of the reported lesions)"))
    environment = (f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
                   f"{args.threads} thread(s), precision as the card says ('auto'), one warm-up call per model; "
                   "the 2-core machine was shared with other work, so times are indicative")
    Path(args.report).write_text(report_text(cards, summaries, strata, wholes, figures, environment, Path(args.ct),
                                              changes, args.before))
    if args.rows:
        Path(args.rows).write_text(json.dumps({"rows": rows, "summaries": summaries, "strata": strata,
                                               "whole_volume": {n: {k: v for k, v in w.items() if k not in ("image", "mask")}
                                                                for n, w in wholes.items()}}, indent=2))
    print(json.dumps({"summaries": summaries, "changes": changes, "whole_volume": {n: {"lesions": w["lesions"], "volume_ml": w["volume_ml"]}
                                                              for n, w in wholes.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
