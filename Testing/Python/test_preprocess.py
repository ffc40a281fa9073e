"""One preprocessing path: training, validation and inference give the network the same array, and
``restore`` brings the network grid back onto the image's own grid voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest

from TumorSegLib.cards import card_from_dict
from TumorSegLib.engine import Segmenter
from TumorSegLib.io import read_image, write_image, write_mask
from TumorSegLib.networks import build_network
from TumorSegLib.preprocess import normalize_intensity, prepare, restore
from TumorSegLib.testing import lesion_volume, synthetic_image, tiny_card_dict
from TumorSegLib.phantoms import grid_affine
from TumorSegLib.training.data import Case
from TumorSegLib.training.transforms import load_arrays, prepare_case

CARDS = {  # (mode, spacing, orientation)
    "3d-ras-resampled": ("sliding-window-3d", [1.5, 1.2, 2.0], "RAS"),
    "3d-lps-native": ("sliding-window-3d", None, "LPS"),
    "3d-voxel-order": ("sliding-window-3d", [0.8, 1.0, 1.7], None),
    "slices-ras": ("slice-2d", [0.7, 0.9], "RAS"),
}


def card_for(key: str):
    mode, spacing, orientation = CARDS[key]
    data = tiny_card_dict(f"prep-{key}", mode, "CT", spacing)
    data["preprocessing"]["orientation"] = orientation
    return card_from_dict(data)


def network_input(card, image) -> tuple:
    """(array, axis) that ``Segmenter.predict`` hands to the network for ``image``."""
    segmenter = Segmenter(card, "cpu", network=build_network(card), backend="torch")
    seen = []

    def run(array, axis, active, settings, progress, cancel, notes):
        seen.append((array.copy(), axis))
        return np.zeros_like(array)

    segmenter._run = run
    segmenter.predict(image)
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("key", sorted(CARDS))
@pytest.mark.parametrize("grid", ["flipped-oblique-anisotropic", "lps-axial"])
def test_training_loader_and_engine_give_the_network_the_same_array(tmp_path, key, grid):
    if grid == "lps-axial":
        image, mask = lesion_volume("CT", spacing=(0.7, 0.7, 3.0), flip=(True, True, False), oblique_degrees=0.0)
    else:
        image, mask = lesion_volume("CT")
    write_image(tmp_path / "image.nii.gz", image)
    write_mask(tmp_path / "mask.nii.gz", mask, image)
    case = Case("image.nii.gz", "p1", tmp_path / "image.nii.gz", tmp_path / "mask.nii.gz", positive=True)
    card = card_for(key)

    trained = load_arrays(card)(case)
    served, axis = network_input(card, read_image(tmp_path / "image.nii.gz"))

    assert trained["image"].dtype == served.dtype == np.float32
    assert trained["image"].shape == served.shape and trained["axis"] == axis
    assert np.array_equal(trained["image"], served)
    assert trained["label"].shape == served.shape
    # the label lies on the lesions of the network's array (CT lesion 250 HU, soft tissue 30 HU)
    lesion, tissue = served[trained["label"] == 1], served[(trained["label"] == 0) & (served > 0.2)]
    assert np.median(lesion) > 0.65 > 0.45 > np.median(tissue)


def test_training_labels_stack_channels_like_the_mask(tmp_path):
    image, mask = lesion_volume("CT")
    write_image(tmp_path / "image.nii.gz", image)
    write_mask(tmp_path / "mask.nii.gz", mask.astype(np.uint8) + (np.arange(mask.shape[0]) < 10)[:, None, None] * 2,
               image)
    case = Case("image.nii.gz", "p1", tmp_path / "image.nii.gz", tmp_path / "mask.nii.gz", positive=True)
    card = card_for("3d-ras-resampled")
    arrays = load_arrays(card, label_values=[[1, 3], [2, 3]])(case)
    lesion = prepare_case(read_image(tmp_path / "image.nii.gz"), mask, card)
    assert arrays["label"].shape == (2, *arrays["image"].shape)
    assert np.array_equal(arrays["label"][0], lesion["label"]) and np.array_equal(arrays["image"], lesion["image"])
    assert arrays["label"][1].any() and not np.array_equal(arrays["label"][1], arrays["label"][0])


@pytest.mark.parametrize("orientation", ["RAS", "LPI", None])
def test_restore_of_prepare_is_the_image_voxel_for_voxel_without_resampling(orientation):
    """Reorientation only (the card's spacing equals the image's): the round trip is exact."""
    spacing = 1.25
    affine = grid_affine((30, 26, 22), (spacing,) * 3, (True, False, True), 25.0, center=(4.0, -2.0, 7.0))
    image, _ = synthetic_image((30, 26, 22), affine, [((3.0, 2.0, 1.0), (5.0, 4.0, 6.0))], "CT", seed=1)
    data = tiny_card_dict("prep-roundtrip", "sliding-window-3d", "CT", [spacing] * 3)
    data["preprocessing"]["orientation"] = orientation
    card = card_from_dict(data)
    prepared = prepare(image, card)
    plain = normalize_intensity(image.array, card)
    if orientation:  # the axes did move (flips, and a permutation for LPI)
        assert prepared.array.shape != plain.shape or not np.array_equal(prepared.array, plain)
    assert np.array_equal(restore(prepared, prepared.array), plain)


def test_restore_of_prepare_lands_on_the_source_grid_after_resampling():
    """Resampled to a coarser, permuted grid and back: same shape, lesions in the same world place."""
    image, mask = lesion_volume("CT")  # flipped, oblique, anisotropic
    card = card_for("3d-ras-resampled")
    prepared = prepare(image, card)
    assert prepared.resampled and prepared.array.shape != image.shape
    back = restore(prepared, prepared.to_network(mask)) >= 0.5
    assert back.shape == image.shape
    dice = 2 * np.count_nonzero(back & mask) / (back.sum() + mask.sum())
    assert dice > 0.9
    centre = image.affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + image.affine[:3, 3]
    moved = image.affine[:3, :3] @ np.argwhere(back).mean(axis=0) + image.affine[:3, 3]
    assert np.linalg.norm(centre - moved) < 0.5  # mm; a flipped or transposed axis moves it by centimetres


def test_prepare_notes_an_image_without_spacing():
    image, _ = lesion_volume("CT")
    image.spacing_known = False
    prepared = prepare(image, card_for("3d-voxel-order"))
    assert not prepared.resampled and prepared.array.shape == image.shape
    assert any("no pixel spacing" in note for note in prepared.notes)
