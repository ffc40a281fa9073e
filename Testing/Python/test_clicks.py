"""Click to segment (issue 13): crop first, only the lesion clicked, several clicks, bad clicks, the warm worker."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from TumorSegLib import boxes
from TumorSegLib.cli import main
from TumorSegLib.engine import Segmenter
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.inferers import Predictor
from TumorSegLib.io import read_image, write_image
from TumorSegLib.metrics import dice
from TumorSegLib.phantoms import grid_affine
from TumorSegLib.testing import lesion_png, synthetic_image, tiny_model

FP32 = {"precision": "fp32"}  # masks compared across runs: never depend on the CPU's bf16 support
NODULE, NEIGHBOUR, FAR = (-20.0, 10.0, 4.0), (-2.0, 10.0, 4.0), (30.0, -25.0, -6.0)  # world centres, RAS mm
SHAPE, SPACING = (96, 90, 28), (0.8, 0.75, 2.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "tiny-models"
    return {mode: tiny_model(folder, mode, "CT") for mode in ("sliding-window-3d", "slice-2d")}


@pytest.fixture(scope="module")
def chest():
    """A flipped, anisotropic CT with a nodule, a neighbour 18 mm away (same click box) and a far lesion.

    Returns (Image, {name: bool mask of that lesion}).
    """
    affine = grid_affine(SHAPE, SPACING, (True, True, False))
    lesions = {"nodule": (NODULE, (5.0, 4.0, 5.0)), "neighbour": (NEIGHBOUR, (4.0, 4.0, 4.0)),
               "far": (FAR, (4.0, 4.0, 4.0))}
    image, _ = synthetic_image(SHAPE, affine, list(lesions.values()))
    masks = {name: synthetic_image(SHAPE, affine, [lesion])[1] for name, lesion in lesions.items()}
    return image, masks


def padded_study(image: Image, shape, seed: int = 0) -> tuple:
    """``image`` placed in a larger study of lung-like background (-850 HU, noise 30 HU) on the same world grid.

    Returns (study, slices of the study holding ``image``).
    """
    rng = np.random.default_rng(seed)
    array = (-850.0 + 30.0 * rng.standard_normal(shape)).astype(np.float32)
    corner = (np.asarray(shape) - image.shape) // 2
    inside = tuple(slice(c, c + n) for c, n in zip(corner, image.shape))
    array[inside] = image.array
    affine = image.affine.copy()
    affine[:3, 3] = image.to_world(-corner)
    return Image(array, affine), inside


@pytest.fixture
def windows(monkeypatch):
    """Counts the network inputs (windows or slices) computed."""
    seen = []
    forward = Predictor._activate

    def counting(self, batch, dtype):
        seen.append(int(batch.shape[0]))
        return forward(self, batch, dtype)

    monkeypatch.setattr(Predictor, "_activate", counting)
    return seen


@pytest.mark.parametrize("mode", ["sliding-window-3d", "slice-2d"])
def test_click_in_a_large_study_gives_the_crops_mask_at_the_crops_cost(models, windows, mode):
    """A crop that holds the click's box and margin, and the same crop inside a 200x190x70 study."""
    shape = (130, 120, 40)
    image, nodule = synthetic_image(shape, grid_affine(shape, SPACING, (True, True, False)), [(NODULE, (5.0, 4.0, 5.0))])
    masks = {"nodule": nodule}
    segmenter = Segmenter(models[mode], "cpu")
    on_crop = segmenter.predict(image, point=NODULE, overrides=FP32)
    crop_windows = sum(windows)
    study, inside = padded_study(image, (200, 190, 70))
    windows.clear()
    on_study = segmenter.predict(study, point=NODULE, overrides=FP32)
    assert sum(windows) == crop_windows  # the same network work, whatever the study's size
    assert on_study.mask.shape == study.shape and on_study.mask[inside].sum() == on_study.mask.sum()
    assert dice(on_study.mask[inside], on_crop.mask) >= 0.99  # same up to a voxel's rounding of the box corner
    assert dice(on_crop.mask, masks["nodule"]) >= 0.8


def test_click_keeps_only_the_lesion_clicked(models, chest):
    image, masks = chest
    segmenter = Segmenter(models["sliding-window-3d"], "cpu")
    box = boxes.clip(boxes.context_box(image, image.to_index(NODULE), boxes.context_mm(segmenter.card, image)),
                     image.shape)
    assert masks["neighbour"][boxes.slices(box)].any()  # the neighbour lies in the nodule's click box
    whole = segmenter.predict(image, overrides=FP32).mask
    assert dice(whole, masks["nodule"] | masks["neighbour"] | masks["far"]) >= 0.8
    for point, name, other in ((NODULE, "nodule", "neighbour"), (NEIGHBOUR, "neighbour", "nodule")):
        prediction = segmenter.predict(image, point=point, overrides=FP32)
        assert dice(prediction.mask, masks[name]) >= 0.8 and not (prediction.mask & masks[other]).any()
        assert prediction.clicks[0].distance_mm == 0.0 and "at the click" in prediction.notes[-1]


def test_a_click_takes_its_lesion_even_where_the_card_keeps_only_the_largest(models, chest):
    """``largest_component`` (one lesion per crop) would drop the smaller clicked lesion for a larger one in its box."""
    image, masks = chest
    card = models["sliding-window-3d"]
    card = replace(card, postprocessing=replace(card.postprocessing, largest_component=True))
    segmenter = Segmenter(card, "cpu")
    whole = segmenter.predict(image, overrides=FP32).mask
    assert dice(whole, masks["nodule"]) >= 0.8 and not (whole & masks["neighbour"]).any()  # the setting acts
    clicked = segmenter.predict(image, point=NEIGHBOUR, overrides=FP32).mask
    assert dice(clicked, masks["neighbour"]) >= 0.8 and not (clicked & masks["nodule"]).any()


def test_a_click_near_a_lesion_takes_it_within_the_cards_distance(models, chest):
    image, masks = chest
    segmenter = Segmenter(models["sliding-window-3d"], "cpu")
    reach = segmenter.card.click.max_distance_mm
    beside = np.add(NODULE, (0.0, 0.0, -5.0 - 0.5 * reach))  # below the lesion (radius 5 mm), half the reach away
    near = segmenter.predict(image, point=beside, overrides=FP32)
    assert dice(near.mask, masks["nodule"]) >= 0.8 and 0 < near.clicks[0].distance_mm <= reach
    assert "mm from the click" in near.notes[-1]


def test_background_click_is_empty_and_says_so(models, chest, tmp_path, capsys):
    image, _ = chest
    background = image.to_world(np.array(SHAPE) // 2 + (25, -30, 0))  # soft tissue, far from every lesion
    segmenter = Segmenter(models["sliding-window-3d"], "cpu")
    prediction = segmenter.predict(image, point=background, overrides=FP32)
    assert not prediction.mask.any() and prediction.clicks[0].distance_mm is None
    assert "no lesion" in prediction.notes[-1]
    source = write_image(tmp_path / "chest.nii.gz", image)
    code = main(["segment", str(source), "-o", str(tmp_path / "m.nii.gz"), "--model", str(segmenter.card.path),
                 "--device", "cpu", "--precision", "fp32", "--point", *map(str, background)])
    assert code == 0 and "no lesion" in capsys.readouterr().out
    assert not read_image(tmp_path / "m.nii.gz").array.any()


def test_several_points_give_the_union_of_their_lesions(models, chest, tmp_path):
    image, masks = chest
    segmenter = Segmenter(models["sliding-window-3d"], "cpu")
    both = segmenter.predict(image, points=[NODULE, FAR], overrides=FP32)
    single = [segmenter.predict(image, point=p, overrides=FP32).mask for p in (NODULE, FAR)]
    assert np.array_equal(both.mask, single[0] | single[1])
    assert dice(both.mask, masks["nodule"] | masks["far"]) >= 0.8 and not (both.mask & masks["neighbour"]).any()
    grid = np.zeros(image.shape, dtype=bool)  # what a caller adding clicks up does: each only inside its box
    for click in both.clicks:
        assert click.mask.shape == tuple(hi - lo for lo, hi in click.box)
        grid[click.slices] |= click.mask
    assert np.array_equal(grid, both.mask)
    source = write_image(tmp_path / "chest.nii.gz", image)
    code = main(["segment", str(source), "-o", str(tmp_path / "m.nii.gz"), "--model", str(segmenter.card.path),
                 "--device", "cpu", "--precision", "fp32", "--point", *map(str, NODULE), "--point", *map(str, FAR)])
    expected = segmenter.predict(read_image(source), points=[NODULE, FAR], overrides=FP32).mask  # as stored
    assert code == 0 and np.array_equal(read_image(tmp_path / "m.nii.gz").array > 0, expected)


@pytest.mark.parametrize("points, message", [
    ([(np.nan, 10.0, 4.0)], "NaN"),
    ([(400.0, 10.0, 4.0)], "outside the image"),
    ([(1.0, 2.0)], "needs 3 coordinates"),
    ([NODULE] * (boxes.MAX_POINTS + 1), "at most"),
])
def test_bad_clicks_are_refused(models, chest, points, message):
    with pytest.raises(TumorSegError, match=message):
        Segmenter(models["sliding-window-3d"], "cpu").predict(chest[0], points=points)


def test_bad_click_on_the_command_line_writes_nothing(models, chest, tmp_path, capsys):
    source = write_image(tmp_path / "chest.nii.gz", chest[0])
    code = main(["segment", str(source), "-o", str(tmp_path / "m.nii.gz"), "--model",
                 str(models["sliding-window-3d"].path), "--device", "cpu", "--point", "nan", "10", "4"])
    assert code == 2 and "NaN" in capsys.readouterr().err and not (tmp_path / "m.nii.gz").exists()


def test_click_at_the_image_border_is_padded_not_refused(models, chest):
    image, _ = chest
    corner = image.to_world((0, 0, 0))
    prediction = Segmenter(models["sliding-window-3d"], "cpu").predict(image, point=corner, overrides=FP32)
    (box,) = [click.box for click in prediction.clicks]
    assert box[0][0] == box[1][0] == box[2][0] == 0 and prediction.mask.shape == image.shape


def test_click_on_a_2d_image(tmp_path_factory):
    card = tiny_model(tmp_path_factory.getbasetemp() / "tiny-models", "whole-image-2d", "MIP-PET")
    image, truth = lesion_png()
    segmenter = Segmenter(card, "cpu")
    prediction = segmenter.predict(image, point=(14.0, 12.0), overrides=FP32)  # (row, col) mm of the first lesion
    first = truth & (np.arange(truth.shape[0])[:, None] < 32)
    assert dice(prediction.mask, first) >= 0.8 and not (prediction.mask & truth & ~first).any()
    with pytest.raises(TumorSegError, match="needs 2 coordinates"):
        segmenter.predict(image, point=(14.0, 12.0, 0.0))


def worker_process(card, *options):
    return subprocess.Popen([sys.executable, "-m", "TumorSegLib", "worker", "--model", str(card.path), "--device",
                             "cpu", *options], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def answers(process, request_id):
    """The worker's answer lines to ``request_id`` up to its last one (done, error or cancelled)."""
    lines = []
    for line in process.stdout:
        message = json.loads(line)
        if message.get("id") == request_id:
            lines.append(message)
            if message.keys() & {"done", "error", "cancelled"}:
                return lines
    raise AssertionError(f"the worker ended before answering {request_id}: {process.stderr.read()}")


def test_worker_serves_clicks_with_progress_errors_and_cancel(models, chest, tmp_path):
    image, _ = chest
    card = models["sliding-window-3d"]
    source = write_image(tmp_path / "chest.nii.gz", image)
    process = worker_process(card, "--idle-timeout", "60")
    try:
        assert json.loads(process.stdout.readline()) == {"ready": True, "model": card.name, "device": "cpu",
                                                         "protocol": 1}

        def send(**request):
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()

        overrides = FP32
        send(id=1, command="segment", input=str(source), output=str(tmp_path / "a.nii.gz"), points=[NODULE, FAR],
             overrides=overrides)
        first = answers(process, 1)
        assert [m["progress"] for m in first[:-1]] == sorted(m["progress"] for m in first[:-1]) and len(first) > 3
        done = first[-1]
        expected = Segmenter(card, "cpu").predict(read_image(source), points=[NODULE, FAR], overrides=overrides)
        assert done["done"] and done["lesions"] == 2 and np.array_equal(
            read_image(tmp_path / "a.nii.gz").array > 0, expected.mask)
        assert [c["box"] for c in done["clicks"]] == [[v for pair in c.box for v in pair] for c in expected.clicks]
        send(id=4, command="segment", input=str(source), output=str(tmp_path / "d.nii.gz"), points=[NODULE, FAR],
             overrides=overrides, clicks_only=True)
        assert answers(process, 4)[-1]["done"]
        part = read_image(tmp_path / "d.nii.gz")  # only the box around the clicks' boxes, on its own exact grid
        corner = np.rint(expected.image.to_index(part.to_world(np.zeros(3)))).astype(int)
        inside = tuple(slice(c, c + n) for c, n in zip(corner, part.shape))
        assert np.allclose(part.affine[:3, :3], expected.image.affine[:3, :3], atol=1e-4)
        assert np.array_equal(part.array > 0, expected.mask[inside]) and part.array.sum() == expected.mask.sum()
        send(id=2, command="segment", input=str(tmp_path / "missing.nii.gz"), output=str(tmp_path / "b.nii.gz"))
        assert "not found" in answers(process, 2)[-1]["error"]
        send(id=3, command="segment", input=str(source), output=str(tmp_path / "c.nii.gz"), points=[NODULE])
        send(command="cancel", id=3)
        assert answers(process, 3)[-1] == {"id": 3, "cancelled": True} and not (tmp_path / "c.nii.gz").exists()
        process.stdin.close()  # end of input: the worker ends
        assert json.loads(process.stdout.readline()) == {"exit": "eof"} and process.wait(timeout=30) == 0
    finally:
        process.kill()


def test_worker_ends_after_its_idle_timeout(models):
    process = worker_process(models["sliding-window-3d"], "--idle-timeout", "1")
    try:  # stdin stays open: only the idle timeout can end it
        assert process.wait(timeout=120) == 0
        assert [json.loads(line) for line in process.stdout][-1] == {"exit": "idle"}
    finally:
        process.kill()


def test_click_readouts_are_those_of_the_whole_mask(models, chest):
    """Readouts after clicks measure only the clicks' boxes, with indices and world positions on the full grid."""
    from dataclasses import asdict

    from TumorSegLib.runs import readouts
    from TumorSegLib.measure import measure_lesions

    image, _ = chest
    segmenter = Segmenter(models["sliding-window-3d"], "cpu")
    prediction = segmenter.predict(image, points=[NODULE, FAR], overrides=FP32)
    whole = measure_lesions(image.with_array(prediction.mask.astype(np.uint8)), image, "CT")
    found = readouts(prediction, segmenter.card)
    assert len(found.lesions) == 2
    for got, expected in zip(found.lesions, whole.lesions):
        for key, value in asdict(expected).items():
            assert np.allclose(np.asarray(asdict(got)[key], dtype=float), np.asarray(value, dtype=float), equal_nan=True), key


@pytest.mark.parametrize("click", [{"max_distance_mm": -1.0}, {"max_distance": 5.0}, [5.0]])
def test_a_bad_click_section_in_a_card_is_refused(models, click):
    from TumorSegLib.cards import card_from_dict

    with pytest.raises(TumorSegError, match=r"click(\.max_distance_mm)? must be|unknown field 'click\.max_distance'"):
        card_from_dict({**models["sliding-window-3d"].to_dict(), "click": click})


def test_nan_voxels_are_refused_where_a_click_reads_them(models, chest):
    """A large study is checked for NaN only where a click reads it (small images: everywhere)."""
    image, masks = chest
    segmenter = Segmenter(models["sliding-window-3d"], "cpu")
    study, inside = padded_study(image, (200, 190, 70))
    array = study.array.copy()
    nodule = np.argwhere(masks["nodule"])[0] + [s.start for s in inside]
    array[tuple(nodule | 1)] = np.nan  # odd indices: not among the voxels sampled for the modality rule
    with pytest.raises(TumorSegError, match="NaN"):
        segmenter.predict(study.with_array(array), point=NODULE)
    far = segmenter.predict(study.with_array(array), point=FAR, overrides=FP32)  # reads none of them
    assert far.mask.any() and np.array_equal(far.mask, segmenter.predict(study, point=FAR, overrides=FP32).mask)
    with pytest.raises(TumorSegError, match="NaN"):
        segmenter.predict(image.with_array(array[inside]), point=FAR)
