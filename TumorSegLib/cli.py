"""The ``tumorseg`` command: segment, measure, evaluate, models, train, demo, worker.

Each sub-command lives in ``TumorSegLib/commands/<name>.py`` with ``register(subparsers)``
adding its parser and setting ``func``; heavy imports (torch, monai) stay inside the commands
so ``tumorseg measure`` starts fast. Every failure ends as one line ``tumorseg: error: ...`` on
stderr and exit code 2 (130 when cancelled); the Python traceback of an unexpected error is shown
only with ``--debug`` or ``TUMORSEG_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn, Sequence

from . import __version__
from .errors import Cancelled, TumorSegError, brief

COMMANDS = ("segment", "measure", "evaluate", "models", "train", "demo", "worker")
DEBUG_VAR = "TUMORSEG_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in the same one-line form as every other error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tumorseg: error: {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tumorseg", description="Tumour segmentation and measurement for PET and CT.")
    parser.add_argument("--version", action="version", version=f"tumorseg {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"show the Python traceback of an unexpected error "
                        f"(also: {DEBUG_VAR}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("tumorseg: cancelled, nothing written", file=sys.stderr)
        return 130
    except TumorSegError as error:
        print(f"tumorseg: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("tumorseg: error: out of memory: the input is too large for this machine's memory "
              "(try an ROI or a point, or a machine with more memory); nothing written", file=sys.stderr)
        return 2
    except Exception as error:  # a bug or an unforeseen input: one line for the user, the traceback on request
        if args.debug or os.environ.get(DEBUG_VAR, "") not in ("", "0"):
            traceback.print_exc()
        print(f"tumorseg: error: unexpected {type(error).__name__}: {brief(error)} (this is a TumorSeg bug or an "
              f"input it does not handle; rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 2
