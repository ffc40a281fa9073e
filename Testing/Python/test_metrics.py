"""Metrics on cases built so that every answer is known."""

import numpy as np
import pytest
from conftest import shared_data

from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image, binary_mask
from TumorSegLib.io import read_image
from TumorSegLib.metrics import case_metrics, summarize
from TumorSegLib.phantoms import grid_affine

SHAPE = (40, 40, 20)
GRID = Image(np.zeros(SHAPE, dtype=np.float32), grid_affine(SHAPE, (2.0, 2.0, 2.0)))  # 8 mm3 voxels
ML = 8.0 / 1000.0


def _boxes(*boxes):
    mask = np.zeros(SHAPE, dtype=bool)
    for box in boxes:
        mask[box] = True
    return mask


def test_fp_fn_volumes_and_detection():
    found, missed, partly = np.s_[2:6, 2:6, 2:6], np.s_[20:23, 20:23, 10:13], np.s_[30:34, 2:4, 2:4]
    truth = _boxes(found, missed, partly)  # 64 + 27 + 16 voxels, three lesions
    spurious = np.s_[10:12, 30:32, 15:17]  # 8 voxels touching no truth
    grown = np.s_[2:6, 2:6, 2:8]  # lesion 1 and 32 voxels outside it
    hit = np.s_[32:34, 3:4, 3:4]  # 2 voxels inside the third lesion
    edge_joined = np.s_[33:36, 4:5, 4:6]  # 6 voxels outside any lesion, sharing an edge with the hit
    pred = _boxes(spurious, grown, hit, edge_joined)
    row = case_metrics(pred, truth, GRID)
    tp = 64 + 2
    fp = 8 + 32 + 6
    fn = 27 + 14
    assert (row["tp_voxels"], row["fp_voxels"], row["fn_voxels"]) == (tp, fp, fn)
    assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert row["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert row["precision"] == pytest.approx(tp / (tp + fp))
    # the edge-joined block belongs to the component that touches lesion 3: not a false-positive lesion
    assert row["fp_volume_ml"] == pytest.approx(8 * ML)
    assert row["fn_volume_ml"] == pytest.approx(27 * ML)
    assert (row["tp_lesions"], row["fn_lesions"], row["fp_lesions"]) == (2, 1, 1)
    assert row["control"] is False


def test_components_touch_only_through_18_connectivity():
    truth = _boxes(np.s_[5:7, 5:7, 5:7])
    pred = _boxes(np.s_[5:6, 5:6, 5:6], np.s_[7:8, 7:8, 7:8])  # second voxel meets the first at a corner only
    row = case_metrics(pred, truth, GRID)
    assert (row["tp_lesions"], row["fp_lesions"]) == (1, 1)
    assert row["fp_volume_ml"] == pytest.approx(ML)


def test_empty_truth_and_prediction_is_perfect():
    empty = np.zeros(SHAPE, dtype=bool)
    row = case_metrics(empty, empty, GRID)
    assert row["control"] is True
    assert (row["dice"], row["iou"], row["fp_volume_ml"], row["fn_volume_ml"]) == (1.0, 1.0, 0.0, 0.0)
    assert row["sensitivity"] is None and row["precision"] is None
    assert row["relative_volume_error"] is None and row["recist_relative_error"] is None


def test_control_with_false_positives_is_judged_by_their_volume():
    pred = _boxes(np.s_[1:3, 1:3, 1:3])
    row = case_metrics(pred, np.zeros(SHAPE, dtype=bool), GRID)
    assert row["control"] is True and row["dice"] == 0.0
    assert row["fp_volume_ml"] == pytest.approx(8 * ML) and row["fp_lesions"] == 1


def test_volume_and_recist_relative_errors():
    truth = _boxes(np.s_[10, 5:25, 10])  # a run of 20 voxels: 40 mm long
    pred = _boxes(np.s_[10, 5:20, 10])  # 15 voxels: 30 mm
    row = case_metrics(pred, truth, GRID)
    assert row["relative_volume_error"] == pytest.approx(0.25)
    assert row["recist_relative_error"] == pytest.approx(0.25)
    assert row["truth_volume_ml"] == pytest.approx(20 * ML) and row["pred_volume_ml"] == pytest.approx(15 * ML)


def test_2d_unknown_spacing_in_pixels():
    grid = Image(np.zeros((10, 10), dtype=np.uint8), np.eye(3), spacing_known=False)
    truth = np.zeros((10, 10), dtype=bool)
    truth[2:4, 2:4] = True
    pred = np.zeros((10, 10), dtype=bool)
    pred[7, 7] = True
    row = case_metrics(pred, truth, grid)
    assert (row["fp_area_px"], row["fn_area_px"], row["dice"]) == (1.0, 4.0, 0.0)
    with pytest.raises(TumorSegError, match="same shape"):
        case_metrics(pred, truth[:5], grid)


def test_summary_keeps_controls_apart():
    truth = _boxes(np.s_[2:6, 2:6, 2:6])
    rows = [
        case_metrics(truth, truth, GRID),  # Dice 1
        case_metrics(_boxes(np.s_[2:6, 2:6, 2:4]), truth, GRID),  # Dice 2*32/(64+32) = 2/3
        case_metrics(np.zeros(SHAPE, dtype=bool), truth, GRID),  # Dice 0, missed
        case_metrics(_boxes(np.s_[30:32, 30:32, 10:12]), np.zeros(SHAPE, dtype=bool), GRID),  # control, 8 voxels FP
        case_metrics(np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool), GRID),  # clean control
    ]
    summary = summarize(rows)
    assert (summary["cases"], summary["cases_with_lesions"], summary["controls"]) == (5, 3, 2)
    assert summary["dice_mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["dice_median"] == pytest.approx(2 / 3)
    assert summary["dice_mean_all_cases"] == pytest.approx((1 + 2 / 3 + 0 + 0 + 1) / 5)
    assert summary["fn_volume_ml_mean"] == pytest.approx(64 * ML / 3)
    assert summary["controls_fp_volume_ml_mean"] == pytest.approx(8 * ML / 2)
    assert summary["controls_with_false_positives"] == 1
    assert (summary["tp_lesions"], summary["fn_lesions"], summary["fp_lesions"]) == (2, 1, 1)
    assert summary["lesion_sensitivity"] == pytest.approx(2 / 3)
    with pytest.raises(TumorSegError, match="no cases"):
        summarize([])
    pixels = Image(np.zeros((4, 4), dtype=np.uint8), np.eye(3), spacing_known=False)
    flat = case_metrics(np.zeros((4, 4), dtype=bool), np.zeros((4, 4), dtype=bool), pixels)
    with pytest.raises(TumorSegError, match="mix"):
        summarize(rows + [flat])


def test_dmiai_threshold_baseline_matches_the_published_anchor():
    """The organisers' baseline ``img < 50`` scores mean Dice 0.256, median 0.237 on the dev patients
    (shared/data/dmiai2023-mip-pet/SOURCE.md); our Dice must reproduce it."""
    folder = shared_data("dmiai2023-mip-pet") / "dev" / "patients"
    rows = []
    for label_path in sorted((folder / "labels").glob("segmentation_*.png")):
        image = read_image(folder / "imgs" / label_path.name.replace("segmentation", "patient"))
        rows.append(case_metrics(image.array < 50, binary_mask(read_image(label_path)), image, recist=False))
    summary = summarize(rows)
    assert summary["cases_with_lesions"] == 146
    assert summary["dice_mean"] == pytest.approx(0.256, abs=5e-4)
    assert summary["dice_median"] == pytest.approx(0.237, abs=5e-4)
