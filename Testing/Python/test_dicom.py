"""Reading DICOM series: real PT and CT series against their NIfTI, exact geometry, clear errors for bad series."""

import shutil

import numpy as np
import pydicom
import pytest
from conftest import shared_data
from dicom_series import write_series
from pydicom.uid import generate_uid

from TumorSegLib.dicom import read_series
from TumorSegLib.errors import TumorSegError
from TumorSegLib.io import read_image

NEMA_SPHERE_CENTRES = ((121, 97, 41), (107, 120, 43), (80, 119, 42), (67, 95, 42), (81, 72, 42), (109, 73, 42))
IBSI_DICOM_CASES = ("STS_001", "STS_004", "STS_005", "STS_012", "STS_021", "STS_029", "STS_036", "STS_043")


def oblique_affine() -> np.ndarray:
    """Flipped, oblique and anisotropic: catches any transposed, flipped or LPS/RAS-confused axis."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    tilt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ tilt @ np.diag([-0.8, 1.1, -2.5])
    affine[:3, 3] = [12.5, -40.0, 77.0]
    return affine


def axial(spacing) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def ct_values(shape=(7, 5, 6)) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) * 7 - 1000).astype(np.float64)


@pytest.mark.parametrize("case", IBSI_DICOM_CASES)
def test_ibsi_pt_in_gml_equals_the_suv_nifti(case):
    data = shared_data("ibsi-sts-pet")
    image = read_series(data / "dicom" / case / "PET" / "image")
    reference = read_image(data / "nifti" / case / "PET_image.nii.gz")
    assert image.meta["units"] == "SUVbw" and image.meta["suv_factor"] == 1.0
    assert image.meta["modality"] == "PET" and image.meta["dicom_modality"] == "PT"
    assert image.shape == reference.shape
    np.testing.assert_allclose(image.affine, reference.affine, rtol=0, atol=1e-4)  # NIfTI qform is float32
    relative = np.abs(image.array.astype(np.float64) - reference.array) / np.maximum(np.abs(reference.array), 1e-12)
    assert relative.max() <= 1e-7


def test_a_file_of_a_series_reads_the_whole_series():
    folder = shared_data("ibsi-sts-pet") / "dicom" / "STS_012" / "PET" / "image"
    whole = read_series(folder)
    one = read_image(folder / "000007.dcm")
    assert np.array_equal(one.array, whole.array) and np.array_equal(one.affine, whole.affine)


def test_ibsi_folder_with_its_rtstruct_reads_the_pet(tmp_path):
    source = shared_data("ibsi-sts-pet") / "dicom" / "STS_005" / "PET"
    shutil.copytree(source / "image", tmp_path / "both")
    shutil.copy(source / "mask" / "RS.dcm", tmp_path / "both" / "RS.dcm")
    assert read_image(tmp_path / "both").shape == read_series(source / "image").shape
    with pytest.raises(TumorSegError, match="no DICOM images, only non-image objects: RTSTRUCT"):
        read_image(source / "mask")
    with pytest.raises(TumorSegError, match="is not a DICOM image .RTSTRUCT"):
        read_image(source / "mask" / "RS.dcm")


@pytest.mark.parametrize("recon", ["pet_recon_1", "pet_recon_2"])
def test_nema_phantom_is_read_in_its_own_units(recon):
    image = read_series(shared_data("nema-iec-pet") / "data" / recon)
    assert image.shape == (192, 192, 89)
    np.testing.assert_allclose(image.spacing, [2.0833332538605, 2.0833332538605, 2.78], rtol=1e-6)
    np.testing.assert_allclose(image.to_world([0, 0, 0])[2], -122.32, atol=0.01)
    assert image.meta["suv_factor"] is None and "Units is absent" in image.meta["suv_unavailable"]
    assert image.meta["units"] == "unknown" and image.meta["modality"] == "PET"
    background = np.median(image.array[60:130, 60:130, 30:50])
    for x, y, z in NEMA_SPHERE_CENTRES:  # SOURCE.md's (z, y, x) voxel centres; here i = column x, j = row y
        assert image.array[x - 1:x + 2, y - 1:y + 2, z].mean() > 5 * background


def test_ct_jpeg2000_series():
    folder = shared_data("totalseg-example-ct") / "example_ct_dicom"
    pytest.importorskip("openjpeg", reason="the JPEG 2000 decoder (extra dicom-jpeg2000) is not installed")
    image = read_image(folder)
    assert image.shape == (512, 512, 20) and image.array.dtype == np.int16
    assert image.meta["modality"] == "CT" and image.meta["units"] == "HU"
    np.testing.assert_allclose(image.spacing, [0.9765625, 0.9765625, 2.0])
    assert image.array.min() == -1024 and 1000 < image.array.max() < 3000
    # LPS (-249.51, -437.51, -804.5) of the lowest slice, in RAS
    np.testing.assert_allclose(image.affine[:3, 3], [249.51171875, 437.51171875, -804.5])


def test_synthetic_oblique_series_round_trip(tmp_path):
    values, affine = ct_values(), oblique_affine()
    write_series(tmp_path, values, affine, slopes=[1, 0.5, 1, 0.25, 1, 1])
    image = read_series(tmp_path)
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array, values)
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)


def test_per_slice_rescale_slopes(tmp_path):
    values = np.random.default_rng(1).uniform(0, 20, (6, 5, 4))
    slopes = values.max(axis=(0, 1)) / 32000
    write_series(tmp_path, values, axial((1.0, 2.0, 3.0)), "PT", slopes=slopes)
    image = read_series(tmp_path)
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, values, atol=slopes.max())


def test_gantry_tilt_gives_a_sheared_affine(tmp_path):
    affine = axial((1.0, 1.0, 2.0))
    affine[1, 2] = 0.35  # each slice moves 0.35 mm anterior: a tilted gantry
    write_series(tmp_path, ct_values(), affine)
    np.testing.assert_allclose(read_series(tmp_path).affine, affine, atol=1e-6)


def test_mixed_series_are_listed_and_picked(tmp_path):
    write_series(tmp_path / "a", ct_values(), axial((1.0, 1.0, 2.0)))
    write_series(tmp_path / "b", ct_values() + 5, axial((1.0, 1.0, 2.0)))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a", "b"):
        for file in (tmp_path / name).iterdir():
            shutil.copy(file, mixed / f"{name}{file.name}")
    uid = pydicom.dcmread(next((tmp_path / "b").iterdir())).SeriesInstanceUID
    with pytest.raises(TumorSegError, match=r"holds 2 series, choose one with --series UID: .*" + uid.replace(".", r"\.")):
        read_image(mixed)
    np.testing.assert_array_equal(read_image(mixed, series_uid=uid).array, ct_values() + 5)
    with pytest.raises(TumorSegError, match="no series 1.2.3 in"):
        read_image(mixed, series_uid="1.2.3")


def edit_slice(folder, k: int, **changes) -> None:
    """Change attributes of the slice whose InstanceNumber is k + 1."""
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        if ds.InstanceNumber == k + 1:
            for key, value in changes.items():
                setattr(ds, key, value)
            ds.save_as(file)


def series(tmp_path, count: int = 6):
    write_series(tmp_path, ct_values((7, 5, count)), axial((1.0, 1.0, 2.0)))
    return tmp_path


def test_missing_slice(tmp_path):
    folder = series(tmp_path)
    next(f for f in folder.iterdir() if pydicom.dcmread(f).InstanceNumber == 3).unlink()
    with pytest.raises(TumorSegError, match=r"is missing 1 slice\(s\) between slice positions 2.00 and 6.00 mm"):
        read_image(folder)


def test_inconsistent_spacing(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 2, ImagePositionPatient=["0", "0", "4.7"])
    with pytest.raises(TumorSegError, match="inconsistent slice spacing"):
        read_image(folder)


def test_duplicate_position(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 2, ImagePositionPatient=["0", "0", "2"])
    with pytest.raises(TumorSegError, match="two slices at the same position"):
        read_image(folder)


def test_mixed_orientations(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 1, ImageOrientationPatient=["1", "0", "0", "0", "0", "-1"])
    with pytest.raises(TumorSegError, match="mixes image orientations"):
        read_image(folder)


def test_localizer(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 0, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(TumorSegError, match="a localizer"):
        read_image(folder)


def test_multi_frame(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 0, NumberOfFrames=2)
    with pytest.raises(TumorSegError, match="multi-frame DICOM images .2 frames. are not supported"):
        read_image(folder)


def test_truncated_file(tmp_path):
    folder = series(tmp_path)
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:-31])
    with pytest.raises(TumorSegError, match="truncated or corrupt"):
        read_image(folder)
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(TumorSegError, match=f"{victim} is not a complete DICOM object"):
        read_image(folder)


def test_unsupported_transfer_syntax(tmp_path):
    folder = series(tmp_path)
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder anywhere
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
        ds.save_as(file, enforce_file_format=True)
    with pytest.raises(TumorSegError, match="unsupported or undecodable transfer syntax"):
        read_image(folder)


def test_dicomdir(tmp_path):
    folder = series(tmp_path)
    ds = pydicom.dcmread(next(folder.iterdir()))
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.save_as(folder / "DICOMDIR")
    with pytest.raises(TumorSegError, match="is a DICOMDIR"):
        read_image(folder)


def test_structured_report_only(tmp_path):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Modality, ds.SeriesInstanceUID = "SR", generate_uid()
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(TumorSegError, match=r"only non-image objects: SR \(Basic Text SR"):
        read_image(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(TumorSegError, match="is a folder without DICOM files"):
        read_image(tmp_path)
