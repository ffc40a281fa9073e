"""The ``tumorseg`` command: segment, measure, evaluate, models, train, demo, worker.

Each sub-command lives in ``TumorSegLib/commands/<name>.py`` with ``register(subparsers)``
adding its parser and setting ``func``; heavy imports (torch, monai) stay inside the commands
so ``tumorseg measure`` starts fast. A ``TumorSegError`` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import Cancelled, TumorSegError

COMMANDS = ("segment", "measure", "evaluate", "models", "train", "demo", "worker")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tumorseg", description="Tumour segmentation and measurement for PET and CT.")
    parser.add_argument("--version", action="version", version=f"tumorseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("tumorseg: cancelled, nothing written", file=sys.stderr)
        return 130
    except TumorSegError as error:
        print(f"tumorseg: error: {error}", file=sys.stderr)
        return 2
