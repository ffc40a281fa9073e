"""Writing files: one atomic writer, one writability check, and inputs that are never overwritten.

Rules every output of TumorSeg follows:

- **Atomic.** A file is written to a temporary file in its own folder and renamed into place, so
  it appears complete under its name or not at all. The temporary file is named
  ``.<name>.tumorseg-partial-<pid><suffix>``: hidden, so a folder of inputs never reads it, and
  tagged with the writing process. A run killed mid-write (SIGKILL, power loss) can leave one;
  the next write of the same name removes every partial file of that name whose process is gone.
- **Permissions** follow the user's umask (0644 under umask 022), like any other tool's output.
- **Checked first.** ``require_writable`` is called for every output before any work starts.
- **Inputs are safe.** ``require_not_input`` refuses an output that is an input file (also
  through a symbolic link or another spelling of its path).
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import TumorSegError
from .hints import PathLike

PARTIAL_TAG = ".tumorseg-partial-"


def require_writable(path: PathLike, what: str = "output") -> Path:
    """``path`` if it can be written: its folder exists, is a folder and is writable, and it is no folder itself."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise TumorSegError(f"cannot write {what} {path}: {parent} is a file, not a folder")
            break
    if not folder.is_dir():
        raise TumorSegError(f"cannot write {what} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TumorSegError(f"cannot write {what} {path}: folder {folder} is not writable")
    if path.is_dir():
        raise TumorSegError(f"cannot write {what} {path}: it is a folder")
    return path


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether paths ``a`` and ``b`` name the same file or folder (symbolic links and ``..`` resolved)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def require_not_input(outputs: Iterable, inputs: Iterable) -> None:
    """Refuse any output that is one of ``inputs`` (None entries are skipped)."""
    inputs = [Path(p) for p in inputs if p is not None]
    for output in (Path(p) for p in outputs if p is not None):
        for source in inputs:
            if same_file(output, source):
                raise TumorSegError(f"output {output} is the input {source}: refusing to overwrite an input; "
                                    "choose another output path")


def atomic_write(path: PathLike, write: Callable[[Path], None], what: str = "output") -> Path:
    """Write ``path`` by calling ``write(temporary_path)`` and renaming it into place (rules above)."""
    path = require_writable(path, what)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    temporary = path.with_name(f".{path.name}{PARTIAL_TAG}{os.getpid()}{suffix}")
    remove_stale_partials(path)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, (TumorSegError, KeyboardInterrupt, SystemExit)):
            raise
        raise TumorSegError(f"cannot write {what} {path}: {error}") from error
    return path


def remove_stale_partials(path: PathLike) -> list:
    """Remove partial files of ``path`` left by processes that no longer run; returns what was removed."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}{PARTIAL_TAG}") + r"(\d+)")
    removed = []
    folder = path.parent if str(path.parent) else Path(".")
    for candidate in folder.glob(f".{glob.escape(path.name)}{PARTIAL_TAG}*"):
        match = pattern.match(candidate.name)
        if match and not _running(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def write_bytes(path: PathLike, data: bytes, what: str = "output") -> Path:
    """Write ``data`` atomically."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data), what)


def write_text(path: PathLike, text: str, what: str = "output") -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8", newline=""), what)


def write_json(path: PathLike, data: Any, what: str = "output") -> Path:
    """Write ``data`` as indented JSON atomically (numpy values become plain numbers; NaN is refused)."""
    return write_text(path, json.dumps(data, indent=2, allow_nan=False, default=_plain) + "\n", what)


def _plain(value):
    """JSON for numpy scalars and arrays (json calls this for types it does not know)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _running(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would end that process: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True
