"""Segmentation metrics per case and over a data set, as autoPET and RECIST readers count them.

- Overlap: Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN), sensitivity = TP / (TP + FN),
  precision = TP / (TP + FP). An empty truth with an empty prediction is a perfect case (Dice
  and IoU 1); sensitivity is None when the truth is empty, precision when the prediction is.
- autoPET: lesions are 18-connected components (8 in 2D). FP volume = volume of predicted
  components that touch no true lesion; FN volume = volume of true components that no
  prediction touches (mL; 2D: mm2 or pixels). Detection: TP lesions = true components touched
  by the prediction, FN lesions = the others, FP lesions = predicted components touching no truth.
- Relative volume error |Vp - Vt| / Vt; RECIST relative error |Dp - Dt| / Dt with D the sum of
  the lesions' longest diameters. Both None when the truth is empty.
- A case whose truth is empty is a healthy control (``control`` True): it is judged by its FP
  volume, and kept out of the Dice mean and median of the summary (reported beside them).
"""

from __future__ import annotations

import numpy as np

from .errors import TumorSegError
from .image import Image
from .measure import SIZE_KEYS, image_size_key, label_lesions, measure_lesions, size_of


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks; 1.0 when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(np.logical_and(a, b))) / total


def case_metrics(pred: np.ndarray, truth: np.ndarray, image_like: Image, recist: bool = True) -> dict:
    """Metrics of one case; ``pred`` and ``truth`` are bool masks on ``image_like``'s grid.

    ``recist=False`` skips the RECIST error (it measures every predicted lesion, which is slow
    for the noisy masks of early training) and reports it as None.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.shape != image_like.shape:
        raise TumorSegError(
            f"prediction {pred.shape}, truth {truth.shape} and image {image_like.shape} must have the same shape"
        )
    key = image_size_key(image_like)
    overlap = pred & truth
    tp, fp, fn = (int(np.count_nonzero(x)) for x in (overlap, pred & ~truth, truth & ~pred))
    pred_labels, pred_count = label_lesions(pred)
    truth_labels, truth_count = label_lesions(truth)
    hit_truth = np.unique(truth_labels[overlap])
    hit_pred = np.unique(pred_labels[overlap])
    missed = truth_labels.astype(bool) & ~np.isin(truth_labels, hit_truth)
    spurious = pred_labels.astype(bool) & ~np.isin(pred_labels, hit_pred)
    pred_size, truth_size = size_of(tp + fp, image_like), size_of(tp + fn, image_like)
    return {
        "control": truth_count == 0,
        "dice": 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        f"fp_{key}": size_of(int(np.count_nonzero(spurious)), image_like),
        f"fn_{key}": size_of(int(np.count_nonzero(missed)), image_like),
        "tp_lesions": len(hit_truth),
        "fn_lesions": truth_count - len(hit_truth),
        "fp_lesions": pred_count - len(hit_pred),
        f"pred_{key}": pred_size,
        f"truth_{key}": truth_size,
        "relative_volume_error": abs(pred_size - truth_size) / truth_size if truth_size else None,
        "recist_relative_error": _recist_error(pred, truth, image_like) if recist else None,
        "tp_voxels": tp,
        "fp_voxels": fp,
        "fn_voxels": fn,
    }


def _recist_error(pred: np.ndarray, truth: np.ndarray, image_like: Image) -> float | None:
    """|Dp - Dt| / Dt for the sums of longest diameters; None for an empty truth."""
    sums = [sum(lesion.recist_long_mm for lesion in measure_lesions(image_like.with_array(mask)).lesions)
            for mask in (pred, truth)]
    return abs(sums[0] - sums[1]) / sums[1] if sums[1] else None


def summarize(rows: list) -> dict:
    """Mean and median Dice over cases with lesions, FP/FN volumes, lesion detection and controls."""
    if not rows:
        raise TumorSegError("no cases to summarize")
    keys = {key for row in rows for key in SIZE_KEYS if f"fp_{key}" in row}
    if len(keys) != 1:
        raise TumorSegError(f"cases mix sizes in {sorted(keys)} (2D and 3D, or known and unknown spacing)")
    key = keys.pop()
    patients = [row for row in rows if not row["control"]]
    controls = [row for row in rows if row["control"]]
    tp, fn = sum(r["tp_lesions"] for r in rows), sum(r["fn_lesions"] for r in rows)
    return {
        "cases": len(rows),
        "cases_with_lesions": len(patients),
        "controls": len(controls),
        "dice_mean": _mean(patients, "dice"),
        "dice_median": _median(patients, "dice"),
        "iou_mean": _mean(patients, "iou"),
        "sensitivity_mean": _mean(patients, "sensitivity"),
        "precision_mean": _mean(rows, "precision"),
        "dice_mean_all_cases": _mean(rows, "dice"),
        f"fp_{key}_mean": _mean(rows, f"fp_{key}"),
        f"fp_{key}_median": _median(rows, f"fp_{key}"),
        f"fn_{key}_mean": _mean(patients, f"fn_{key}"),
        f"fn_{key}_median": _median(patients, f"fn_{key}"),
        "tp_lesions": tp,
        "fn_lesions": fn,
        "fp_lesions": sum(r["fp_lesions"] for r in rows),
        "lesion_sensitivity": tp / (tp + fn) if tp + fn else None,
        "relative_volume_error_mean": _mean(patients, "relative_volume_error"),
        "recist_relative_error_mean": _mean(patients, "recist_relative_error"),
        f"controls_fp_{key}_mean": _mean(controls, f"fp_{key}"),
        "controls_with_false_positives": sum(1 for r in controls if r["fp_voxels"] > 0),
    }


def _values(rows: list, key: str) -> list:
    return [row[key] for row in rows if row.get(key) is not None]


def _mean(rows: list, key: str) -> float | None:
    values = _values(rows, key)
    return float(np.mean(values)) if values else None


def _median(rows: list, key: str) -> float | None:
    values = _values(rows, key)
    return float(np.median(values)) if values else None
