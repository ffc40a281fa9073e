"""``tumorseg evaluate --pred P --truth T [--json OUT] [--csv OUT]``: Dice, FP/FN volume, detection."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from . import HelpFormatter
from ..errors import TumorSegError
from ..image import binary_mask
from ..io import SUFFIXES, case_name, read_image
from ..measure import merged_labels_notes
from ..metrics import case_metrics, summarize
from ..files import require_not_input, require_writable, write_json
from ..report import evaluation_text, write_csv


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare predicted masks with ground truth (Dice, autoPET FP/FN volume, lesion detection)",
        description="Compare prediction masks with truth masks. P and T are files or folders; in folders, cases "
        "are paired by file name without the image suffix or, where the names differ, by the number that ends "
        "each name (patient_012 with segmentation_012). Every non-zero voxel is tumour.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--pred", required=True, help="predicted mask file or folder")
    parser.add_argument("--truth", required=True, help="ground-truth mask file or folder")
    parser.add_argument("--json", metavar="OUT.json", help="write per-case rows and the summary as JSON")
    parser.add_argument("--csv", metavar="OUT.csv", help="write the per-case rows as CSV")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in (args.json, args.csv):
        if path:
            require_writable(path)
    rows, notes = [], []
    cases = match_cases(args.pred, args.truth)
    require_not_input([args.json, args.csv], [path for pair in cases.values() for path in pair])
    for name, (pred_path, truth_path) in cases.items():
        rows.append({"case": name, **_evaluate_case(pred_path, truth_path, notes)})
    summary = summarize(rows)
    print(evaluation_text(rows, summary, notes))
    if args.json:
        write_json(args.json, {"cases": rows, "summary": summary, "notes": notes})
    if args.csv:
        write_csv(args.csv, rows)
    return 0


def match_cases(pred: Path, truth: Path) -> dict:
    """{case name: (prediction path, truth path)}; two files are one case.

    Folders pair cases by file name without the image suffix. Where the names differ, they pair by
    the number that ends each name (``patient_012`` with ``segmentation_012``), provided every
    number is unique on each side and both sides have the same numbers.
    """
    pred, truth = Path(pred), Path(truth)
    if pred.is_file() and truth.is_file():
        return {case_name(pred): (pred, truth)}
    preds, truths = case_files(pred, "prediction"), case_files(truth, "truth")
    if set(preds) == set(truths):
        return {name: (preds[name], truths[name]) for name in sorted(preds)}
    pred_names, truth_names = _by_trailing_number(preds), _by_trailing_number(truths)
    if pred_names is not None and truth_names is not None and set(pred_names) == set(truth_names):
        return {pred_names[n]: (preds[pred_names[n]], truths[truth_names[n]]) for n in sorted(pred_names)}
    no_pred = sorted(set(truths) - set(preds))
    no_truth = sorted(set(preds) - set(truths))
    raise TumorSegError(
        f"cannot pair the cases of {pred} and {truth}: {len(no_pred)} truth case(s) have no prediction of the same "
        f"name (e.g. {', '.join(no_pred[:3]) or '-'}) and {len(no_truth)} prediction(s) no truth (e.g. "
        f"{', '.join(no_truth[:3]) or '-'}). Cases pair by equal file names, or by the number ending each name "
        "(patient_012 with segmentation_012) when those numbers are unique and the same on both sides")


def _by_trailing_number(files: dict) -> dict | None:
    """{number ending the case name: case name}, or None when a name has none or two share one."""
    numbered = {}
    for name in files:
        match = re.search(r"(\d+)$", name)
        if match is None or int(match.group(1)) in numbered:
            return None
        numbered[int(match.group(1))] = name
    return numbered


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
