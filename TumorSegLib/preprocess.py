"""Intensity preprocessing as a model card describes it (shared by inference and training)."""

from __future__ import annotations

import numpy as np

from .cards import ModelCard


def normalize_intensity(array: np.ndarray, card: ModelCard) -> np.ndarray:
    """Map raw intensities to the network's [0, 1] input: window, clip, optionally invert."""
    intensity = card.preprocessing.get("intensity", {})
    low, high = intensity.get("window", (0.0, 1.0))
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    np.clip(out, 0.0, 1.0, out=out)
    if intensity.get("invert", False):
        out = 1.0 - out
    return out
