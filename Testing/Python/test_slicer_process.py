"""The background process of the Slicer module, without Slicer: Popen options (process group, hidden
console on Windows), killing the process tree, and reading the backend's error line and progress."""

import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "TumorSeg"))

from TumorSegSlicerLib import process  # noqa: E402


class StartupInfo:
    """Stands in for ``subprocess.STARTUPINFO`` (Windows only)."""

    def __init__(self):
        self.dwFlags = 0
        self.wShowWindow = 1


def test_windows_gets_a_hidden_console_in_a_new_process_group():
    options = process.popen_options("nt", StartupInfo)
    info = options["startupinfo"]
    assert info.dwFlags & process.STARTF_USESHOWWINDOW and info.wShowWindow == process.SW_HIDE
    assert options["creationflags"] & process.CREATE_NEW_PROCESS_GROUP
    assert "start_new_session" not in options


def test_posix_starts_a_new_session():
    assert process.popen_options("posix") == {"start_new_session": True}


def test_background_process_uses_the_options(monkeypatch):
    seen = {}

    class Popen:
        def __init__(self, command, **kwargs):
            seen.update(kwargs)
            self.stdout, self.stderr, self.pid = iter(()), iter(()), 1

    monkeypatch.setattr(process.subprocess, "Popen", Popen)
    monkeypatch.setattr(process, "popen_options", lambda: {"startupinfo": "hidden", "creationflags": 512})
    process.BackgroundProcess(["tumorseg"])
    assert seen["startupinfo"] == "hidden" and seen["creationflags"] == 512


def test_windows_kill_ends_the_tree_with_taskkill(monkeypatch):
    calls = []
    monkeypatch.setattr(process.subprocess, "STARTUPINFO", StartupInfo, raising=False)
    monkeypatch.setattr(process.subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    monkeypatch.setattr(process.threading, "Thread", lambda target, args, kwargs, daemon: types.SimpleNamespace(
        start=lambda: target(*args, **kwargs)))
    process.kill_tree(4242, force=True, os_name="nt")
    (command, kwargs), = calls
    assert command == ["taskkill", "/T", "/F", "/PID", "4242"]
    assert kwargs["startupinfo"].wShowWindow == process.SW_HIDE


def test_error_line_and_progress_are_read():
    script = ("import json, sys\n"
              "print(json.dumps({'progress': 0.25, 'message': 'a quarter'}), flush=True)\n"
              "print('Traceback: noise', file=sys.stderr)\n"
              "print('tumorseg: error: the weights do not match the card', file=sys.stderr)\n"
              "sys.exit(2)\n")
    background = process.BackgroundProcess([sys.executable, "-c", script])
    events = []
    assert background.wait(events.append) == 2
    assert events == [("progress", 0.25, "a quarter")]
    assert background.error_message() == "the weights do not match the card"


def test_cancel_returns_at_once_and_ends_a_process_that_ignores_sigterm():
    """SIGTERM first; a tree that ignores it is killed KILL_AFTER_S later, without the caller polling."""
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('{\"progress\": 0}', flush=True)\ntime.sleep(60)\n"
    background = process.BackgroundProcess([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not background.poll():  # its handler is installed once it reports progress
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    background.cancel()
    assert time.monotonic() - started < 0.2
    while background.returncode is None and time.monotonic() - started < 10:
        time.sleep(0.02)
    assert background.cancelled and background.returncode is not None
    assert time.monotonic() - started < process.KILL_AFTER_S + 2


def test_interactive_process_takes_requests_and_reports_every_line():
    """A worker's stdin takes JSON requests (``send``); lines other than progress and done come as messages."""
    script = ("import json, sys\n"
              "print(json.dumps({'ready': True}), flush=True)\n"
              "for line in sys.stdin:\n"
              "    request = json.loads(line)\n"
              "    print(json.dumps({'id': request['id'], 'progress': 0.5, 'message': 'half'}), flush=True)\n"
              "    print(json.dumps({'id': request['id'], 'done': True}), flush=True)\n")
    background = process.BackgroundProcess([sys.executable, "-c", script], interactive=True)
    background.send({"id": 7})
    events, deadline = [], time.monotonic() + 30
    while len(events) < 3:
        assert time.monotonic() < deadline, events
        events += background.poll()
        time.sleep(0.02)
    assert events == [("message", {"ready": True}), ("progress", 0.5, "half"), ("done", {"id": 7, "done": True})]
    background.cancel()
    while background.returncode is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    background.send({"id": 8})  # an ended process: nothing to write to, no error
