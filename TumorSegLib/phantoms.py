"""Synthetic images with known answers: analytic shapes on any grid, PET and CT phantoms.

Used by the tests, the Slicer self-test and ``tumorseg demo``. Shapes are defined in world
coordinates (mm) and rasterised by voxel centre, so the same lesion can be drawn on flipped,
oblique and anisotropic grids and its analytic volume and diameters are known.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .hints import Shape
from .image import Image


def rotation(axis: Sequence[float] = (1.0, 0.0, 0.0), degrees: float = 0.0) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``degrees`` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def grid_affine(shape: Shape, spacing: Sequence[float] = (1.0, 1.0, 1.0), flip: Sequence[bool] = (False, False, False),
                oblique_degrees: float = 0.0, oblique_axis: Sequence[float] = (1.0, 0.3, 0.0),
                center: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """A 4x4 voxel-to-RAS affine whose grid is centred on ``center`` (mm).

    ``flip`` reverses axes (as LPS-stored or reversed-slice data do); ``oblique_degrees``
    rotates the grid about ``oblique_axis``.
    """
    signs = np.where(np.asarray(flip), -1.0, 1.0)
    linear = rotation(oblique_axis, oblique_degrees) @ np.diag(signs * np.asarray(spacing, dtype=float))
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(center, dtype=float) - linear @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_coordinates(shape: Shape, affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, shape ``shape + (ndim,)``."""
    ndim = len(shape)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return index @ affine[:ndim, :ndim].T + affine[:ndim, ndim]


def ellipsoid(shape: Shape, affine: np.ndarray, center: Sequence[float], radii: Sequence[float],
              orientation: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of voxel centres inside an ellipsoid (2D: ellipse) given in world mm.

    ``orientation`` is a rotation whose columns are the ellipsoid's axes in world space.
    """
    ndim = len(shape)
    orientation = np.eye(ndim) if orientation is None else np.asarray(orientation, dtype=float)
    local = (world_coordinates(shape, affine) - np.asarray(center, dtype=float)) @ orientation
    return np.sum((local / np.asarray(radii, dtype=float)) ** 2, axis=-1) <= 1.0


def pet_phantom(shape: Shape = (96, 96, 128), spacing: Sequence[float] = (4.0, 4.0, 4.0),
                affine: np.ndarray | None = None, seed: int = 0) -> tuple:
    """A whole-body-like FDG PET in SUV with three lesions; returns (Image, lesion mask).

    Physiological uptake (brain, bladder) is hot but is not tumour, so a plain threshold fails.
    """
    rng = np.random.default_rng(seed)
    affine = grid_affine(shape, spacing) if affine is None else affine
    extent = (np.asarray(shape) - 1) * np.asarray(spacing)
    suv = np.zeros(shape, dtype=np.float32)
    suv[ellipsoid(shape, affine, (0, 0, 0), (0.42 * extent[0], 0.3 * extent[1], 0.48 * extent[2]))] = 0.8
    suv[ellipsoid(shape, affine, (0, 0, 0.4 * extent[2]), (0.1 * extent[0], 0.1 * extent[1], 0.05 * extent[2]))] = 7.0
    suv[ellipsoid(shape, affine, (0, 0, -0.38 * extent[2]), (0.05 * extent[0], 0.05 * extent[1], 0.03 * extent[2]))] = 9.0
    mask = np.zeros(shape, dtype=bool)
    for center, radius, uptake in (((-0.15, 0.0, 0.1), 14.0, 8.0), ((0.18, 0.05, -0.05), 10.0, 6.0),
                                   ((0.05, -0.05, 0.25), 8.0, 10.0)):
        lesion = ellipsoid(shape, affine, np.asarray(center) * extent, (radius, radius * 0.8, radius * 1.2))
        suv[lesion] = uptake
        mask |= lesion
    suv += rng.normal(0.0, 0.15, size=shape).astype(np.float32)
    np.clip(suv, 0.0, None, out=suv)
    return Image(suv, affine, meta={"modality": "PET"}), mask


def ct_phantom(shape: Shape = (128, 128, 64), spacing: Sequence[float] = (0.8, 0.8, 2.0),
               affine: np.ndarray | None = None, seed: int = 0) -> tuple:
    """A chest-like CT in HU (soft tissue, two lungs) with two solid nodules; returns (Image, mask)."""
    rng = np.random.default_rng(seed)
    affine = grid_affine(shape, spacing) if affine is None else affine
    extent = (np.asarray(shape) - 1) * np.asarray(spacing)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[ellipsoid(shape, affine, (0, 0, 0), (0.46 * extent[0], 0.4 * extent[1], extent[2]))] = 40.0
    for side in (-1, 1):
        hu[ellipsoid(shape, affine, (side * 0.22 * extent[0], 0, 0), (0.18 * extent[0], 0.3 * extent[1], extent[2]))] = -850.0
    mask = np.zeros(shape, dtype=bool)
    for center, radius in (((-0.22, 0.05, 0.0), 9.0), ((0.2, -0.08, 0.1), 6.0)):
        nodule = ellipsoid(shape, affine, np.asarray(center) * extent, (radius, radius * 0.85, radius))
        hu[nodule] = 30.0
        mask |= nodule
    hu += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return Image(hu, affine, meta={"modality": "CT"}), mask
