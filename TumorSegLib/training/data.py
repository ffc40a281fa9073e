"""Training cases: finding image/mask pairs and controls, the patient split, sampling, manifest.

A case is an image with its mask (or a healthy control, whose mask is all background). Cases
are split by patient with a fixed seed so that no patient is on both sides. Every pair is read
once before training starts: missing files, masks off their image's grid, an empty dataset or a
validation side without tumour are reported as ``TumorSegError`` before any step is taken.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..cards import ModelCard
from ..errors import TumorSegError
from ..hints import PathLike
from .config import TrainConfig


@dataclass
class Case:
    name: str                      # image path relative to the data root
    patient: str
    image: Path
    mask: Optional[Path]           # None for a healthy control
    positive: bool = False         # the mask has tumour
    slice_axis: Optional[int] = None        # slice-2d: the axial axis of the volume
    positive_slices: Optional[np.ndarray] = None  # slice-2d: bool per slice
    empty: bool = False            # the mask is empty in every channel (no tumour, no organ)
    empty_slices: Optional[np.ndarray] = None  # slice-2d: bool per slice


@dataclass
class Split:
    train: list
    validation: list

    @property
    def cases(self) -> list:
        return self.train + self.validation


def data_root(config: TrainConfig) -> Path:
    root = Path(config.data["root"]).expanduser()
    if not root.is_dir():
        raise TumorSegError(f"data root {root} does not exist (set data.root in the config or pass --data-root)")
    return root


def find_cases(config: TrainConfig) -> list:
    """Image/mask pairs and controls named by the config's data section (files not yet read)."""
    data = config.data
    root = data_root(config)
    images = sorted(p for p in root.glob(data["images"]) if p.is_file())
    if not images:
        raise TumorSegError(f"no images match {data['images']!r} under {root}: empty dataset")
    pattern = re.compile(data["case_regex"])
    cases, missing = [], []
    for image in images:
        relative = image.relative_to(root).as_posix()
        match = pattern.search(relative)
        if match is None:
            raise TumorSegError(f"image {relative} does not match data.case_regex {data['case_regex']!r}")
        fields = {k: v for k, v in match.groupdict().items() if v is not None}
        fields.setdefault("case", relative)
        try:
            mask = root / data["mask"].format(**fields)
            patient = data["patient"].format(**fields)
        except (KeyError, IndexError) as error:
            raise TumorSegError(f"data.mask / data.patient use a field not in data.case_regex: {error}") from error
        if not mask.is_file():
            missing.append(str(mask))
        cases.append(Case(name=relative, patient=patient, image=image, mask=mask))
    if missing:
        raise TumorSegError(f"{len(missing)} mask file(s) missing, e.g. {missing[0]} (check data.mask)")
    if data["controls"]:
        controls = sorted(p for p in root.glob(data["controls"]) if p.is_file())
        if not controls:
            raise TumorSegError(f"no controls match {data['controls']!r} under {root}")
        cases += [Case(name=p.relative_to(root).as_posix(), patient="control:" + p.relative_to(root).as_posix(),
                       image=p, mask=None) for p in controls]
    return cases


def split_cases(cases: list, fraction: float, seed: int, folds: Optional[int] = None, fold: int = 0,
                inner_folds: Optional[int] = None, inner_fold: int = 0) -> Split:
    """Patient-level split; controls are split on their own with ``seed + 1``.

    Without ``folds``, a ``fraction`` of the patients (drawn with ``seed``) is held out. With
    ``folds`` = k, the patients are shuffled with ``seed`` and dealt into k folds; fold ``fold``
    is held out (k-fold cross-validation: every patient is validated in exactly one fold).
    With ``inner_folds`` = m, that held-out part is set aside untouched and the training part is
    dealt into m folds alike (seed + 2, controls seed + 3); inner fold ``inner_fold`` validates:
    m such networks predict every training patient once, out of fold, and none sees the held-out part.
    """
    train, validation = [], []
    for group, group_seed in (([c for c in cases if c.mask is not None], seed), ([c for c in cases if c.mask is None], seed + 1)):
        patients = sorted({c.patient for c in group})
        held = _held_out(patients, group_seed, fraction, folds, fold)
        if inner_folds:
            rest = [p for p in patients if p not in held]
            held = _held_out(rest, group_seed + 2, fraction, inner_folds, inner_fold)
            group = [c for c in group if c.patient in rest]
        train += [c for c in group if c.patient not in held]
        validation += [c for c in group if c.patient in held]
    return Split(train, validation)


def _held_out(patients: list, seed: int, fraction: float, folds: Optional[int], fold: int) -> set:
    """The patients held out: fold ``fold`` of ``folds`` dealt after a seeded shuffle, else a seeded ``fraction``."""
    if folds:
        return set(random.Random(seed).sample(patients, len(patients))[int(fold)::int(folds)])
    count = min(max(round(fraction * len(patients)), 1), len(patients) - 1) if len(patients) > 1 else 0
    return set(random.Random(seed).sample(patients, count))


def config_split(config: TrainConfig, cases: list) -> Split:
    """The split a training config asks for (hold-out fraction or one fold of k; then one inner fold of m)."""
    data = config.data
    return split_cases(cases, float(data["validation_fraction"]), int(data["split_seed"]), data["folds"],
                       int(data["fold"] or 0), data["inner_folds"], int(data["inner_fold"] or 0))


def card_split(card: ModelCard, data_root: Optional[PathLike] = None) -> Split:
    """The split a published ``card`` was trained with, rebuilt from the config in its provenance."""
    from .config import config_from_dict

    config = config_from_dict(card.provenance["config"], data_root=data_root)
    return config_split(config, find_cases(config))


def card_validation_cases(card: ModelCard, data_root: Optional[PathLike] = None) -> list:
    """The validation cases (patients, then controls) of the split a published ``card`` was trained with.

    The split is rebuilt from the config in the card's provenance (``card_split``) and checked against the
    validation patients the card lists, so a report is made on exactly those patients.
    """
    split = card_split(card, data_root)
    patients = [c for c in split.validation if c.mask is not None]
    if sorted({c.patient for c in patients}) != sorted(card.provenance["training_data"]["validation_patients"]):
        raise TumorSegError(f"the validation patients found differ from those in {card.path}'s provenance")
    return patients + [c for c in split.validation if c.mask is None]

def check_cases(cases: list, card: ModelCard, load: Callable) -> None:
    """Prepare every case once (grids must match); record which cases (and slices) hold tumour.

    ``load(case) -> {"image", "label", "axis"}`` is the loader training uses.
    """
    dims = {"whole-image-2d": (2,), "slice-2d": (2, 3)}.get(card.mode, (3,))  # slice-2d: volumes or single slices
    for case in cases:
        arrays = load(case)
        if arrays["image"].ndim not in dims:
            raise TumorSegError(f"{case.name}: a {arrays['image'].ndim}D image does not suit a {card.mode} model")
        label = arrays["label"]
        channels = label if label.ndim > arrays["image"].ndim else label[None]  # label channels: the first is tumour
        case.positive, case.empty = bool(channels[0].any()), not channels.any()
        if card.mode == "slice-2d" and channels.ndim == 4:
            case.slice_axis = arrays["axis"]
            case.positive_slices = _any_per_slice(channels[0], case.slice_axis)
            case.empty_slices = ~_any_per_slice(channels.any(0), case.slice_axis)


def _any_per_slice(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1).any(1)


def require_usable(split: Split, card: ModelCard) -> None:
    if not [c for c in split.train if c.positive]:
        raise TumorSegError("the training split has no case with tumour: nothing to learn")
    if not [c for c in split.validation if c.positive]:
        raise TumorSegError("the validation split has no case with tumour, so Dice cannot be measured; "
                            "add cases or raise data.validation_fraction")


def training_items(cases: list) -> list:
    """(case index, slice index or None, has tumour, is control, is empty) for every training sample."""
    items = []
    for index, case in enumerate(cases):
        if case.positive_slices is not None:
            items += [(index, s, bool(p), False, bool(e)) for s, (p, e) in
                      enumerate(zip(case.positive_slices, case.empty_slices))]
        else:
            items.append((index, None, case.positive, case.mask is None, case.empty))
    return items


class EpochSampler(torch.utils.data.Sampler):
    """Weighted, distributed sampling of training items, redrawn every epoch (``set_epoch``).

    Each epoch draws ``num_items`` non-control items with replacement, weighting tumour items by
    ``positive_weight``, items whose mask is empty in every channel by ``empty_weight`` and the rest
    (organ without tumour) by 1, plus ``num_controls`` controls without replacement; the shuffled draw
    (identical on every rank) is cut to a multiple of ``world * batch`` and rank ``r`` takes
    every ``world``-th item from ``r``, so all ranks run the same number of steps.
    """

    def __init__(self, items: list, positive_weight: float, num_items: Optional[int], num_controls: int,
                 seed: int, batch: int, rank: int = 0, world: int = 1, empty_weight: float = 1.0):
        self.items = [i for i, item in enumerate(items) if not item[3]]
        self.controls = [i for i, item in enumerate(items) if item[3]]
        self.weights = torch.tensor([positive_weight if items[i][2] else empty_weight if items[i][4] else 1.0
                                     for i in self.items], dtype=torch.float64)
        self.num_items = int(num_items or len(self.items))
        self.num_controls = min(int(num_controls), len(self.controls))
        self.seed, self.batch, self.rank, self.world = seed, batch, rank, world
        self.epoch = 0
        if self.num_items + self.num_controls < world * batch:
            raise TumorSegError(f"an epoch of {self.num_items + self.num_controls} cases is smaller than one step "
                                f"({world} process(es) x {batch} cases)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self) -> list:
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        drawn = torch.multinomial(self.weights, self.num_items, replacement=True, generator=generator).tolist()
        chosen = [self.items[i] for i in drawn]
        if self.num_controls:
            picked = torch.randperm(len(self.controls), generator=generator)[: self.num_controls].tolist()
            chosen += [self.controls[i] for i in picked]
        order = torch.randperm(len(chosen), generator=generator).tolist()
        usable = len(chosen) // (self.world * self.batch) * (self.world * self.batch)
        return [chosen[i] for i in order[:usable]]

    def __iter__(self):
        return iter(self._draw()[self.rank :: self.world])

    def __len__(self) -> int:
        total = self.num_items + self.num_controls
        return total // (self.world * self.batch) * self.batch


class TrainingDataset(torch.utils.data.Dataset):
    """Item ``i`` -> list of random crops (dicts with "image" and "label", channel first)."""

    def __init__(self, cases: list, items: list, load_arrays, augment, cache: bool):
        self.cases, self.items, self.load_arrays, self.augment = cases, items, load_arrays, augment
        self.cache = {i: load_arrays(c) for i, c in enumerate(cases)} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        case_index, slice_index = self.items[index][:2]
        case = self.cases[case_index]
        arrays = self.cache[case_index] if self.cache is not None else self.load_arrays(case)
        image, label = arrays["image"], arrays["label"]
        stacked = label.ndim > image.ndim  # label channels first
        if slice_index is not None:
            image = np.take(image, slice_index, axis=case.slice_axis)
            label = np.take(label, slice_index, axis=case.slice_axis + int(stacked))
        return self.augment({"image": image[None], "label": label if stacked else label[None]})


def manifest_sha256(cases: list, root: Path) -> tuple:
    """SHA-256 over the sorted "sha256  relative path" lines of every file used; returns (hash, lines)."""
    from ..cards import sha256

    files = sorted({p for c in cases for p in (c.image, c.mask) if p is not None})
    lines = [f"{sha256(p)}  {Path(p).relative_to(root).as_posix()}" for p in files]
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest(), lines
