"""The modality rule: PET (SUV) or CT (HU), from a DICOM Modality or from a volume's values.

One rule for the engine's input checks (``engine.check_input``), the readouts
(``measure.resolve_modality``) and the Slicer module (``logic.detectModality``):

- a DICOM Modality PT or PET is PET, CT is CT;
- else a volume with any value below ``CT_MIN_BELOW`` (air or fat in HU) is CT;
- else one of floating-point values whose 99th percentile stays at or below ``SUV_P99_MAX`` is PET
  in SUV;
- else it is neither (``guess`` gives None): no air in HU, and stored as integers or too hot for SUV
  (a PET in Bq/mL is about 1000x SUV). The engine refuses only what is surely wrong for a card: a
  PET card refuses air and activity concentration, a CT card a volume without air.
"""

from __future__ import annotations

import numpy as np

CT_MIN_BELOW = -100.0  # a CT in HU has air or fat below this; PET (SUV) never reaches it
SUV_P99_MAX = 50.0  # 99th percentile of a PET in SUV stays far below this; in Bq/mL it is ~1000x larger


def from_dicom(modality: str | None) -> str | None:
    """"PET" or "CT" from a DICOM Modality (PT, PET, CT; any case), else None."""
    return {"PT": "PET", "PET": "PET", "CT": "CT"}.get(str(modality or "").strip().upper())


def value_range(array: np.ndarray, step: int = 1) -> tuple:
    """(min, max) of every ``step``-th voxel along each axis; NaN or infinity show in these two."""
    array = array[(slice(None, None, step),) * array.ndim]
    return float(np.min(array)), float(np.max(array))


def has_air(low: float) -> bool:
    """Whether a volume whose lowest value is ``low`` holds air or fat in HU (so it is CT)."""
    return low < CT_MIN_BELOW


def looks_like_activity(array: np.ndarray) -> bool:
    """A volume whose 99th percentile exceeds ``SUV_P99_MAX``: activity concentration (Bq/mL), not SUV."""
    return bool(np.percentile(array, 99) > SUV_P99_MAX)


def guess(array: np.ndarray) -> str | None:
    """"CT" (air or fat in HU), "PET" (values of SUV) or None (neither) by the rule above."""
    if has_air(value_range(array)[0]):
        return "CT"
    return "PET" if np.issubdtype(array.dtype, np.floating) and not looks_like_activity(array) else None
