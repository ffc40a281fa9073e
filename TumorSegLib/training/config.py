"""The training config: one JSON file, ``<name>.train.json``, kept next to the model card.

Sections (every default is listed in ``DATA_DEFAULTS`` / ``TRAIN_DEFAULTS``)::

    name    the model's name (card and weights file names)
    card    the card's fields except ``weights`` and ``provenance`` (those are written by training)
    data    where the cases are; paths are relative to ``root``, itself relative to the working
            directory (``--data-root`` overrides it):
              images       glob of the image files, e.g. "patients/imgs/*.png", "*/*/SUV.nii.gz"
              case_regex   regex on the image path relative to root; its named groups fill ``mask``
                           and ``patient`` (default "(?P<case>.+)\\.[^/]+$" style: the path without suffix)
              mask         mask path template, e.g. "patients/labels/segmentation_{id}.png"
              patient      patient id template (default: the case); all cases of a patient fall on
                           the same side of the train/validation split
              controls     glob of mask-less healthy controls (all background), or null
              label_values null (every non-zero mask value is tumour), or one list of mask values per
                           sigmoid output channel, tumour first: e.g. [[2], [1, 2]] trains tumour
                           (label 2) and liver (labels 1 and 2) from LiTS masks
              validation_fraction, split_seed   patient-level split (controls split alike, seed + 1)
              folds, fold  k-fold cross-validation instead: patients dealt into ``folds`` folds
                           (seeded by split_seed), fold ``fold`` (0-based) held out
              inner_folds, inner_fold   the held-out part set aside untouched, the rest dealt into
                           ``inner_folds`` folds; inner fold ``inner_fold`` validates (networks whose
                           out-of-fold predictions cover every training patient)
    train   sampling, augmentation, loss, optimiser and schedule (see ``TRAIN_DEFAULTS``)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..cards import ModelCard, card_from_dict
from ..errors import TumorSegError
from ..hints import PathLike
from .context import context_problems

DATA_DEFAULTS = {
    "root": ".",
    "images": None,
    "case_regex": r"(?P<case>.+?)(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.png)$",
    "mask": None,
    "patient": "{case}",
    "controls": None,
    "label_values": None,
    "validation_fraction": 0.2,
    "split_seed": 20240607,
    "folds": None,
    "fold": None,
    "inner_folds": None,
    "inner_fold": None,
}

TRAIN_DEFAULTS = {
    "patch_size": None,            # crop size; default the card's inference.patch_size
    "crops_per_case": 2,           # random crops from each drawn case (RandCropByPosNegLabeld num_samples)
    "cases_per_step": 4,           # cases per step and process: batch = cases_per_step * crops_per_case
    "pos": 1.0,                    # crop centre on tumour : background odds
    "neg": 1.0,
    "positive_weight": 1.0,        # sampling weight of a case (slice-2d: slice) with tumour; without = 1
    "empty_weight": 1.0,           # ... of one whose mask is empty in every channel (e.g. no liver, no tumour)
    "cases_per_epoch": None,       # cases drawn per epoch (weighted, with replacement); default all
    "controls_per_epoch": 0,       # healthy controls drawn per epoch (without replacement)
    "max_steps_per_epoch": None,
    "epochs": 100,
    "validate_every": 1,
    "patience": 20,                # validations without a better Dice before stopping; 0 = never
    "loss": {"name": "dicefocal", "lambda_dice": 1.0, "lambda_focal": 10.0},
    "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 2, "min_lr_ratio": 0.01},
    "augment": {"flip_axes": [], "flip_prob": 0.5, "rotate_degrees": 10.0, "scale": 0.1, "affine_prob": 0.3,
                "intensity_shift": 0.05, "intensity_scale": 0.1, "intensity_prob": 0.5,
                "noise_std": 0.0, "noise_prob": 0.0, "lowres_zoom": [0.5, 1.0], "lowres_prob": 0.0,
                "context": {"prob": 0.0, "backgrounds": []}},  # the case in a synthetic study: training/context.py
    "amp": True,                   # float16 autocast + grad scaling on CUDA
    "bf16_cpu": False,             # bfloat16 autocast on CPU (only if it matches fp32)
    "clip_grad_norm": 1.0,
    "seed": 0,
    "init_weights": None,          # fine-tune: a state_dict file (e.g. a card's .pt) to start from, relative to the working directory
    "num_workers": 0,
    "cache": True,                 # keep preprocessed training cases in memory
    "validation_controls": None,   # at most this many validation controls (None = all)
}

LOSSES = ("dicefocal", "dicece", "bce", "dice")
OPTIMIZERS = ("adamw", "nadam")
SCHEDULES = ("cosine", "plateau", "none")


@dataclass
class TrainConfig:
    name: str
    card: dict
    data: dict
    train: dict
    path: Optional[Path] = None
    notes: list = field(default_factory=list)  # free text for the next reader, kept in the published config

    def model_card(self, weights_file: Optional[str] = None) -> ModelCard:
        """The card being trained (no weights yet): what validation hands to the engine."""
        fields = {**self.card, "name": self.name,
                  "weights": {"file": weights_file or f"{self.name}.pt", "format": "state_dict"}}
        return card_from_dict(fields)

    @property
    def patch_size(self) -> list:
        return list(self.train["patch_size"])

    def to_dict(self) -> dict:
        fields = {"name": self.name, "card": self.card, "data": self.data, "train": self.train}
        return {"notes": self.notes, **fields} if self.notes else fields


def load_config(path: PathLike, data_root: Optional[PathLike] = None, overrides: Optional[dict] = None, fold: Optional[int] = None) -> TrainConfig:
    """Read and check a training config; ``data_root`` replaces ``data.root``, ``fold`` ``data.fold``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TumorSegError(f"cannot read training config {path}: {error}") from error
    if fold is not None and isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        raw["data"]["fold"] = int(fold)
    return config_from_dict(raw, path, data_root, overrides)


def config_from_dict(raw: dict, path: Optional[PathLike] = None, data_root: Optional[PathLike] = None, overrides: Optional[dict] = None) -> TrainConfig:
    where = str(path) if path else "training config"
    if not isinstance(raw, dict):
        raise TumorSegError(f"{where}: a training config must be a JSON object")
    problems = [f"unknown section {k!r}" for k in sorted(set(raw) - {"name", "card", "data", "train", "notes"})]
    problems += [f"missing section {k!r}" for k in ("name", "card", "data") if k not in raw]
    if problems:
        raise TumorSegError(f"{where}: " + "; ".join(problems))
    data = _merged(DATA_DEFAULTS, raw["data"], "data", where)
    train = _merged(TRAIN_DEFAULTS, {**raw.get("train", {}), **(overrides or {})}, "train", where)
    if data_root is not None:
        data["root"] = str(data_root)
    card = copy.deepcopy(raw["card"])
    for key in ("weights", "provenance", "name"):
        if key in card:
            raise TumorSegError(f"{where}: card.{key} is written by training; remove it from the config")
    notes = raw.get("notes", [])
    if isinstance(notes, str):
        notes = [notes]
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise TumorSegError(f"{where}: notes must be a string or a list of strings")
    config = TrainConfig(name=str(raw["name"]), card=card, data=data, train=train, path=path, notes=notes)
    model_card = config.model_card()  # validates the card section
    if train["patch_size"] is None:
        train["patch_size"] = model_card.inference.patch_size
    _check(config, model_card, where)
    return config


def _merged(defaults: dict, given: dict, section: str, where: str) -> dict:
    if not isinstance(given, dict):
        raise TumorSegError(f"{where}: section {section!r} must be a JSON object")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TumorSegError(f"{where}: unknown {section} setting(s) {unknown}; known: {sorted(defaults)}")
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict) and key != "loss":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check(config: TrainConfig, card: ModelCard, where: str) -> None:
    data, train = config.data, config.train
    problems = []
    if not data["images"] or not data["mask"]:
        problems.append("data.images (a glob) and data.mask (a path template) are required")
    if not 0.0 < float(data["validation_fraction"]) < 1.0:
        problems.append("data.validation_fraction must lie strictly between 0 and 1")
    for many, one in (("folds", "fold"), ("inner_folds", "inner_fold")):
        if data[many] is not None and not (int(data[many]) >= 2 and 0 <= int(data[one] or 0) < int(data[many])):
            problems.append(f"data.{many} must be at least 2 and data.{one} in 0..{many}-1, got {data[many]} / "
                            f"{data[one]}")
        if data[many] is None and data[one] is not None:
            problems.append(f"data.{one} needs data.{many}")
    patch = train["patch_size"]
    if not patch or len(patch) != card.spatial_dims or any(int(p) < 1 for p in patch):
        problems.append(f"train.patch_size needs {card.spatial_dims} positive sizes for mode {card.mode!r}, got {patch}")
    for key in ("crops_per_case", "cases_per_step", "epochs", "validate_every"):
        if int(train[key]) < 1:
            problems.append(f"train.{key} must be at least 1")
    if train["loss"].get("name") not in LOSSES:
        problems.append(f"train.loss.name must be one of {LOSSES}")
    if train["optimizer"].get("name") not in OPTIMIZERS:
        problems.append(f"train.optimizer.name must be one of {OPTIMIZERS}")
    if train["schedule"].get("name") not in SCHEDULES:
        problems.append(f"train.schedule.name must be one of {SCHEDULES}")
    channels = card.out_channels
    activation = card.output.activation
    values = data["label_values"]
    if values is not None:
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, list) and v and all(isinstance(x, int) and x > 0 for x in v) for v in values)):
            problems.append(f"data.label_values must be null or a list of lists of positive mask values, got {values!r}")
        elif (activation, channels) != ("sigmoid", len(values)):
            problems.append(f"data.label_values gives {len(values)} channel(s): needs as many sigmoid out_channels, "
                            f"got {channels} with {activation}")
    elif (activation, channels) not in (("sigmoid", 1), ("softmax", 2)):
        problems.append(f"training needs out_channels 1 with sigmoid or 2 with softmax, got {channels} with {activation}")
    problems += context_problems(train["augment"].get("context", {}))
    if card.in_channels != 1:
        problems.append("training reads one-channel images: network.args.in_channels must be 1")
    for key in ("average_with", "organ_from"):
        if getattr(card.inference, key):
            problems.append(f"card.inference.{key} names other cards: training trains and validates one network on "
                            "its own (the true organ for organ_level); add it to the trained card")
    if problems:
        raise TumorSegError(f"{where}: " + "; ".join(problems))
