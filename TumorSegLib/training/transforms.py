"""MONAI dictionary transforms for training: loading with the card's preprocessing, then augmentation.

Loading goes through ``TumorSegLib.io`` (the reader inference uses: exact geometry, the DM i AI
PNG's R channel) and ``TumorSegLib.preprocess`` (the card's orientation, spacing, window and
inversion, in the engine's order), so the network sees in training what the engine gives it. Padding uses 0, the window's low end
after normalisation (air for CT, background white for an inverted MIP, no uptake for PET).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from monai import transforms as mt

from ..image import binary_mask, superior_axis
from ..io import read_image
from ..preprocess import normalize_intensity, reorient, resample, resampled_shape

# RandCropByPosNegLabeld warns for every control (no tumour to centre on); that is intended.
warnings.filterwarnings("ignore", message=".*unable to generate class balanced samples.*")


def read_pair(case) -> tuple:
    """(Image, bool mask on its grid) of a case; controls get an all-background mask."""
    image = read_image(case.image, "training image")
    image.require_finite(f"training image {case.name}")
    if case.mask is None:
        return image, np.zeros(image.shape, dtype=bool)
    mask_image = read_image(case.mask, "training mask")
    mask_image.require_same_grid(image, f"mask {case.mask.name}", f"image {case.name}")
    return image, binary_mask(mask_image, f"mask {case.mask.name}")


def prepare(image, mask: np.ndarray, card) -> dict:
    """The engine's preprocessing of an image and its mask: reorient, resample, window.

    Returns {"image": float32 in [0, 1], "label": uint8, "axis": the axial voxel axis (3D) or None}.
    """
    preprocessing = card.preprocessing
    oriented, _ = reorient(image, preprocessing.get("orientation"))
    label, _ = reorient(image.with_array(mask.astype(np.uint8)), preprocessing.get("orientation"))
    array, label = np.asarray(oriented.array, dtype=np.float32), label.array
    axis = superior_axis(oriented.affine) if oriented.ndim == 3 else None
    spacing = preprocessing.get("spacing")
    if spacing and oriented.spacing_known:
        spacing = list(spacing)
        if card.mode == "slice-2d" and len(spacing) == 2:
            spacing.insert(axis, None)
        shape = resampled_shape(array.shape, oriented.spacing, spacing)
        array = resample(array, shape)
        label = resample(label.astype(np.float32), shape) >= 0.5
    return {"image": normalize_intensity(array, card), "label": np.asarray(label, dtype=np.uint8), "axis": axis}


class LoadCased(mt.MapTransform):
    """{"case": Case} -> ``prepare`` of its image and mask (what the network trains on)."""

    def __init__(self, card):
        super().__init__(keys=["case"])
        self.card = card

    def __call__(self, data: dict) -> dict:
        image, mask = read_pair(data["case"])
        return prepare(image, mask, self.card)


def load_arrays(card):
    """A callable ``case -> {"image", "label", "axis"}`` (what the training dataset caches)."""
    loader = LoadCased(card)
    return lambda case: loader({"case": case})


def augmentation(train: dict, spatial_dims: int, seed: int) -> mt.Compose:
    """Pad to the patch, tumour/background-balanced crops, flips, rotation+scaling, intensity jitter,
    optionally a simulated lower resolution and Gaussian noise (``augment.lowres_*``, ``noise_*``)."""
    keys = ["image", "label"]
    patch = [int(p) for p in train["patch_size"]]
    aug = train["augment"]
    steps = [
        mt.SpatialPadd(keys, spatial_size=patch, value=0),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=float(train["pos"]),
                                  neg=float(train["neg"]), num_samples=int(train["crops_per_case"])),
    ]
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
                                                   zoom_range=tuple(float(z) for z in aug["lowres_zoom"])))
    if float(aug["noise_prob"]) > 0:
        steps.append(mt.RandGaussianNoised("image", prob=float(aug["noise_prob"]), std=float(aug["noise_std"])))
    steps += [mt.ToTensord(keys, track_meta=False), mt.EnsureTyped(keys, dtype=np.float32, track_meta=False)]
    compose = mt.Compose(steps)
    compose.set_random_state(seed=seed)
    return compose

