"""Paired comparison of two models on the same cases: the benchmark scripts' ship-rule statistic."""

from __future__ import annotations

import numpy as np


def paired_change(new, old, resamples: int = 4000, seed: int = 0) -> dict:
    """Mean of ``new - old`` (one value per case, same order), its bootstrap 95 % interval over cases, and how many
    cases went up and down."""
    diff = np.asarray(new, dtype=float) - np.asarray(old, dtype=float)
    means = diff[np.random.default_rng(seed).integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, (2.5, 97.5))
    return {"mean": float(diff.mean()), "low": float(low), "high": float(high),
            "better": int(np.sum(diff > 1e-9)), "worse": int(np.sum(diff < -1e-9))}
