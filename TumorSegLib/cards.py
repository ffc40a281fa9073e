"""Model cards: one JSON file per model that says everything the engine needs to run it.

A card (``<name>.json``) lives in ``Resources/Models/`` or in a user folder named by the
``TUMORSEG_MODELS`` environment variable (``os.pathsep``-separated) or ``--models-dir``;
its weights file sits next to it. Fields (see ``Resources/Models/README.md``)::

    name, title, description
    modality        "PET" | "CT" | "MIP-PET"
    mode            "whole-image-2d" | "slice-2d" | "sliding-window-3d"
    network         {"name": MONAI network class (default "AttentionUnet"), "args": {...}}
    preprocessing   {"intensity": {"window": [lo, hi], "invert": bool},   -> clip to [0, 1]
                     "orientation": null | "RAS" (axis codes: exact reorientation before inference),
                     "spacing": null | [mm per array axis],
                     "mip": {"window": [0, suv_hi], "invert": bool},     (MIP-PET from 3D PET)
                     "picture": {"channel", "window", "spacing"}}  (JPEG slices, see ``windowed``)
    inference       {"patch_size": [...], "overlap": 0.25, "blending": "gaussian"|"constant",
                     "sw_batch_size": 1, "batch_size": 8 (slices), "divisible_by": 16,
                     "context_mm": [...] (click-to-segment), "min_roi_mm": [...] (smallest ROI),
                     "trained_on": "..." (note for whole-volume runs), "precision": "auto"|"fp32"|"bf16",
                     "recheck_margin": 0.0 (> 0: reduced-precision windows this near the threshold -> fp32),
                     "backend": "auto"|"torch"|"openvino" (what runs the network on a CPU),
                     "flip_axes": [] (test-time flips: spatial axes of the network input; the
                                      probability is the mean over the identity and each flip)}
    click           {"max_distance_mm": 5.0} (a click keeps the lesion holding it, else the nearest one
                                           within this distance, else nothing)
    output          {"activation": "sigmoid"|"softmax", "channel": 0, "threshold": 0.5,
                     "within": {"channel": 1, "threshold": 0.5} (optional: tumour only where the
                               sigmoid of that channel, e.g. an organ, reaches its threshold)}
    postprocessing  {"min_lesion_ml": 0.0 (3D), "min_lesion_px": 0 (2D), "largest_component": false,
                     "fill_holes": false, "lesion_filter": {...} (whole-image-2d: a logistic regression
                     removes predicted lesions scored as physiological uptake, see ``lesion_filter``)}
    weights         {"file": "name.pt", "sha256": "...", "format": "state_dict"|"torchscript"}
    provenance      {"training_data", "command", "config", "code_version", "validation": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Optional

from .errors import TumorSegError

MODALITIES = ("PET", "CT", "MIP-PET")
MODES = ("whole-image-2d", "slice-2d", "sliding-window-3d")
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
ENV_VAR = "TUMORSEG_MODELS"


@dataclass
class ModelCard:
    name: str
    title: str
    modality: str
    mode: str
    network: dict
    preprocessing: dict
    inference: dict
    output: dict
    postprocessing: dict
    weights: dict
    provenance: dict = field(default_factory=dict)
    description: str = ""
    click: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def spatial_dims(self) -> int:
        return 3 if self.mode == "sliding-window-3d" else 2

    @property
    def min_size_setting(self) -> str:
        """The post-processing setting of the smallest lesion kept: mL for 3D masks, pixels for a 2D image's."""
        return "min_lesion_px" if self.mode == "whole-image-2d" else "min_lesion_ml"

    @property
    def in_channels(self) -> int:
        return int(self.network.get("args", {}).get("in_channels", 1))

    @property
    def threshold(self) -> float:
        return float(self.output.get("threshold", 0.5))

    @property
    def weights_path(self) -> Path:
        """The weights file; it must resolve inside the card's own folder (symbolic links included)."""
        base = self.path.parent if self.path else BUILTIN_DIR
        path = base / self.weights["file"]
        try:
            path.resolve().relative_to(base.resolve())
        except ValueError:
            raise TumorSegError(f"model {self.name!r}: weights {self.weights['file']!r} lie outside the card's folder "
                                f"{base}; a card's weights must sit in its own folder") from None
        return path

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in _FIELDS}
        return {k: v for k, v in data.items() if v not in (None, "", {})}


_FIELDS = ("name", "title", "description", "modality", "mode", "network", "preprocessing", "inference", "click",
           "output", "postprocessing", "weights", "provenance")
_REQUIRED = ("name", "title", "modality", "mode", "network", "preprocessing", "inference", "output", "weights")


def card_from_dict(data: dict, path: Optional[Path] = None) -> ModelCard:
    """Validate a card's fields and build it; every problem is named in the error."""
    where = str(path) if path else "model card"
    if not isinstance(data, dict):
        raise TumorSegError(f"{where}: a model card must be a JSON object")
    problems = [f"missing field {key!r}" for key in _REQUIRED if key not in data]
    unknown = sorted(set(data) - set(_FIELDS) - {"schema"})
    problems += [f"unknown field {key!r}" for key in unknown]
    if data.get("modality") not in MODALITIES:
        problems.append(f"modality must be one of {MODALITIES}, got {data.get('modality')!r}")
    if data.get("mode") not in MODES:
        problems.append(f"mode must be one of {MODES}, got {data.get('mode')!r}")
    network = data.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("args", {}), dict):
        problems.append("network must be {'name': ..., 'args': {...}}")
    weights = data.get("weights")
    if not isinstance(weights, dict) or "file" not in weights:
        problems.append("weights must give at least 'file' (and 'sha256')")
    elif weights.get("format", "state_dict") not in ("state_dict", "torchscript"):
        problems.append("weights.format must be 'state_dict' or 'torchscript'")
    elif not _inside_folder(weights["file"]):
        problems.append(f"weights.file must be a file name in the card's folder, got {weights['file']!r}")
    window = (data.get("preprocessing") or {}).get("intensity", {}).get("window")
    if window is not None and (len(window) != 2 or not window[0] < window[1]):
        problems.append(f"preprocessing.intensity.window must be [low, high] with low < high, got {window}")
    output = data.get("output") or {}
    if not 0.0 < float(output.get("threshold", 0.5)) < 1.0:
        problems.append("output.threshold must lie strictly between 0 and 1")
    if output.get("activation", "sigmoid") not in ("sigmoid", "softmax"):
        problems.append("output.activation must be 'sigmoid' or 'softmax'")
    patch = (data.get("inference") or {}).get("patch_size")
    dims = 3 if data.get("mode") == "sliding-window-3d" else 2
    if patch is not None and len(patch) != dims:
        problems.append(f"inference.patch_size needs {dims} values for mode {data.get('mode')!r}, got {patch}")
    problems += _engine_problems(data)
    if problems:
        raise TumorSegError(f"{where} is not a valid model card: " + "; ".join(problems))
    fields = {k: data[k] for k in _FIELDS if k in data}
    fields.setdefault("postprocessing", {})
    return ModelCard(**fields, path=path)


def _engine_problems(data: dict) -> list:
    """Problems with the settings the inference engine reads (orientation, spacing, overlap, ...)."""
    problems = []
    preprocessing = data.get("preprocessing") or {}
    inference = data.get("inference") or {}
    orientation = preprocessing.get("orientation")
    if orientation is not None and sorted(str(orientation).upper().translate(str.maketrans("LPI", "RAS"))) != ["A", "R", "S"]:
        problems.append(f"preprocessing.orientation must be axis codes such as 'RAS' or 'LPS', got {orientation!r}")
    spacing = preprocessing.get("spacing")
    if spacing is not None and (not isinstance(spacing, list) or len(spacing) not in (2, 3)
                                or any(s is not None and not _number(s, 0.0) > 0 for s in spacing)):
        problems.append(f"preprocessing.spacing must be null or 2-3 positive mm values (null keeps an axis), got {spacing!r}")
    if not 0.0 <= _number(inference.get("overlap", 0.25), -1.0) < 1.0:
        problems.append(f"inference.overlap must be in [0, 1), got {inference.get('overlap')!r}")
    if inference.get("blending", "gaussian") not in ("gaussian", "constant"):
        problems.append("inference.blending must be 'gaussian' or 'constant'")
    if inference.get("precision", "auto") not in ("auto", "fp32", "bf16"):
        problems.append("inference.precision must be 'auto', 'fp32' or 'bf16'")
    if inference.get("backend", "auto") not in ("auto", "torch", "openvino"):
        problems.append("inference.backend must be 'auto', 'torch' or 'openvino'")
    if not 0.0 <= _number(inference.get("recheck_margin", 0.0), -1.0) < 0.5:
        problems.append(f"inference.recheck_margin must be in [0, 0.5), got {inference.get('recheck_margin')!r}")
    flips = flip_axes_problem(inference.get("flip_axes", []), 3 if data.get("mode") == "sliding-window-3d" else 2)
    if flips:
        problems.append(f"inference.{flips}")
    for key in ("sw_batch_size", "batch_size", "divisible_by"):
        if key in inference and not (isinstance(inference[key], int) and inference[key] >= 1):
            problems.append(f"inference.{key} must be a positive integer")
    click = data.get("click", {})
    if not isinstance(click, dict) or set(click) - {"max_distance_mm"} or not _number(
            click.get("max_distance_mm", 0.0), -1.0) >= 0.0:
        problems.append(f"click must be {{'max_distance_mm': mm >= 0}}, got {click!r}")
    if data.get("modality") == "MIP-PET" and data.get("mode") != "whole-image-2d":
        problems.append("a MIP-PET model must have mode 'whole-image-2d'")
    from .lesion_filter import spec_problems
    from .windowed import picture_problems

    lesion_filter = (data.get("postprocessing") or {}).get("lesion_filter")
    return (problems + picture_problems(preprocessing) + _within_problems(data)
            + spec_problems(lesion_filter, data.get("mode")))


def _within_problems(data: dict) -> list:
    """Problems with ``output.within`` ({"channel", "threshold"}: tumour only where that channel is on)."""
    output = data.get("output") or {}
    within = output.get("within")
    if within is None:
        return []
    channels = int(((data.get("network") or {}).get("args") or {}).get("out_channels", 1))
    channel = within.get("channel") if isinstance(within, dict) else None
    if output.get("activation", "sigmoid") != "sigmoid" or not isinstance(channel, int) or not 0 <= channel < channels \
            or channel == output.get("channel", 0) or not 0.0 < _number(within.get("threshold", 0.5), 0.0) < 1.0:
        return [f"output.within must be {{'channel': another of the {channels} sigmoid output channels, "
                f"'threshold': in (0, 1)}}, got {within!r}"]
    return []


def flip_axes_problem(axes, dims: int) -> str | None:
    """What is wrong with test-time ``flip_axes`` for a ``dims``-D network input, or None."""
    if (not isinstance(axes, (list, tuple))
            or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < dims for a in axes)
            or len(set(axes)) != len(axes)):
        return f"flip_axes must be a list of distinct spatial axes in 0..{dims - 1}, got {axes!r}"
    return None


def _inside_folder(name) -> bool:
    """Whether ``name`` is a relative path that stays in its folder (no drive, root or '..', in either path style)."""
    if not isinstance(name, str) or not name.strip():
        return False
    path = PureWindowsPath(name)  # reads both '/' and '\\' as separators
    return not (path.drive or path.root or ".." in path.parts)


def _number(value, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def load_card(path) -> ModelCard:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TumorSegError(f"cannot read model card {path}: {error}") from error
    return card_from_dict(data, path)


def model_dirs(extra=None) -> list:
    """Folders searched for cards, user folders first (so a user card can shadow a built-in)."""
    if extra and not Path(extra).is_dir():
        raise TumorSegError(f"models folder {extra} does not exist or is not a folder")
    dirs = [Path(p) for p in ([extra] if extra else [])]
    dirs += [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    dirs.append(BUILTIN_DIR)
    return dirs


def scan_cards(extra_dir=None) -> tuple:
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


def list_cards(extra_dir=None) -> list:
    """All valid cards found, first occurrence of each name wins (``scan_cards`` also names the broken ones)."""
    return scan_cards(extra_dir)[0]


def find_card(name: str, extra_dir=None) -> ModelCard:
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


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SHA256_OK = "sha256 ok"  # the weights file's SHA-256 equals the card's: the file is the one the card describes
NO_SHA256 = "no sha256"  # the card gives no SHA-256, so the file cannot be checked
OUTSIDE = "outside the card folder"  # refused: a card's weights must sit in its own folder
USABLE = (SHA256_OK, NO_SHA256)


def weights_status(card: ModelCard) -> str:
    """``SHA256_OK``, ``NO_SHA256``, ``OUTSIDE``, 'missing' or 'sha256 mismatch'."""
    try:
        path = card.weights_path
    except TumorSegError:
        return OUTSIDE
    if not path.is_file():
        return "missing"
    expected = card.weights.get("sha256")
    if not expected:
        return NO_SHA256
    return SHA256_OK if sha256(path) == expected else "sha256 mismatch"


def verified_weights(card: ModelCard) -> Path:
    """The weights path after checking it lies in the card's folder, exists and matches the card's SHA-256."""
    path = card.weights_path
    status = weights_status(card)
    if status == "missing":
        raise TumorSegError(
            f"weights for model {card.name!r} not found at {path}; train them with "
            f"'tumorseg train' (see the card's provenance.command) or place the file there"
        )
    if status == "sha256 mismatch":
        raise TumorSegError(
            f"weights {path} do not match the SHA-256 in {card.path}: the file is corrupt or not the one the card describes"
        )
    return path
