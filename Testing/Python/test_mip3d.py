"""Whole-body PET in 3D from a MIP model: MIP lesions traced back to their true 3D position on any grid."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from TumorSegLib.image import Image
from TumorSegLib.metrics import dice
from TumorSegLib.mip import mip_geometry, project_max
from TumorSegLib.mip3d import mip_box, prism, trace_lesions
from TumorSegLib.phantoms import ellipsoid, grid_affine

# Three hot spheres (world RAS mm, radius mm, SUV) at different depths (A) and places on the MIP.
LESIONS = (((-40.0, -30.0, 30.0), 9.0, 8.0), ((35.0, 25.0, -20.0), 12.0, 5.0), ((5.0, 40.0, -50.0), 7.0, 10.0))


def permuted(affine: np.ndarray, order) -> np.ndarray:
    """The same grid with its voxel axes stored in another order (columns of the affine permuted)."""
    out = affine.copy()
    out[:3, :3] = affine[:3, :3][:, list(order)]
    return out


GRIDS = {
    "axis-aligned": dict(spacing=(4.0, 4.0, 4.0)),
    "flipped-anisotropic": dict(spacing=(3.0, 4.5, 2.5), flip=(True, False, True)),
    "oblique": dict(spacing=(3.5, 3.5, 3.0), flip=(False, True, False), oblique_degrees=15.0),
}


def pet_with_lesions(name: str, permute=None) -> tuple:
    """(SUV Image, per-lesion masks) of a body (SUV 1) with the LESIONS, on the grid ``name``."""
    settings = GRIDS[name]
    extent = np.array([220.0, 180.0, 200.0])
    shape = tuple(int(round(e / s)) for e, s in zip(extent, settings["spacing"]))
    affine = grid_affine(shape, center=(0.0, 0.0, 0.0), **settings)
    if permute:
        shape = tuple(shape[i] for i in permute)
        affine = permuted(affine, permute)
        affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    rng = np.random.default_rng(5)
    suv = np.zeros(shape, dtype=np.float32)
    suv[ellipsoid(shape, affine, (0, 0, 0), (100.0, 80.0, 95.0))] = 1.0
    masks = []
    for center, radius, uptake in LESIONS:
        lesion = ellipsoid(shape, affine, center, (radius,) * 3)
        suv[lesion] = uptake
        masks.append(lesion)
    suv = ndimage.gaussian_filter(suv, 0.6) + rng.normal(0.0, 0.1, shape).astype(np.float32)
    return Image(np.clip(suv, 0.0, None), affine, meta={"modality": "PET"}), masks


@pytest.mark.parametrize("name,permute", [("axis-aligned", None), ("flipped-anisotropic", None), ("oblique", None),
                                          ("flipped-anisotropic", (2, 0, 1))])
def test_traced_lesions_land_at_their_true_3d_position(name, permute):
    image, masks = pet_with_lesions(name, permute)
    geometry = mip_geometry(image.affine, image.shape)
    footprint = project_max(np.any(masks, axis=0), geometry)
    mask, seeds = trace_lesions(image, footprint, geometry)
    assert len(seeds) == len(LESIONS)
    assert not (mask & ~prism(footprint, geometry)).any()  # kept inside the MIP footprint
    diagonal = float(np.linalg.norm(image.spacing))
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert count == len(LESIONS)
    for (center, radius, _), truth in zip(LESIONS, masks):
        # the seed (ray maximum) lies in the lesion, and the traced component is centred on the true centre
        seed_world = [image.to_world(s) for s in seeds]
        assert min(np.linalg.norm(w - center) for w in seed_world) <= radius
        number = np.bincount(labels[truth]).argmax()
        assert number > 0
        traced = labels == number
        centroid = image.to_world(np.argwhere(traced).mean(axis=0))
        assert np.linalg.norm(centroid - center) <= 0.5 * diagonal
        assert dice(traced, truth) >= 0.8


def test_depth_range_and_mip_box_of_a_3d_roi():
    image, masks = pet_with_lesions("flipped-anisotropic")
    geometry = mip_geometry(image.affine, image.shape)
    footprint = project_max(np.any(masks, axis=0), geometry)
    truth = masks[0]
    box = tuple((int(lo), int(hi) + 1) for lo, hi in zip(np.argwhere(truth).min(0) - 3, np.argwhere(truth).max(0) + 3))
    (r0, r1), (c0, c1) = mip_box(box, geometry)
    inside = np.zeros(image.shape, dtype=bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    flat = np.zeros(footprint.shape, dtype=bool)
    flat[r0:r1, c0:c1] = True
    # the MIP box of the 3D box is exactly the projection of the box
    assert np.array_equal(flat, project_max(inside, geometry))
    mask, seeds = trace_lesions(image, footprint & flat, geometry, depth=box[geometry.projection_axis])
    assert len(seeds) == 1 and dice(mask, truth) >= 0.8


@pytest.mark.parametrize("spacing, note", [
    ((2.0, 2.0, 2.0), None), ((2.6, 9.0, 1.7), None),  # within a quarter of the card's 2.1 mm (rows S, columns R)
    ((2.7, 2.0, 2.0), "smaller"), ((2.0, 2.0, 1.6), "larger"), ((4.0, 4.0, 4.0), "smaller"),
])
def test_a_mip_whose_pixels_are_far_from_the_training_mips_gets_a_note(spacing, note):
    """preprocessing.mip.pixel_mm: a volume's MIP keeps the volume's voxel size; more than a quarter off the card's
    training MIPs along either axis, the run says so (and segment_traced keeps the note)."""
    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.mip import coronal_mip, scale_note
    from TumorSegLib.mip3d import segment_traced
    from TumorSegLib.phantoms import pet_phantom

    card = find_card("mip-pet-2d")
    assert card.preprocessing.mip.pixel_mm == 2.1
    volume = Image(np.ones((6, 6, 6), np.float32), np.diag([*spacing, 1.0]))
    found = scale_note(coronal_mip(volume, card), card)
    assert (found is None) if note is None else (f"learnt on MIPs of about 2.1 mm, so its lesions look {note}" in found)
    if spacing == (4.0, 4.0, 4.0):
        phantom, _ = pet_phantom((48, 40, 64), spacing)
        traced, flat = segment_traced(Segmenter(card, "cpu"), phantom)
        assert any("4 x 4 mm pixels" in n for n in flat.notes) and any("4 x 4 mm pixels" in n for n in traced.notes)


class Recorder(torch.nn.Module):
    """Test network: records its inputs, answers 'tumour' where the input is dark (hot in the inverted MIP)."""

    seen = []

    def forward(self, x):
        Recorder.seen.append(tuple(x.shape))
        return 40 * (0.5 - x)


@pytest.mark.parametrize("width_mm, resampled", [(300.0, True), (360.0, False)])
def test_a_whole_body_mip_reaches_the_network_at_the_training_pixel_size(width_mm, resampled):
    """preprocessing.mip.resample_width_mm: the MIP of a volume at least that wide is resampled to pixel_mm for the
    network (no scale note then) and the result lands on the MIP's own grid; a narrower one keeps its pixel size."""
    import dataclasses

    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.mip import NETWORK_SPACING, coronal_mip
    from TumorSegLib.phantoms import pet_phantom

    shipped = find_card("mip-pet-2d")
    mip = dataclasses.replace(shipped.preprocessing.mip, pixel_mm=2.0, resample_width_mm=width_mm)
    card = dataclasses.replace(shipped, preprocessing=dataclasses.replace(shipped.preprocessing, mip=mip),
                               postprocessing=dataclasses.replace(shipped.postprocessing, lesion_filter=None,
                                                                  image_gate=None))
    volume, _ = pet_phantom((80, 40, 96), (4.0, 4.0, 4.0))  # 320 mm wide, 384 mm tall
    assert (NETWORK_SPACING in coronal_mip(volume, card).meta) == resampled
    Recorder.seen = []
    result = Segmenter(card, "cpu", network=Recorder(), backend="torch").predict(volume)
    rows, cols = (192, 160) if resampled else (96, 80)  # the MIP (96 x 80 at 4 mm), at 2 mm, padded to 16
    assert Recorder.seen[-1][-2:] == (rows, cols)
    assert result.mask.shape == (96, 80) and result.mask.any()
    assert any("4 x 4 mm pixels" in note for note in result.notes) != resampled


def test_resampling_a_mip_needs_the_pixel_size_to_resample_to():
    from TumorSegLib.cards import card_from_dict, find_card
    from TumorSegLib.errors import TumorSegError

    data = find_card("mip-pet-2d").to_dict()
    data["preprocessing"]["mip"] = {"window": [0, 5.0], "invert": True, "resample_width_mm": 420}
    with pytest.raises(TumorSegError, match="resample_width_mm needs preprocessing.mip.pixel_mm"):
        card_from_dict(data)
