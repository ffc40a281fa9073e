"""Bad input through the real CLI, as one table: every case exits 2 with one ``tumorseg: error:`` line.

Each case builds its files in a fresh folder, runs ``tumorseg`` there, and checks: exit code 2,
exactly one line on stderr, that line starts with ``tumorseg: error:`` and says what the table says,
no traceback, no file added, removed or changed (inputs keep their bytes). The README's bad-input
table lists the same cases.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from TumorSegLib.cli import main
from TumorSegLib.image import Image
from TumorSegLib.io import write_image
from TumorSegLib.progress import ProgressBar
from TumorSegLib.testing import lesion_png, lesion_volume, tiny_model

CT_MODEL = "tiny-ct-sliding-window-3d"
MIP_MODEL = "tiny-mip-pet-whole-image-2d"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    directory = tmp_path_factory.getbasetemp() / "tiny-models"
    for mode, modality in (("sliding-window-3d", "CT"), ("whole-image-2d", "MIP-PET")):
        tiny_model(directory, mode, modality)
    return directory


# ---- inputs the cases are built from ------------------------------------------------------------
def ct(folder: Path, name: str = "ct.nii.gz") -> Path:
    return write_image(folder / name, lesion_volume("CT")[0])


def nifti(folder: Path, name: str, array: np.ndarray, affine=None) -> Path:
    """``array`` as NIfTI with ``affine`` in the sform only (nibabel cannot write a singular one as qform)."""
    image = nib.Nifti1Image(array, None)
    image.set_sform(np.eye(4) if affine is None else affine, code=1)
    image.set_qform(None, code=0)
    path = folder / name
    nib.save(image, str(path))
    return path


def png(folder: Path, name: str = "mip.png") -> Path:
    return write_image(folder / name, lesion_png()[0])


def png16(path: Path) -> Path:
    from PIL import Image as PILImage

    PILImage.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16).save(path)
    return path


def card_copy(folder: Path, models: Path, **weights) -> Path:
    """A copy of the tiny CT card (weights beside it) with changed ``weights`` fields."""
    data = json.loads((models / f"{CT_MODEL}.json").read_text())
    (folder / data["weights"]["file"]).write_bytes((models / data["weights"]["file"]).read_bytes())
    data["weights"].update(weights)
    data["name"] = "copy"
    path = folder / "copy.json"
    path.write_text(json.dumps(data))
    return path


def segment(*argv, model=CT_MODEL):
    return ["segment", *map(str, argv), "--device", "cpu"] + (["--model", model] if model else [])


class Evil:
    """Unpickling this would run ``os.system``: a checkpoint must never be unpickled."""

    def __reduce__(self):
        return os.system, ("touch PWNED",)


def train_config(folder: Path) -> Path:
    source = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "ct-lung-lesion-3d.train.json"
    path = folder / "cfg.train.json"
    path.write_text(source.read_text())
    return path


# ---- the table: (id, build(folder, models) -> argv, what the error says) ------------------------
CASES = [
    ("missing input", lambda f, m: segment("nope.nii.gz", "-o", "m.nii.gz"), "not found"),
    ("unknown file type", lambda f, m: ((f / "a.txt").write_text("x"), segment("a.txt", "-o", "m.nii.gz"))[1],
     "unsupported file type"),
    ("corrupt NIfTI", lambda f, m: ((f / "c.nii.gz").write_bytes(b"not an image" * 50),
                                    segment("c.nii.gz", "-o", "m.nii.gz"))[1], "cannot read"),
    ("truncated NIfTI", lambda f, m: (ct(f, "t.nii.gz"), (f / "t.nii.gz").write_bytes((f / "t.nii.gz").read_bytes()[:900]),
                                      segment("t.nii.gz", "-o", "m.nii.gz"))[2], "cannot read"),
    ("4D NIfTI", lambda f, m: (nifti(f, "4d.nii", np.zeros((9, 9, 9, 2), np.float32)),
                               segment("4d.nii", "-o", "m.nii"))[1], "4D"),
    ("RGB NIfTI", lambda f, m: (nifti(f, "rgb.nii", np.zeros((9, 9, 9), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])),
                                segment("rgb.nii", "-o", "m.nii"))[1], "RGB"),
    ("NaN voxels", lambda f, m: (nifti(f, "nan.nii", np.where(np.arange(1000).reshape(10, 10, 10) == 5, np.nan,
                                                               -500.0).astype(np.float32)),
                                 segment("nan.nii", "-o", "m.nii"))[1], "NaN"),
    ("output is the input", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "ct.nii.gz"))[1], "is the input"),
    ("output is the input through a symlink", lambda f, m: (ct(f), os.symlink("ct.nii.gz", f / "link.nii.gz"),
                                                            segment("ct.nii.gz", "-o", "link.nii.gz"))[2], "is the input"),
    ("output is the input by another path", lambda f, m: (ct(f), (f / "sub").mkdir(),
                                                          segment("ct.nii.gz", "-o", "sub/../ct.nii.gz"))[2],
     "is the input"),
    ("output folder is the input folder", lambda f, m: ((f / "in").mkdir(), ct(f / "in"), segment("in", "-o", "in"))[2],
     "is the input folder"),
    ("--json is the input", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--json", "ct.nii.gz"))[1],
     "is the input"),
    ("output folder missing", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "no/m.nii.gz"))[1], "does not exist"),
    ("output parent is a file", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "ct.nii.gz/m.nii.gz"))[1],
     "is a file, not a folder"),
    ("output is a folder", lambda f, m: (ct(f), (f / "d.nii.gz").mkdir(), segment("ct.nii.gz", "-o", "d.nii.gz"))[2],
     "is a folder"),
    ("--json folder missing", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--json", "no/r.json"))[1],
     "does not exist"),
    ("output type unknown", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.txt"))[1], "unsupported file type"),
    ("3D mask as PNG", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.png"))[1], "as PNG"),
    ("2D MIP mask as NIfTI", lambda f, m: (png(f), segment("mip.png", "-o", "m.nii.gz", model=MIP_MODEL))[1],
     "ending in .png"),
    ("unknown model", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", model="no-such-model"))[1],
     "unknown model"),
    ("card not JSON", lambda f, m: (ct(f), (f / "bad.json").write_text("{oops"),
                                    segment("ct.nii.gz", "-o", "m.nii.gz", model="bad.json"))[2], "cannot read model card"),
    ("weights SHA-256 mismatch", lambda f, m: (ct(f), card_copy(f, m, sha256="0" * 64),
                                               segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[2],
     "do not match the SHA-256"),
    ("weights missing", lambda f, m: (ct(f), card_copy(f, m, file="gone.pt"),
                                      segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[2], "not found"),
    ("weights outside the card folder", lambda f, m: (ct(f), card_copy(f, m, file="../../etc/passwd"),
                                                      segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[2],
     "file name in the card's folder"),
    ("weights at an absolute path", lambda f, m: (ct(f), card_copy(f, m, file="/etc/passwd"),
                                                  segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[2],
     "file name in the card's folder"),
    ("weights symlinked out of the folder", lambda f, m: (ct(f), card_copy(f, m, file="w.pt"),
                                                          os.symlink("/etc/hostname", f / "w.pt"),
                                                          segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[3],
     "outside the card's folder"),
    ("weights not a checkpoint", lambda f, m: (ct(f), (f / "junk.pt").write_bytes(b"junk"),
                                               card_copy(f, m, file="junk.pt", sha256=None),
                                               segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[3],
     "cannot load weights"),
    ("weights that run code", lambda f, m: (ct(f), (f / "evil.pt").write_bytes(pickle.dumps(Evil())),
                                            card_copy(f, m, file="evil.pt", sha256=None),
                                            segment("ct.nii.gz", "-o", "m.nii.gz", model="copy.json"))[3],
     "cannot load weights.*could run code"),
    ("--point NaN", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--point", "nan", "5", "5"))[1],
     "finite"),
    ("--point outside the image", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--point", "900", "0", "0"))[1],
     "outside the image"),
    ("--point with 2 values on 3D", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--point", "1", "2"))[1],
     "3 coordinates"),
    ("--roi inverted", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--roi", "9", "2", "0", "9", "0", "9"))[1],
     "inverted"),
    ("--roi beyond the image", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--roi", "0", "99", "0", "9",
                                                             "0", "9"))[1], "outside the image"),
    ("--roi with 4 values on 3D", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--roi", "0", "9", "0", "9"))[1],
     "needs 6 values"),
    ("--roi and --point", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--roi", "0", "20", "0", "20", "0",
                                                       "20", "--point", "0", "0", "10"))[1], "not both"),
    ("zero spacing", lambda f, m: (nifti(f, "z.nii", np.full((9, 9, 9), -500, np.int16), np.diag([1.0, 0.0, 1.0, 1.0])),
                                   segment("z.nii", "-o", "m.nii"))[1], "zero voxel spacing"),
    ("parallel voxel axes", lambda f, m: (nifti(f, "p.nii", np.full((9, 9, 9), -500, np.int16),
                                                np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])),
                                          segment("p.nii", "-o", "m.nii"))[1], "parallel"),
    ("absurd spacing", lambda f, m: (nifti(f, "big.nii", lesion_volume("CT")[0].array, np.diag([1e4, 1e4, 1e4, 1])),
                                     segment("big.nii", "-o", "m.nii", model="ct-lung-lesion-3d"))[1],
     "more than the limit"),
    ("1x1x1 volume", lambda f, m: (nifti(f, "one.nii", np.full((1, 1, 1), -900, np.int16)), segment("one.nii", "-o", "m.nii"))[1],
     "constant|too small"),
    ("tiny volume", lambda f, m: (nifti(f, "small.nii", np.arange(27, dtype=np.int16).reshape(3, 3, 3) - 500),
                                  segment("small.nii", "-o", "m.nii"))[1], "too small"),
    ("all-zero volume", lambda f, m: (nifti(f, "zero.nii", np.zeros((20, 20, 20), np.float32)),
                                      segment("zero.nii", "-o", "m.nii"))[1], "constant"),
    ("all-zero volume without --model", lambda f, m: (nifti(f, "zero.nii", np.zeros((20, 20, 20), np.float32)),
                                                      segment("zero.nii", "-o", "m.nii.gz", model=None))[1],
     "no installed model fits.*constant"),
    ("PET given to a CT model", lambda f, m: (write_image(f / "pet.nii.gz", lesion_volume("PET")[0]),
                                              segment("pet.nii.gz", "-o", "m.nii.gz"))[1], "does not look like CT"),
    ("2D image given to a 3D model", lambda f, m: (png(f), segment("mip.png", "-o", "m.png"))[1], "needs a 3D volume"),
    ("16-bit PNG without --model", lambda f, m: (png16(f / "w.png"), segment("w.png", "-o", "m.png", model=None))[1],
     "values 0..255"),
    ("--overlap 1.5", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--overlap", "1.5"))[1], "overlap"),
    ("--threshold 0", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--threshold", "0"))[1], "threshold"),
    ("--min-lesion-ml -1", lambda f, m: (ct(f), segment("ct.nii.gz", "-o", "m.nii.gz", "--min-lesion-ml", "-1"))[1],
     "min_lesion_ml"),
    ("empty input folder", lambda f, m: ((f / "in").mkdir(), segment("in", "-o", "out"))[1], "no image files"),
    ("--models-dir missing", lambda f, m: (ct(f), ["models", "--models-dir", "nowhere"])[1], "does not exist"),
    ("unknown option", lambda f, m: ["segment", "x.nii", "-o", "y.nii", "--bogus"], "unrecognized arguments"),
    ("measure RGB NIfTI", lambda f, m: (nifti(f, "rgb.nii", np.zeros((9, 9, 9), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])),
                                        ["measure", "rgb.nii"])[1], "RGB"),
    ("measure SUV on an 8-bit MIP", lambda f, m: (png(f), write_image(f / "mask.png", Image(lesion_png()[1].astype(np.uint8),
                                                                                          np.eye(3))),
                                                  ["measure", "mask.png", "--image", "mip.png", "--modality", "PET"])[2],
     "not SUV"),
    ("measure a probability map", lambda f, m: (nifti(f, "prob.nii", np.full((9, 9, 9), 0.5, np.float32)),
                                                ["measure", "prob.nii"])[1], "non-integer"),
    ("measure on different grids", lambda f, m: (ct(f), nifti(f, "mask.nii", np.ones((9, 9, 9), np.uint8)),
                                                 ["measure", "mask.nii", "--image", "ct.nii.gz"])[2], "different grids"),
    ("measure --json is the mask", lambda f, m: (nifti(f, "mask.nii", np.ones((9, 9, 9), np.uint8)),
                                                 ["measure", "mask.nii", "--json", "mask.nii"])[1], "is the input"),
    ("evaluate cases that cannot pair", lambda f, m: ((f / "p").mkdir(), (f / "t").mkdir(),
                                                      nifti(f / "p", "a.nii", np.ones((9, 9, 9), np.uint8)),
                                                      nifti(f / "t", "b.nii", np.ones((9, 9, 9), np.uint8)),
                                                      ["evaluate", "--pred", "p", "--truth", "t"])[4],
     "pair by equal file names"),
    ("evaluate --csv is a prediction", lambda f, m: ((f / "p").mkdir(), (f / "t").mkdir(),
                                                     nifti(f / "p", "a.nii", np.ones((9, 9, 9), np.uint8)),
                                                     nifti(f / "t", "a.nii", np.ones((9, 9, 9), np.uint8)),
                                                     ["evaluate", "--pred", "p", "--truth", "t", "--csv", "p/a.nii"])[4],
     "is the input"),
    ("train --resume from a checkpoint that runs code", lambda f, m: ((f / "evil.pt").write_bytes(pickle.dumps(Evil())),
                                                                      ["train", str(train_config(f)), "-o", "run",
                                                                       "--resume", "evil.pt", "--device", "cpu"])[1],
     "cannot resume.*could run code"),
    ("train with a missing config", lambda f, m: ["train", "nothing.train.json", "-o", "run"], "not found|cannot read"),
    ("demo into a file", lambda f, m: ((f / "file").write_text("x"), ["demo", "-o", "file", "--models-dir", str(m),
                                                                      "--model", CT_MODEL])[1], "is a file"),
]


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with the SHA-256 of its bytes (links by target, folders as None)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            state[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = None
    return state


@pytest.mark.parametrize("name,build,says", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(name, build, says, models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUMORSEG_MODELS", str(models_dir))
    monkeypatch.setattr(ProgressBar, "LOG_INTERVAL_S", float("inf"))  # a loaded machine may log progress first
    argv = build(tmp_path, models_dir)
    before = snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (name, captured.err)
    assert len(lines) == 1 and lines[0].startswith("tumorseg: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out and "weights_only" not in captured.err
    assert re.search(says, lines[0]), lines[0]
    assert snapshot(tmp_path) == before, "files were added, removed or changed"
    assert not Path("PWNED").exists()


def test_the_table_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({case[0] for case in CASES}) == len(CASES)


def test_an_unexpected_error_is_one_line_and_the_traceback_comes_with_debug(monkeypatch, capsys):
    from TumorSegLib.commands import measure

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(measure, "run", broken)
    monkeypatch.delenv("TUMORSEG_DEBUG", raising=False)
    assert main(["measure", "x.nii"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError: a bug" in err and "Traceback" not in err
    assert main(["--debug", "measure", "x.nii"]) == 2
    assert "Traceback" in capsys.readouterr().err
