"""``tumorseg segment`` and ``tumorseg demo`` end to end: real files, real CLI, tiny trained models."""

import json
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from TumorSegLib import cards
from TumorSegLib.cards import find_card
from TumorSegLib.cli import main
from TumorSegLib.engine import Segmenter
from TumorSegLib.io import read_image, write_image
from TumorSegLib.metrics import dice
from TumorSegLib.mip import mip_geometry, project_max
from TumorSegLib.testing import lesion_png, lesion_volume, tiny_model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Tiny models for every mode (cached by ``tiny_model`` across the test files of a session)."""
    directory = tmp_path_factory.getbasetemp() / "tiny-models"
    for mode, modality in (("sliding-window-3d", "CT"), ("slice-2d", "PET"), ("whole-image-2d", "MIP-PET")):
        tiny_model(directory, mode, modality)
    return directory


def segment(models_dir, *args):
    return main(["segment", *map(str, args), "--models-dir", str(models_dir), "--device", "cpu"])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_3d_mask_keeps_the_exact_grid_of_a_flipped_oblique_anisotropic_input(models_dir, tmp_path, suffix, capsys):
    image, truth = lesion_volume("CT")
    source = write_image(tmp_path / f"ct{suffix}", image)
    output = tmp_path / f"mask{suffix}"
    assert segment(models_dir, source, "-o", output, "--model", "tiny-ct-sliding-window-3d",
                   "--json", tmp_path / "r.json") == 0
    mask = read_image(output)
    assert mask.shape == image.shape and np.allclose(mask.affine, read_image(source).affine, atol=1e-5)
    assert dice(mask.array > 0, truth) >= 0.8
    readouts = json.loads((tmp_path / "r.json").read_text())
    assert readouts["readouts"]["totals"]["lesion_count"] == 2
    assert "hu_max" in capsys.readouterr().out


def test_nifti_affine_is_copied_exactly(models_dir, tmp_path):
    image, _ = lesion_volume("CT")
    write_image(tmp_path / "ct.nii", image)
    assert segment(models_dir, tmp_path / "ct.nii", "-o", tmp_path / "mask.nii", "--model",
                   "tiny-ct-sliding-window-3d") == 0
    written, original = nib.load(tmp_path / "mask.nii"), nib.load(tmp_path / "ct.nii")
    assert np.array_equal(written.affine, original.affine) and written.shape == original.shape


def test_slice_2d_on_a_flipped_oblique_volume(models_dir, tmp_path):
    image, truth = lesion_volume("PET", flip=(False, True, True), oblique_degrees=-15.0)
    write_image(tmp_path / "pet.nii.gz", image)
    assert segment(models_dir, tmp_path / "pet.nii.gz", "-o", tmp_path / "mask.nii.gz", "--model",
                   "tiny-pet-slice-2d") == 0
    assert dice(read_image(tmp_path / "mask.nii.gz").array > 0, truth) >= 0.8


def test_png_in_png_mask_out(models_dir, tmp_path):
    image, truth = lesion_png()
    write_image(tmp_path / "mip.png", image)
    assert segment(models_dir, tmp_path / "mip.png", "-o", tmp_path / "mask.png", "--model",
                   "tiny-mip-pet-whole-image-2d") == 0
    mask = read_image(tmp_path / "mask.png").array
    assert set(np.unique(mask)) <= {0, 255} and mask.shape == image.shape
    assert dice(mask == 255, truth) >= 0.8


def test_post_processing_and_flip_options_reach_the_engine(models_dir, tmp_path):
    """``--min-lesion-px`` and ``--flip-axes`` give exactly the engine's masks with those settings."""
    image, _ = lesion_png()
    write_image(tmp_path / "mip.png", image)
    segmenter = Segmenter(find_card("tiny-mip-pet-whole-image-2d", models_dir), "cpu")
    plain = segmenter.predict(read_image(tmp_path / "mip.png")).mask
    sizes = np.bincount(ndimage.label(plain, np.ones((3, 3)))[0].ravel())[1:]
    cases = ((["--min-lesion-px", str(sizes.min() + 1)], {"min_lesion_px": int(sizes.min()) + 1}),
             (["--flip-axes", "0", "1"], {"flip_axes": [0, 1]}))
    for number, (options, overrides) in enumerate(cases):
        output = tmp_path / f"mask{number}.png"
        assert segment(models_dir, tmp_path / "mip.png", "-o", output, "--model", "tiny-mip-pet-whole-image-2d",
                       *options) == 0
        expected = segmenter.predict(read_image(tmp_path / "mip.png"), overrides=overrides).mask
        assert np.array_equal(read_image(output).array == 255, expected) and not np.array_equal(expected, plain)


def test_the_lesion_filter_and_image_gate_can_be_switched_off(tmp_path):
    """Validation controls of the shipped MIP card: control_042's false positives pass the lesion filter and the
    image gate clears them; the lesion filter clears control_323's."""
    from conftest import mip_dev_case

    def pixels(name, *options):
        output = tmp_path / f"{name}{len(options)}.png"
        assert segment(cards.BUILTIN_DIR, mip_dev_case(name).image, "-o", output, "--model", "mip-pet-2d",
                       "--precision", "fp32", *options) == 0
        return int((read_image(output).array == 255).sum())

    assert pixels("control_042") == 0 < pixels("control_042", "--no-image-gate")
    assert pixels("control_323", "--no-image-gate") == 0 < pixels("control_323", "--no-image-gate",
                                                                   "--no-lesion-filter")


def test_3d_pet_to_mip_model_writes_a_3d_mask_and_the_mip_mask_on_request(models_dir, tmp_path, capsys):
    shape = (36, 30, 44)
    image, truth = lesion_volume("PET", shape=shape, spacing=(3.0, 3.5, 2.5), flip=(True, False, False),
                                 oblique_degrees=0.0)
    write_image(tmp_path / "pet.nii.gz", image)
    assert segment(models_dir, tmp_path / "pet.nii.gz", "-o", tmp_path / "mask.nii.gz", "--model",
                   "tiny-mip-pet-whole-image-2d", "--mip-mask", tmp_path / "flat.png", "--json",
                   tmp_path / "r.json") == 0
    mask = read_image(tmp_path / "mask.nii.gz")
    assert mask.same_grid(image) and dice(mask.array != 0, truth) >= 0.7
    flat = read_image(tmp_path / "flat.png").array == 255
    assert read_image(tmp_path / "flat_mip-image.png").shape == flat.shape
    assert dice(flat, project_max(truth, mip_geometry(image.affine, image.shape))) >= 0.8
    readouts = json.loads((tmp_path / "r.json").read_text())["readouts"]
    assert readouts["totals"]["lesion_count"] == 2
    assert all("volume_ml" in lesion and "suv_max" in lesion for lesion in readouts["lesions"])
    printed = capsys.readouterr().out
    assert "traced into 3D" in printed and "the mask lies on the MIP" not in printed  # a 3D mask: no MIP note
    # a .png output asks for the 2D MIP mask alone (with the MIP beside it)
    assert segment(models_dir, tmp_path / "pet.nii.gz", "-o", tmp_path / "m.png", "--model",
                   "tiny-mip-pet-whole-image-2d") == 0
    assert np.array_equal(read_image(tmp_path / "m.png").array == 255, flat)
    assert (tmp_path / "m_mip-image.png").exists()


def test_progress_json_lines(models_dir, tmp_path, capsys):
    image, _ = lesion_volume("CT")
    write_image(tmp_path / "ct.nii.gz", image)
    assert segment(models_dir, tmp_path / "ct.nii.gz", "-o", tmp_path / "m.nii.gz", "--model",
                   "tiny-ct-sliding-window-3d", "--progress-json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fractions = [line["progress"] for line in lines[:-1]]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert lines[-1] == {"done": True, "output": str(tmp_path / "m.nii.gz"), "lesions": 2}


def test_folder_in_folder_out(models_dir, tmp_path):
    (tmp_path / "in").mkdir()
    for seed in (1, 2):
        write_image(tmp_path / "in" / f"case{seed}.nii.gz", lesion_volume("CT", seed=seed)[0])
    assert segment(models_dir, tmp_path / "in", "-o", tmp_path / "out", "--model", "tiny-ct-sliding-window-3d",
                   "--json", tmp_path / "all.json") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case1.nii.gz", "case2.nii.gz"]
    assert len(json.loads((tmp_path / "all.json").read_text())["cases"]) == 2


def test_sigterm_cancels_with_exit_130_and_no_output(models_dir, tmp_path):
    image, _ = lesion_volume("CT", shape=(160, 160, 96))
    write_image(tmp_path / "big.nii.gz", image)
    output = tmp_path / "mask.nii.gz"
    process = subprocess.Popen(
        [sys.executable, "-m", "TumorSegLib", "segment", str(tmp_path / "big.nii.gz"), "-o", str(output),
         "--model", "tiny-ct-sliding-window-3d", "--models-dir", str(models_dir), "--device", "cpu",
         "--progress-json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line).get("message", "").startswith("window"):
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".mask")]


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model"], "unknown model 'no-such-model'; known models: "),
    (["--model", "tiny-ct-sliding-window-3d", "--roi", "0", "10", "0", "10", "0", "999"], "outside the image"),
    (["--model", "tiny-ct-sliding-window-3d", "--point", "900", "0", "0"], "outside the image"),
    (["--model", "tiny-mip-pet-whole-image-2d"], "looks like CT"),
    (["--model", "tiny-pet-slice-2d"], "looks like CT"),
])
def test_bad_requests_fail_cleanly(models_dir, tmp_path, capsys, args, message):
    write_image(tmp_path / "ct.nii.gz", lesion_volume("CT")[0])
    assert segment(models_dir, tmp_path / "ct.nii.gz", "-o", tmp_path / "mask.nii.gz", *args) == 2
    error = capsys.readouterr().err
    assert error.splitlines() == [error.strip()] and error.startswith("tumorseg: error:") and message in error, error
    assert not (tmp_path / "mask.nii.gz").exists()


def test_png_to_3d_model_and_unwritable_output(models_dir, tmp_path, capsys):
    write_image(tmp_path / "mip.png", lesion_png()[0])
    assert segment(models_dir, tmp_path / "mip.png", "-o", tmp_path / "m.png", "--model",
                   "tiny-ct-sliding-window-3d") == 2
    assert "needs a 3D volume" in capsys.readouterr().err
    assert segment(models_dir, tmp_path / "mip.png", "-o", tmp_path / "missing" / "m.png", "--model",
                   "tiny-mip-pet-whole-image-2d") == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_and_corrupt_weights_are_refused(models_dir, tmp_path, capsys):
    card = json.loads((models_dir / "tiny-ct-sliding-window-3d.json").read_text())
    card["name"] = "copy"
    (tmp_path / "copy.json").write_text(json.dumps(card))
    write_image(tmp_path / "ct.nii.gz", lesion_volume("CT")[0])
    args = [tmp_path / "ct.nii.gz", "-o", tmp_path / "m.nii.gz", "--model", "copy"]
    assert segment(tmp_path, *args) == 2
    assert f"not found at {tmp_path / card['weights']['file']}" in capsys.readouterr().err
    weights = (models_dir / card["weights"]["file"]).read_bytes()
    (tmp_path / card["weights"]["file"]).write_bytes(weights[:-10] + b"corrupted!")
    assert segment(tmp_path, *args) == 2
    assert "do not match the SHA-256" in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()


def test_demo_runs_with_a_model_and_fails_clearly_without(models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cards, "BUILTIN_DIR", tmp_path / "no-models")
    monkeypatch.delenv("TUMORSEG_MODELS", raising=False)
    assert main(["demo", "-o", str(tmp_path / "d0"), "--models-dir", str(tmp_path)]) == 2
    assert "no installed model can run the demo" in capsys.readouterr().err
    assert not (tmp_path / "d0").exists()
    assert main(["demo", "-o", str(tmp_path / "demo"), "--models-dir", str(models_dir), "--model",
                 "tiny-pet-slice-2d", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "agreement with the phantom" in out and "suv_max" in out
    names = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert names == ["input.nii.gz", "mask.nii.gz", "overlay.png", "readouts.json"]
    readouts = json.loads((tmp_path / "demo" / "readouts.json").read_text())
    assert readouts["model"] == "tiny-pet-slice-2d" and "dice" in readouts["agreement_with_phantom_truth"]
    assert read_image(tmp_path / "demo" / "mask.nii.gz").shape == read_image(tmp_path / "demo" / "input.nii.gz").shape


def test_demo_on_a_mip_model_writes_a_3d_mask(models_dir, tmp_path):
    assert main(["demo", "-o", str(tmp_path), "--models-dir", str(models_dir), "--model",
                 "tiny-mip-pet-whole-image-2d", "--device", "cpu"]) == 0
    assert {"mask.nii.gz", "overlay.png"} <= {p.name for p in tmp_path.iterdir()}
    assert read_image(tmp_path / "mask.nii.gz").same_grid(read_image(tmp_path / "input.nii.gz"))


@pytest.fixture(autouse=True)
def _no_user_models(monkeypatch):
    monkeypatch.delenv("TUMORSEG_MODELS", raising=False)
