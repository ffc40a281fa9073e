"""Context augmentation: a training case embedded in a larger synthetic study, cropped anywhere.

The lesion models are trained on small crops centred on one lesion; clicked inside a whole study
the lesion sits anywhere in overlapping windows, surrounded by other content. ``ContextCropd``
(``augment.context`` of the training config) shows the network that situation: with probability
``prob`` a case is placed in a canvas filled with a background drawn per sample, and each
training window is cut at a random offset, so that the lesion can be anywhere in the window,
near its edges or cut by them. Only the window is built (the canvas is never allocated).

Backgrounds are given in the card's working units (HU for CT, SUV for PET) and windowed by the
card's intensity window, as the engine windows a study::

    "context": {"prob": 0.5, "backgrounds": [
        {"kind": "noise", "weight": 2, "mean": [-900, -800], "sd": [10, 60], "smooth": [0, 2]},
        {"kind": "noise", "mean": [-1000, -1000], "sd": [0, 0]},
        {"kind": "edge"}]}

``noise``: a constant mean drawn from ``mean``, plus Gaussian noise of standard deviation drawn
from ``sd``, smoothed by a Gaussian of sigma drawn from ``smooth`` (voxels of the working grid)
and rescaled to that deviation; the label is 0 there. ``edge``: the case's border voxels replicated
outwards with their label (a lesion cut by the crop's edge continues, labelled as it looks).
``weight`` (default 1): the odds of each background.
"""

from __future__ import annotations

import numpy as np
from monai import transforms as mt
from scipy import ndimage

from ..preprocess import normalize_intensity

KINDS = ("noise", "edge")


def context_problems(context: dict) -> list:
    """What is wrong with an ``augment.context`` setting (empty when it is usable)."""
    if not isinstance(context, dict) or set(context) - {"prob", "backgrounds"}:
        return [f"train.augment.context must be an object with 'prob' and 'backgrounds', got {context!r}"]
    prob = context.get("prob", 0.0)
    if not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
        return [f"train.augment.context.prob must lie in [0, 1], got {prob!r}"]
    backgrounds = context.get("backgrounds", [])
    if float(prob) > 0 and (not isinstance(backgrounds, list) or not backgrounds):
        return ["train.augment.context.backgrounds must list at least one background when prob > 0"]
    return [problem for background in backgrounds for problem in _background_problems(background)]


def _background_problems(background) -> list:
    where = f"train.augment.context background {background!r}"
    if not isinstance(background, dict) or background.get("kind") not in KINDS:
        return [f"{where}: needs a kind, one of {KINDS}"]
    known = {"kind", "weight"} | ({"mean", "sd", "smooth"} if background["kind"] == "noise" else set())
    problems = [f"{where}: unknown setting(s) {sorted(set(background) - known)}"] if set(background) - known else []
    weight = background.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
        problems.append(f"{where}: weight must be positive")
    if background["kind"] == "noise":
        for key in ("mean", "sd", "smooth"):
            value = background.get(key, [0, 0] if key == "smooth" else None)
            if not _is_range(value) or (key != "mean" and value[0] < 0):
                problems.append(f"{where}: {key} must be [low, high], low <= high" + ("" if key == "mean" else ", low >= 0"))
    return problems


def _is_range(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and value[0] <= value[1])


class ContextCropd(mt.Randomizable, mt.MapTransform):
    """{"image", "label"} (channel first) -> ``num_samples`` windows of size ``patch``.

    With probability ``context["prob"]`` per case the windows are cut from the case embedded in a
    synthetic background: tumour windows (odds ``pos`` : ``neg``) hold a random tumour voxel at a
    uniformly random place of the window; background windows overlap the case by at least one
    voxel on every axis. Otherwise ``fallback`` (the usual pad and balanced crop) makes them.
    """

    def __init__(self, keys, patch, context: dict, card, pos: float, neg: float, num_samples: int, fallback):
        mt.MapTransform.__init__(self, keys)
        self.patch = np.asarray(patch, dtype=int)
        self.prob = float(context["prob"])
        self.backgrounds = list(context["backgrounds"])
        weights = np.array([float(b.get("weight", 1.0)) for b in self.backgrounds])
        self.odds = weights / weights.sum()
        self.card, self.num_samples, self.fallback = card, int(num_samples), fallback
        self.positive_odds = float(pos) / (float(pos) + float(neg))

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.fallback.set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, data=None) -> bool:
        return bool(self.R.rand() < self.prob)

    def __call__(self, data: dict):
        if not self.randomize():
            return self.fallback(data)
        image, label = data["image"], data["label"]
        tumour = np.argwhere(np.asarray(label[0]) > 0)
        return [self._window(image, label, tumour) for _ in range(self.num_samples)]

    def _window(self, image, label, tumour: np.ndarray) -> dict:
        shape = np.array(image.shape[1:])
        if len(tumour) and self.R.rand() < self.positive_odds:
            origin = tumour[self.R.randint(len(tumour))] - self.R.randint(0, self.patch)
        else:
            origin = np.array([self.R.randint(1 - p, s) for p, s in zip(self.patch, shape)])
        background = self.backgrounds[self.R.choice(len(self.backgrounds), p=self.odds)]
        if background["kind"] == "edge":  # every window voxel is a copy of a case voxel, label included
            index = (slice(None),) + np.ix_(*[np.clip(o + np.arange(p), 0, s - 1)
                                              for o, p, s in zip(origin, self.patch, shape)])
            return {"image": image[index].astype(np.float32), "label": label[index]}
        canvas = normalize_intensity(self._noise(background), self.card)
        return {"image": paste(image, origin, self.patch, canvas), "label": paste(label, origin, self.patch, 0)}

    def _noise(self, background: dict) -> np.ndarray:
        mean = self.R.uniform(*background["mean"])
        sd = self.R.uniform(*background["sd"])
        sigma = self.R.uniform(*background.get("smooth", [0, 0]))
        noise = self.R.standard_normal(tuple(self.patch)).astype(np.float32)
        if sigma > 0:
            noise = ndimage.gaussian_filter(noise, sigma, mode="reflect")
            noise /= max(float(noise.std()), 1e-6)
        return mean + sd * noise


def paste(array: np.ndarray, origin, patch, fill) -> np.ndarray:
    """The window of ``array`` (channel first) at ``origin`` (may lie outside it) and size ``patch``;
    voxels outside ``array`` come from ``fill`` (a scalar, or a ``patch``-shaped array shared by all channels)."""
    out = np.empty((array.shape[0],) + tuple(int(p) for p in patch), dtype=array.dtype)
    out[...] = fill
    source, target = [], []
    for o, p, s in zip(origin, patch, array.shape[1:]):
        low, high = max(int(o), 0), min(int(o) + int(p), s)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - int(o), high - int(o)))
    out[(slice(None),) + tuple(target)] = array[(slice(None),) + tuple(source)]
    return out
