"""Progress reporting and cancellation shared by the engine, training and the CLI.

Long work calls ``progress(fraction, message)``; the CLI turns that into a progress bar or
one JSON object per line (``--progress-json``, read by the Slicer module), and a caller that
wants to stop the work sets the ``Cancel`` token, which the work checks between steps.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str = "") -> None:
    """A progress callback that ignores everything."""


class Cancel:
    """A thread-safe cancel flag: ``cancel.set()`` asks the work to stop at its next check."""

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")


def check_cancel(cancel: Optional[Cancel]) -> None:
    if cancel is not None:
        cancel.check()


def json_lines(stream: TextIO | None = None) -> ProgressCallback:
    """A callback printing ``{"progress": f, "message": m}`` lines, flushed at once."""
    stream = stream or sys.stdout

    def report(fraction: float, message: str = "") -> None:
        stream.write(json.dumps({"progress": round(float(fraction), 4), "message": message}) + "\n")
        stream.flush()

    return report


class ProgressBar:
    """Progress on stderr from fractions; use as a context manager.

    On a terminal, a tqdm bar that is cleared when done. Elsewhere (a log file, a pipe) one plain
    line at most every ``LOG_INTERVAL_S`` seconds, so logs stay readable.
    """

    LOG_INTERVAL_S = 20.0

    def __init__(self, description: str = "", stream=None):
        self._stream = stream or sys.stderr
        self._description = description
        self._bar = None
        self._last = time.monotonic()  # the first line after LOG_INTERVAL_S: a quick run prints none
        if _is_terminal(self._stream):
            from tqdm import tqdm

            self._bar = tqdm(total=1000, desc=description, file=self._stream, leave=False,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self._bar is not None:
            self._bar.n = int(round(1000 * fraction))
            self._bar.set_postfix_str(message, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if now - self._last >= self.LOG_INTERVAL_S:
            self._last = now
            self._stream.write(f"{self._description}: {100 * fraction:.0f}% {message}".rstrip() + "\n")
            self._stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def scaled(progress: ProgressCallback, start: float, stop: float) -> ProgressCallback:
    """A callback mapping a sub-task's 0..1 onto ``start..stop`` of ``progress``."""

    def report(fraction: float, message: str = "") -> None:
        progress(start + (stop - start) * fraction, message)

    return report
