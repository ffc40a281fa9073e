"""Whole-body PET in 3D from a MIP model: each lesion found on the MIP is traced back into the volume.

``segment_traced(segmenter, volume)`` runs a MIP-PET card on the coronal MIP of a 3D SUV volume
(``Segmenter.predict``), then for every lesion of the 2D mask (8-connected):

1. its footprint (MIP pixels) is a bundle of projection rays; the prism of voxels on those rays
   is where the lesion may lie;
2. the hottest voxel of the prism is the lesion's seed: the depth of its maximum along the rays;
3. around the seed, in a box of ``BOX_MM`` edge, the lesion is delineated by the EANM rule for
   metabolic tumour volume (``pet_thresholds``, method ``max41``: voxels >= 41 % of the seed's
   SUV, the 26-connected component holding the seed), kept inside the prism. (The background-
   adapted rule over-segments small blurred lesions; the network ``pet-lesion-3d`` was trained on
   large sarcomas only, so neither is used here.)

The result is a 3D mask on the volume's own grid (any flips, obliquity, spacing: the geometry is
the MIP's own, ``mip.MipGeometry``). Its probability map is the MIP probability of each voxel's
ray, zero off the delineated voxels. A 3D ``roi`` (voxel box of the volume) becomes the MIP box of
its rows and columns plus a depth range on the projection axis; a ``point`` works as for the MIP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from .hints import Box, Overrides, Point
from .image import Image
from .mip import MipGeometry, mip_geometry
from .pet_thresholds import threshold_mask
from .progress import Cancel, ProgressCallback

if TYPE_CHECKING:
    from .engine import Segmenter

BOX_MM = 100.0  # edge of the delineation box around a traced seed (several radii of a typical lesion)


def to_source_plane(plane: np.ndarray, geometry: MipGeometry) -> np.ndarray:
    """Inverse of ``mip.project_max``'s reordering: a MIP-ordered 2D array on the two kept voxel axes."""
    out = plane
    if geometry.col_flip:
        out = out[:, ::-1]
    if geometry.row_flip:
        out = out[::-1]
    kept = [a for a in range(3) if a != geometry.projection_axis]
    if kept.index(geometry.row_axis) != 0:
        out = out.T
    return np.ascontiguousarray(out)


def prism(plane: np.ndarray, geometry: MipGeometry) -> np.ndarray:
    """A MIP-ordered 2D array spread along the projection rays over the source volume's grid."""
    spread = np.expand_dims(to_source_plane(plane, geometry), geometry.projection_axis)
    return np.broadcast_to(spread, geometry.source_shape)


def mip_box(roi_box: Box, geometry: MipGeometry) -> Box:
    """The MIP (row, col) box of a 3D voxel box ((lo, hi) per axis)."""
    def mip_range(axis, flip):
        lo, hi = roi_box[axis]
        n = geometry.source_shape[axis]
        return (n - hi, n - lo) if flip else (lo, hi)

    return mip_range(geometry.row_axis, geometry.row_flip), mip_range(geometry.col_axis, geometry.col_flip)


def trace_lesions(volume: Image, mip_mask: np.ndarray, geometry: MipGeometry,
                  depth: np.ndarray | None = None) -> tuple:
    """3D mask of the lesions of ``mip_mask`` traced into ``volume`` (SUV); returns (mask, seeds).

    ``seeds`` are the voxel indices of each lesion's maximum, in MIP-label order; ``depth``
    (lo, hi) limits the projection axis (a 3D ROI).
    """
    suv = np.asarray(volume.array, dtype=np.float32)
    labels, count = ndimage.label(mip_mask, structure=np.ones((3, 3), dtype=bool))
    allowed = np.ones(suv.shape, dtype=bool)
    if depth is not None:
        allowed = np.zeros(suv.shape, dtype=bool)
        allowed[(slice(None),) * geometry.projection_axis + (slice(*depth),)] = True
    half = np.ceil(BOX_MM / 2.0 / volume.spacing).astype(int)
    mask, seeds = np.zeros(suv.shape, dtype=bool), []
    for number in range(1, count + 1):
        rays = prism(labels == number, geometry) & allowed
        if not rays.any():
            continue
        seed = np.array(np.unravel_index(int(np.argmax(np.where(rays, suv, -np.inf))), suv.shape))
        box = tuple(slice(max(s - h, 0), min(s + h + 1, n)) for s, h, n in zip(seed, half, suv.shape))
        local = threshold_mask(suv[box], "max41", seed - [b.start for b in box], within=rays[box])
        mask[box] |= local
        seeds.append(seed)
    return mask, seeds


def segment_traced(segmenter: Segmenter, volume: Image, roi: Sequence[int] | None = None,
                   points: Sequence[Point] | None = None, progress: ProgressCallback | None = None,
                   cancel: Cancel | None = None, overrides: Overrides = None) -> tuple:
    """(3D Prediction on ``volume``'s grid, the 2D MIP Prediction) for a MIP-PET ``segmenter``."""
    from .boxes import parse_box
    from .engine import MIP_NOTE, Prediction
    from .progress import no_progress

    depth = mip_roi = None
    if roi is not None:
        box = parse_box(roi, volume.shape)
        geometry = mip_geometry(volume.affine, volume.shape)
        (r0, r1), (c0, c1) = mip_box(box, geometry)
        mip_roi, depth = (r0, r1, c0, c1), box[geometry.projection_axis]
    flat = segmenter.predict(volume, roi=mip_roi, points=points, progress=progress or no_progress, cancel=cancel,
                             overrides=overrides)
    geometry = flat.image.meta["mip"]
    mask, seeds = trace_lesions(volume, flat.mask, geometry, depth)
    probability = np.where(mask, prism(flat.probability, geometry), 0.0).astype(np.float32)
    notes = [n for n in flat.notes if n != MIP_NOTE]  # the mask is traced back onto the volume
    notes.append(f"{len(seeds)} MIP lesion(s) traced into 3D: seed at the ray maximum, 41 % of its SUV "
                 f"in a {BOX_MM:g} mm box, kept inside the MIP footprint")
    return Prediction(probability, mask, volume, flat.device, notes), flat
