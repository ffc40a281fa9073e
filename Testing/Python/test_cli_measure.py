"""``tumorseg measure`` and ``tumorseg evaluate`` through the real CLI entry point."""

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest

from TumorSegLib import cli
from TumorSegLib.image import Image
from TumorSegLib.io import write_image, write_mask
from TumorSegLib.phantoms import grid_affine, pet_phantom


@pytest.fixture(autouse=True)
def only_these_commands(monkeypatch):
    """Build the parser with the commands under test only (the others may not exist yet)."""
    monkeypatch.setattr(cli, "COMMANDS", ("measure", "evaluate"))


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def pet_case(tmp_path):
    image, mask = pet_phantom(shape=(48, 48, 64), spacing=(8.0, 8.0, 8.0))
    return write_image(tmp_path / "pet.nii.gz", image), write_mask(tmp_path / "mask.nrrd", mask, image), mask


def test_measure_table_json_and_csv(capsys, tmp_path, pet_case):
    image_path, mask_path, mask = pet_case
    code, out, err = _run(capsys, "measure", mask_path, "--image", image_path, "--json", tmp_path / "r.json",
                          "--csv", tmp_path / "r.csv")
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["modality"] == "PET" and data["totals"]["lesion_count"] == len(data["lesions"]) >= 1
    assert data["totals"]["voxels"] == int(mask.sum())
    with open(tmp_path / "r.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(data["lesions"]) and float(rows[0]["suv_peak"]) == pytest.approx(data["lesions"][0]["suv_peak"])
    header = out.splitlines()[0].split()
    assert header[:3] == ["label", "voxels", "volume_ml"] and "suv_peak" in header and "totals:" in out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_measure_modality_flag(capsys, pet_case):
    image_path, mask_path, _ = pet_case
    code, out, _ = _run(capsys, "measure", mask_path, "--image", image_path, "--modality", "ct")
    assert code == 0 and "hu_mean" in out and "suv_max" not in out


def test_measure_empty_and_multilabel_masks(capsys, tmp_path):
    affine = grid_affine((10, 10, 10))
    empty = write_image(tmp_path / "empty.nii.gz", Image(np.zeros((10, 10, 10), dtype=np.uint8), affine))
    code, out, _ = _run(capsys, "measure", empty, "--csv", tmp_path / "empty.csv")
    assert code == 0 and "no lesions" in out and "lesion_count: 0" in out
    assert (tmp_path / "empty.csv").read_text() == ""
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:4, 2:4, 2:4], labels[4:6, 2:4, 2:4] = 1, 3
    path = write_image(tmp_path / "labels.nii.gz", Image(labels, affine))
    code, out, _ = _run(capsys, "measure", path)
    assert code == 0 and "lesion_count: 1" in out and "2 labels (1, 3)" in out and "merged" in out


def test_measure_png_mask_in_pixels(capsys, tmp_path):
    mask = np.zeros((30, 40), dtype=bool)
    mask[10, 5:25] = True
    path = write_mask(tmp_path / "mask.png", mask, Image(mask, np.eye(3), spacing_known=False))
    code, out, _ = _run(capsys, "measure", path, "--json", tmp_path / "m.json")
    lesion = json.loads((tmp_path / "m.json").read_text())["lesions"][0]
    assert code == 0 and "area_px" in out
    assert (lesion["area_px"], lesion["recist_long_px"], lesion["recist_short_px"]) == (20.0, 20.0, 1.0)


def test_measure_bad_inputs_write_nothing(capsys, tmp_path, pet_case):
    image_path, mask_path, _ = pet_case
    out_json = tmp_path / "out.json"
    nan_image = Image(np.full((48, 48, 64), np.nan, dtype=np.float32), grid_affine((48, 48, 64), (8.0, 8.0, 8.0)))
    nan_path = write_image(tmp_path / "nan.nii.gz", nan_image)
    other_grid = write_image(tmp_path / "other.nii.gz", Image(np.zeros((48, 48, 60), dtype=np.float32), np.eye(4)))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), dtype=np.uint8), np.eye(4)), tmp_path / "four_d.nii.gz")
    (tmp_path / "mask.mha").write_bytes(b"")
    cases = [
        ((tmp_path / "missing.nii.gz",), "mask not found"),
        ((tmp_path / "mask.mha",), "unsupported file type"),
        ((tmp_path / "four_d.nii.gz",), "4D, vector or RGB"),
        ((mask_path, "--image", nan_path), "NaN or infinite"),
        ((mask_path, "--image", other_grid), r"shape \(48, 48, 64\).*shape \(48, 48, 60\)"),
        ((mask_path, "--csv", tmp_path / "no" / "out.csv"), "does not exist"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        code, out, err = _run(capsys, "measure", *args, "--json", out_json)
        assert code == 2, args
        assert err.startswith("tumorseg: error: ") and len(err.strip().splitlines()) == 1
        assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _write_cases(folder, masks, affine):
    folder.mkdir()
    for name, mask in masks.items():
        write_image(folder / f"{name}.nii.gz", Image(mask.astype(np.uint8), affine))
    return folder


def test_evaluate_folders(capsys, tmp_path):
    shape = (20, 20, 10)
    affine = grid_affine(shape, (2.0, 2.0, 2.0))
    lesion = np.zeros(shape, dtype=bool)
    lesion[5:10, 5:10, 2:5] = True
    half = lesion.copy()
    half[5:10, 5:10, 4] = False
    empty = np.zeros(shape, dtype=bool)
    truth = _write_cases(tmp_path / "truth", {"a": lesion, "b": lesion, "control": empty}, affine)
    pred = _write_cases(tmp_path / "pred", {"a": lesion, "b": half, "control": empty}, affine)
    code, out, err = _run(capsys, "evaluate", "--pred", pred, "--truth", truth, "--json", tmp_path / "e.json",
                          "--csv", tmp_path / "e.csv")
    assert code == 0, err
    data = json.loads((tmp_path / "e.json").read_text())
    assert [row["case"] for row in data["cases"]] == ["a", "b", "control"]
    assert [row["dice"] for row in data["cases"]] == pytest.approx([1.0, 2 * 50 / 125, 1.0])
    assert data["summary"]["dice_mean"] == pytest.approx((1.0 + 0.8) / 2)
    assert data["summary"]["dice_median"] == pytest.approx(0.9) and data["summary"]["controls"] == 1
    assert "summary:" in out and "dice_median: 0.9" in out
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 4

    code, out, err = _run(capsys, "evaluate", "--pred", pred / "b.nii.gz", "--truth", truth / "b.nii.gz")
    assert code == 0 and "dice_mean: 0.8" in out


def test_evaluate_mismatches_are_named(capsys, tmp_path):
    shape = (8, 8, 8)
    affine = grid_affine(shape)
    mask = np.zeros(shape, dtype=bool)
    truth = _write_cases(tmp_path / "truth", {"a": mask, "b": mask, "c": mask}, affine)
    pred = _write_cases(tmp_path / "pred", {"a": mask, "x": mask}, affine)
    code, _, err = _run(capsys, "evaluate", "--pred", pred, "--truth", truth, "--json", tmp_path / "e.json")
    assert code == 2 and "2 truth case(s) have no prediction of the same name (e.g. b, c)" in err
    assert "1 prediction(s) no truth (e.g. x)" in err and "pair by equal file names, or by the number" in err
    moved = _write_cases(tmp_path / "moved", {"a": mask, "b": mask, "c": mask}, grid_affine(shape, (2.0, 1.0, 1.0)))
    code, _, err = _run(capsys, "evaluate", "--pred", moved, "--truth", truth, "--json", tmp_path / "e.json")
    assert code == 2 and "prediction a.nii.gz and truth a.nii.gz are on different grids" in err
    code, _, err = _run(capsys, "evaluate", "--pred", tmp_path / "nowhere", "--truth", truth)
    assert code == 2 and "prediction not found" in err
    assert not (tmp_path / "e.json").exists()


def test_evaluate_pairs_dmiai_names_by_their_trailing_number(capsys, tmp_path):
    """DM i AI images are patient_XXX and their masks segmentation_XXX: predictions named after the images pair."""
    shape = (8, 8, 8)
    affine = grid_affine(shape)
    full, empty = np.ones(shape, dtype=bool), np.zeros(shape, dtype=bool)
    truth = _write_cases(tmp_path / "truth", {"segmentation_000": full, "segmentation_012": empty}, affine)
    pred = _write_cases(tmp_path / "pred", {"patient_012": empty, "patient_000": full}, affine)
    code, _, err = _run(capsys, "evaluate", "--pred", pred, "--truth", truth, "--json", tmp_path / "e.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "e.json").read_text())["cases"]
    assert [(row["case"], row["dice"], row["control"]) for row in rows] == [("patient_000", 1.0, False),
                                                                            ("patient_012", 1.0, True)]
    duplicate = _write_cases(tmp_path / "dup", {"a_000": full, "b_000": full}, affine)  # one number twice: no pairing
    code, _, err = _run(capsys, "evaluate", "--pred", duplicate, "--truth", truth)
    assert code == 2 and "cannot pair" in err
