"""Coronal maximum-intensity projection (MIP) of a 3D PET volume, as the DM i AI MIP images show it.

The projection runs along the voxel axis closest to the patient's anterior-posterior axis. The
result is oriented like the DM i AI PNGs: rows run from superior (top) to inferior, columns from
the patient's right (image left) to the patient's left (radiological view). The SUV maximum is
windowed to ``[0, suv_hi]`` and mapped to 0..255 (inverted when the card says so: hot = dark),
rounded to uint8, exactly the representation of the 2D MIP PNGs; the card's intensity
preprocessing then applies as for a PNG. Pixel spacing comes from the volume, so 2D readouts
are in mm. A MIP at least ``preprocessing.mip.resample_width_mm`` wide (a whole-body field of view) is marked to
reach the network at the pixel size the network learnt on (``preprocessing.mip.pixel_mm``; ``NETWORK_SPACING`` in its
meta, which ``preprocess.prepare`` reads); a narrower one (a crop) keeps its own, with a note when that differs from
the network's by more than ``SCALE_TOLERANCE`` (``scale_note``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .cards import ModelCard
from .errors import TumorSegError
from .hints import Shape
from .image import Image

SCALE_TOLERANCE = 1.25  # MIP pixels more than this factor off the training MIPs' get a note
NETWORK_SPACING = "network_spacing"  # meta key: the pixel size (row, col mm) a MIP is resampled to for the network


@dataclass(frozen=True)
class MipGeometry:
    """How MIP pixels relate to the voxels of the source volume."""

    projection_axis: int  # voxel axis projected (closest to anterior-posterior)
    row_axis: int  # voxel axis along the rows (closest to superior-inferior)
    row_flip: bool  # rows run opposite to the voxel axis
    col_axis: int  # voxel axis along the columns (closest to right-left)
    col_flip: bool
    source_shape: tuple

    def pixel(self, index: Sequence[float]) -> np.ndarray:
        """(row, col) of a continuous voxel index of the source volume."""
        index = np.asarray(index, dtype=np.float64)
        row = index[self.row_axis]
        col = index[self.col_axis]
        if self.row_flip:
            row = self.source_shape[self.row_axis] - 1 - row
        if self.col_flip:
            col = self.source_shape[self.col_axis] - 1 - col
        return np.array([row, col])


def mip_geometry(affine: np.ndarray, shape: Shape) -> MipGeometry:
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    projection = int(np.argmax(np.abs(directions[1])))
    rest = [a for a in range(3) if a != projection]
    row = max(rest, key=lambda a: abs(directions[2, a]))
    col = next(a for a in rest if a != row)
    # Rows go inferior: flip when the voxel axis points superior. Columns go to the patient's
    # left (RAS -x): flip when the voxel axis points right (+x).
    return MipGeometry(projection, row, bool(directions[2, row] > 0), col, bool(directions[0, col] > 0), tuple(shape))


def project_max(array: np.ndarray, geometry: MipGeometry) -> np.ndarray:
    """Maximum of ``array`` (on the source grid) along the projection axis, in MIP row/column order."""
    projection = np.max(array, axis=geometry.projection_axis)
    kept = [a for a in range(3) if a != geometry.projection_axis]
    if kept.index(geometry.row_axis) != 0:
        projection = projection.T
    if geometry.row_flip:
        projection = projection[::-1]
    if geometry.col_flip:
        projection = projection[:, ::-1]
    return np.ascontiguousarray(projection)


def coronal_mip(volume: Image, card: ModelCard) -> Image:
    """The card's MIP representation (uint8 0..255, 2D Image with mm spacing) of a 3D SUV volume."""
    if volume.ndim != 3:
        raise TumorSegError(f"a MIP needs a 3D PET volume, got a {volume.ndim}D image")
    settings = card.preprocessing.mip
    if settings is None:
        raise TumorSegError(f"model {card.name!r} has no preprocessing.mip settings to project a 3D PET volume")
    geometry = mip_geometry(volume.affine, volume.shape)
    projection = project_max(np.asarray(volume.array, dtype=np.float32), geometry)
    low, high = settings.window
    scaled = np.clip((projection - low) / float(high - low), 0.0, 1.0)
    if settings.invert:
        scaled = 1.0 - scaled
    pixels = np.rint(scaled * 255.0).astype(np.uint8)
    spacing = volume.spacing
    affine = np.diag([spacing[geometry.row_axis], spacing[geometry.col_axis], 1.0])
    meta = {"mip": geometry, "source": volume.meta.get("source")}
    width = pixels.shape[1] * spacing[geometry.col_axis]
    if settings.resample_width_mm and width >= settings.resample_width_mm:
        meta[NETWORK_SPACING] = [float(settings.pixel_mm)] * 2
    return Image(np.ascontiguousarray(pixels), affine, spacing_known=True, meta=meta)


def scale_note(mip: Image, card: ModelCard) -> str | None:
    """A note when a MIP that keeps its own pixel size (not marked ``NETWORK_SPACING``) differs from the MIPs the
    card's network learnt on (``preprocessing.mip.pixel_mm``) by more than ``SCALE_TOLERANCE`` along either axis."""
    trained = card.preprocessing.mip.pixel_mm if card.preprocessing.mip is not None else None
    if not trained or NETWORK_SPACING in mip.meta:
        return None
    ratios = np.asarray(mip.spacing, dtype=np.float64) / trained
    if np.all((ratios <= SCALE_TOLERANCE) & (ratios >= 1 / SCALE_TOLERANCE)):
        return None
    size = " x ".join(f"{s:.2g}" for s in mip.spacing)
    return (f"the volume's MIP has {size} mm pixels; model {card.name!r} learnt on MIPs of about {trained:g} mm, so "
            f"its lesions look {'smaller' if ratios.max() > SCALE_TOLERANCE else 'larger'} than in training: expect "
            "lower accuracy and review every lesion")
