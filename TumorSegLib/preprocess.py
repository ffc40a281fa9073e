"""Preprocessing as a model card describes it: the one path shared by inference, training and validation.

- ``prepare`` / ``restore``: an image into the network's space (reoriented, resampled to the card's
  spacing, windowed) as a ``Prepared``, and an array of the network's grid (a probability) back onto
  the image's own grid, voxel for voxel; ``Prepared.to_network`` takes any other array of the image's
  grid (a training mask, an ROI) to the network grid the same way;
- ``normalize_intensity``: window -> [0, 1], optional invert; ``move_to_level``: the input moved so that an
  organ's median has a fixed value (card ``preprocessing.organ_level``).
- ``reorient`` / ``undo_reorient``: exact axis permutation and flips (no interpolation) so the
  network sees the orientation it was trained on (card ``preprocessing.orientation``, e.g. "RAS").
- ``resample``: linear resampling of a whole grid to a new shape covering the same extent (voxel
  edges aligned), used to reach the card's spacing and to bring probabilities back exactly onto
  the input's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .cards import ModelCard
from .errors import TumorSegError
from .hints import Shape
from .image import Image, superior_axis
from .mip import NETWORK_SPACING


@dataclass(frozen=True)
class Prepared:
    """An image in the network's space and what ``restore`` needs to bring an array back."""

    array: np.ndarray  # float32 in [0, 1]: what the network is given
    axis: int | None  # the axial voxel axis of the network grid (3D), else None
    transform: np.ndarray | None  # the reorientation (``reorient``), None when there is none
    oriented_shape: tuple  # the image's shape after reorientation, before resampling
    resampled: bool  # whether the card's spacing was applied
    notes: tuple = field(default=())  # what the user should know (spacing unknown: not resampled)

    def to_network(self, array: np.ndarray) -> np.ndarray:
        """An array on the image's grid (a mask, a region) on the network grid: reoriented, linearly resampled (float32)."""
        array = np.asarray(array, dtype=np.float32)
        if self.transform is not None:
            from nibabel import orientations as ornt

            array = np.ascontiguousarray(ornt.apply_orientation(array, self.transform))
        return resample(array, self.array.shape)


def prepare(image: Image, card: ModelCard) -> Prepared:
    """``image`` as the network sees it: reorient to the card's orientation, resample to its spacing (a volume's MIP:
    to the pixel size ``mip.coronal_mip`` marked it with, if any), window."""
    oriented, transform = reorient(image, card.preprocessing.orientation)
    array = np.asarray(oriented.array, dtype=np.float32)
    axis = superior_axis(oriented.affine) if oriented.ndim == 3 else None
    spacing, notes = card.preprocessing.spacing or oriented.meta.get(NETWORK_SPACING), ()
    if spacing and not oriented.spacing_known:
        notes, spacing = ("the image has no pixel spacing: it was not resampled to the model's spacing",), None
    if spacing:
        spacing = list(spacing)
        if card.mode == "slice-2d" and len(spacing) == 2 and axis is not None:
            spacing.insert(axis, None)
        array = resample(array, resampled_shape(array.shape, oriented.spacing, spacing))
    return Prepared(normalize_intensity(array, card), axis, transform, tuple(oriented.shape), bool(spacing), notes)


def restore(prepared: Prepared, array: np.ndarray) -> np.ndarray:
    """An array on the network grid (a probability) back on the prepared image's own grid, voxel for voxel."""
    return undo_reorient(resample(array, prepared.oriented_shape), prepared.transform)


def move_to_level(image: Image, organ: np.ndarray, value: float) -> tuple:
    """``(image moved, shift)``: ``image`` plus the constant that puts its median inside ``organ`` (a mask of its
    grid) at ``value``; ``(image, None)`` when ``organ`` is empty. The card's ``preprocessing.organ_level``:
    training takes the true organ, inference the organ a first pass of the network finds."""
    inside = np.asarray(image.array)[np.asarray(organ, dtype=bool)]
    if not inside.size:
        return image, None
    shift = float(value) - float(np.median(inside))
    return image.with_array(np.asarray(image.array, dtype=np.float32) + np.float32(shift)), shift


def normalize_intensity(array: np.ndarray, card: ModelCard) -> np.ndarray:
    """Map raw intensities to the network's [0, 1] input: window, clip, optionally invert."""
    intensity = card.preprocessing.intensity
    low, high = intensity.window
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    np.clip(out, 0.0, 1.0, out=out)
    if intensity.invert:
        out = 1.0 - out
    return out


def reorient(image: Image, axcodes: str | None) -> tuple:
    """``image`` with its voxel axes permuted/flipped to be closest to ``axcodes`` (e.g. "RAS").

    Returns (reoriented Image, transform); ``undo_reorient(array, transform)`` maps an array on
    the reoriented grid back to the original voxel order exactly. No-op for 2D images or no codes.
    """
    if image.ndim != 3 or not axcodes:
        return image, None
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.io_orientation(image.affine), ornt.axcodes2ornt(tuple(axcodes)))
    array = np.ascontiguousarray(ornt.apply_orientation(image.array, transform))
    affine = image.affine @ ornt.inv_ornt_aff(transform, image.shape)
    return Image(array, affine, image.spacing_known, dict(image.meta)), transform


def undo_reorient(array: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
    """Inverse of ``reorient`` for an array on the reoriented grid."""
    if transform is None:
        return array
    from nibabel import orientations as ornt

    inverse = np.zeros_like(transform)  # transform[source] = (target, flip); invert the permutation
    for source, (target, flip) in enumerate(transform):
        inverse[int(target)] = (source, flip)
    return np.ascontiguousarray(ornt.apply_orientation(array, inverse))


MAX_RESAMPLED_VOXELS = 500_000_000  # 2 GB per float32 copy; a whole-body CT at 1.5 mm has about 70 million


def resampled_shape(shape: Shape, spacing: Sequence[float], target_spacing: Sequence[float | None]) -> tuple:
    """Grid size after resampling ``shape`` from ``spacing`` to ``target_spacing`` (None keeps an axis).

    A size beyond ``MAX_RESAMPLED_VOXELS`` (an absurd spacing in the file, say) is refused before
    anything is allocated.
    """
    size = tuple(
        int(n) if t is None else max(1, int(round(n * s / float(t))))
        for n, s, t in zip(shape, spacing, target_spacing)
    )
    if float(np.prod(size, dtype=np.float64)) > MAX_RESAMPLED_VOXELS:
        raise TumorSegError(
            f"resampling {tuple(int(n) for n in shape)} voxels of {np.round(np.asarray(spacing, float), 3).tolist()} mm "
            f"to the model's spacing {list(target_spacing)} mm gives {size} voxels, more than the limit of "
            f"{MAX_RESAMPLED_VOXELS:,}: check the image's voxel spacing, or give an ROI")
    return size


def resample(array: np.ndarray, shape: Shape) -> np.ndarray:
    """Linear resampling of a float array to ``shape`` over the same extent (voxel edges aligned).

    Resampling to a shape and back to the original shape lands exactly on the original grid.
    """
    shape = tuple(int(n) for n in shape)
    if tuple(array.shape) == shape:
        return array
    import torch

    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(tensor, size=shape, mode=modes[array.ndim], align_corners=False)
    return out[0, 0].numpy()
