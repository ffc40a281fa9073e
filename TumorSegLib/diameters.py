"""Lesion diameters in millimetres: RECIST long and short axis per slice, 3D maximum (Feret).

Convention (the same as pyradiomics' Maximum2DDiameterSlice and Maximum3DDiameter): a lesion's
outline is made of the mid-points between each lesion voxel and each face neighbour (4 in 2D,
6 in 3D) outside the lesion, i.e. the vertices of its marching-cubes surface. Diameters are
the largest distances between those points, so a run of n voxels measures n spacings (edge to
edge) and a digitised sphere of radius R measures about 2R. ITK's Feret diameter, which 3D
Slicer's Segment Statistics reports, joins voxel centres instead and comes out about one
spacing smaller.

All distances are taken in world millimetres through the affine, so flipped, oblique and
anisotropic grids measure alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError

_BLOCK = 1024  # rows per block when searching the farthest pair (bounds memory)
_TIE = 1e-6  # relative: lengths this close are equal (float32-stored affines differ by ~1e-7)


@dataclass
class Segment:
    """A measured segment: length (mm, or pixels on an unknown grid) and end points in voxel indices."""

    length: float
    ends: np.ndarray  # (2, ndim) continuous voxel indices


def boundary_points(mask: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (n, ndim) of the mid-points between lesion voxels and outside face neighbours."""
    padded = np.pad(mask.astype(bool), 1)
    points = []
    for axis in range(mask.ndim):
        for step in (-1, 1):
            outside_next = ~np.roll(padded, -step, axis=axis)
            index = np.argwhere(padded & outside_next).astype(np.float64)
            index[:, axis] += step / 2.0
            points.append(index)
    return np.concatenate(points) - 1.0


def farthest_pair(points: np.ndarray) -> tuple[float, int, int]:
    """Largest distance between rows of ``points`` (n, d) and the two row numbers; (0, 0, 0) for one point.

    Pairs within a relative 1e-6 of the maximum count as equal and the lowest row numbers win, so
    a geometry that differs only by rounding (float32 vs float64 affines) picks the same pair.
    """
    candidates = np.arange(len(points))
    if len(points) > points.shape[1] + 1:
        try:
            candidates = np.sort(ConvexHull(points).vertices)
        except QhullError:  # flat or colinear points: search them all
            pass
    hull = points[candidates]
    best = max(float(squared.max()) for _, squared in _squared_distances(hull))
    for start, squared in _squared_distances(hull):
        rows, cols = np.nonzero(squared >= best * (1.0 - _TIE))
        if len(rows):
            return float(np.sqrt(best)), int(candidates[start + rows[0]]), int(candidates[cols[0]])
    raise AssertionError("unreachable: the maximum lies in some block")


def _squared_distances(points: np.ndarray):
    """(first row, squared distances of rows first.. to all rows), block by block to bound memory."""
    for start in range(0, len(points), _BLOCK):
        yield start, np.sum((points[start:start + _BLOCK, None, :] - points[None, :, :]) ** 2, axis=-1)


def max_diameter(mask: np.ndarray, linear: np.ndarray) -> Segment:
    """Maximum diameter of ``mask`` over all its dimensions; ``linear``: the affine's (ndim x ndim) part."""
    points = boundary_points(mask)
    length, a, b = farthest_pair(points @ linear.T)
    return Segment(length, points[[a, b]])


def recist_axes(mask: np.ndarray, linear: np.ndarray, normal_axis: int | None) -> tuple[Segment, Segment, int | None]:
    """RECIST long axis (longest in-plane diameter, maximum over slices normal to ``normal_axis``),
    the short axis in that slice, and the slice number (None for a 2D mask, ``normal_axis`` None).

    ``linear`` is the affine's (ndim x ndim) part; end points are returned in the mask's indices.
    """
    if normal_axis is None:
        long_axis, short_axis = _slice_axes(mask, _plane_coordinates(linear))
        return long_axis, short_axis, None
    plane_axes = [axis for axis in range(mask.ndim) if axis != normal_axis]
    to_plane = _plane_coordinates(linear[:, plane_axes])
    lengths = {int(number): _slice_long_axis(np.take(mask, number, axis=normal_axis), to_plane)[0].length
               for number in np.flatnonzero(np.any(mask, axis=tuple(plane_axes)))}
    longest = max(lengths.values())
    number = min(n for n, length in lengths.items() if length >= longest * (1.0 - _TIE))  # first slice reaching it
    long_axis, short_axis = _slice_axes(np.take(mask, number, axis=normal_axis), to_plane)
    return _lift(long_axis, normal_axis, number), _lift(short_axis, normal_axis, number), number


def _plane_coordinates(linear: np.ndarray) -> np.ndarray:
    """A 2x2 matrix mapping in-plane indices to isometric plane coordinates (mm), from the
    plane's (d x 2) block of the affine: the triangular factor of its QR decomposition."""
    return np.linalg.qr(linear)[1]


def _slice_long_axis(section: np.ndarray, to_plane: np.ndarray) -> tuple[Segment, np.ndarray, int, int]:
    """Longest diameter of a 2D section, the plane coordinates of its outline and the two end rows."""
    points = boundary_points(section)
    plane = points @ to_plane.T
    length, a, b = farthest_pair(plane)
    return Segment(length, points[[a, b]]), plane, a, b


def _slice_axes(section: np.ndarray, to_plane: np.ndarray) -> tuple[Segment, Segment]:
    """Long and short axis of a 2D section (end points in the section's indices)."""
    long_axis, plane, a, b = _slice_long_axis(section, to_plane)
    bin_width = float(np.min(np.abs(np.diag(to_plane))))
    short_ends = _perpendicular_width(plane, plane[a], plane[b], bin_width)
    short_axis = Segment(float(np.linalg.norm(short_ends[1] - short_ends[0])), np.linalg.solve(to_plane, short_ends.T).T)
    return long_axis, short_axis


def _perpendicular_width(plane: np.ndarray, start: np.ndarray, end: np.ndarray, bin_width: float) -> np.ndarray:
    """End points (2, 2) of the widest extent of ``plane`` points perpendicular to start->end.

    Points are binned by their position along the long axis (bins one spacing wide); in each bin
    the extent across is max - min; the widest bin gives a segment exactly perpendicular to the
    long axis, placed at the mean position of its two extreme points.
    """
    direction = end - start
    norm = np.linalg.norm(direction)
    if norm == 0:
        return np.stack([start, start])
    along_unit = direction / norm
    across_unit = np.array([-along_unit[1], along_unit[0]])
    along = (plane - start) @ along_unit
    across = (plane - start) @ across_unit
    bins = np.floor(along / bin_width + 0.25).astype(np.int64)  # bin edges off the half-spacing lattice of the points
    order = np.lexsort((across, bins))
    first = np.flatnonzero(np.r_[True, bins[order][1:] != bins[order][:-1]])
    last = np.r_[first[1:] - 1, len(order) - 1]
    widths = across[order[last]] - across[order[first]]
    widest = int(np.argmax(widths))
    low, high = order[first[widest]], order[last[widest]]
    position = (along[low] + along[high]) / 2.0
    return np.stack([start + position * along_unit + across[i] * across_unit for i in (low, high)])


def _lift(segment: Segment, normal_axis: int, number: int) -> Segment:
    """End points of an in-slice segment as full voxel indices of the volume."""
    return Segment(segment.length, np.insert(segment.ends, normal_axis, float(number), axis=1))
