"""Warm ``tumorseg worker`` processes for clicks: one per model, device and models folder (no qt, no MRML).

The first click with a model starts its worker (Python, torch and the weights load once); later
clicks send it one request each (a JSON line, see ``TumorSegLib/commands/worker.py``) and read its
answer. It is still a separate process, so GPU memory never lives in Slicer's. A worker ends on its
own after ``idle_timeout`` seconds without a request (it is replaced, not reused, once it comes
within ``IDLE_MARGIN_S`` of that), and its whole process tree is ended, as Cancel ends a run, by
``Workers.stop`` (module cleanup, scene close) and when a request to it is cancelled.

Workers are started by the logic's ``processFactory`` as ``factory(command, interactive=True)``,
so tests can inject their own; a request is seen as a process that ends with its answer
(``WorkerRequest`` implements ``ProcessProtocol``), so a ``SegmentationRun`` polls and cancels it
like a one-shot ``tumorseg segment``.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

from TumorSegLib.errors import TumorSegError

from .process import InteractiveProcessProtocol

IDLE_MARGIN_S = 5.0  # a worker this close to its idle timeout may end before it reads the request: start a new one
CANCELLED_EXIT = 130


class Worker:
    """One started worker process and when it last answered."""

    def __init__(self, process: InteractiveProcessProtocol, idle_timeout: float):
        self.process = process
        self.idle_timeout = idle_timeout
        self.last_used = time.monotonic()
        self.busy = None  # the WorkerRequest it is serving

    def usable(self) -> bool:
        """Running, not being stopped, and not about to end on its idle timeout."""
        idle = time.monotonic() - self.last_used
        return (not self.process.cancelled and self.process.returncode is None
                and idle < self.idle_timeout - IDLE_MARGIN_S)

    def alive(self) -> bool:
        return self.process.returncode is None

    def stop(self) -> None:
        """End the worker's process tree (returns at once)."""
        if not self.process.cancelled and self.process.returncode is None:
            self.process.cancel()


class WorkerRequest:
    """One request to a worker, seen as a process that ends with the worker's answer (``ProcessProtocol``).

    Its exit code is 0 for ``done``, 2 for an ``error`` answer, 130 for ``cancelled``; when the worker
    ends without answering, the worker's own. ``cancel()`` ends the worker (Cancel kills it).
    """

    def __init__(self, worker: Worker, request: dict, fresh: bool):
        self.worker = worker
        self.id = request["id"]
        self.cancelled = False
        self.done = None
        self.answer = None
        self._events = [("progress", 0.0, "starting the model worker (it loads the model once)")] if fresh else []
        worker.busy = self
        worker.process.send(request)

    def _collect(self) -> None:
        """Move the worker's new lines into this request's events (progress, and its own answer)."""
        for event in self.worker.process.poll():
            if event[0] == "progress":
                self._events.append(event)
                continue
            message = event[1]
            if self.answer is not None or message.get("id") != self.id:
                continue  # "ready", "exit", or a line of no request
            if event[0] == "done":
                self.done = message
                self._events.append(event)
            if event[0] == "done" or "error" in message or "cancelled" in message:
                self.answer = message
                self.worker.last_used = time.monotonic()
                self.worker.busy = None

    @property
    def returncode(self):
        """Set once the answer has arrived (every event before it is then in ``poll()``), or the worker ended."""
        self._collect()
        if self.answer is not None and not self.cancelled:
            return 0 if self.done else CANCELLED_EXIT if self.answer.get("cancelled") else 2
        return self.worker.process.returncode

    def poll(self) -> list:
        self._collect()
        events, self._events = self._events, []
        return events

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.worker.stop()

    def error_message(self) -> str:
        if self.answer is not None and "error" in self.answer:
            return str(self.answer["error"])
        return self.worker.process.error_message()


class Workers:
    """The warm workers of one logic, keyed by (model, device, models folder)."""

    def __init__(self):
        self._workers = {}
        self._ids = itertools.count(1)

    def submit(self, key: tuple, start: Callable[[], InteractiveProcessProtocol], idle_timeout: float,
               request: dict) -> WorkerRequest:
        """Send ``request`` to the worker of ``key``, started first (``start()``) when there is none usable."""
        worker = self._workers.get(key)
        if worker is not None and worker.busy is not None and worker.busy.answer is None and worker.usable():
            raise TumorSegError("the model is still working on the previous click; wait for it, or cancel it")
        fresh = worker is None or not worker.usable()
        if fresh:
            if worker is not None:
                worker.stop()
            worker = self._workers[key] = Worker(start(), idle_timeout)
        return WorkerRequest(worker, {"id": next(self._ids), **request}, fresh)

    def processes(self) -> list:
        """The processes of the workers still running."""
        return [w.process for w in self._workers.values() if w.alive()]

    def stop(self) -> None:
        """End every worker (module cleanup, scene close); returns at once."""
        for worker in self._workers.values():
            worker.stop()
        self._workers.clear()
