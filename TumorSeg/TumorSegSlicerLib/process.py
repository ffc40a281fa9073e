"""``tumorseg segment`` in a background process, so Slicer's UI never freezes.

The child runs with Slicer's own Python (``PythonSlicer -m TumorSegLib segment ... --progress-json``);
a reader thread turns its JSON lines into events that the main thread collects with ``poll()``
(MRML must only be touched from the main thread). The GPU memory goes with the process.

In the Slicer application ``PythonSlicer`` is a launcher that starts ``python-real`` as its child,
so stopping the launcher alone leaves inference running. The command therefore starts in a process
group of its own (POSIX: a new session; Windows: ``CREATE_NEW_PROCESS_GROUP``) and ``cancel()``
ends the whole tree: SIGTERM to the group (the backend exits 130 and writes nothing), SIGKILL to the
group ``KILL_AFTER_S`` seconds later from a timer thread (a no-op when it has ended); on Windows
``taskkill /T /F``. ``cancel()`` never waits: the main thread keeps polling until the tree has ended
(its output pipes close), or at most ``KILL_AFTER_S + PIPE_GRACE_S`` seconds.

An interactive process (``tumorseg worker``, see ``workers.py``) also takes requests on its stdin
(``send``); its other JSON lines (ready, per-request error or cancelled, exit) arrive as
``("message", dict)`` events.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional, Protocol

from TumorSegLib.errors import TumorSegError

KILL_AFTER_S = 1.0
PIPE_GRACE_S = 1.0
# Windows process creation constants (winbase.h), also defined here so the options can be built and tested anywhere.
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0
CREATE_NEW_PROCESS_GROUP = 0x00000200


class ProcessProtocol(Protocol):
    """What the logic needs from a running ``tumorseg`` command (``BackgroundProcess``, or a test's fake)."""

    cancelled: bool
    done: Optional[dict]

    @property
    def returncode(self) -> Optional[int]:
        """The exit code once the process has ended (and its output has been read), else None."""

    def poll(self) -> list:
        """Events since the last call: ``("progress", fraction, message)``, ``("done", info)`` and, from a
        worker, ``("message", info)`` (its other JSON lines)."""

    def cancel(self) -> None:
        """Stop the process and everything it started; returns at once."""

    def error_message(self) -> str:
        """A one-line explanation of a failed run."""


class InteractiveProcessProtocol(ProcessProtocol, Protocol):
    """A running ``tumorseg worker``: a process that also takes JSON requests on its stdin."""

    def send(self, message: dict) -> None:
        """Write ``message`` as one JSON line to the process's stdin (nothing when it has ended)."""


# Called as factory(command) for a one-shot ``tumorseg segment``, and as factory(command, interactive=True)
# for a ``tumorseg worker``, which must give an ``InteractiveProcessProtocol``.
ProcessFactory = Callable[..., ProcessProtocol]


def python_executable() -> str:
    """The Python that runs the backend: ``sys.executable``, or PythonSlicer inside the Slicer app.

    In Slicer, ``sys.executable`` is the application itself; the ``PythonSlicer`` launcher sits in
    the same folder (and on ``PATH``) and sets up Slicer's Python environment.
    """
    executable = Path(sys.executable)
    if executable.stem.lower().startswith("python"):
        return str(executable)
    for candidate in (executable.with_name("PythonSlicer" + executable.suffix), shutil.which("PythonSlicer")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise TumorSegError(f"cannot find the PythonSlicer executable next to {executable} or on PATH")


def backend_root() -> Path:
    """The folder holding the ``TumorSegLib`` package (the module folder of an installed extension)."""
    import TumorSegLib

    return Path(TumorSegLib.__file__).resolve().parents[1]


def segment_command(input_path, output_path, model: str, device: str = "auto", roi=None, point=None,
                    models_dir=None, overrides=None, organ_path=None) -> list:
    """The ``tumorseg segment`` command line for these settings (``organ_path``: where the organ mask goes)."""
    command = [python_executable(), "-m", "TumorSegLib", "segment", str(input_path), "-o", str(output_path),
               "--model", model, "--device", device, "--progress-json"]
    if organ_path is not None:
        command += ["--organ-mask", str(organ_path)]
    if roi is not None:
        command += ["--roi", *[str(int(v)) for v in roi]]
    if point is not None:
        command += ["--point", *[repr(float(v)) for v in point]]
    if models_dir:
        command += ["--models-dir", str(models_dir)]
    for key, value in (overrides or {}).items():
        if value is not None:
            command += [f"--{key.replace('_', '-')}", str(value) if isinstance(value, int) else repr(float(value))]
    return command


def worker_command(model: str, device: str = "auto", idle_timeout: float = 600.0, models_dir=None) -> list:
    """The ``tumorseg worker`` command line: one warm process serving clicks with ``model`` on ``device``."""
    command = [python_executable(), "-m", "TumorSegLib", "worker", "--model", model, "--device", device,
               "--idle-timeout", repr(float(idle_timeout))]
    return command + (["--models-dir", str(models_dir)] if models_dir else [])


def popen_options(os_name: str = os.name, startupinfo_class=None) -> dict:
    """``Popen`` keyword arguments: a process group of its own, and on Windows no console window.

    Windows gets what Slicer's ``launchConsoleProcess`` passes (STARTUPINFO with STARTF_USESHOWWINDOW
    and SW_HIDE) plus ``CREATE_NEW_PROCESS_GROUP``; ``startupinfo_class`` defaults to ``subprocess.STARTUPINFO``.
    """
    if os_name != "nt":
        return {"start_new_session": True}
    info = (startupinfo_class or subprocess.STARTUPINFO)()
    info.dwFlags |= STARTF_USESHOWWINDOW
    info.wShowWindow = SW_HIDE
    return {"startupinfo": info, "creationflags": CREATE_NEW_PROCESS_GROUP}


def kill_tree(pid: int, force: bool, os_name: str = os.name) -> None:
    """Signal the process group led by ``pid`` (POSIX; SIGKILL when ``force``), or end the tree on Windows."""
    if os_name == "nt":
        command = ["taskkill", "/T", "/F", "/PID", str(pid)]
        threading.Thread(target=subprocess.run, args=(command,), daemon=True,
                         kwargs={"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                                 **popen_options(os_name)}).start()
        return
    try:
        os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):  # the group has ended
        pass


class BackgroundProcess:
    """One running command in its own process group (implements ``ProcessProtocol``; with ``interactive``,
    ``InteractiveProcessProtocol``: its stdin is a pipe that ``send`` writes to)."""

    def __init__(self, command, env=None, interactive=False):
        environment = dict(os.environ if env is None else env)
        root = str(backend_root())
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH", "")) if p)
        environment["PYTHONUNBUFFERED"] = "1"
        self.command = [str(c) for c in command]
        self.events = queue.Queue()
        self.done = None
        self.stderr_tail = deque(maxlen=40)
        self.cancelled = False
        self._kill_at = None
        self._send_lock = threading.Lock()
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.PIPE if interactive else subprocess.DEVNULL, text=True,
                                         bufsize=1, env=environment, **popen_options())
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read_stdout(self):
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("done"):
                self.events.put(("done", message))
            elif isinstance(message, dict) and "progress" in message:
                self.events.put(("progress", float(message["progress"]), str(message.get("message", ""))))
            elif isinstance(message, dict):
                self.events.put(("message", message))

    def _read_stderr(self):
        for line in self._process.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    @property
    def returncode(self):
        """The exit code once the process and its readers have finished (the pipes close when the whole tree has
        ended; a cancelled tree that keeps them open is not waited for beyond its kill time and grace)."""
        if self._process.poll() is None:
            return None
        overdue = self._kill_at is not None and time.monotonic() >= self._kill_at + PIPE_GRACE_S
        if not overdue and any(t.is_alive() for t in self._threads):
            return None
        return self._process.returncode

    def poll(self) -> list:
        """Events received since the last call (main thread)."""
        events = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return events
            if event[0] == "done":
                self.done = event[1]
            events.append(event)

    def wait(self, on_event=None, interval: float = 0.05) -> int:
        """Block until the process ends, passing each event to ``on_event``."""
        while True:
            finished = self.returncode is not None
            for event in self.poll():
                if on_event:
                    on_event(event)
            if finished:
                return self.returncode
            time.sleep(interval)

    def send(self, message: dict) -> None:
        """One JSON line to the process's stdin (an interactive process); nothing when it has ended."""
        with self._send_lock:
            try:
                self._process.stdin.write(json.dumps(message) + "\n")
                self._process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):  # it has ended (or stdin was closed): returncode tells
                pass

    def cancel(self) -> None:
        """Ask the whole process tree to stop (SIGTERM), SIGKILL it ``KILL_AFTER_S`` later. Never waits."""
        if self.cancelled:
            return
        self.cancelled = True
        kill_tree(self._process.pid, force=os.name == "nt")
        self._kill_at = time.monotonic() + KILL_AFTER_S
        if os.name != "nt":
            timer = threading.Timer(KILL_AFTER_S, kill_tree, (self._process.pid, True))
            timer.daemon = True
            timer.start()

    def error_message(self) -> str:
        """The backend's own error line (``tumorseg: error: ...``) or the end of its stderr."""
        for line in reversed(self.stderr_tail):
            if line.startswith("tumorseg: "):
                return line[len("tumorseg: "):].removeprefix("error: ")
        tail = "\n".join(list(self.stderr_tail)[-10:])
        return f"tumorseg process failed with exit code {self._process.returncode}" + (f":\n{tail}" if tail else "")
