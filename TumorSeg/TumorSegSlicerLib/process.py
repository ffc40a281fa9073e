"""``tumorseg segment`` in a background process, so Slicer's UI never freezes.

The child runs with Slicer's own Python (``PythonSlicer -m TumorSegLib segment ... --progress-json``);
a reader thread turns its JSON lines into events that the main thread collects with ``poll()``
(MRML must only be touched from the main thread). ``cancel()`` terminates the child, which exits
130 and writes nothing. The GPU memory goes with the process.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from TumorSegLib.errors import TumorSegError


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
                    models_dir=None, overrides=None) -> list:
    """The ``tumorseg segment`` command line for these settings."""
    command = [python_executable(), "-m", "TumorSegLib", "segment", str(input_path), "-o", str(output_path),
               "--model", model, "--device", device, "--progress-json"]
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


class BackgroundProcess:
    """One running command; events are ``("progress", fraction, message)`` and ``("done", info)``."""

    def __init__(self, command, env=None):
        environment = dict(os.environ if env is None else env)
        root = str(backend_root())
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH", "")) if p)
        environment["PYTHONUNBUFFERED"] = "1"
        self.command = [str(c) for c in command]
        self.events = queue.Queue()
        self.done = None
        self.stderr_tail = deque(maxlen=40)
        self.cancelled = False
        self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, text=True, bufsize=1, env=environment)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

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

    def _read_stderr(self):
        for line in self._process.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    @property
    def returncode(self):
        """The exit code once the process and its readers have finished, else None."""
        if self._process.poll() is None or any(t.is_alive() for t in self._threads):
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

    def cancel(self, timeout: float = 10.0) -> None:
        """Ask the process to stop (SIGTERM), and kill it if it does not within ``timeout`` seconds."""
        self.cancelled = True
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for thread in self._threads:
            thread.join(timeout)

    def error_message(self) -> str:
        """The backend's own error line (``tumorseg: error: ...``) or the end of its stderr."""
        for line in reversed(self.stderr_tail):
            if line.startswith("tumorseg: "):
                return line[len("tumorseg: "):]
        tail = "\n".join(list(self.stderr_tail)[-10:])
        return f"tumorseg process failed with exit code {self._process.returncode}" + (f":\n{tail}" if tail else "")
