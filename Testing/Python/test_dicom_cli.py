"""DICOM through the CLI: a series folder as INPUT, DICOM SEG out (round trip), SUV refusals and --suv-factor."""

import json
import shutil

import numpy as np
import pydicom
import pytest
from conftest import shared_data
from dicom_series import write_series

from TumorSegLib.cli import main
from TumorSegLib.dicom import read_series
from TumorSegLib.dicom_seg import read_dicom_seg
from TumorSegLib.io import read_image
from TumorSegLib.metrics import dice
from TumorSegLib.testing import lesion_volume, tiny_model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    directory = tmp_path_factory.getbasetemp() / "tiny-models"
    for mode, modality in (("sliding-window-3d", "CT"), ("slice-2d", "PET")):
        tiny_model(directory, mode, modality)
    return directory


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """The flipped, oblique, anisotropic two-lesion CT of the segment tests, as a DICOM series."""
    image, truth = lesion_volume("CT")
    folder = tmp_path_factory.mktemp("ct-series")
    write_series(folder, np.round(image.array), image.affine, "CT", intercept=-1024)
    return folder, image, truth


def run(models_dir, *args):
    return main([*map(str, args), "--models-dir", str(models_dir), "--device", "cpu"])


def test_series_folder_to_nifti_and_dicom_seg(models_dir, ct_series, tmp_path):
    folder, image, truth = ct_series
    assert run(models_dir, "segment", folder, "-o", tmp_path / "mask.nii.gz", "--dicom-seg", tmp_path / "seg.dcm",
               "--model", "tiny-ct-sliding-window-3d", "--json", tmp_path / "r.json") == 0
    mask = read_image(tmp_path / "mask.nii.gz")
    series = read_series(folder)
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
    assert dice(mask.array > 0, truth) >= 0.8
    seg_mask = read_dicom_seg(tmp_path / "seg.dcm", series)
    assert seg_mask.any() and np.array_equal(seg_mask, mask.array > 0)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    segment = seg.SegmentSequence[0]
    assert (segment.SegmentLabel, segment.SegmentedPropertyTypeCodeSequence[0].CodeValue) == ("Tumor", "108369006")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "tiny-ct-sliding-window-3d" and algorithm.AlgorithmVersion.startswith("sha256:")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.meta["series_uid"]
    assert seg.StudyInstanceUID == series.meta["study_uid"] and seg.FrameOfReferenceUID == series.meta["frame_of_reference_uid"]
    assert json.loads((tmp_path / "r.json").read_text())["readouts"]["totals"]["lesion_count"] == 2


def test_dicom_seg_as_the_only_output_and_measured_back(models_dir, ct_series, tmp_path, capsys):
    folder, _, truth = ct_series
    assert run(models_dir, "segment", folder, "-o", tmp_path / "result.dcm", "--model", "tiny-ct-sliding-window-3d") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["result.dcm"]
    capsys.readouterr()
    assert main(["measure", str(tmp_path / "result.dcm"), "--image", str(folder), "--json", str(tmp_path / "m.json")]) == 0
    measured = json.loads((tmp_path / "m.json").read_text())
    assert measured["modality"] == "CT" and measured["totals"]["lesion_count"] == 2


def test_dicom_seg_needs_a_dicom_input(models_dir, tmp_path, capsys):
    image, _ = lesion_volume("CT")
    from TumorSegLib.io import write_image

    source = write_image(tmp_path / "ct.nii.gz", image)
    assert run(models_dir, "segment", source, "-o", tmp_path / "out.dcm", "--model", "tiny-ct-sliding-window-3d") == 2
    assert "a DICOM SEG output needs one DICOM series as INPUT" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_nema_phantom_refused_without_suv_then_segmented_with_suv_factor(models_dir, tmp_path, capsys):
    folder = shared_data("nema-iec-pet") / "data" / "pet_recon_1"
    assert run(models_dir, "segment", folder, "-o", tmp_path / "m.nii.gz", "--model", "tiny-pet-slice-2d") == 2
    assert "not in SUV (no SUV from the DICOM header: Units is absent" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert run(models_dir, "segment", folder, "-o", tmp_path / "m.nii.gz", "--model", "tiny-pet-slice-2d",
               "--suv-factor", "4e-4", "--roi", 60, 140, 50, 140, 30, 55, "--json", tmp_path / "r.json") == 0
    readouts = json.loads((tmp_path / "r.json").read_text())
    assert "SUV factor 0.0004 given by the user" in readouts["notes"]
    mask = read_image(tmp_path / "m.nii.gz")
    assert mask.shape == (192, 192, 89)
    assert main(["measure", str(tmp_path / "m.nii.gz"), "--image", str(folder)]) == 2
    assert "give --suv-factor" in capsys.readouterr().err


def test_pet_series_in_bq_per_ml_gives_the_suv_readouts_of_the_nifti(tmp_path, capsys):
    from TumorSegLib.suv_reference import BqmlHeader, rewrite_as_bqml

    data = shared_data("ibsi-sts-pet")
    rewrite_as_bqml(sorted((data / "dicom" / "STS_021" / "PET" / "image").glob("*.dcm")), tmp_path / "bqml", BqmlHeader())
    mask = data / "nifti" / "STS_021" / "PET_mask.nii.gz"
    readouts = {}
    for name, image in (("nifti", data / "nifti" / "STS_021" / "PET_image.nii.gz"), ("bqml", tmp_path / "bqml")):
        assert main(["measure", str(mask), "--image", str(image), "--modality", "PET", "--json", str(tmp_path / f"{name}.json")]) == 0
        readouts[name] = json.loads((tmp_path / f"{name}.json").read_text())["lesions"][0]
    for key in ("suv_max", "suv_mean", "suv_peak", "tlg"):
        assert readouts["bqml"][key] == pytest.approx(readouts["nifti"][key], rel=0.01)


def test_mixed_folder_needs_series(models_dir, ct_series, tmp_path, capsys):
    folder, _, _ = ct_series
    shutil.copytree(folder, tmp_path / "mixed")
    nema = shared_data("nema-iec-pet") / "data" / "pet_recon_1"
    for file in sorted(nema.iterdir())[:3]:
        shutil.copy(file, tmp_path / "mixed" / file.name)
    assert run(models_dir, "segment", tmp_path / "mixed", "-o", tmp_path / "m.nii.gz", "--model",
               "tiny-ct-sliding-window-3d") == 2
    assert "holds 2 series, choose one with --series UID" in capsys.readouterr().err
    uid = read_series(folder).meta["series_uid"]
    assert run(models_dir, "segment", tmp_path / "mixed", "-o", tmp_path / "m.nii.gz", "--model",
               "tiny-ct-sliding-window-3d", "--series", uid) == 0


def test_empty_mask_and_bad_sources_for_dicom_seg(ct_series, tmp_path):
    from TumorSegLib.dicom_seg import write_dicom_seg
    from TumorSegLib.errors import TumorSegError

    folder, image, _ = ct_series
    series = read_series(folder)
    empty = np.zeros(series.shape, dtype=bool)
    write_dicom_seg(tmp_path / "empty.dcm", empty, series, "m", "1")
    assert not read_dicom_seg(tmp_path / "empty.dcm", series).any()
    with pytest.raises(TumorSegError, match="needs a DICOM series as input"):
        write_dicom_seg(tmp_path / "x.dcm", empty, image, "m", "1")
    with pytest.raises(TumorSegError, match="does not match the series grid"):
        write_dicom_seg(tmp_path / "x.dcm", empty[:-1], series, "m", "1")
    anonymous = series.with_array(series.array, sop_instance_uids=[""] * series.shape[2])
    with pytest.raises(TumorSegError, match="no SOP Instance or Series Instance UIDs"):
        write_dicom_seg(tmp_path / "x.dcm", empty, anonymous, "m", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.dcm"]
