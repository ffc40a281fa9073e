"""Model cards: one JSON file per model that says everything the engine needs to run it.

A card (``<name>.json``) lives in ``Resources/Models/`` or in a user folder named by the
``TUMORSEG_MODELS`` environment variable (``os.pathsep``-separated) or ``--models-dir``;
its weights file sits next to it. Field meanings: ``Resources/Models/README.md``; the JSON Schema
``Resources/ModelCard.schema.json`` states the same rules for editors and tests.

A loaded card is typed: ``ModelCard`` holds one frozen dataclass per section (``Network``,
``Preprocessing``, ``Inference``, ``Click``, ``Output``, ``Postprocessing``, ``Weights`` with its ensemble
``Member``s; ``provenance``
stays a free mapping), each field with its default written once here and the rule its JSON value
must meet (``card_from_dict`` checks every field by these rules, then the rules across fields).
Fixed choices are ``Choice`` enums, which compare equal to (and print as) their JSON strings.
``settings_for`` gives the ``Settings`` of one run: the card's inference and post-processing
sections and threshold with the user's overrides.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import TumorSegError
from .hints import Overrides, PathLike
from .image_gate import gate_problems
from .lesion_filter import spec_problems
from .terminology import ORGANS

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
ENV_VAR = "TUMORSEG_MODELS"


class Choice(str, Enum):
    """One of a card field's fixed values; compares, hashes and prints as its JSON string."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple:
        return tuple(member.value for member in cls)


class Modality(Choice):
    PET = "PET"
    CT = "CT"
    MIP_PET = "MIP-PET"


class Mode(Choice):
    WHOLE_IMAGE_2D = "whole-image-2d"
    SLICE_2D = "slice-2d"
    SLIDING_WINDOW_3D = "sliding-window-3d"


class Blending(Choice):
    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


class Precision(Choice):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


class Backend(Choice):
    AUTO = "auto"
    TORCH = "torch"
    OPENVINO = "openvino"


class Activation(Choice):
    SIGMOID = "sigmoid"
    SOFTMAX = "softmax"


class WeightsFormat(Choice):
    STATE_DICT = "state_dict"
    TORCHSCRIPT = "torchscript"


# -- the rules a JSON value must meet ------------------------------------------------------------

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _between(low: float, high: float, low_open: bool = False, high_open: bool = True) -> Callable:
    def check(value) -> bool:
        return _is_number(value) and (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high)
    return check


def _optional(check: Callable) -> Callable:
    return lambda value: value is None or check(value)


def _list_of(check: Callable, sizes=range(1, 4)) -> Callable:
    return lambda value: isinstance(value, list) and len(value) in sizes and all(check(v) for v in value)


def _is_window(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_is_number, value)) and value[0] < value[1]


def _is_axis_codes(value) -> bool:
    return isinstance(value, str) and sorted(value.upper().translate(str.maketrans("LPI", "RAS"))) == ["A", "R", "S"]


def _inside_folder(name) -> bool:
    """Whether ``name`` is a relative path that stays in its folder (no drive, root or '..', in either path style)."""
    if not isinstance(name, str) or not name.strip():
        return False
    path = PureWindowsPath(name)  # reads both '/' and '\\' as separators
    return not (path.drive or path.root or ".." in path.parts)


_POSITIVE = _between(0.0, float("inf"), low_open=True)
_AT_LEAST_ZERO = _between(0.0, float("inf"))


def _whole(low: int) -> Callable:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= low


_POSITIVE_INT = _whole(1)
_CHANNEL = _whole(0)
_PROBABILITY = _between(0.0, 1.0, low_open=True)


def _rule(default: Any, check: Callable, must: str, convert: Callable | None = None) -> Any:
    """A card field: its default, the rule its JSON value must meet (``must`` says it) and how it is converted."""
    return field(default=default, metadata={"check": check, "must": must, "convert": convert})


def _choice(kind: type, default: Choice) -> Any:
    return _rule(default, lambda value: value in kind.values(), f"one of {kind.values()}", kind)


def _section(kind: type, optional: bool = False) -> Any:
    """A field holding a section of its own (a dict in the JSON); absent: None if ``optional``, else its defaults."""
    if optional:
        return field(default=None, metadata={"section": kind})
    return field(default_factory=kind, metadata={"section": kind})


class Section:
    """A card section: typed fields, written back to JSON by ``to_dict``."""

    def to_dict(self) -> dict:
        """The section as JSON: unset (None) fields left out, choices as their strings."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}


def _names(section) -> tuple:
    return tuple(f.name for f in fields(section))


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple) and value and isinstance(value[0], Section):
        return [_plain(v) for v in value]
    return value.value if isinstance(value, Choice) else value


# -- the sections -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Network(Section):
    name: str = _rule("AttentionUnet", lambda v: isinstance(v, str) and bool(v), "a MONAI network class name")
    args: Optional[dict] = _rule(None, _optional(lambda v: isinstance(v, dict)), "a mapping of keyword arguments")

    @property
    def kwargs(self) -> dict:
        return dict(self.args or {})


@dataclass(frozen=True)
class Intensity(Section):
    window: Sequence[float] = _rule((0.0, 1.0), _is_window, "[low, high] with low < high")
    invert: bool = _rule(False, lambda v: isinstance(v, bool), "true or false")


@dataclass(frozen=True)
class Mip(Section):
    window: Sequence[float] = _rule((0.0, 10.0), _is_window, "[0, suv_hi] with 0 < suv_hi")
    invert: bool = _rule(True, lambda v: isinstance(v, bool), "true or false")
    pixel_mm: Optional[float] = _rule(None, _optional(_POSITIVE), "null or the training MIPs' pixel size in mm")
    resample_width_mm: Optional[float] = _rule(None, _optional(_POSITIVE), "null or a width in mm")


@dataclass(frozen=True)
class Picture(Section):
    channel: int = _rule(0, lambda v: v in (0, 1, 2) and not isinstance(v, bool), "0, 1 or 2")
    window: Optional[Sequence[float]] = _rule(None, _is_window, "[low, high] HU with low < high")
    spacing: Optional[list] = _rule(None, _optional(_list_of(_POSITIVE, (2,))), "null or 2 positive mm values")


@dataclass(frozen=True)
class OrganLevel(Section):
    """Move the input so that the median inside an organ (an output channel) is ``value`` (``preprocess.move_to_level``)."""
    channel: Optional[int] = _rule(None, _CHANNEL, "the organ's output channel")
    threshold: float = _rule(0.5, _PROBABILITY, "a number strictly between 0 and 1")
    value: Optional[float] = _rule(None, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                                   "the organ's median in input units (HU)")


@dataclass(frozen=True)
class Preprocessing(Section):
    intensity: Intensity = _section(Intensity)
    orientation: Optional[str] = _rule(None, _optional(_is_axis_codes), "axis codes such as 'RAS' or 'LPS'")
    spacing: Optional[list] = _rule(None, _optional(_list_of(_optional(_POSITIVE), (2, 3))),
                                    "null or 2-3 positive mm values (null keeps an axis)")
    mip: Optional[Mip] = _section(Mip, optional=True)
    picture: Optional[Picture] = _section(Picture, optional=True)
    organ_level: Optional[OrganLevel] = _section(OrganLevel, optional=True)


def _is_card_name(value) -> bool:
    """A card of the same folder, named without '.json' (no path)."""
    return isinstance(value, str) and bool(re.fullmatch(r"[A-Za-z0-9_.-]+", value))


def _is_partner(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"card", "weight"} and _is_card_name(value["card"])
            and _is_number(value["weight"]) and 0 < value["weight"] < 1)


def _are_partners(value) -> bool:
    return (isinstance(value, (list, tuple)) and all(map(_is_partner, value))
            and sum(p["weight"] for p in value) < 1)


@dataclass(frozen=True)
class Partner(Section):
    """Another card of the same folder whose tumour probability is averaged with this card's, with its weight."""
    card: str
    weight: float


@dataclass(frozen=True)
class Inference(Section):
    patch_size: Optional[list] = _rule(None, _optional(_list_of(_POSITIVE_INT, (2, 3))), "null or 2-3 positive integers")
    overlap: float = _rule(0.25, _between(0.0, 1.0), "a number in [0, 1)")
    blending: Blending = _choice(Blending, Blending.GAUSSIAN)
    sw_batch_size: int = _rule(1, _POSITIVE_INT, "a positive integer")
    batch_size: int = _rule(8, _POSITIVE_INT, "a positive integer")
    divisible_by: Optional[int] = _rule(None, _optional(_POSITIVE_INT), "a positive integer")
    context_mm: Optional[list] = _rule(None, _optional(_list_of(_POSITIVE)), "1-3 positive mm values")
    min_roi_mm: Optional[list] = _rule(None, _optional(_list_of(_POSITIVE)), "1-3 positive mm values")
    trained_on: Optional[str] = _rule(None, _optional(lambda v: isinstance(v, str)), "a line of text")
    precision: Precision = _choice(Precision, Precision.AUTO)
    recheck_margin: float = _rule(0.0, _between(0.0, 0.5), "a number in [0, 0.5)")
    backend: Backend = _choice(Backend, Backend.AUTO)
    flip_axes: Sequence[int] = _rule((), lambda v: isinstance(v, (list, tuple)), "a list of spatial axes")
    average_with: tuple = _rule((), _are_partners, "a list of {'card': name of a card in this card's folder, "
                                "'weight': number in (0, 1)}, the weights summing below 1",
                                lambda v: tuple(Partner(**p) for p in v))
    organ_from: Optional[str] = _rule(None, _optional(_is_card_name), "the name of a card in this card's folder")


@dataclass(frozen=True)
class Click(Section):
    max_distance_mm: float = _rule(5.0, _AT_LEAST_ZERO, "a distance in mm >= 0")


@dataclass(frozen=True)
class Within(Section):
    channel: Optional[int] = _rule(None, _CHANNEL, "an output channel")
    threshold: float = _rule(0.5, _PROBABILITY, "a number strictly between 0 and 1")
    largest_component: bool = _rule(False, lambda v: isinstance(v, bool), "true or false")
    organ: Optional[str] = _rule(None, _optional(lambda v: v in ORGANS), f"null or one of {tuple(ORGANS)}")


@dataclass(frozen=True)
class Output(Section):
    activation: Activation = _choice(Activation, Activation.SIGMOID)
    channel: int = _rule(0, _CHANNEL, "an output channel (integer >= 0)")
    threshold: float = _rule(0.5, _PROBABILITY, "a number strictly between 0 and 1")
    within: Optional[Within] = _section(Within, optional=True)


@dataclass(frozen=True)
class Postprocessing(Section):
    min_lesion_ml: float = _rule(0.0, _AT_LEAST_ZERO, "a volume in mL >= 0")
    min_lesion_px: float = _rule(0, _AT_LEAST_ZERO, "a number of pixels >= 0")
    largest_component: bool = _rule(False, lambda v: isinstance(v, bool), "true or false")
    fill_holes: bool = _rule(False, lambda v: isinstance(v, bool), "true or false")
    lesion_filter: Optional[Mapping] = _rule(None, _optional(lambda v: isinstance(v, dict)),
                                             "a mapping (the per-lesion false-positive filter's settings)")
    image_gate: Optional[Mapping] = _rule(None, _optional(lambda v: isinstance(v, dict)),
                                          "a mapping (the whole-image 'any tumour' gate's settings)")


def _is_member(value) -> bool:
    return (isinstance(value, dict) and set(value) <= {"file", "sha256"} and _inside_folder(value.get("file"))
            and isinstance(value.get("sha256") or "", str))  # sha256 may be null, as weights.sha256


@dataclass(frozen=True)
class Member(Section):
    """One more weights file of an ensemble: the same network and format as ``weights.file``."""
    file: str
    sha256: Optional[str] = None


@dataclass(frozen=True)
class Weights(Section):
    file: str = _rule("", _inside_folder, "a file name in the card's folder")
    sha256: Optional[str] = _rule(None, _optional(lambda v: isinstance(v, str)), "the file's SHA-256 (hex)")
    format: WeightsFormat = _choice(WeightsFormat, WeightsFormat.STATE_DICT)
    ensemble: Optional[tuple] = _rule(None, _optional(_list_of(_is_member, range(1, 100))),
                                      "a list of {'file', 'sha256'}: more weights of the same network (an ensemble)",
                                      lambda v: tuple(Member(**m) for m in v))

    @property
    def members(self) -> tuple:
        """Every weights file of the card as ``Member``s, ``file`` first; more than one: an ensemble."""
        return (Member(self.file, self.sha256),) + tuple(self.ensemble or ())


@dataclass(frozen=True)
class ModelCard(Section):
    name: str = _rule("", lambda v: isinstance(v, str) and bool(v), "a non-empty string")
    title: str = _rule("", lambda v: isinstance(v, str), "a string")
    modality: Modality = _choice(Modality, Modality.CT)
    mode: Mode = _choice(Mode, Mode.SLIDING_WINDOW_3D)
    network: Network = _section(Network)
    preprocessing: Preprocessing = _section(Preprocessing)
    inference: Inference = _section(Inference)
    output: Output = _section(Output)
    postprocessing: Postprocessing = _section(Postprocessing)
    weights: Weights = _section(Weights)
    provenance: dict = field(default_factory=dict, metadata={"check": lambda v: isinstance(v, dict), "must": "a mapping",
                                                             "convert": None})
    description: str = _rule("", lambda v: isinstance(v, str), "a string")
    click: Click = _section(Click)
    path: Optional[Path] = field(default=None, compare=False)  # the card file; not a JSON field

    @property
    def spatial_dims(self) -> int:
        return 3 if self.mode == Mode.SLIDING_WINDOW_3D else 2

    @property
    def min_size_setting(self) -> str:
        """The post-processing setting of the smallest lesion kept: mL for 3D masks, pixels for a 2D image's."""
        return "min_lesion_px" if self.mode == Mode.WHOLE_IMAGE_2D else "min_lesion_ml"

    @property
    def in_channels(self) -> int:
        return int(self.network.kwargs.get("in_channels", 1))

    @property
    def out_channels(self) -> int:
        return int(self.network.kwargs.get("out_channels", 1))

    @property
    def threshold(self) -> float:
        return float(self.output.threshold)

    @property
    def organ(self) -> Optional[str]:
        """The organ a whole-image run also gives as a segment of its own (``output.within.organ``), or None."""
        return self.output.within.organ if self.output.within is not None else None

    @property
    def weights_path(self) -> Path:
        """The weights file (the first of an ensemble); it must resolve inside the card's own folder."""
        return self.member_path(self.weights.file)

    def member_path(self, file: str) -> Path:
        """A weights file of this card; it must resolve inside the card's own folder (symbolic links included)."""
        base = self.path.parent if self.path else BUILTIN_DIR
        path = base / file
        try:
            path.resolve().relative_to(base.resolve())
        except ValueError:
            raise TumorSegError(f"model {self.name!r}: weights {file!r} lie outside the card's folder "
                                f"{base}; a card's weights must sit in its own folder") from None
        return path

    def to_dict(self) -> dict:
        """The card as JSON (what ``card_from_dict`` reads back); empty fields left out."""
        return {k: v for k, v in super().to_dict().items() if k != "path" and v not in ("", {})}


_REQUIRED = ("name", "title", "modality", "mode", "network", "preprocessing", "inference", "output", "weights")


def card_from_dict(data: dict, path: Optional[Path] = None) -> ModelCard:
    """Validate a card's fields and build it; every problem is named in the error."""
    where = str(path) if path else "model card"
    if not isinstance(data, dict):
        raise TumorSegError(f"{where}: a model card must be a JSON object")
    problems = [f"missing field {key!r}" for key in _REQUIRED if key not in data]
    values = _read_fields(ModelCard, {k: v for k, v in data.items() if k not in ("schema", "path")}, "", problems)
    card = None if problems else ModelCard(**values, path=path)
    problems += _card_problems(card) if card else []
    if problems:
        raise TumorSegError(f"{where} is not a valid model card: " + "; ".join(problems))
    return card


def _read_fields(kind: type, data, prefix: str, problems: list) -> dict:
    """Typed values of ``kind``'s fields from a JSON mapping; every unknown key or broken rule goes to ``problems``."""
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.')} must be an object with the fields {list(_names(kind))}, got {data!r}")
        return {}
    known = {f.name: f for f in fields(kind) if f.name != "path"}
    problems += [f"unknown field '{prefix}{key}'" for key in sorted(set(data) - set(known))]
    values = {}
    for name, value in data.items():
        spec = known.get(name)
        if spec is None:
            continue
        if "section" in spec.metadata:
            section = spec.metadata["section"]
            values[name] = None if value is None else section(**_read_fields(section, value, f"{prefix}{name}.", problems))
        elif not spec.metadata["check"](value):
            problems.append(f"{prefix}{name} must be {spec.metadata['must']}, got {value!r}")
        else:
            values[name] = (spec.metadata["convert"] or (lambda v: v))(value)
    return values


def _card_problems(card: ModelCard) -> list:
    """The rules across a card's fields (what one field's rule cannot say)."""
    problems = []
    if not card.weights.file:
        problems.append("weights must give at least 'file' (and 'sha256')")
    patch = card.inference.patch_size
    if patch is not None and len(patch) != card.spatial_dims:
        problems.append(f"inference.patch_size needs {card.spatial_dims} values for mode {str(card.mode)!r}, got {patch}")
    flips = flip_axes_problem(card.inference.flip_axes, card.spatial_dims)
    if flips:
        problems.append(f"inference.{flips}")
    if card.modality == Modality.MIP_PET and card.mode != Mode.WHOLE_IMAGE_2D:
        problems.append("a MIP-PET model must have mode 'whole-image-2d'")
    mip = card.preprocessing.mip
    if mip is not None and mip.resample_width_mm and not mip.pixel_mm:
        problems.append("preprocessing.mip.resample_width_mm needs preprocessing.mip.pixel_mm (what to resample to)")
    if card.preprocessing.picture is not None and card.preprocessing.picture.window is None:
        problems.append("preprocessing.picture.window must be [low, high] HU with low < high, got None")
    problems += spec_problems(card.postprocessing.lesion_filter, card.mode)
    problems += gate_problems(card.postprocessing.image_gate, card.mode)
    return problems + _organ_problems(card)


def _organ_problems(card: ModelCard) -> list:
    """The rules of ``output.within`` and ``preprocessing.organ_level``: an organ channel of this network, or, with
    ``inference.organ_from``, of that card (whose channels are checked when it is read: ``organ_card``)."""
    problems = []
    within, level, source = card.output.within, card.preprocessing.organ_level, card.inference.organ_from
    sigmoid = card.output.activation == Activation.SIGMOID
    own = card.out_channels
    other = f"an output channel of {source!r}" if source else None
    if within is not None and not (sigmoid and within.channel is not None and (
            source or (within.channel < own and within.channel != card.output.channel))):
        channel = other or f"another of the {own} sigmoid output channels"
        problems.append(f"output.within must be {{'channel': {channel}, 'threshold': in (0, 1)}}, got "
                        f"{within.to_dict()!r}")
    if level is not None and not (sigmoid and level.channel is not None and level.value is not None and (
            source or level.channel < own)):
        channel = other or f"one of the {own} sigmoid output channels"
        problems.append(f"preprocessing.organ_level must be {{'channel': {channel}, 'value': the organ's median, "
                        f"'threshold'}}, got {level.to_dict()!r}")
    if within is not None and within.largest_component and source is None:
        problems.append("output.within.largest_component needs inference.organ_from (the organ found on the whole "
                        "image first)")
    if within is not None and within.organ and source is None:
        problems.append("output.within.organ (the organ written as a segment of its own) needs inference.organ_from "
                        "(the organ found on the whole image first)")
    if source is not None and within is None and level is None:
        problems.append("inference.organ_from needs output.within or preprocessing.organ_level (what the organ is for)")
    if source is not None and within is not None and level is not None and within.channel != level.channel:
        problems.append("with inference.organ_from, output.within and preprocessing.organ_level must name the same "
                        f"channel of {source!r}, got {within.channel} and {level.channel}")
    return problems


def flip_axes_problem(axes: Any, dims: int) -> str | None:
    """What is wrong with test-time ``flip_axes`` for a ``dims``-D network input, or None."""
    if (not isinstance(axes, (list, tuple))
            or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < dims for a in axes)
            or len(set(axes)) != len(axes)):
        return f"flip_axes must be a list of distinct spatial axes in 0..{dims - 1}, got {axes!r}"
    return None


# -- the settings of one run ----------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """What one run uses: the card's inference and post-processing sections and threshold, overrides applied."""

    inference: Inference
    postprocessing: Postprocessing
    threshold: float
    keep_volume_on_device: bool | None = None  # False after a CUDA out-of-memory: the volume stays on the CPU
    output: Output | None = None  # another output of the network than the card's (the organ of organ_level)
    partners: tuple = ()  # the Settings of each inference.average_with card, in its order
    organ: Optional["Settings"] = None  # the Settings of the inference.organ_from card


# what a user may override, and the section it changes (None: the threshold)
OVERRIDES = {"overlap": "inference", "threshold": None, "min_lesion_ml": "postprocessing",
             "min_lesion_px": "postprocessing", "precision": "inference", "recheck_margin": "inference",
             "sw_batch_size": "inference", "batch_size": "inference", "flip_axes": "inference",
             "lesion_filter": "postprocessing", "image_gate": "postprocessing"}
LEARNT_SETTINGS = ("lesion_filter", "image_gate")  # can only be switched off (false): their models live in the card


def settings_for(card: ModelCard, overrides: Overrides = None) -> Settings:
    """The card's inference, output and post-processing settings with the user's overrides (None: the card's)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in LEARNT_SETTINGS:
        if name in overrides:
            if overrides[name] is not False:
                raise TumorSegError(f"the {name} setting can only be switched off (false); its model lives in the card")
            overrides[name] = None
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TumorSegError(f"unknown setting(s) {unknown}; settings that can be changed: {tuple(OVERRIDES)}")
    problems = []
    if not _PROBABILITY(overrides.get("threshold", card.threshold)):
        problems.append(f"threshold must lie strictly between 0 and 1, got {overrides['threshold']!r}")
    sections = {}
    for name in ("inference", "postprocessing"):
        changes = {k: v for k, v in overrides.items() if OVERRIDES[k] == name}
        sections[name] = replace(getattr(card, name), **_read_fields(type(getattr(card, name)), changes, "", problems))
    problem = flip_axes_problem(sections["inference"].flip_axes, card.spatial_dims)
    if problems or problem:
        raise TumorSegError("; ".join(problems + ([problem] if problem else [])))
    return Settings(sections["inference"], sections["postprocessing"], float(overrides.get("threshold", card.threshold)))


def load_card(path: PathLike) -> ModelCard:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TumorSegError(f"cannot read model card {path}: {error}") from error
    return card_from_dict(data, path)


def partner_cards(card: ModelCard) -> list:
    """``(card, weight)`` of each card named in ``inference.average_with``, read from this card's own folder.

    A partner must read the same modality and must not average with other cards itself.
    """
    partners = []
    for partner in card.inference.average_with:
        other = _folder_card(card, partner.card, "averages with", "inference.average_with")
        if other.modality != card.modality or other.inference.average_with:
            raise TumorSegError(f"model {card.name!r} averages with {other.name!r}, which "
                                + ("reads another modality" if other.modality != card.modality
                                   else "averages with other cards itself"))
        partners.append((other, float(partner.weight)))
    return partners


def organ_card(card: ModelCard) -> Optional[ModelCard]:
    """The card named by ``inference.organ_from`` reading its organ channel alone (``only_channel``), or None.

    The organ card must read the same modality, have that sigmoid channel and take no organ from elsewhere itself.
    """
    name = card.inference.organ_from
    if name is None:
        return None
    other = _folder_card(card, name, "takes its organ from", "inference.organ_from")
    channel = (card.output.within or card.preprocessing.organ_level).channel
    problem = None
    if other.modality != card.modality:
        problem = "reads another modality"
    elif other.inference.organ_from:
        problem = "takes its organ from another card itself"
    elif other.output.activation != Activation.SIGMOID or not channel < other.out_channels:
        problem = f"has no sigmoid output channel {channel}"
    if problem:
        raise TumorSegError(f"model {card.name!r} takes its organ from {other.name!r}, which {problem}")
    return only_channel(other, channel)


def needed_cards(card: ModelCard) -> list:
    """Every other card a run of ``card`` reads: those it averages with, then its organ card."""
    organ = organ_card(card)
    return [other for other, _ in partner_cards(card)] + ([organ] if organ else [])


def only_channel(card: ModelCard, channel: int) -> ModelCard:
    """The same card and weights giving one sigmoid output channel alone: no organ rule (``output.within``) and no
    averaged cards (their outputs are another channel); its own organ level, ensemble and post-processing stay."""
    return replace(card, output=Output(activation=Activation.SIGMOID, channel=channel),
                   inference=replace(card.inference, average_with=()))


def _folder_card(card: ModelCard, name: str, verb: str, field_name: str) -> ModelCard:
    """The card ``name`` of ``card``'s own folder; the error names the model that needs it and the field."""
    if card.path is None:
        raise TumorSegError(f"model {card.name!r} names other cards ({field_name}) but was not read from a folder")
    try:
        return load_card(Path(card.path).parent / f"{name}.json")
    except TumorSegError as error:
        raise TumorSegError(f"model {card.name!r} {verb} {name!r} ({field_name}), which must be a card in the same "
                            f"folder: {error}") from error


def model_dirs(extra: PathLike | None = None) -> list:
    """Folders searched for cards, user folders first (so a user card can shadow a built-in)."""
    if extra and not Path(extra).is_dir():
        raise TumorSegError(f"models folder {extra} does not exist or is not a folder")
    dirs = [Path(p) for p in ([extra] if extra else [])]
    dirs += [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    dirs.append(BUILTIN_DIR)
    return dirs


def scan_cards(extra_dir: PathLike | None = None) -> tuple:
    """``(cards, broken)``: every valid card found (first occurrence of each name wins) and
    ``{card file: error}`` for the files that are not valid cards; one broken card hides no other."""
    found, broken = {}, {}
    for directory in model_dirs(extra_dir):
        for path in sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []:
            if path.name.endswith(".train.json"):
                continue
            try:
                card = load_card(path)
            except TumorSegError as error:
                broken[path] = str(error)
                continue
            found.setdefault(card.name, card)
    return list(found.values()), broken


def list_cards(extra_dir: PathLike | None = None) -> list:
    """All valid cards found, first occurrence of each name wins (``scan_cards`` also names the broken ones)."""
    return scan_cards(extra_dir)[0]


def find_card(name: str, extra_dir: PathLike | None = None) -> ModelCard:
    """The card called ``name`` (or a path to a card file)."""
    if name.endswith(".json") and Path(name).is_file():
        return load_card(name)
    cards, broken = scan_cards(extra_dir)
    for card in cards:
        if card.name == name:
            return card
    for path, error in broken.items():
        if path.name == f"{name}.json":
            raise TumorSegError(error)
    known = ", ".join(sorted(c.name for c in cards)) or "none"
    raise TumorSegError(f"unknown model {name!r}; known models: {known}")


def sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SHA256_OK = "sha256 ok"  # the weights file's SHA-256 equals the card's: the file is the one the card describes
NO_SHA256 = "no sha256"  # the card gives no SHA-256, so the file cannot be checked
OUTSIDE = "outside the card folder"  # refused: a card's weights must sit in its own folder
PARTNER_UNUSABLE = "needed card missing or broken"  # a card of inference.average_with or organ_from cannot be used
USABLE = (SHA256_OK, NO_SHA256)


def weights_status(card: ModelCard) -> str:
    """``SHA256_OK``, ``NO_SHA256``, ``OUTSIDE``, 'missing', 'sha256 mismatch' or ``PARTNER_UNUSABLE``: the worst over
    the card's files (``weight_files``) and over the cards it needs (``inference.average_with``, ``organ_from``)."""
    try:
        files = [(card.member_path(member.file), member.sha256) for member in weight_files(card)]
    except TumorSegError:
        return OUTSIDE
    statuses = [_file_status(path, expected) for path, expected in files]
    try:
        statuses += [weights_status(other) for other in needed_cards(card)]
    except TumorSegError:
        statuses.append(PARTNER_UNUSABLE)
    return next((s for s in statuses if s not in USABLE), NO_SHA256 if NO_SHA256 in statuses else SHA256_OK)


def _file_status(path: Path, expected: str | None) -> str:
    if not path.is_file():
        return "missing"
    if not expected:
        return NO_SHA256
    return SHA256_OK if sha256(path) == expected else "sha256 mismatch"


def weight_files(card: ModelCard) -> list:
    """Every file of learnt parameters a run of ``card`` reads, as ``Member``s: its network's weights (an ensemble's
    members, ``weights.file`` first), then the post-processing networks (``postprocessing_networks``)."""
    return list(card.weights.members) + list(postprocessing_networks(card).values())


def postprocessing_networks(card: ModelCard) -> dict:
    """{"lesion_filter" | "image_gate": Member}: the weights file of each post-processing step of the card that has
    a network (``postprocessing.lesion_filter.network``, ``postprocessing.image_gate.network``)."""
    steps = {name: getattr(card.postprocessing, name) or {} for name in LEARNT_SETTINGS}
    return {name: Member(spec["network"]["file"], spec["network"].get("sha256"))
            for name, spec in steps.items() if spec.get("network")}


def verified_weights(card: ModelCard) -> list:
    """The weights paths (one per ensemble member, ``weights.file`` first), each checked by ``verified_file``."""
    return [verified_file(card, member) for member in card.weights.members]


def verified_file(card: ModelCard, member: Member) -> Path:
    """The path of one of the card's weight files after checking that it lies in the card's folder, exists and
    matches its SHA-256."""
    path = card.member_path(member.file)
    status = _file_status(path, member.sha256)
    if status == "missing":
        raise TumorSegError(
            f"weights for model {card.name!r} not found at {path}; train them with "
            f"'tumorseg train' (see the card's provenance.command) or place the file there"
        )
    if status == "sha256 mismatch":
        raise TumorSegError(
            f"weights {path} do not match the SHA-256 in {card.path}: the file is corrupt or not the one the card "
            "describes"
        )
    return path
