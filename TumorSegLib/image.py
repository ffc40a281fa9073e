"""The in-memory image: voxels plus the exact geometry they came with.

3D volumes keep the file's own voxel order (i, j, k) and a 4x4 voxel-to-RAS affine in mm, as
nibabel and 3D Slicer report it; nothing is reoriented. 2D images (PNG, MIP) are (row, col)
with a 3x3 affine mapping (row, col) to millimetres; when a PNG carries no spacing the affine
is the identity and ``spacing_known`` is False, so areas are reported in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .errors import TumorSegError


@dataclass
class Image:
    array: np.ndarray
    affine: np.ndarray
    spacing_known: bool = True
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64)
        n = self.array.ndim
        if n not in (2, 3):
            raise TumorSegError(f"expected a 2D or 3D image, got {n}D with shape {self.array.shape}")
        if self.affine.shape != (n + 1, n + 1):
            raise TumorSegError(f"a {n}D image needs a {n + 1}x{n + 1} affine, got {self.affine.shape}")
        if self.array.dtype.names or not (np.issubdtype(self.array.dtype, np.number) or self.array.dtype == bool) \
                or np.issubdtype(self.array.dtype, np.complexfloating):
            raise TumorSegError(f"expected one scalar value per voxel, got voxel type {self.array.dtype} "
                                "(RGB, vector or complex images are not supported)")
        if self.array.size == 0:
            raise TumorSegError(f"the image is empty (shape {self.array.shape})")
        problem = geometry_problem(self.affine)
        if problem:
            raise TumorSegError(f"invalid image geometry: {problem}")

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each array axis, in mm (pixels when ``spacing_known`` is False)."""
        return np.linalg.norm(self.affine[: self.ndim, : self.ndim], axis=0)

    @property
    def voxel_volume(self) -> float:
        """Volume (3D, mm^3) or area (2D, mm^2) of one voxel."""
        return float(abs(np.linalg.det(self.affine[: self.ndim, : self.ndim])))

    def with_array(self, array: np.ndarray, **meta) -> "Image":
        """A new image on this grid (same shape required) holding ``array``."""
        if array.shape != self.shape:
            raise TumorSegError(f"array shape {array.shape} does not match the image grid {self.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def to_world(self, index: Sequence[float]) -> np.ndarray:
        """World coordinates (mm) of voxel index/indices (..., ndim)."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[: self.ndim, : self.ndim].T + self.affine[: self.ndim, self.ndim]

    def to_index(self, world: Sequence[float]) -> np.ndarray:
        """Continuous voxel index of world point(s) (..., ndim)."""
        inverse = np.linalg.inv(self.affine)
        world = np.asarray(world, dtype=np.float64)
        return world @ inverse[: self.ndim, : self.ndim].T + inverse[: self.ndim, self.ndim]

    def same_grid(self, other: "Image", atol: float = 1e-4) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def require_same_grid(self, other: "Image", what: str = "mask", other_what: str = "image") -> None:
        if not self.same_grid(other):
            raise TumorSegError(
                f"{what} and {other_what} are on different grids: {what} shape {self.shape} affine "
                f"{np.round(self.affine, 4).tolist()}, {other_what} shape {other.shape} affine "
                f"{np.round(other.affine, 4).tolist()}"
            )

    def require_finite(self, what: str = "image") -> None:
        if np.issubdtype(self.array.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(self.array)))
            if bad:
                raise TumorSegError(f"{what} has {bad} NaN or infinite voxel(s); fix or mask them first")


def geometry_problem(affine: np.ndarray) -> str | None:
    """What makes a voxel-to-world ``affine`` unusable (non-finite, a zero spacing, parallel axes), or None."""
    n = affine.shape[0] - 1
    if not np.all(np.isfinite(affine)):
        return "the voxel-to-world matrix has NaN or infinite entries"
    linear = affine[:n, :n]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        return f"zero voxel spacing on axis {int(np.argmin(spacing))} (spacing {spacing.tolist()} mm)"
    if abs(np.linalg.det(linear / spacing)) < 1e-6:
        return "the voxel axes are parallel (singular voxel-to-world matrix)"
    return None


def superior_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is closest to the patient's superior (RAS +S) axis.

    Its normal planes are the acquisition (axial) planes where RECIST diameters are measured,
    whatever the flips or obliquity of the grid.
    """
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


def binary_mask(image: Image, what: str = "mask") -> np.ndarray:
    """The tumour mask as bool: every non-zero voxel is tumour (several labels are merged).

    Non-integer values (probability maps) are refused: threshold them first.
    """
    array = image.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise TumorSegError(f"{what} has NaN or infinite values")
        if not np.array_equal(array, np.round(array)):
            raise TumorSegError(
                f"{what} has non-integer values (a probability map?); TumorSeg reads masks as label maps "
                "where every non-zero voxel is tumour: threshold it first"
            )
    return array != 0
