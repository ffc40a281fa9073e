"""Clicks that add up: where a click's box lies on the volume's grid, and what takes the click back (no qt).

A click changes the "Tumor" segment only inside its box (the worker's ``clicks_only`` mask, whose
file carries the box's exact geometry), and only by adding voxels. Each click that changed the
segment leaves a ``ClickRecord`` (its box, the box's voxels before and after), so that removing the
lesion restores the box exactly as it was before the click.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image

GRID_TOLERANCE = 1e-3  # voxels (and relative, for the axes) between a box mask's grid and the volume's


@dataclass
class ClickRecord:
    """One click's change to the segment: inside ``box`` (half-open voxel box of the volume) ``before`` became ``after``."""

    box: tuple
    before: np.ndarray
    after: np.ndarray
    point: Optional[tuple] = None  # (markups point list node ID, control point ID) of the click, when it was one


def box_on_grid(mask: Image, ijk_to_ras: np.ndarray, shape) -> tuple:
    """The box of the grid (IJK-to-RAS ``ijk_to_ras``, ``shape``) that ``mask`` covers voxel for voxel.

    Refuses a mask on any other grid (other axes or spacing, a corner between voxels, outside the grid).
    """
    if mask.ndim != 3:
        raise TumorSegError(f"the click result is a {mask.ndim}D image; a 3D box of the input volume was expected")
    axes, own = np.asarray(mask.affine)[:3, :3], np.asarray(ijk_to_ras)[:3, :3]
    if not np.allclose(axes, own, rtol=GRID_TOLERANCE, atol=GRID_TOLERANCE * np.abs(own).max()):
        raise TumorSegError("the click result is not on the input volume's voxel grid (other axes or spacing)")
    corner = np.linalg.solve(own, np.asarray(mask.affine)[:3, 3] - np.asarray(ijk_to_ras)[:3, 3])
    low = np.round(corner)
    if np.abs(corner - low).max() > GRID_TOLERANCE:
        raise TumorSegError(f"the click result lies between the input volume's voxels (corner {corner.tolist()})")
    box = tuple((int(lo), int(lo) + int(n)) for lo, n in zip(low, mask.shape))
    if any(lo < 0 or hi > int(n) for (lo, hi), n in zip(box, shape)):
        raise TumorSegError(f"the click result's box {box} lies outside the input volume of {tuple(shape)} voxels")
    return box
