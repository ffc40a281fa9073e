"""``tumorseg worker --model NAME [--device ...] [--idle-timeout S]``: a warm process for interactive use.

Loads the model once, then serves requests given as JSON lines on stdin, one at a time, and
answers in JSON lines on stdout (nothing else is printed there), so a caller (the Slicer module)
keeps one worker per model and device between clicks instead of starting Python, torch and the
weights for each one. It is still a separate process: GPU memory never lives in the caller.

Requests (``id`` is any JSON value, echoed in every answer to the request)::

    {"id": 1, "command": "segment", "input": "ct.nii.gz", "output": "mask.nii.gz",
     "points": [[R, A, S], ...] | "roi": [I0, I1, J0, J1, K0, K1],   (optional; not both)
     "json": "readouts.json", "overrides": {"threshold": 0.4, ...},  (optional)
     "clicks_only": true}  (optional: the mask file holds only the box around the clicks' boxes, with
                            its own exact geometry, instead of the whole grid: less to write and load)
    {"command": "cancel", "id": 1}    stop request 1 (or, without "id", whatever runs) at its next check
    {"command": "ping"}               answered {"pong": true, "model": ..., "device": ...}
    {"command": "quit"}               end (so does end-of-file on stdin, or --idle-timeout without requests)

Answers: ``{"ready": true, "model", "device"}`` once loaded; per request ``{"id", "progress", "message"}``
lines, then one of ``{"id", "done": true, "output", "lesions", "clicks", "notes", "readouts",
"seconds"}``, ``{"id", "error": message}`` (nothing written) or ``{"id", "cancelled": true}``
(nothing written); ``{"exit": "eof" | "quit" | "idle" | "signal"}`` last. ``clicks`` gives, per point,
its ``box`` (I0 I1 J0 J1 [K0 K1], half-open, on the mask's grid: the only voxels that click may
change), ``voxels`` of its lesion and ``distance_mm`` (null: no lesion there). The last input read
is kept in memory while its file is unchanged, so clicks on one study read it once.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, TumorSegError
from ..progress import Cancel, ProgressCallback
from .segment import add_model_arguments, cancel_on_signals

if TYPE_CHECKING:
    from ..engine import Segmenter

PROTOCOL = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="serve segment requests (JSON lines on stdin/stdout) with one loaded model, for interactive use",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--idle-timeout", type=float, default=600.0,
                        help="end after this many seconds without a request (default 600)")
    parser.set_defaults(func=run)


class Channel:
    """JSON lines out (one writer lock, flushed at once) and requests in (a reader thread)."""

    def __init__(self, stdin, stdout):
        self.stdout = stdout
        self.lock = threading.Lock()
        self.requests = queue.Queue()
        self.running = {}  # JSON of the id of the request in progress -> its Cancel token
        self.cancelled = set()  # JSON of the ids cancelled before they started
        self.reader = threading.Thread(target=self._read, args=(stdin,), daemon=True)
        self.reader.start()

    def send(self, **message) -> None:
        with self.lock:
            self.stdout.write(json.dumps(message) + "\n")
            self.stdout.flush()

    def _read(self, stdin) -> None:
        for line in stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request must be a JSON object")
            except ValueError as error:
                self.send(error=f"not a JSON request: {error}")
                continue
            if request.get("command") == "cancel":
                self.cancel(request.get("id"))
            else:
                self.requests.put(request)
        self.cancel(None)  # the caller is gone: stop the work in progress
        self.requests.put({"command": "eof"})

    def cancel(self, request_id: Any) -> None:
        """Cancel request ``request_id`` (None: the one in progress), also while it waits in the queue."""
        key = json.dumps(request_id)
        if request_id is not None and key not in self.running:
            self.cancelled.add(key)
        for running, token in list(self.running.items()):
            if request_id is None or running == key:
                token.set()


def run(args: argparse.Namespace) -> int:
    from ..cards import find_card
    from ..engine import Segmenter

    if args.model is None:
        raise TumorSegError("the worker needs --model (it serves one model)")
    if not args.idle_timeout > 0:
        raise TumorSegError(f"--idle-timeout must be > 0 seconds, got {args.idle_timeout}")
    card = find_card(args.model, args.models_dir)
    segmenter = Segmenter(card, args.device)
    channel = Channel(sys.stdin, sys.stdout)
    sys.stdout = sys.stderr  # anything else printed goes to stderr, never into the answers
    channel.send(ready=True, model=card.name, device=str(segmenter.device), protocol=PROTOCOL)
    stop = Cancel()
    cache = InputCache()
    with cancel_on_signals(stop):
        reason = serve(channel, segmenter, cache, args.idle_timeout, stop)
    channel.send(exit=reason)
    return 0


def serve(channel: Channel, segmenter: Segmenter, cache: InputCache, idle_timeout: float, stop: Cancel) -> str:
    """Answer requests until end-of-file, quit, a signal or ``idle_timeout`` seconds without one."""
    while True:
        try:
            request = channel.requests.get(timeout=min(idle_timeout, 0.5))
        except queue.Empty:
            if stop.is_set():
                return "signal"
            idle_timeout -= 0.5
            if idle_timeout <= 0:
                return "idle"
            continue
        command = request.get("command")
        if command in ("eof", "quit"):
            return command
        if command == "ping":
            channel.send(pong=True, model=segmenter.card.name, device=str(segmenter.device))
        elif command == "segment":
            answer(channel, segmenter, cache, request, stop)
        else:
            channel.send(id=request.get("id"), error=f"unknown command {command!r} (segment, cancel, ping, quit)")


def answer(channel: Channel, segmenter: Segmenter, cache: InputCache, request: dict, stop: Cancel) -> None:
    """Run one segment request and send its progress and result (or error)."""
    request_id = request.get("id")
    key = json.dumps(request_id)
    cancel = Cancel()
    channel.running[key] = cancel
    if stop.is_set() or key in channel.cancelled:
        channel.cancelled.discard(key)
        cancel.set()
    started = time.perf_counter()

    def progress(fraction: float, message: str = "") -> None:
        if stop.is_set():
            cancel.set()
        channel.send(id=request_id, progress=round(float(fraction), 4), message=message)

    try:
        result = segment(segmenter, cache, request, progress, cancel)
        channel.send(id=request_id, done=True, seconds=round(time.perf_counter() - started, 3), **result)
    except Cancelled:
        channel.send(id=request_id, cancelled=True)
    except TumorSegError as error:
        channel.send(id=request_id, error=str(error))
    except Exception as error:  # a bug must not end the worker silently: report it and keep serving
        channel.send(id=request_id, error=f"internal error: {type(error).__name__}: {error}")
    finally:
        channel.running.pop(key, None)


def segment(segmenter: Segmenter, cache: InputCache, request: dict, progress: ProgressCallback,
            cancel: Cancel) -> dict:
    """One request: segment, write the mask (and readouts), describe the clicks."""
    from ..runs import readouts, segment_file
    from ..files import require_writable, write_json

    for key in ("input", "output"):
        if not isinstance(request.get(key), str):
            raise TumorSegError(f"request needs {key!r} (a file path)")
    unknown = sorted(set(request) - {"id", "command", "input", "output", "points", "roi", "json", "overrides",
                                     "clicks_only"})
    if unknown:
        raise TumorSegError(f"unknown request field(s) {unknown}")
    overrides = request.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise TumorSegError("overrides must be a JSON object of settings")
    if request.get("json"):
        require_writable(request["json"], "readouts")
    prediction, written = segment_file(request["input"], request["output"], segmenter, roi=request.get("roi"),
                                       points=request.get("points"), progress=progress, cancel=cancel,
                                       overrides=overrides, image=cache.read(request["input"]),
                                       clicks_only=bool(request.get("clicks_only")))
    values = readouts(prediction, segmenter.card).to_dict()
    if request.get("json"):
        write_json(request["json"], values)
    clicks = [{"point": list(c.point), "box": [v for pair in c.box for v in pair],
               "voxels": int(c.mask.sum()), "distance_mm": c.distance_mm} for c in prediction.clicks]
    return {"output": str(written), "lesions": values["totals"]["lesion_count"], "clicks": clicks,
            "notes": prediction.notes, "readouts": values}


class InputCache:
    """The last input image read, kept while its file is unchanged (same size and modification time)."""

    def __init__(self):
        self.key = None
        self.image = None

    def read(self, path):
        from ..io import read_image

        stat = Path(path).stat() if Path(path).is_file() else None
        key = None if stat is None else (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key is None or key != self.key:
            self.key, self.image = None, None
            self.image = read_image(path, "input image")  # a missing or bad file raises here
            self.key = key
        return self.image
