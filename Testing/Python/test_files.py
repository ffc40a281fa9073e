"""The one file writer: atomic, the user's umask, stale partial files of killed runs removed, inputs safe."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from TumorSegLib.errors import TumorSegError
from TumorSegLib.files import PARTIAL_TAG, atomic_write, remove_stale_partials, require_not_input, write_json
from TumorSegLib.image import Image
from TumorSegLib.io import write_image


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_users_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        written = [write_json(tmp_path / "r.json", {"a": 1}),
                   write_image(tmp_path / "m.nii.gz", Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))),
                   write_image(tmp_path / "m.png", Image(np.zeros((4, 4), np.uint8), np.eye(3)))]
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(path.stat().st_mode) for path in written] == [mode] * 3


def test_a_killed_runs_partial_file_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / f".m.nii.gz{PARTIAL_TAG}{dead_pid()}.nii.gz"
    stale.write_bytes(b"half a file")
    alive = tmp_path / f".m.nii.gz{PARTIAL_TAG}{os.getppid()}.nii.gz"  # a running process's: kept
    alive.write_bytes(b"being written")
    other = tmp_path / f".other.nii.gz{PARTIAL_TAG}{dead_pid()}.nii.gz"  # another name's: kept
    other.write_bytes(b"x")
    write_image(tmp_path / "m.nii.gz", Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)))
    assert not stale.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["m.nii.gz"]
    assert remove_stale_partials(tmp_path / "other.nii.gz") == [other]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")

    def fail(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(TumorSegError, match="cannot write output .*disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_an_output_may_not_be_an_input(tmp_path):
    source = tmp_path / "ct.nii.gz"
    source.write_bytes(b"ct")
    (tmp_path / "link.nii.gz").symlink_to(source)
    (tmp_path / "sub").mkdir()
    for output in (source, tmp_path / "link.nii.gz", tmp_path / "sub" / ".." / "ct.nii.gz"):
        with pytest.raises(TumorSegError, match="refusing to overwrite an input"):
            require_not_input([output], [source])
    require_not_input([tmp_path / "mask.nii.gz", None], [source, None])
