"""MONAI dictionary transforms for training: loading with the card's preprocessing, then augmentation.

Loading goes through ``TumorSegLib.io`` (the reader inference uses: exact geometry, the DM i AI
PNG's R channel) and ``preprocess.prepare`` (the engine's own preprocessing: the card's orientation,
spacing, window and inversion), so the network sees in training what the engine gives it. Padding uses 0, the window's low end
after normalisation (air for CT, background white for an inverted MIP, no uptake for PET).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
from monai import transforms as mt

from ..cards import ModelCard
from ..errors import TumorSegError
from ..image import Image, binary_mask
from ..io import read_image
from ..preprocess import move_to_level, prepare
from ..windowed import read_input
from .data import Case
from .context import ContextCropd

# RandCropByPosNegLabeld warns for every control (no tumour to centre on); that is intended.
warnings.filterwarnings("ignore", message=".*unable to generate class balanced samples.*")


def read_pair(case: Case, card: ModelCard | None = None, values: Sequence[int] | None = None) -> tuple:
    """(Image, bool mask on its grid) of a case; controls get an all-background mask.

    ``card``: read JPEG pictures the way it says (``windowed.read_input``); ``values``: the mask
    values that count (None: every non-zero value).
    """
    image, labels = _read_case(case, card)
    return image, _select(image, labels, values, case)


def read_channels(case: Case, card: ModelCard, label_values: Sequence[Sequence[int]]) -> tuple:
    """(Image, bool stack (channel, ...) with one mask per entry of ``label_values``) of a case."""
    image, labels = _read_case(case, card)
    return image, np.stack([_select(image, labels, values, case) for values in label_values])


def _read_case(case, card) -> tuple:
    image = read_input(case.image, card, "training image") if card is not None else read_image(case.image, "training image")
    image.require_finite(f"training image {case.name}")
    if case.mask is None:
        return image, None
    mask_image = read_image(case.mask, "training mask")
    if "picture" in image.meta and mask_image.shape == image.shape:  # the picture's grid is the mask's, spacing assumed
        mask_image = image.with_array(mask_image.array)
    mask_image.require_same_grid(image, f"mask {case.mask.name}", f"image {case.name}")
    return image, mask_image


def _select(image, labels, values, case) -> np.ndarray:
    if labels is None:
        return np.zeros(image.shape, dtype=bool)
    if values is None:
        return binary_mask(labels, f"mask {case.mask.name}")
    return np.isin(labels.array, values)


def prepare_case(image: Image, mask: np.ndarray, card: ModelCard) -> dict:
    """An image and its mask as the engine gives them to the network (``preprocess.prepare``).

    ``mask`` is on the image's grid, or a stack (channel, ...) of such masks. Returns {"image":
    float32 in [0, 1], "label": uint8 (stacked like ``mask``), "axis": the axial voxel axis (3D) or None}.
    """
    level = card.preprocessing.organ_level
    if level is not None:  # by the true organ: the label channel of the organ's output channel
        if mask.ndim == image.ndim:
            raise TumorSegError(f"model {card.name!r} moves its input to an organ's level: data.label_values must "
                                "give one label channel per output channel")
        image, _ = move_to_level(image, mask[level.channel] > 0, level.value)
    prepared = prepare(image, card)
    labels = [prepared.to_network(m) >= 0.5 for m in (mask if mask.ndim > image.ndim else [mask])]
    label = np.stack(labels) if mask.ndim > image.ndim else labels[0]
    return {"image": prepared.array, "label": np.asarray(label, dtype=np.uint8), "axis": prepared.axis}


class LoadCased(mt.MapTransform):
    """{"case": Case} -> ``prepare_case`` of its image and mask (what the network trains on)."""

    def __init__(self, card, label_values=None):
        super().__init__(keys=["case"])
        self.card, self.label_values = card, label_values

    def __call__(self, data: dict) -> dict:
        if self.label_values is None:
            image, mask = read_pair(data["case"], self.card)
        else:
            image, mask = read_channels(data["case"], self.card, self.label_values)
        return prepare_case(image, mask, self.card)


def load_arrays(card: ModelCard, label_values: Sequence[Sequence[int]] | None = None) -> Callable[[Case], dict]:
    """A callable ``case -> {"image", "label", "axis"}`` (what the training dataset caches).

    ``label_values`` (the config's ``data.label_values``): one label channel per entry, tumour first.
    """
    loader = LoadCased(card, label_values)
    return lambda case: loader({"case": case})


def augmentation(train: dict, spatial_dims: int, seed: int, card: ModelCard | None = None) -> mt.Compose:
    """Pad to the patch, tumour/background-balanced crops, flips, rotation+scaling, intensity jitter,
    optionally a simulated lower resolution and Gaussian noise (``augment.lowres_*``, ``noise_*``)
    and, before all of them, the case in a synthetic study (``augment.context``, windowed with
    ``card``'s intensity window; ``training.context``)."""
    keys = ["image", "label"]
    patch = [int(p) for p in train["patch_size"]]
    aug = train["augment"]
    steps = [
        mt.SpatialPadd(keys, spatial_size=patch, value=0),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=float(train["pos"]),
                                  neg=float(train["neg"]), num_samples=int(train["crops_per_case"])),
    ]
    context = aug.get("context", {})
    if float(context.get("prob", 0.0)) > 0:  # off: the steps (and their random streams) stay as they were
        steps = [ContextCropd(keys, patch, context, card, float(train["pos"]), float(train["neg"]),
                              int(train["crops_per_case"]), mt.Compose(steps))]
    steps += [mt.RandFlipd(keys, prob=float(aug["flip_prob"]), spatial_axis=int(axis)) for axis in aug["flip_axes"]]
    if float(aug["affine_prob"]) > 0 and (aug["rotate_degrees"] or aug["scale"]):
        angle = math.radians(float(aug["rotate_degrees"]))
        rotate = [angle] if spatial_dims == 2 else [0.0, 0.0, angle]
        steps.append(mt.RandAffined(keys, prob=float(aug["affine_prob"]), rotate_range=rotate,
                                    scale_range=[float(aug["scale"])] * spatial_dims, mode=("bilinear", "nearest"),
                                    padding_mode="zeros"))
    if float(aug["intensity_prob"]) > 0:
        steps += [mt.RandScaleIntensityd("image", factors=float(aug["intensity_scale"]), prob=float(aug["intensity_prob"])),
                  mt.RandShiftIntensityd("image", offsets=float(aug["intensity_shift"]), prob=float(aug["intensity_prob"]))]
    if float(aug["lowres_prob"]) > 0:  # a coarser scanner: down- and up-sample the image (not the label)
        steps.append(mt.RandSimulateLowResolutiond("image", prob=float(aug["lowres_prob"]),
                                                   zoom_range=tuple(float(z) for z in aug["lowres_zoom"]),
                                                   upsample_mode="bilinear" if spatial_dims == 2 else "trilinear"))
    if float(aug["noise_prob"]) > 0:
        steps.append(mt.RandGaussianNoised("image", prob=float(aug["noise_prob"]), std=float(aug["noise_std"])))
    steps += [mt.ToTensord(keys, track_meta=False), mt.EnsureTyped(keys, dtype=np.float32, track_meta=False)]
    compose = mt.Compose(steps)
    compose.set_random_state(seed=seed)
    return compose

