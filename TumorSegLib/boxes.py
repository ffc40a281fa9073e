"""Voxel boxes for ROI and click runs: where a box lies, what the network must see around it, crops.

A box is half-open per voxel axis, ``((lo, hi), ...)`` like Python slices (``lo <= i < hi``).

- ``parse_box`` / ``check_roi_size``: an ROI given as I0 I1 J0 J1 [K0 K1] and the card's minimum;
- ``check_points`` / ``point_index`` / ``context_box``: clicks (world mm), their voxel index on the
  grid the model works on and the card's ``inference.context_mm`` box around each, cut at the image
  edge (a crop smaller than a window is padded by the inferer, centred, as in training), so a
  click near the border works;
- ``margin_voxels`` / ``grow``: the margin the network sees around a box: the sliding window's
  overlap band on the card's network grid (none across the slices of a ``slice-2d`` model; a
  ``whole-image-2d`` model sees the whole image);
- ``crop`` / ``within`` / ``clip``: a box of an image as an image of its own (exact geometry: the
  affine is shifted by the box corner); a box inside a larger one; the part of a box inside the
  image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .cards import ModelCard
from .errors import TumorSegError
from .hints import Box, Point, Shape
from .image import Image, superior_axis

MAX_POINTS = 32  # clicks per run: each is one context box; more is a whole-volume job, not a click
DEFAULT_WINDOW = 96  # network window (voxels per axis) assumed when a 3D card gives no patch size


def slices(box: Box) -> tuple:
    return tuple(slice(lo, hi) for lo, hi in box)


def parse_box(roi: Sequence[int], shape: Shape) -> Box:
    """A half-open voxel box ((lo, hi) per axis) from I0 I1 J0 J1 [K0 K1]; it must lie in the image."""
    values = [int(v) for v in roi]
    if len(values) != 2 * len(shape):
        raise TumorSegError(f"ROI needs {2 * len(shape)} values (I0 I1 ...) for a {len(shape)}D image, got {len(values)}")
    box = tuple(zip(values[0::2], values[1::2]))
    for axis, ((lo, hi), n) in enumerate(zip(box, shape)):
        if lo >= hi:
            raise TumorSegError(f"ROI {values} is empty or inverted on axis {axis} ({lo} >= {hi}): give each axis as "
                                "low high, half-open (low <= i < high)")
        if not 0 <= lo < hi <= n:
            raise TumorSegError(f"ROI {values} lies outside the image of shape {tuple(shape)} on axis {axis} "
                                f"(half-open: need 0 <= lo < hi <= {n})")
    return box


def orientation_transform(affine: np.ndarray, axcodes: str | None) -> np.ndarray | None:
    """nibabel's transform from the voxel axes of ``affine`` to ``axcodes`` (row = source axis), or None."""
    if not axcodes or affine.shape != (4, 4):
        return None
    from nibabel import orientations as ornt

    return ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(axcodes)))


def to_card_axes(values: np.ndarray, transform: np.ndarray | None) -> np.ndarray:
    """Per-voxel-axis ``values`` reordered to the axes of the card's orientation."""
    if transform is None:
        return values
    oriented = np.empty_like(values)
    oriented[transform[:, 0].astype(int)] = values
    return oriented


def check_roi_size(image: Image, box: Box, card: ModelCard) -> None:
    """Refuse an ROI smaller than the card's ``inference.min_roi_mm`` (mm per axis of the card's orientation)."""
    minimum = card.inference.min_roi_mm
    if minimum is None:
        return
    extent = np.array([hi - lo for lo, hi in box], dtype=np.float64) * image.spacing
    orientation = card.preprocessing.orientation
    extent = to_card_axes(extent, orientation_transform(image.affine, orientation))
    minimum = np.broadcast_to(np.asarray(minimum, dtype=np.float64), extent.shape)
    if np.any(extent < minimum - 1e-6):
        raise TumorSegError(f"ROI of {np.round(extent, 1).tolist()} mm is smaller than the model's minimum context "
                            f"{minimum.tolist()} mm ({orientation or 'voxel'} axes): enlarge it, or click the lesion "
                            "(point) to use the model's context box")


def check_points(points: Sequence[Point], ndim: int) -> list:
    """The clicks as float arrays; refuses too many, the wrong number of coordinates, NaN or infinity."""
    points = [np.asarray(p, dtype=np.float64) for p in points]
    if len(points) > MAX_POINTS:
        raise TumorSegError(f"{len(points)} points given; at most {MAX_POINTS} clicks per run (for more, give an ROI "
                            "or segment the whole volume)")
    for number, point in enumerate(points, 1):
        if point.shape != (ndim,):
            raise TumorSegError(f"point {number} needs {ndim} coordinates for a {ndim}D image "
                                f"({'R A S mm' if ndim == 3 else 'row col mm'}), got {point.ravel().tolist()}")
        if not np.all(np.isfinite(point)):
            raise TumorSegError(f"point {number} has a NaN or infinite coordinate: {point.tolist()}")
    return points


def point_index(work: Image, source: Image, point: Point) -> np.ndarray:
    """Continuous voxel index on ``work`` of a world ``point`` given on ``source`` (the 3D volume of a MIP)."""
    index = source.to_index(point)
    if np.any(index < -0.5) or np.any(index > np.asarray(source.shape) - 0.5):
        raise TumorSegError(f"point {np.asarray(point).tolist()} mm lies outside the image (voxel index "
                            f"{np.round(index, 1).tolist()}, shape {source.shape})")
    return work.meta["mip"].pixel(index) if source is not work else index


def context_mm(card: ModelCard, work: Image) -> np.ndarray:
    """Edge lengths (mm per voxel axis) of a click's box: ``inference.context_mm``, else one window."""
    context = card.inference.context_mm
    if context is None:
        patch = card.inference.patch_size or [256] * work.ndim
        context = np.resize(np.asarray(patch, dtype=float), work.ndim) * work.spacing
    context = np.asarray(context, dtype=np.float64)
    if context.size not in (1, work.ndim):
        raise TumorSegError(f"model {card.name!r}: inference.context_mm needs 1 or {work.ndim} values (mm per axis of "
                            f"the {work.ndim}D input), got {context.tolist()}")
    return np.broadcast_to(context, (work.ndim,))


def context_box(work: Image, index: np.ndarray, context: np.ndarray) -> Box:
    """The box of ``context`` mm centred on voxel ``index``; it may reach beyond the image (see ``clip``)."""
    half = np.asarray(context) / 2.0 / work.spacing
    lo = np.floor(index - half + 0.5).astype(int)
    hi = np.floor(index + half + 0.5).astype(int) + 1
    return tuple((int(a), int(b)) for a, b in zip(lo, hi))


def clip(box: Box, shape: Shape) -> Box:
    """The part of ``box`` inside an image of ``shape``."""
    return tuple((max(lo, 0), min(hi, int(n))) for (lo, hi), n in zip(box, shape))


def margin_voxels(card: ModelCard, image: Image, overlap: float) -> np.ndarray:
    """Voxels per voxel axis of ``image`` that the network sees on each side of a box; None: the whole image.

    The sliding window's overlap band: half of ``overlap`` x the window, on the card's network grid
    (its spacing, else the image's own), so that the box's edge voxels are covered by windows as
    an interior voxel is. A ``slice-2d`` model sees each slice alone, so it needs none across the
    slices; a ``whole-image-2d`` model sees the whole image.
    """
    if card.mode == "whole-image-2d" or image.ndim != 3:
        return None
    transform = orientation_transform(image.affine, card.preprocessing.orientation)
    own = to_card_axes(image.spacing, transform)  # image spacing along the card's axes
    patch = list(card.inference.patch_size or [DEFAULT_WINDOW] * card.spatial_dims)
    spacing = list(card.preprocessing.spacing or [None] * len(patch))
    if card.mode == "slice-2d":
        across = superior_axis(image.affine)
        across = int(transform[across, 0]) if transform is not None else across
        patch.insert(across, 0)
        if len(spacing) == 2:
            spacing.insert(across, None)
    margin_mm = np.array([np.ceil(p * overlap / 2.0) * (s if s else o) for p, s, o in zip(patch, spacing, own)])
    if transform is not None:  # back to the voxel axes
        margin_mm = margin_mm[transform[:, 0].astype(int)]
    return np.ceil(margin_mm / image.spacing - 1e-6).astype(int)


def grow(box: Box, margin: Sequence[int], shape: Shape) -> Box:
    """``box`` grown by ``margin`` voxels per axis (None: the whole image of ``shape``); see ``clip``."""
    if margin is None:
        return tuple((0, int(n)) for n in shape)
    return tuple((lo - int(m), hi + int(m)) for (lo, hi), m in zip(box, margin))


def within(box: Box, outer: Box) -> Box:
    """``box`` in the voxel indices of the crop ``outer`` (which contains it)."""
    return tuple((lo - o, hi - o) for (lo, hi), (o, _) in zip(box, outer))


def crop(image: Image, box: Box) -> Image:
    """The voxels of ``box`` (inside the image) as an image with exact geometry (the affine shifted to its corner)."""
    corner = np.array([lo for lo, _ in box], dtype=np.float64)
    affine = image.affine.copy()
    affine[: image.ndim, image.ndim] = image.to_world(corner)
    return Image(image.array[slices(box)], affine, image.spacing_known, dict(image.meta))
