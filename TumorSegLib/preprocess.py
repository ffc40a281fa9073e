"""Preprocessing as a model card describes it (shared by inference and training).

- ``normalize_intensity``: window -> [0, 1], optional invert.
- ``reorient`` / ``undo_reorient``: exact axis permutation and flips (no interpolation) so the
  network sees the orientation it was trained on (card ``preprocessing.orientation``, e.g. "RAS").
- ``resample``: linear resampling of a whole grid to a new shape covering the same extent (voxel
  edges aligned), used to reach the card's spacing and to bring probabilities back exactly onto
  the input's own grid.
"""

from __future__ import annotations

import numpy as np

from .cards import ModelCard
from .image import Image


def normalize_intensity(array: np.ndarray, card: ModelCard) -> np.ndarray:
    """Map raw intensities to the network's [0, 1] input: window, clip, optionally invert."""
    intensity = card.preprocessing.get("intensity", {})
    low, high = intensity.get("window", (0.0, 1.0))
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    np.clip(out, 0.0, 1.0, out=out)
    if intensity.get("invert", False):
        out = 1.0 - out
    return out


def reorient(image: Image, axcodes) -> tuple:
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


def undo_reorient(array: np.ndarray, transform) -> np.ndarray:
    """Inverse of ``reorient`` for an array on the reoriented grid."""
    if transform is None:
        return array
    from nibabel import orientations as ornt

    inverse = np.zeros_like(transform)  # transform[source] = (target, flip); invert the permutation
    for source, (target, flip) in enumerate(transform):
        inverse[int(target)] = (source, flip)
    return np.ascontiguousarray(ornt.apply_orientation(array, inverse))


def resampled_shape(shape, spacing, target_spacing) -> tuple:
    """Grid size after resampling ``shape`` from ``spacing`` to ``target_spacing`` (None keeps an axis)."""
    return tuple(
        int(n) if t is None else max(1, int(round(n * s / float(t))))
        for n, s, t in zip(shape, spacing, target_spacing)
    )


def resample(array: np.ndarray, shape) -> np.ndarray:
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
