"""A cascade whose card names its organ (``output.within.organ``) through the CLI: the organ mask (file, folder, DICOM
SEG segment 2) on the input's grid, its readouts, and the requests refused before any file is written."""

import dataclasses
import json

import numpy as np
import pydicom
import pytest
from dicom_series import write_series

from TumorSegLib.cli import main
from TumorSegLib.dicom import read_series
from TumorSegLib.dicom_seg import read_dicom_seg
from TumorSegLib.engine import Segmenter
from TumorSegLib.io import read_image, write_image
from TumorSegLib.testing import lesion_volume, tiny_cascade


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    folder = tmp_path_factory.mktemp("organ-models")
    return folder, tiny_cascade(folder, threshold=0.1), tiny_cascade(folder, organ=None)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    image, _ = lesion_volume("CT")
    path = tmp_path_factory.mktemp("organ-input") / "ct.nii.gz"
    write_image(path, image)
    return path, read_image(path)


def run(folder, *args) -> int:
    return main([*map(str, args), "--models-dir", str(folder), "--device", "cpu"])


def test_the_organ_mask_lands_on_the_input_grid_and_its_readouts_follow(cascade, ct, tmp_path, capsys):
    folder, card, _ = cascade
    path, image = ct
    assert run(folder, "segment", path, "-o", tmp_path / "mask.nii.gz", "--organ-mask", tmp_path / "liver.nrrd",
               "--model", card.name, "--json", tmp_path / "r.json") == 0
    expected = Segmenter(card, "cpu").predict(image)
    organ, mask = read_image(tmp_path / "liver.nrrd"), read_image(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(organ.affine, image.affine, atol=1e-6)
    assert np.array_equal(organ.array != 0, expected.organ) and np.array_equal(mask.array != 0, expected.mask)
    totals = json.loads((tmp_path / "r.json").read_text())["readouts"]["totals"]
    assert totals["liver_volume_ml"] == pytest.approx(expected.organ.sum() * image.voxel_volume / 1000)
    assert totals["tumour_percent_of_liver"] == pytest.approx(100 * expected.mask.sum() / expected.organ.sum())
    assert 0 < totals["tumour_percent_of_liver"] < 100
    assert "liver_volume_ml" in capsys.readouterr().out
    assert main(["measure", str(tmp_path / "mask.nii.gz"), "--organ", str(tmp_path / "liver.nrrd"), "--json",
                 str(tmp_path / "m.json")]) == 0  # the same figures from the files
    measured = json.loads((tmp_path / "m.json").read_text())["totals"]
    assert {k: measured[k] for k in ("liver_volume_ml", "tumour_percent_of_liver")} == pytest.approx(
        {k: totals[k] for k in ("liver_volume_ml", "tumour_percent_of_liver")})
    moved = organ.affine.copy()
    moved[:3, 3] += 1.0  # 1 mm off: another grid
    write_image(tmp_path / "shifted.nii.gz", dataclasses.replace(organ, affine=moved))
    capsys.readouterr()
    assert main(["measure", str(tmp_path / "mask.nii.gz"), "--organ", str(tmp_path / "shifted.nii.gz")]) == 2
    assert "--organ and mask are on different grids" in capsys.readouterr().err


def test_a_folder_gives_a_folder_of_organ_masks(cascade, ct, tmp_path):
    folder, card, _ = cascade
    path, image = ct
    (tmp_path / "in").mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "in" / name).write_bytes(path.read_bytes())
    assert run(folder, "segment", tmp_path / "in", "-o", tmp_path / "masks", "--organ-mask", tmp_path / "livers",
               "--model", card.name) == 0
    assert sorted(p.name for p in (tmp_path / "livers").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    expected = Segmenter(card, "cpu").predict(image).organ
    assert all(np.array_equal(read_image(p).array != 0, expected) for p in (tmp_path / "livers").iterdir())
    assert run(folder, "segment", tmp_path / "in", "-o", tmp_path / "masks", "--organ-mask", tmp_path / "masks",
               "--model", card.name) == 2


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-ct-cascade-unnamed", "--organ-mask", "liver.nii.gz"], "gives no organ mask"),
    (["--model", "tiny-ct-sliding-window-3d", "--organ-mask", "liver.nii.gz"], "gives no organ mask"),
    (["--model", "tiny-ct-cascade-liver", "--organ-mask", "liver.nii.gz", "--roi", "0", "20", "0", "20", "0", "10"],
     "whole-image run"),
    (["--model", "tiny-ct-cascade-liver", "--organ-mask", "liver.png"], "written as .nii.gz or .nrrd, not liver.png"),
    (["--model", "tiny-ct-cascade-liver", "--organ-mask", "mask.nii.gz"], "two different files"),
    (["--model", "tiny-ct-cascade-liver", "--organ-mask", "liver.nii.gz", "-o", "seg.dcm"], "segment of the DICOM SEG"),
])
def test_an_organ_mask_the_run_cannot_write_is_refused_before_any_work(cascade, ct, tmp_path, monkeypatch, capsys,
                                                                        args, message):
    folder, _, _ = cascade
    monkeypatch.chdir(tmp_path)
    assert run(folder, "segment", ct[0], "-o", "mask.nii.gz", *args) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_dicom_seg_holds_the_organ_as_segment_2(cascade, tmp_path):
    folder, card, _ = cascade
    image, _ = lesion_volume("CT")
    write_series(tmp_path / "series", np.round(image.array), image.affine, "CT", intercept=-1024)
    assert run(folder, "segment", tmp_path / "series", "-o", tmp_path / "mask.nii.gz", "--organ-mask",
               tmp_path / "liver.nii.gz", "--dicom-seg", tmp_path / "seg.dcm", "--model", card.name) == 0
    series = read_series(tmp_path / "series")
    organ = read_image(tmp_path / "liver.nii.gz").array != 0
    assert organ.any() and np.array_equal(read_dicom_seg(tmp_path / "seg.dcm", series, 2), organ)
    assert np.array_equal(read_dicom_seg(tmp_path / "seg.dcm", series), read_image(tmp_path / "mask.nii.gz").array != 0)
    assert main(["measure", str(tmp_path / "seg.dcm"), "--image", str(tmp_path / "series"), "--organ",
                 str(tmp_path / "seg.dcm"), "--json", str(tmp_path / "m.json")]) == 0  # segment 2 of the SEG
    measured = json.loads((tmp_path / "m.json").read_text())["totals"]
    assert measured["liver_volume_ml"] == pytest.approx(organ.sum() * series.voxel_volume / 1000)
    segments = pydicom.dcmread(tmp_path / "seg.dcm").SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Tumor", "Liver"]
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segments[1].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
