"""``tumorseg evaluate --pred P --truth T [--json OUT] [--csv OUT]``: Dice, FP/FN volume, detection."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import TumorSegError
from ..image import binary_mask
from ..io import SUFFIXES, case_name, read_image
from ..measure import merged_labels_notes
from ..metrics import case_metrics, summarize
from ..report import evaluation_text, require_writable, write_csv, write_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare predicted masks with ground truth (Dice, autoPET FP/FN volume, lesion detection)",
        description="Compare prediction masks with truth masks. P and T are files or folders; in folders, cases "
        "are matched by file name without the image suffix. Every non-zero voxel is tumour.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pred", required=True, help="predicted mask file or folder")
    parser.add_argument("--truth", required=True, help="ground-truth mask file or folder")
    parser.add_argument("--json", metavar="OUT.json", help="write per-case rows and the summary as JSON")
    parser.add_argument("--csv", metavar="OUT.csv", help="write the per-case rows as CSV")
    parser.set_defaults(func=run)


def run(args) -> int:
    for path in (args.json, args.csv):
        if path:
            require_writable(path)
    rows, notes = [], []
    for name, (pred_path, truth_path) in match_cases(args.pred, args.truth).items():
        rows.append({"case": name, **_evaluate_case(pred_path, truth_path, notes)})
    summary = summarize(rows)
    print(evaluation_text(rows, summary, notes))
    if args.json:
        write_json(args.json, {"cases": rows, "summary": summary, "notes": notes})
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def match_cases(pred, truth) -> dict:
    """{case name: (prediction path, truth path)}; two files are one case, folders match by name."""
    pred, truth = Path(pred), Path(truth)
    if pred.is_file() and truth.is_file():
        return {case_name(pred): (pred, truth)}
    preds, truths = case_files(pred, "prediction"), case_files(truth, "truth")
    no_pred = sorted(set(truths) - set(preds))
    no_truth = sorted(set(preds) - set(truths))
    if no_pred or no_truth:
        problems = []
        if no_pred:
            problems.append(f"no prediction for truth case(s) {', '.join(no_pred)}")
        if no_truth:
            problems.append(f"no truth for predicted case(s) {', '.join(no_truth)}")
        raise TumorSegError("; ".join(problems))
    return {name: (preds[name], truths[name]) for name in sorted(preds)}


def case_files(path: Path, what: str) -> dict:
    """{case name: file} for a mask file or every image file directly in a folder."""
    if path.is_file():
        return {case_name(path): path}
    if not path.is_dir():
        raise TumorSegError(f"{what} not found: {path}")
    files = {}
    for file in sorted(path.iterdir()):
        if file.is_file() and not file.name.startswith(".") and file.name.lower().endswith(SUFFIXES):
            name = case_name(file)
            if name in files:
                raise TumorSegError(f"{what} folder {path} has two files for case {name}: {files[name].name}, {file.name}")
            files[name] = file
    if not files:
        raise TumorSegError(f"{what} folder {path} holds no .nii, .nii.gz, .nrrd or .png files")
    return files


def _evaluate_case(pred_path: Path, truth_path: Path, notes: list) -> dict:
    pred = read_image(pred_path, "prediction")
    truth = read_image(truth_path, "truth")
    pred.require_same_grid(truth, f"prediction {pred_path.name}", f"truth {truth_path.name}")
    pred_mask, truth_mask = binary_mask(pred, f"prediction {pred_path}"), binary_mask(truth, f"truth {truth_path}")
    notes.extend(merged_labels_notes(pred, f"prediction {pred_path}") + merged_labels_notes(truth, f"truth {truth_path}"))
    return case_metrics(pred_mask, truth_mask, truth)
