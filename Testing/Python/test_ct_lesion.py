"""CT lesion models (issue 6): click-to-segment, the CT cards' input rules, and the shipped weights on LIDC."""

import json

import numpy as np
import pytest

from conftest import shared_data
from TumorSegLib.cards import find_card, load_card, verified_weights
from TumorSegLib.cli import main
from TumorSegLib.engine import Segmenter
from TumorSegLib.errors import TumorSegError
from TumorSegLib.io import read_image, write_image
from TumorSegLib.metrics import dice
from TumorSegLib.phantoms import grid_affine
from TumorSegLib.testing import synthetic_image, tiny_model

CT_CARDS = ("ct-lung-lesion-3d", "ct-lung-lesion-2d")
RULES = ("context_mm", "min_roi_mm", "trained_on")  # what a CT lesion card declares for click-to-segment
NODULE, OTHER = (-20.0, 10.0, 4.0), (30.0, -25.0, -6.0)  # world centres (RAS mm), 61 mm apart


def shipped_rules(name: str) -> dict:
    """The click-to-segment settings of a CT lesion card, read from its training config (always in the repo)."""
    from TumorSegLib.cards import BUILTIN_DIR

    inference = json.loads((BUILTIN_DIR / f"{name}.train.json").read_text())["card"]["inference"]
    return {key: inference[key] for key in RULES}


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    """The tiny CT network (bright blob = lesion) under the shipped 3D card's click-to-segment rules."""
    tiny = tiny_model(tmp_path_factory.getbasetemp() / "tiny-models", "sliding-window-3d", "CT")
    folder = tmp_path_factory.mktemp("ct-lesion-card")
    data = tiny.to_dict()
    data["name"] = "tiny-ct-lesion"
    data["inference"] = {**data["inference"], **shipped_rules("ct-lung-lesion-3d")}
    (folder / tiny.weights.file).write_bytes(tiny.weights_path.read_bytes())
    path = folder / "tiny-ct-lesion.json"
    path.write_text(json.dumps(data))
    return load_card(path)


@pytest.fixture(scope="module")
def chest():
    """A flipped, anisotropic CT with two nodules far apart: (Image, mask of NODULE, mask of OTHER)."""
    affine = grid_affine((96, 90, 28), (0.8, 0.75, 2.0), (True, True, False))
    image, both = synthetic_image((96, 90, 28), affine, [(NODULE, (5.0, 4.0, 5.0)), (OTHER, (4.0, 4.0, 4.0))])
    nodule = synthetic_image((96, 90, 28), affine, [(NODULE, (5.0, 4.0, 5.0))])[1]
    return image, nodule, both & ~nodule


@pytest.fixture(scope="module")
def segmenter(card):
    return Segmenter(card, "cpu")


def test_shipped_ct_cards_declare_the_click_context():
    for name in CT_CARDS:
        rules = shipped_rules(name)
        assert len(rules["context_mm"]) == 3 and len(rules["min_roi_mm"]) == 3
        assert all(c >= m > 0 for c, m in zip(rules["context_mm"], rules["min_roi_mm"]))


def test_click_segments_the_nodule_in_the_context_box_only(segmenter, card, chest):
    image, nodule, other = chest
    prediction = segmenter.predict(image, point=NODULE)
    assert dice(prediction.mask, nodule) >= 0.8
    assert not (prediction.mask & other).any()
    found = image.to_world(np.argwhere(prediction.probability > 0))
    half = np.asarray(card.inference.context_mm) / 2 + image.spacing.max()
    assert np.all(np.abs(found - NODULE) <= half)  # a grid with flips only: voxel box = RAS box


def test_click_from_the_command_line(card, chest, tmp_path, capsys):
    image, nodule, _ = chest
    source = write_image(tmp_path / "chest.nii.gz", image)
    output = tmp_path / "nodule.nii.gz"
    code = main(["segment", str(source), "-o", str(output), "--model", str(card.path), "--device", "cpu",
                 "--point", *map(str, NODULE), "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert dice(read_image(output).array > 0, nodule) >= 0.8
    lesions = json.loads((tmp_path / "r.json").read_text())["readouts"]["lesions"]
    largest = max(lesions, key=lambda lesion: lesion["volume_ml"])
    assert np.linalg.norm(np.subtract(largest["centroid_world"], NODULE)) < 2.0  # readouts in world mm


def test_point_outside_the_image_is_an_error(segmenter, chest, card, tmp_path, capsys):
    image, _, _ = chest
    with pytest.raises(TumorSegError, match="outside the image"):
        segmenter.predict(image, point=(400.0, 10.0, 4.0))
    source = write_image(tmp_path / "chest.nii.gz", image)
    code = main(["segment", str(source), "-o", str(tmp_path / "m.nii.gz"), "--model", str(card.path), "--device",
                 "cpu", "--point", "400", "10", "4"])
    assert code == 2 and "outside the image" in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()


def test_roi_smaller_than_the_minimum_context_is_refused(segmenter, card, chest):
    image, nodule, _ = chest
    minimum = np.asarray(card.inference.min_roi_mm)
    centre = np.argwhere(nodule).mean(axis=0).astype(int)
    # RAS extents of the ROI = voxel extents here (axes are only flipped); one axis just too small
    narrow = np.maximum(np.ceil(minimum / image.spacing).astype(int) + 2, 1)
    narrow[0] = int(minimum[0] / image.spacing[0]) - 1
    roi = [v for c, n in zip(centre, narrow) for v in (c - n // 2, c - n // 2 + n)]
    with pytest.raises(TumorSegError, match="smaller than the model's minimum"):
        segmenter.predict(image, roi=roi)
    wide = np.ceil(np.asarray(card.inference.context_mm) / image.spacing).astype(int)
    roi = [v for c, n, size in zip(centre, wide, image.shape) for v in (max(c - n // 2, 0), min(c + n // 2, size))]
    assert dice(segmenter.predict(image, roi=roi).mask, nodule) >= 0.8


def test_pet_volume_given_to_a_ct_card_is_refused(segmenter):
    pet, _ = synthetic_image((40, 40, 20), np.diag([2.0, 2.0, 2.0, 1.0]), [((40.0, 40.0, 20.0), (6.0, 6.0, 6.0))],
                             "PET")
    with pytest.raises(TumorSegError, match="does not look like CT"):
        segmenter.predict(pet)


def test_whole_volume_without_point_says_what_the_model_was_trained_for(segmenter, card, chest):
    image, nodule, other = chest
    prediction = segmenter.predict(image)
    assert any(card.inference.trained_on in note for note in prediction.notes)
    assert dice(prediction.mask, nodule | other) >= 0.8  # the sliding window still covers the whole volume
    assert not any("trained on" in note for note in segmenter.predict(image, point=NODULE).notes)


@pytest.mark.parametrize("name", CT_CARDS)
def test_shipped_weights_are_verified_and_small(name):
    card = find_card(name)
    assert card.modality == "CT" and sum(p.stat().st_size for p in verified_weights(card)) <= 30e6


def click(image, truth):
    """A click on the nodule: the world position of its middle voxel (in array order)."""
    voxels = np.argwhere(truth)
    return image.to_world(voxels[len(voxels) // 2])


def test_shipped_3d_model_segments_real_lidc_nodules():
    """Regression guard: the shipped 3D model on the first validation nodules of its own split."""
    from TumorSegLib.metrics import case_metrics
    from TumorSegLib.training.config import config_from_dict
    from TumorSegLib.training.data import find_cases, split_cases
    from TumorSegLib.training.transforms import read_pair

    root = shared_data("lidc-nodule-vois") / "dev"
    card = find_card("ct-lung-lesion-3d")
    config = config_from_dict(card.provenance["config"], data_root=root)
    split = split_cases(find_cases(config), config.data["validation_fraction"], config.data["split_seed"])
    segmenter = Segmenter(card, "cpu")
    scores = []
    for case in split.validation[:4]:
        image, truth = read_pair(case)
        mask = segmenter.predict(image, point=click(image, truth)).mask
        scores.append(case_metrics(mask, truth, image, recist=False)["dice"])
    assert np.mean(scores) >= 0.6, scores


def test_shipped_3d_model_keeps_its_mask_when_the_crop_sits_in_a_larger_study():
    """Regression guard for the context fine-tune (docs/context-augmentation.md): a click on a nodule
    in its crop and on the same crop padded with air to a larger study gives nearly the same mask.
    The previous weights gave Dice 0.0 and 0.625 on these two nodules; the shipped ones 0.92 and 0.87."""
    from TumorSegLib.image import Image
    from TumorSegLib.training.data import card_validation_cases
    from TumorSegLib.training.transforms import read_pair

    card = find_card("ct-lung-lesion-3d")
    segmenter = Segmenter(card, "cpu")
    fp32 = {"precision": "fp32"}
    for case in card_validation_cases(card, data_root=shared_data("lidc-nodule-vois") / "dev")[:2]:
        crop, truth = read_pair(case)
        pad = np.array([48, 48, 24])
        study = np.pad(np.asarray(crop.array, dtype=np.float32), [(p, p) for p in pad], constant_values=-1000.0)
        affine = crop.affine.copy()
        affine[:3, 3] = crop.to_world(-pad)
        inside = tuple(slice(int(p), int(p + n)) for p, n in zip(pad, crop.shape))
        on_crop = segmenter.predict(crop, point=click(crop, truth), overrides=fp32).mask
        on_study = segmenter.predict(Image(study, affine), point=click(crop, truth), overrides=fp32).mask[inside]
        assert on_crop.any() and dice(on_crop, on_study) >= 0.75, case.name


@pytest.mark.parametrize("name", CT_CARDS)
def test_shipped_ct_models_give_the_fp32_masks_in_bf16(name):
    """bf16 is these cards' CPU default: on the first validation nodules its masks must be fp32's
    (Dice >= 0.98 each, 0.99 pooled)."""
    from TumorSegLib.training.data import card_validation_cases
    from TumorSegLib.training.transforms import read_pair

    card = find_card(name)
    cases = card_validation_cases(card, data_root=shared_data("lidc-nodule-vois") / "dev")[:6]
    assert card.inference.precision == "auto"
    segmenter = Segmenter(card, "cpu")
    masks = {"fp32": [], "bf16": []}
    for case in cases:
        image, truth = read_pair(case)
        for precision, found in masks.items():
            found.append(segmenter.predict(image, point=click(image, truth), overrides={"precision": precision}).mask)
        assert masks["fp32"][-1].any() and dice(masks["fp32"][-1], masks["bf16"][-1]) >= 0.98, case.name
    assert dice(*(np.concatenate([m.ravel() for m in found]) for found in masks.values())) >= 0.99  # pooled
