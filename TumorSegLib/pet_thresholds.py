"""Threshold delineation of a PET lesion as clinicians do it, on an SUV array around one lesion.

Three rules, measured side by side with the networks (docs/pet-lesion-report.md, NEMA table):

- ``suv25``: every voxel with SUV >= 2.5 (all components: the fixed clinical cut-off);
- ``max41``: voxels >= 41 % of SUVmax, the 26-connected component holding the maximum;
- ``adaptive``: background-adapted (contrast-oriented, Nestle et al., J Nucl Med 2005;46:1342),
  voxels >= 0.15 SUVmean70 + B, the component holding the maximum; SUVmean70 is the mean SUV of
  the voxels >= 70 % of SUVmax, B the median SUV on the border of the box (one voxel thick). The
  border lies in background when the box reaches beyond the lesion (the IBSI crops reach 5 cm
  beyond the GTV; the MIP trace and the NEMA clicks use a box of several lesion radii).

The "maximum" is the seed when one is given (a click, a traced MIP maximum), else the hottest
voxel of the array. ``within`` restricts every rule to a region (e.g. a MIP footprint).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from .errors import TumorSegError

METHODS = ("suv25", "max41", "adaptive")
LABELS = {"suv25": "SUV >= 2.5", "max41": "41 % SUVmax", "adaptive": "background-adapted (Nestle)"}
FIXED_SUV = 2.5
FRACTION = 0.41
NESTLE_BETA = 0.15
NESTLE_CORE = 0.70


def component_at(mask: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The 26-connected component of ``mask`` holding voxel ``index`` (empty when that voxel is off)."""
    index = tuple(int(i) for i in index)
    if not mask[index]:
        return np.zeros(mask.shape, dtype=bool)
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels == labels[index]


def border_median(suv: np.ndarray) -> float:
    """Median of the voxels on the outer faces of the array (the background estimate B)."""
    inner = np.zeros(suv.shape, dtype=bool)
    inner[tuple(slice(1, -1) if n > 2 else slice(0, 0) for n in suv.shape)] = True
    return float(np.median(suv[~inner]))


def threshold_mask(suv: np.ndarray, method: str, seed: Sequence[int] | None = None, within: Optional[np.ndarray] = None) -> np.ndarray:
    """The lesion mask of one rule (``METHODS``) on ``suv``; see the module docstring."""
    if method not in METHODS:
        raise TumorSegError(f"unknown threshold method {method!r}; known: {METHODS}")
    suv = np.asarray(suv, dtype=np.float32)
    region = np.ones(suv.shape, dtype=bool) if within is None else np.asarray(within, dtype=bool)
    if not region.any():
        return np.zeros(suv.shape, dtype=bool)
    if method == "suv25":
        return region & (suv >= FIXED_SUV)
    if seed is None:
        seed = np.unravel_index(int(np.argmax(np.where(region, suv, -np.inf))), suv.shape)
    peak = float(suv[tuple(int(i) for i in seed)])
    if method == "max41":
        cut = FRACTION * peak
    else:
        core = component_at(region & (suv >= NESTLE_CORE * peak), seed)
        cut = NESTLE_BETA * float(suv[core].mean()) + border_median(suv)
    return component_at(region & (suv >= cut), seed)
