"""Mask post-processing as the card's ``postprocessing`` asks: small lesions, largest lesion, holes.

- ``min_lesion_ml`` (3D): lesions (18-connected) smaller than this volume are removed;
- ``min_lesion_px`` (2D): lesions (8-connected) with fewer pixels are removed (in pixels, so it
  also works on images without a known pixel spacing such as the MIP PNGs; ``min_lesion_ml``
  does not apply to 2D images and is ignored there with a note);
- ``largest_component``: keep only the largest lesion;
- ``fill_holes``: fill enclosed holes (in 3D, of each lesion as a whole).

``largest_region`` keeps an organ's largest connected region (the card's ``output.within.largest_component``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .cards import Postprocessing
from .image import Image
from .measure import label_lesions


def postprocess(mask: np.ndarray, grid: Image, settings: Postprocessing, notes: list) -> np.ndarray:
    """The post-processed bool mask; what was removed is added to ``notes``."""
    mask = np.asarray(mask, dtype=bool)
    if settings.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    minimum = _min_voxels(grid, settings, notes)
    if minimum > 1 or settings.largest_component:
        labels, count = label_lesions(mask)
        if count:
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            keep = sizes >= minimum
            keep[0] = False
            removed = int(count - keep.sum())
            if removed:
                notes.append(f"removed {removed} lesion(s) smaller than the minimum lesion size")
            if settings.largest_component and keep.any():
                largest = int(np.argmax(np.where(keep, sizes, 0)))
                if keep.sum() > 1:
                    notes.append(f"kept only the largest of {int(keep.sum())} lesions")
                keep[:] = False
                keep[largest] = True
            mask = keep[labels]
    return mask


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a 3D ``mask`` (18-connected, as lesions); a 2D mask is returned whole: in one
    slice an organ may show as several pieces."""
    if mask.ndim != 3:
        return mask
    labels, count = label_lesions(mask)
    if count < 2:
        return mask
    return labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def _min_voxels(grid: Image, settings: Postprocessing, notes: list) -> int:
    if grid.ndim == 3:
        return int(np.ceil(settings.min_lesion_ml * 1000.0 / grid.voxel_volume))
    if settings.min_lesion_ml > 0.0:
        notes.append("min_lesion_ml applies to 3D volumes only; for a 2D image set min_lesion_px (pixels)")
    return int(np.ceil(settings.min_lesion_px))


def lesion_at(mask: np.ndarray, grid: Image, index: Sequence[float], max_distance_mm: float) -> tuple:
    """The lesion of ``mask`` a click at voxel ``index`` (continuous, on ``grid``) points to: (bool mask, mm).

    The connected lesion (18-connected in 3D, 8 in 2D) holding the click's voxel (distance 0), else
    the one with the voxel centre nearest to the click if that is within ``max_distance_mm``
    (world mm on any grid); else an empty mask and None.
    """
    labels, count = label_lesions(mask)
    if not count:
        return np.zeros(mask.shape, dtype=bool), None
    voxel = tuple(int(v) for v in np.clip(np.floor(np.asarray(index) + 0.5), 0, np.asarray(mask.shape) - 1))
    if labels[voxel]:
        return labels == labels[voxel], 0.0
    found = np.argwhere(labels)
    offsets = (found - np.asarray(index, dtype=np.float64)) @ grid.affine[: grid.ndim, : grid.ndim].T
    distances = np.linalg.norm(offsets, axis=1)
    nearest = int(np.argmin(distances))
    if distances[nearest] > max_distance_mm:
        return np.zeros(mask.shape, dtype=bool), None
    return labels == labels[tuple(found[nearest])], float(distances[nearest])
