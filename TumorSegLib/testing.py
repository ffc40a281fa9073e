"""Test support: synthetic lesion images and tiny models trained in seconds.

``tiny_model`` trains a small AttentionUnet (channels 4, 8, 16) on random bright blobs, so it
learns "bright blob => lesion" and works on any grid, orientation and spacing; a test that feeds
it a flipped, oblique, anisotropic image then catches any axis the engine transposes or flips.
Trained models are cached in ``directory`` (reused when the card's training settings match and
the weights verify), so tests and the Slicer self-test share them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .cards import SHA256_OK, ModelCard, card_from_dict, load_card, sha256, weights_status
from .hints import PathLike, Shape
from .image import Image
from .phantoms import ellipsoid, grid_affine
from .preprocess import normalize_intensity

# Intensity model per modality: (background, lesion, noise sd, card window, invert).
_LOOKS = {
    "CT": (30.0, 250.0, 25.0, (-200.0, 400.0), False),
    "PET": (1.0, 8.0, 0.3, (0.0, 10.0), False),
    "MIP-PET": (225.0, 40.0, 8.0, (0.0, 255.0), True),
}
_AIR_HU = -1000.0


def synthetic_image(shape: Shape, affine: np.ndarray, lesions: Sequence[tuple], modality: str = "CT", seed: int = 0) -> tuple:
    """(Image, bool mask) with ellipsoidal lesions ``[(center_mm, radii_mm), ...]`` on any grid.

    CT has air (-1000 HU) in the first quarter of the first axis so it reads as CT; PET is in
    SUV; MIP-PET is the inverted 0..255 grey of the MIP PNGs (lesions dark).
    """
    background, lesion_value, noise, _, _ = _LOOKS[modality]
    rng = np.random.default_rng(seed)
    array = np.full(shape, background, dtype=np.float32)
    if modality == "CT":
        array[: max(shape[0] // 4, 1)] = _AIR_HU
    mask = np.zeros(shape, dtype=bool)
    for center, radii in lesions:
        blob = ellipsoid(shape, affine, center, radii)
        array[blob] = lesion_value
        mask |= blob
    array += rng.normal(0.0, noise, size=shape).astype(np.float32)
    if modality == "MIP-PET":
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if modality == "PET":
        np.clip(array, 0.0, None, out=array)
    meta = {} if modality == "MIP-PET" else {"modality": modality}
    return Image(array, affine, spacing_known=len(shape) == 3, meta=meta), mask


def _random_case(rng, size: int, ndim: int, modality: str) -> tuple:
    """A training patch (array, mask) in voxel units: 0-3 random blobs (radius 2-6 voxels)."""
    shape = (size,) * ndim
    affine = np.eye(ndim + 1)
    lesions = []
    for _ in range(int(rng.integers(0, 4))):
        center = rng.uniform(4, size - 4, ndim)
        lesions.append((center, rng.uniform(2.0, 6.0, ndim)))
    image, mask = synthetic_image(shape, affine, lesions, modality, seed=int(rng.integers(1 << 31)))
    axis = int(rng.integers(ndim))  # air (CT) on any side, not only at the start of axis 0
    return np.flip(image.array, axis).copy(), np.flip(mask, axis).copy()


def tiny_card_dict(name: str, mode: str, modality: str, spacing: Sequence[float] | None = None) -> dict:
    ndim = 3 if mode == "sliding-window-3d" else 2
    _, _, _, window, invert = _LOOKS[modality]
    preprocessing = {"intensity": {"window": list(window), "invert": invert}, "spacing": spacing}
    if modality == "MIP-PET":
        preprocessing["mip"] = {"window": [0.0, 10.0], "invert": True}
    return {
        "name": name,
        "title": f"Tiny test model ({modality}, {mode})",
        "description": "Trained in seconds on synthetic bright blobs by TumorSegLib.testing.tiny_model; for tests only.",
        "modality": modality,
        "mode": mode,
        "network": {"name": "AttentionUnet", "args": {"spatial_dims": ndim, "in_channels": 1, "out_channels": 1,
                                                      "channels": [4, 8, 16], "strides": [2, 2]}},
        "preprocessing": preprocessing,
        "inference": {"patch_size": [32] * ndim if mode == "sliding-window-3d" else None, "overlap": 0.25,
                      "blending": "gaussian", "sw_batch_size": 2, "batch_size": 8, "divisible_by": 4,
                      "context_mm": [40.0] * (2 if mode == "whole-image-2d" else 3), "precision": "fp32"},
        "output": {"activation": "sigmoid", "channel": 0, "threshold": 0.5},
        "postprocessing": {"min_lesion_ml": 0.0},
        "weights": {"file": f"{name}.pt", "format": "state_dict"},
    }


def tiny_model(directory: PathLike, mode: str = "sliding-window-3d", modality: str = "CT", seconds: float | None = None,
               steps: int = 100, spacing: Sequence[float] | None = None, seed: int = 0) -> ModelCard:
    """Train (or reuse) a tiny model; writes ``<directory>/<name>.json`` and its weights.

    Training runs ``steps`` steps with a fixed seed (deterministic); ``seconds`` optionally caps
    the wall time (then fewer steps may run). Returns the loaded card (its weights' SHA-256 checked).
    """
    import torch

    from .networks import build_network

    directory = Path(directory)
    spacing = None if spacing is None else [float(s) for s in spacing]
    directory.mkdir(parents=True, exist_ok=True)
    tag = "" if spacing is None else "-" + "x".join(f"{s:g}" for s in spacing)
    name = f"tiny-{modality.lower()}-{mode}{tag}"
    config = {"mode": mode, "modality": modality, "steps": steps, "seconds": seconds, "spacing": spacing, "seed": seed}
    card_path = directory / f"{name}.json"
    if card_path.is_file():
        card = load_card(card_path)
        if card.provenance.get("config") == config and weights_status(card) == SHA256_OK:
            return card
    data = tiny_card_dict(name, mode, modality, spacing)
    card = card_from_dict(data, card_path)
    ndim = 3 if mode == "sliding-window-3d" else 2
    size, batch, rate = (24, 4, 1e-2) if ndim == 3 else (48, 8, 3e-2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(card).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=rate)
    started = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny work: one thread is fastest on a shared CPU
    try:
        for done in range(1, steps + 1):
            cases = [_random_case(rng, size, ndim, modality) for _ in range(batch)]
            x = torch.from_numpy(np.stack([normalize_intensity(c[0], card) for c in cases]))[:, None]
            y = torch.from_numpy(np.stack([c[1] for c in cases]).astype(np.float32))[:, None]
            logits = network(x)
            probability = torch.sigmoid(logits)
            dice = 1 - (2 * (probability * y).sum() + 1) / (probability.sum() + y.sum() + 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + dice
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if seconds is not None and time.monotonic() - started > seconds:
                break
    finally:
        torch.set_num_threads(threads)
    weights = directory / data["weights"]["file"]
    torch.save(network.state_dict(), weights)
    data["weights"]["sha256"] = sha256(weights)
    data["provenance"] = {"training_data": "synthetic bright blobs (TumorSegLib.testing)", "config": config,
                          "command": "TumorSegLib.testing.tiny_model", "validation": {"steps_run": done,
                                                                                     "final_loss": float(loss.detach())}}
    card_path.write_text(json.dumps(data, indent=2))
    return load_card(card_path)


def tiny_cascade(directory: PathLike, organ: str | None = "Liver", threshold: float = 0.9) -> ModelCard:
    """A cascade of two tiny CT models in ``directory``: the 3D card keeps its tumour inside the organ the slice-2d
    card finds (its channel 0 at ``threshold``, the largest region; ``inference.organ_from``), named ``organ``."""
    own, source = tiny_model(directory, "sliding-window-3d", "CT"), tiny_model(directory, "slice-2d", "CT")
    data = own.to_dict()
    data["name"] = f"tiny-ct-cascade-{organ or 'unnamed'}".lower()
    data["inference"]["organ_from"] = source.name
    data["output"]["within"] = {"channel": 0, "threshold": threshold, "largest_component": True, "organ": organ}
    path = Path(directory) / f"{data['name']}.json"
    path.write_text(json.dumps(data, indent=2))
    return load_card(path)


def lesion_volume(modality: str = "CT", shape: Shape = (40, 36, 20), spacing: Sequence[float] = (1.1, 0.9, 2.5),
                  flip: Sequence[bool] = (True, False, True),
                oblique_degrees: float = 20.0, seed: int = 3) -> tuple:
    """A flipped, oblique, anisotropic volume with two lesions placed asymmetrically: (Image, mask)."""
    affine = grid_affine(shape, spacing, flip, oblique_degrees, center=(5.0, -3.0, 12.0))
    lesions = [((-6.0, 6.0, 14.0), (6.0, 5.0, 7.0)), ((12.0, -10.0, 6.0), (4.5, 4.5, 5.0))]
    return synthetic_image(shape, affine, lesions, modality, seed)


def lesion_png(shape: Shape = (72, 56), seed: int = 4) -> tuple:
    """A 2D MIP-like image (0..255, lesions dark) with two asymmetric lesions: (Image, mask)."""
    affine = np.eye(3)
    lesions = [((14.0, 12.0), (6.0, 4.0)), ((50.0, 40.0), (4.0, 7.0))]
    return synthetic_image(shape, affine, lesions, "MIP-PET", seed)
