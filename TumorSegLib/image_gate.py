"""Whole-image 'any tumour' gate of a whole-image 2D model (the card's ``postprocessing.image_gate``).

A small CNN looks at the whole image, ``GATE_CHANNELS`` (the card's normalised uptake and the network's tumour
probability) max-pooled by ``pool`` so that hot spots survive, on a canvas of ``height`` x ``width`` pixels (the
image at its top left, zero beyond it, cropped where larger), and scores whether the image holds any tumour. Its
features are the convolutions' global maximum and mean. An image scoring below ``threshold`` loses every lesion:
healthy scans whose physiological uptake (brown fat, bowel, brain, bladder) the segmentation network marks are
recognised from the whole pattern rather than lesion by lesion. With ``protect_px``, an image holding a lesion of at
least that many pixels keeps its lesions whatever its score (a large tumour may look like a heart to the gate). A
score is the mean over the image and its left-right mirror image (training flips too).
"""

from __future__ import annotations

import numpy as np

from .lesion_filter import is_finite_number, is_whole_number, network_entry_problems
from .measure import label_lesions

GATE_CHANNELS = ("uptake", "probability")
SPEC_KEYS = {"network", "threshold"}
OPTIONAL_KEYS = {"protect_px"}


def gate_input(uptake: np.ndarray, probability: np.ndarray, network: dict) -> np.ndarray:
    """(len(GATE_CHANNELS), height / pool, width / pool) float32: the image's channels on the spec's canvas, max-pooled."""
    height, width, pool = network["height"], network["width"], network["pool"]
    canvas = np.zeros((len(GATE_CHANNELS), height, width), np.float32)
    rows, cols = min(height, uptake.shape[0]), min(width, uptake.shape[1])
    for k, channel in enumerate((uptake, probability)):
        canvas[k, :rows, :cols] = channel[:rows, :cols]
    return canvas.reshape(len(GATE_CHANNELS), height // pool, pool, width // pool, pool).max(axis=(2, 4))


def apply_gate(mask: np.ndarray, probability: np.ndarray, uptake: np.ndarray, spec: dict, network,
               notes: list) -> np.ndarray:
    """``mask``, or an empty mask when the image scores below the spec's threshold (noted in ``notes``).
    ``network``: the spec's loaded ``gate_net.GateNet``."""
    from .gate_net import gate_scores

    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or largest_lesion_px(mask) >= spec.get("protect_px", np.inf):
        return mask
    score = float(gate_scores(network, gate_input(uptake, probability, spec["network"])[None])[0])
    if score >= float(spec["threshold"]):
        return mask
    notes.append(f"image gate: removed every lesion: the whole image scores as free of tumour "
                 f"({score:.2f} < {spec['threshold']:g})")
    return np.zeros(mask.shape, dtype=bool)


def largest_lesion_px(mask: np.ndarray) -> int:
    """Pixels of the largest lesion (8-connected) of a 2D mask; 0 for an empty one."""
    labels, count = label_lesions(mask, 2)
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0


def gate_problems(spec, mode: str) -> list:
    """What is wrong with a card's ``postprocessing.image_gate`` (empty list: usable; its file is checked where
    the card is run)."""
    if spec is None:
        return []
    where = "postprocessing.image_gate"
    if mode != "whole-image-2d":
        return [f"{where} applies to whole-image-2d models only, not {mode!r}"]
    if not isinstance(spec, dict) or not SPEC_KEYS <= set(spec) <= SPEC_KEYS | OPTIONAL_KEYS:
        return [f"{where} must have the keys {sorted(SPEC_KEYS)} (and optionally {sorted(OPTIONAL_KEYS)})"]
    problems = []
    if "protect_px" in spec and not (is_whole_number(spec["protect_px"]) and spec["protect_px"] > 0):
        problems.append(f"{where}.protect_px must be a positive whole number of pixels, got {spec['protect_px']!r}")
    threshold = spec["threshold"]
    if not (is_finite_number(threshold) and 0.0 <= threshold < 1.0):
        problems.append(f"{where}.threshold must lie in [0, 1), got {threshold!r}")
    network = spec["network"]
    entry = network_entry_problems(network, f"{where}.network", ("height", "width", "pool"))
    if entry:
        return problems + entry
    if network["height"] % network["pool"] or network["width"] % network["pool"]:
        problems.append(f"{where}.network.height and width must be multiples of pool")
    elif min(network["height"], network["width"]) // network["pool"] < 2 ** (len(network["channels"]) - 1):
        problems.append(f"{where}.network: the pooled canvas must allow {len(network['channels']) - 1} halvings")
    return problems
