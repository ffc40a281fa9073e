"""The result of training: weights plus a complete model card, and publishing them.

The run folder gets ``<name>.pt`` (a state_dict), ``<name>.json`` (the config's card section
plus ``weights`` with SHA-256 and ``provenance``: data manifest hash, exact command, config,
code version, validation figures) and ``<name>.train.json`` (the config, kept next to the card).
``publish`` copies those three files into a models folder such as ``Resources/Models``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..cards import card_from_dict, sha256
from ..errors import TumorSegError
from ..files import atomic_write, write_json

if TYPE_CHECKING:
    from .config import TrainConfig


def save_torch(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda temporary: torch.save(obj, temporary))


def code_version() -> str:
    """``tumorseg <version>`` plus the git commit of the code (``+dirty`` with local changes)."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"tumorseg {__version__}"
    return f"tumorseg {__version__} git {commit}{'+dirty' if dirty else ''}"


def write_model(out_dir: Path, config: TrainConfig, state_dict: dict, provenance: dict) -> Path:
    """Write weights, card and config into ``out_dir``; returns the card's path."""
    out_dir = Path(out_dir)
    weights = save_torch(state_dict, out_dir / f"{config.name}.pt")
    card = {**config.card, "name": config.name,
            "weights": {"file": weights.name, "sha256": sha256(weights), "format": "state_dict"},
            "provenance": provenance}
    card_path = out_dir / f"{config.name}.json"
    card_from_dict(card, card_path)  # the card written must load
    write_json(out_dir / f"{config.name}.train.json", config.to_dict())
    return write_json(card_path, card)


def publish(card_path: Path, destination: Path) -> list:
    """Copy a trained model (card, weights, training config) into a models folder."""
    card_path, destination = Path(card_path), Path(destination)
    if not destination.is_dir():
        raise TumorSegError(f"cannot publish to {destination}: not a folder")
    name = card_path.name[: -len(".json")]
    sources = [card_path.with_name(f"{name}.pt"), card_path.with_name(f"{name}.train.json"), card_path]
    copied = []
    for source in sources:  # the card last, so it never names weights that are not there yet
        target = destination / source.name
        atomic_write(target, lambda temporary, source=source: shutil.copyfile(source, temporary))
        copied.append(target)
    return copied
