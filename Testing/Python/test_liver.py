"""The liver model's input rules: JPEG pictures (R channel = the HU window), display orientation, PNG masks."""

import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from conftest import shared_data
from TumorSegLib.cards import BUILTIN_DIR, card_from_dict, find_card, organ_card
from TumorSegLib.cli import main
from TumorSegLib.engine import Segmenter
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.io import read_image, write_image
from TumorSegLib.preprocess import normalize_intensity, reorient
from TumorSegLib.windowed import read_input

NAME = "ct-liver-lesion-2d"
VARIANTS = ("LPS", "RAI", "ASR", "SLP", "IRA")  # flips and permutations of a RAS volume


def config_card(**changes):
    """The card section of the shipped training config without its organ level (tests that need one add it; no
    weights needed: the tests pass a network)."""
    card = json.loads((BUILTIN_DIR / f"{NAME}.train.json").read_text())["card"]
    card["preprocessing"].pop("organ_level", None)
    return card_from_dict({**card, **changes, "name": NAME, "weights": {"file": f"{NAME}.pt"}})


def lits_pictures(count: int = 12) -> list:
    images = sorted((shared_data("lits-liver-2d") / "dev" / "images").glob("*.jpg"))
    return images[:: max(1, len(images) // count)][:count]


def window_agreement(low: float, high: float) -> tuple:
    """HU read from R through [low, high] minus HU read from G (W200/L60): (median, 90th percentile of |diff|).

    Only pixels inside both windows (R and G in 10..245) count. JPEG (quality ~90, 4:2:0 chroma) and
    fastai's rounding smear the channels: measured on the dev slices with the card's window, median
    +2 HU and 90 % of pixels within 13 HU.
    """
    differences = []
    for path in lits_pictures():
        rgb = np.asarray(PILImage.open(path).convert("RGB"), dtype=np.float64)
        red, green = rgb[..., 0], rgb[..., 1]
        inside = (red > 10) & (red < 245) & (green > 10) & (green < 245)
        differences.append((low + red / 255 * (high - low) - (-40 + green / 255 * 200))[inside])
    difference = np.concatenate(differences)
    return float(np.median(difference)), float(np.percentile(np.abs(difference), 90))


def test_card_window_is_the_window_of_the_pictures_r_channel():
    """The R channel through the card's window gives the HU that the G channel (W200/L60) gives."""
    card = config_card()
    window = card.preprocessing.picture.window
    assert window == card.preprocessing.intensity.window == [-45, 105]
    median, spread = window_agreement(*window)
    assert abs(median) < 5 and spread < 20, (median, spread)
    for wrong in ((-160, 240), (-100, 200), (-20, 80)):  # soft-tissue, wider and narrower windows
        median, spread = window_agreement(*wrong)
        assert abs(median) > 5 or spread > 20, (wrong, median, spread)


def test_network_input_of_a_picture_is_its_r_channel_and_a_hu_volume_gets_the_same_window():
    card = config_card()
    path = lits_pictures(1)[0]
    red = np.asarray(PILImage.open(path).convert("RGB"))[..., 0]
    picture = read_input(path, card)
    assert picture.meta["picture"]["channel"] == 0 and np.allclose(picture.spacing, [0.8, 0.8])
    assert np.allclose(normalize_intensity(picture.array, card), red / 255.0, atol=1e-6)
    hu = np.linspace(-300, 400, 701, dtype=np.float32)  # a CT volume's HU: clipped exactly as the pictures were
    expected = np.clip((hu + 45) / 150, 0, 1)
    assert np.allclose(normalize_intensity(hu, card), expected, atol=1e-6)


def test_jpeg_reader_picks_the_channel_and_never_writes_jpeg(tmp_path):
    rgb = np.zeros((16, 20, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 30
    PILImage.fromarray(rgb).save(tmp_path / "slice.jpg", quality=100)
    for channel, value in enumerate((200, 100, 30)):
        image = read_image(tmp_path / "slice.jpg", channel=channel)
        assert image.shape == (16, 20) and abs(float(np.median(image.array)) - value) <= 3
    with pytest.raises(TumorSegError, match="channel 3"):
        read_image(tmp_path / "slice.jpg", channel=3)
    with pytest.raises(TumorSegError, match="JPEG is lossy"):
        write_image(tmp_path / "mask.jpg", Image(np.zeros((4, 4), np.uint8), np.eye(3), False))
    assert not (tmp_path / "mask.jpg").exists()


def test_a_jpeg_for_a_model_without_a_picture_rule_is_refused(tmp_path):
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "slice.jpg")
    card = config_card(preprocessing={"intensity": {"window": [-45, 105]}})
    with pytest.raises(TumorSegError, match="does not take windowed pictures"):
        read_input(tmp_path / "slice.jpg", card)


class BrightSpot(torch.nn.Module):
    """Test network: tumour where the input is bright (> 0.75 of the window), liver everywhere; records inputs."""

    seen = []

    def forward(self, x):
        BrightSpot.seen.append(x.detach().clone())
        return torch.cat([40 * (x - 0.75), torch.full_like(x, 10.0)], dim=1)


def marked_volume() -> tuple:
    """A RAS volume at the card's in-plane spacing (no resampling) with a bright spot at the patient's right-anterior."""
    array = np.full((40, 32, 6), -1000, dtype=np.float32)
    array[4:36, 4:28] = 40.0  # body
    spot = np.zeros(array.shape, dtype=bool)
    spot[28:34, 22:27, 1:5] = True  # high i = right, high j = anterior
    array[spot] = 100.0
    affine = np.diag([*config_card().preprocessing.spacing, 5.0, 1.0])
    affine[:3, 3] = (-30, -25, 100)
    return Image(array, affine), spot


@pytest.mark.parametrize("codes", VARIANTS)
def test_axial_slices_reach_the_network_in_picture_orientation_and_the_mask_comes_back(codes):
    """Flipped and permuted copies give the network the same slices (anterior up, patient right on the
    left, as the LiTS pictures), and each mask lands on its own copy's grid."""
    card = config_card(inference={"batch_size": 8, "divisible_by": 16, "precision": "fp32"})
    segmenter = Segmenter(card, device="cpu", network=BrightSpot(), backend="torch")  # records its inputs: PyTorch runs it
    reference, spot = marked_volume()
    BrightSpot.seen = []
    segmenter.predict(reference)
    expected = torch.cat(BrightSpot.seen)
    image, _ = reorient(reference, codes)
    spot_copy = reorient(reference.with_array(spot.astype(np.uint8)), codes)[0].array.astype(bool)
    BrightSpot.seen = []
    prediction = segmenter.predict(image)
    assert torch.equal(torch.cat(BrightSpot.seen), expected)
    rows, cols = np.nonzero(expected[:, 0].amax(0).numpy() > 0.9)
    assert rows.mean() < 40 / 2 and cols.mean() < 32 / 2  # anterior at the top, patient right on the left
    assert np.array_equal(prediction.mask, spot_copy)


def test_jpeg_input_gives_a_png_mask_and_a_folder_is_segmented_in_one_run(tmp_path, capsys):
    card = find_card(NAME)
    pictures = lits_pictures(3)
    single = tmp_path / "one.jpg"  # a mask is never written as lossy JPEG, nor renamed silently: refused
    assert main(["segment", str(pictures[0]), "-o", str(single), "--model", NAME, "--device", "cpu"]) == 2
    assert "give an output ending in .png" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["segment", str(pictures[0]), "-o", str(tmp_path / "one.png"), "--model", NAME, "--device", "cpu"]) == 0
    with PILImage.open(tmp_path / "one.png") as written:
        assert written.format == "PNG" and written.size == (512, 512)
        assert set(np.unique(np.asarray(written))) <= {0, 255}
    folder = tmp_path / "slices"
    folder.mkdir()
    for path in pictures:
        (folder / path.name).write_bytes(path.read_bytes())
    assert main(["segment", str(folder), "-o", str(tmp_path / "masks"), "--organ-mask", str(tmp_path / "livers"),
                 "--device", "cpu"]) == 0  # default card
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == sorted(p.stem + ".png" for p in pictures)
    assert sorted(p.name for p in (tmp_path / "livers").iterdir()) == sorted(p.stem + ".png" for p in pictures)
    assert card.preprocessing.picture.channel == 0


def test_the_liver_of_a_jpeg_is_a_png_holding_the_tumour(tmp_path, capsys):
    """--organ-mask on a picture: the Liver segment as a 0/255 PNG of the picture's size (never a JPEG), holding the
    tumour mask, and the liver's area and the tumour's share of it in the readouts (0.8 mm pixels)."""
    masks = shared_data("lits-liver-2d") / "dev" / "masks"
    picture = next(p for p in lits_pictures() if (np.asarray(PILImage.open(masks / f"{p.stem}_mask.png")) == 2).any())
    args = ["segment", str(picture), "-o", str(tmp_path / "tumour.png"), "--model", NAME, "--device", "cpu"]
    assert main([*args, "--organ-mask", str(tmp_path / "liver.jpg")]) == 2
    assert "is written as .png, not liver.jpg" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main([*args, "--organ-mask", str(tmp_path / "liver.png"), "--json", str(tmp_path / "r.json")]) == 0
    with PILImage.open(tmp_path / "liver.png") as written:
        assert written.format == "PNG" and written.size == (512, 512)
        liver = np.asarray(written)
    assert set(np.unique(liver)) <= {0, 255}
    tumour = np.asarray(PILImage.open(tmp_path / "tumour.png")) > 0
    expected = Segmenter(find_card(NAME), device="cpu").predict(read_input(picture, find_card(NAME))).organ
    assert np.array_equal(liver > 0, expected) and not (tumour & (liver == 0)).any()
    totals = json.loads((tmp_path / "r.json").read_text())["readouts"]["totals"]
    assert totals["liver_area_mm2"] == pytest.approx(expected.sum() * 0.8 * 0.8)
    assert totals["tumour_percent_of_liver"] == pytest.approx(100 * tumour.sum() / expected.sum())


def test_liver_lies_on_the_patients_right_in_the_upper_abdomen_of_any_copy_of_a_real_ct():
    """The shipped model's liver (that of the card it takes its organ from) on the TotalSegmentator example CT (3 mm)
    and flipped and permuted copies of it."""
    path = shared_data("totalseg-example-ct") / "example_ct.nii.gz"
    segmenter = Segmenter(organ_card(find_card(NAME)), device="cpu")
    image = read_image(path)
    liver = segmenter.predict(image, overrides={"precision": "fp32"}).mask
    assert liver.sum() * image.voxel_volume / 1000 > 300  # mL: a liver, not specks
    world = image.to_world(np.argwhere(liver))
    body = image.to_world(np.argwhere(image.array > -300))
    assert world[:, 0].mean() > np.median(body[:, 0]) + 20  # RAS x: patient right
    assert world[:, 2].mean() > np.median(body[:, 2])  # RAS z: the upper part of this abdomen-pelvis scan
    for codes in ("LPS", "SAR"):
        copy, _ = reorient(image, codes)
        copy_liver = segmenter.predict(copy, overrides={"precision": "fp32"}).mask
        expected = reorient(image.with_array(liver.astype(np.uint8)), codes)[0].array.astype(bool)
        assert np.count_nonzero(copy_liver != expected) <= 1e-4 * liver.sum()


class LiverWhereBody(torch.nn.Module):
    """Test network: liver where the input is above the window's low end (the body), tumour nowhere; records inputs."""

    seen = []

    def forward(self, x):
        LiverWhereBody.seen.append(x.detach().clone())
        return torch.cat([torch.full_like(x, -10.0), 40 * (x - 0.05)], dim=1)


def test_organ_level_moves_the_input_by_the_organ_the_first_pass_finds():
    """preprocessing.organ_level: the first pass reads the organ channel, the second gets the input moved so that
    the organ's median is the card's value (here body at 40 HU and a spot at 100 HU: median 40 -> 70, +30 HU)."""
    level = {"channel": 1, "threshold": 0.5, "value": 70.0}
    card = config_card(inference={"batch_size": 8, "divisible_by": 16, "precision": "fp32"},
                       preprocessing={**config_card().preprocessing.to_dict(), "organ_level": level})
    segmenter = Segmenter(card, device="cpu", network=LiverWhereBody(), backend="torch")
    image, _ = marked_volume()
    LiverWhereBody.seen = []
    prediction = segmenter.predict(image)
    first, second = (torch.cat(LiverWhereBody.seen[: len(LiverWhereBody.seen) // 2]),
                     torch.cat(LiverWhereBody.seen[len(LiverWhereBody.seen) // 2:]))
    low, high = card.preprocessing.intensity.window
    body = first > (40 - low) / (high - low) - 1e-4
    assert body.any() and torch.allclose(second[body], (first[body] + 30 / (high - low)).clamp(0, 1), atol=1e-5)
    assert any("moved by +30.0" in note for note in prediction.notes)
    assert not prediction.mask.any()


@pytest.mark.parametrize("grey, noted", [(255, True), (253, True), (240, False)])
def test_a_picture_whose_organ_lies_at_the_window_top_gets_a_note(grey, noted):
    """A picture clips HU at its window's top: an organ there (an enhanced liver in the R channel) hides a tumour as
    bright as it, and the run says so; an organ below the top, or a CT volume, gets no such note."""
    from TumorSegLib.windowed import picture_to_hu

    level = {"channel": 1, "threshold": 0.5, "value": 70.0}
    card = config_card(inference={"batch_size": 8, "divisible_by": 16, "precision": "fp32"},
                       preprocessing={**config_card().preprocessing.to_dict(), "organ_level": level})
    segmenter = Segmenter(card, device="cpu", network=LiverWhereBody(), backend="torch")
    picture = np.zeros((64, 64), dtype=np.uint8)
    picture[16:48, 16:48] = grey
    notes = segmenter.predict(picture_to_hu(Image(picture, np.eye(3)), card)).notes
    assert any("cannot be seen in this picture" in note for note in notes) == noted, notes
    volume, _ = marked_volume()  # body at 40 HU, moved to the window's top (105 HU): no picture, so no note
    top = segmenter.predict(volume.with_array(volume.array + np.float32(65))).notes
    assert any("median inside output channel 1" in note for note in top)
    assert not any("cannot be seen" in note for note in top), top


def test_training_moves_each_case_by_its_true_organ():
    """The training loader applies the same rule with the true organ (label channel = the organ's output channel)."""
    from TumorSegLib.training.transforms import prepare_case

    level = {"channel": 1, "threshold": 0.5, "value": 70.0}
    card = config_card(preprocessing={**config_card().preprocessing.to_dict(), "organ_level": level})
    image, spot = marked_volume()
    organ = image.array > 0
    moved = prepare_case(image, np.stack([spot, organ]), card)["image"]
    plain = prepare_case(image, np.stack([spot, organ]), config_card())["image"]
    low, high = card.preprocessing.intensity.window
    np.testing.assert_allclose(moved[plain > 0.5], np.clip(plain[plain > 0.5] + 30 / (high - low), 0, 1), atol=1e-5)
    with pytest.raises(TumorSegError, match="one label channel per output channel"):
        prepare_case(image, spot, card)


def test_move_to_level_and_an_absent_organ():
    from TumorSegLib.preprocess import move_to_level

    image = Image(np.arange(10, dtype=np.float32).reshape(2, 5), np.eye(3))
    moved, shift = move_to_level(image, image.array >= 5, 100.0)
    assert shift == 93.0 and np.median(moved.array[image.array >= 5]) == 100.0 and moved.array.dtype == np.float32
    same, none = move_to_level(image, np.zeros(image.shape, bool), 100.0)
    assert same is image and none is None


def test_a_cascade_whose_cards_read_pictures_differently_is_refused_on_a_picture(tmp_path):
    """A picture holds the HU of one channel and window: an organ card that reads another (here G, HU -40..160,
    under the shipped R tumour card) would get the wrong HU, so the run stops with a clear message."""
    import shutil

    from TumorSegLib.cards import load_card
    from TumorSegLib.windowed import picture_to_hu

    tumour = find_card(NAME)
    source = organ_card(tumour)
    for card in (tumour, source):
        for path in [card.weights_path] + [card.weights_path.parent / m.file for m in card.weights.ensemble]:
            shutil.copyfile(path, tmp_path / path.name)
        (tmp_path / f"{card.name}.json").write_text(json.dumps(card.to_dict()))
    data = source.to_dict()
    data["preprocessing"]["picture"].update(channel=1, window=[-40, 160])
    (tmp_path / f"{source.name}.json").write_text(json.dumps(data))
    cascade = load_card(tmp_path / f"{NAME}.json")
    picture = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    with pytest.raises(TumorSegError, match="channel 1, window \\[-40, 160\\].*channel 0, window \\[-45, 105\\]"):
        Segmenter(cascade, "cpu", backend="torch").predict(picture_to_hu(Image(picture, np.eye(3)), cascade))
    del data["preprocessing"]["picture"]  # an organ card that reads no pictures at all
    (tmp_path / f"{source.name}.json").write_text(json.dumps(data))
    cascade = load_card(tmp_path / f"{NAME}.json")
    with pytest.raises(TumorSegError, match=f"{source.name}' does not take windowed pictures"):
        Segmenter(cascade, "cpu", backend="torch").predict(picture_to_hu(Image(picture, np.eye(3)), cascade))
