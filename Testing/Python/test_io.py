"""Reading and writing masks and images: exact round trips on real files, clear errors on bad ones."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_data

from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.io import case_name, read_image, write_image, write_mask
from TumorSegLib.phantoms import grid_affine

LIDC_CASES = ("LIDC-IDRI-0001_R_1", "LIDC-IDRI-0003_R_2", "LIDC-IDRI-0003_R_3")


@pytest.mark.parametrize("case", LIDC_CASES)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_lidc_crop_round_trip(case, suffix, tmp_path):
    folder = shared_data("lidc-nodule-vois") / "dev"
    for kind in ("image", "nodule_mask"):
        original = read_image(folder / kind / f"{case}.nii.gz")
        copy = read_image(write_image(tmp_path / f"{kind}{suffix}", original))
        assert copy.array.dtype == original.array.dtype
        assert np.array_equal(copy.array, original.array)
        assert np.array_equal(copy.affine, original.affine)


def test_lidc_mask_written_on_image_grid(tmp_path):
    folder = shared_data("lidc-nodule-vois") / "dev"
    image = read_image(folder / "image" / f"{LIDC_CASES[0]}.nii.gz")
    mask = read_image(folder / "nodule_mask" / f"{LIDC_CASES[0]}.nii.gz")
    assert mask.same_grid(image) and mask.array.any()
    copy = read_image(write_mask(tmp_path / "mask.nrrd", mask.array != 0, image))
    assert np.array_equal(copy.array, (mask.array != 0).astype(np.uint8))
    assert copy.same_grid(image, atol=0.0)


def test_dmiai_label_png_round_trip(tmp_path):
    folder = shared_data("dmiai2023-mip-pet") / "dev" / "patients"
    label = read_image(folder / "labels" / "segmentation_000.png")
    image = read_image(folder / "imgs" / "patient_000.png")
    assert label.ndim == 2 and not label.spacing_known and label.shape == image.shape
    assert set(np.unique(label.array)) == {0, 255} and label.meta["png_mode"] == "RGBA"
    copy = read_image(write_mask(tmp_path / "segmentation_000.png", label.array != 0, image))
    assert np.array_equal(copy.array, label.array)
    assert case_name(tmp_path / "segmentation_000.png") == "segmentation_000"


def test_oblique_flipped_affine_round_trip(tmp_path):
    affine = grid_affine((6, 7, 8), (0.7, 0.9, 2.5), flip=(True, False, True), oblique_degrees=20.0)
    image = Image(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8), affine)
    for suffix in (".nii", ".nrrd"):
        copy = read_image(write_image(tmp_path / f"volume{suffix}", image))
        assert np.array_equal(copy.array, image.array)
        assert np.allclose(copy.affine, affine, atol=1e-5)


def test_bad_files(tmp_path):
    with pytest.raises(TumorSegError, match="mask not found"):
        read_image(tmp_path / "missing.nii.gz", "mask")
    (tmp_path / "volume.mha").write_bytes(b"x")
    with pytest.raises(TumorSegError, match="unsupported file type"):
        read_image(tmp_path / "volume.mha")
    (tmp_path / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(TumorSegError, match="cannot read image"):
        read_image(tmp_path / "broken.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), dtype=np.float32), np.eye(4)), tmp_path / "series.nii.gz")
    with pytest.raises(TumorSegError, match="4D, vector or RGB"):
        read_image(tmp_path / "series.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 1), dtype=np.float32), np.eye(4)), tmp_path / "single.nii.gz")
    assert read_image(tmp_path / "single.nii.gz").shape == (4, 4, 4)
    image = Image(np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4))
    with pytest.raises(TumorSegError, match="does not exist"):
        write_image(tmp_path / "no-such-folder" / "out.nii.gz", image)
    with pytest.raises(TumorSegError, match="cannot write a 3D image as .png"):
        write_image(tmp_path / "out.png", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nii.gz", "series.nii.gz", "single.nii.gz", "volume.mha"]
