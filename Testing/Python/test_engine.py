"""Inference engine: geometry on any grid, ROI and point, MIP orientation, progress, cancel, fallbacks, flips."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from TumorSegLib import device, engine
from TumorSegLib.cards import PARTNER_UNUSABLE, SHA256_OK, Postprocessing, load_card, weights_status
from TumorSegLib.device import autocast_dtype
from TumorSegLib.engine import Segmenter, settings_for
from TumorSegLib.errors import Cancelled, TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.inferers import Predictor
from TumorSegLib.metrics import dice
from TumorSegLib.mip import coronal_mip
from TumorSegLib.phantoms import ellipsoid, grid_affine
from TumorSegLib.postprocess import postprocess
from TumorSegLib.preprocess import normalize_intensity
from TumorSegLib.progress import Cancel
from TumorSegLib.testing import lesion_png, lesion_volume, tiny_model


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-models"


@pytest.fixture(scope="session")
def ct3d(models_dir):
    return tiny_model(models_dir, "sliding-window-3d", "CT")


@pytest.fixture(scope="session")
def mip2d(models_dir):
    return tiny_model(models_dir, "whole-image-2d", "MIP-PET")


@pytest.fixture(scope="session")
def segmenter(ct3d):
    return Segmenter(ct3d, "cpu")


def variant(card, tmp_path, **changes):
    """A copy of ``card`` (same weights) with changed preprocessing/inference settings."""
    data = card.to_dict()
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / f"{card.name}.json"
    (tmp_path / card.weights.file).write_bytes(card.weights_path.read_bytes())
    path.write_text(json.dumps(data))
    return load_card(path)


def test_mask_lands_on_flipped_oblique_anisotropic_grid(segmenter):
    image, truth = lesion_volume("CT")
    prediction = segmenter.predict(image)
    assert prediction.probability.shape == image.shape and prediction.probability.dtype == np.float32
    assert prediction.image is image
    assert dice(prediction.mask, truth) >= 0.8


def test_torchscript_weights_from_elsewhere_give_the_state_dict_result(ct3d, tmp_path):
    """A researcher's model exported with TorchScript (no MONAI class needed) runs like the state_dict one."""
    from TumorSegLib.cards import sha256
    from TumorSegLib.networks import load_network

    scripted = tmp_path / "scripted.pt"
    torch.jit.script(load_network(ct3d)).save(str(scripted))
    data = ct3d.to_dict()
    data["weights"] = {"file": scripted.name, "sha256": sha256(scripted), "format": "torchscript"}
    (tmp_path / "scripted.json").write_text(json.dumps(data))
    image, _ = lesion_volume("CT")
    fp32 = {"precision": "fp32"}
    expected = Segmenter(ct3d, "cpu").predict(image, overrides=fp32).probability
    result = Segmenter(load_card(tmp_path / "scripted.json"), "cpu").predict(image, overrides=fp32).probability
    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_an_ensemble_card_averages_the_logits_of_its_members(ct3d, tmp_path):
    """weights.ensemble: every member runs on the input; the probability is the sigmoid of their mean logit."""
    from TumorSegLib.cards import sha256
    from TumorSegLib.networks import Ensemble, load_network

    other = load_network(ct3d)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(0.7)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    (tmp_path / ct3d.weights.file).write_bytes(ct3d.weights_path.read_bytes())
    data = ct3d.to_dict()
    data["weights"]["ensemble"] = [{"file": "other.pt", "sha256": sha256(tmp_path / "other.pt")}]
    (tmp_path / "ensemble.json").write_text(json.dumps(data))
    card = load_card(tmp_path / "ensemble.json")
    network = load_network(card)
    assert isinstance(network, Ensemble) and len(network.members) == 2
    batch = torch.from_numpy(normalize_intensity(lesion_volume("CT")[0].array[:32, :32, :16], ct3d))[None, None]
    with torch.no_grad():
        expected = (load_network(ct3d)(batch) + other(batch)) / 2
        np.testing.assert_allclose(network(batch).numpy(), expected.numpy(), atol=1e-5)
    image, _ = lesion_volume("CT")
    fp32 = {"precision": "fp32"}
    single = Segmenter(ct3d, "cpu", backend="torch").predict(image, overrides=fp32).probability
    averaged = Segmenter(card, "cpu", backend="torch").predict(image, overrides=fp32).probability
    assert np.abs(averaged - single).max() > 0.05  # the second member counts


@pytest.fixture(scope="module")
def averaged(ct3d, models_dir, tmp_path_factory):
    """A folder with the 3D card averaging with a slice-2d card (weight 0.25), and both cards alone."""
    from TumorSegLib.testing import tiny_model

    partner = tiny_model(models_dir, "slice-2d", "CT")
    folder = tmp_path_factory.mktemp("averaged")
    for card in (ct3d, partner):
        (folder / card.weights.file).write_bytes(card.weights_path.read_bytes())
        (folder / f"{card.name}.json").write_text(json.dumps(card.to_dict()))
    data = ct3d.to_dict()
    data["name"] = "averaged"
    data["inference"].update(average_with=[{"card": partner.name, "weight": 0.25}], precision="bf16")
    (folder / "averaged.json").write_text(json.dumps(data))
    return load_card(folder / "averaged.json"), ct3d, partner


def test_average_with_is_the_weighted_mean_of_each_cards_probability(averaged):
    """inference.average_with: each card computes its own probability (here a 3D and a 2D network) on the same
    input, whole or in a click's box, and the result is their weighted mean, thresholded by the card."""
    card, own, partner = averaged
    image, truth = lesion_volume("CT")
    fp32 = {"precision": "fp32"}
    alone = [Segmenter(c, "cpu", backend="torch").predict(image, overrides=fp32).probability for c in (own, partner)]
    segmenter = Segmenter(card, "cpu", backend="torch")
    whole = segmenter.predict(image, overrides=fp32)
    np.testing.assert_allclose(whole.probability, 0.75 * alone[0] + 0.25 * alone[1], atol=1e-5)
    assert np.abs(alone[1] - alone[0]).max() > 0.05  # the partner counts
    np.testing.assert_array_equal(whole.mask, postprocess(whole.probability >= card.threshold, image,
                                                          card.postprocessing, []))
    assert any("weighted mean" in note and partner.name in note for note in whole.notes)
    point = image.to_world(np.argwhere(truth).mean(axis=0))
    clicked = segmenter.predict(image, point=point, overrides=fp32)
    inside = tuple(slice(lo, hi) for lo, hi in clicked.clicks[0].box)
    own_click = Segmenter(own, "cpu", backend="torch").predict(image, point=point, overrides=fp32)
    partner_click = Segmenter(partner, "cpu", backend="torch").predict(image, point=point, overrides=fp32)
    assert own_click.clicks[0].box == clicked.clicks[0].box
    assert np.abs(clicked.probability[inside] - 0.75 * own_click.probability[inside]).max() > 0.01
    assert dice(clicked.mask, truth) >= 0.7 and partner_click.mask.any()


def test_a_precision_override_reaches_the_averaged_cards(averaged):
    """A precision the user gives applies to every card; otherwise each keeps its own (here bf16 against auto)."""
    card, _, partner = averaged
    segmenter = Segmenter(card, "cpu", backend="torch")
    assert segmenter._settings({"precision": "fp32"}).partners[0].inference.precision == "fp32"
    assert card.inference.precision == "bf16" != partner.inference.precision
    assert segmenter._settings(None).partners[0].inference.precision == partner.inference.precision


@pytest.mark.parametrize("change, message, status", [
    ({"average_with": [{"card": "missing", "weight": 0.5}]}, "averages with 'missing'.*same folder.*missing.json",
     PARTNER_UNUSABLE),
    ({"average_with": [{"card": "tiny-mip-pet-whole-image-2d", "weight": 0.5}]}, "another modality", PARTNER_UNUSABLE),
    ({"average_with": [{"card": "no-weights", "weight": 0.5}]}, "averages with 'no-weights', which cannot run",
     "missing"),
])
def test_average_with_a_card_that_cannot_be_used_is_refused(averaged, mip2d, change, message, status):
    """Refused when loaded, naming the model that needs it; ``tumorseg models`` shows it in the weights status."""
    card, _, _ = averaged
    folder = Path(card.path).parent
    (folder / f"{mip2d.name}.json").write_text(json.dumps(mip2d.to_dict()))
    (folder / "no-weights.json").write_text(json.dumps({**card.to_dict(), "name": "no-weights", "inference": {},
                                                        "weights": {"file": "absent.pt"}}))
    data = card.to_dict()
    data["inference"].update(change)
    (folder / "broken.json").write_text(json.dumps(data))
    with pytest.raises(TumorSegError, match=message):
        Segmenter(load_card(folder / "broken.json"), "cpu")
    assert weights_status(load_card(folder / "broken.json")) == status
    assert weights_status(card) == SHA256_OK


@pytest.mark.parametrize("partners", [[{"card": "a", "weight": 0.6}, {"card": "b", "weight": 0.4}],
                                      [{"card": "a", "weight": 0}], [{"card": "../a", "weight": 0.5}],
                                      [{"card": "a"}]])
def test_average_with_weights_and_names_are_checked(ct3d, partners):
    from TumorSegLib.cards import card_from_dict

    data = ct3d.to_dict()
    data["inference"]["average_with"] = partners
    with pytest.raises(TumorSegError, match="average_with"):
        card_from_dict(data)


@pytest.fixture(scope="module")
def cascade(ct3d, models_dir, tmp_path_factory):
    """A folder with the 3D card taking its organ (channel 0, at ``ORGAN_THRESHOLD``) from a slice-2d card, both
    alone, and a function writing a variant of the cascade card."""
    from TumorSegLib.testing import tiny_model

    source = tiny_model(models_dir, "slice-2d", "CT")
    folder = tmp_path_factory.mktemp("cascade")
    for card in (ct3d, source):
        (folder / card.weights.file).write_bytes(card.weights_path.read_bytes())
        (folder / f"{card.name}.json").write_text(json.dumps(card.to_dict()))

    def write(name="cascade", inference=None, **organ):
        data = ct3d.to_dict()
        data["name"] = name
        data["inference"].update({"organ_from": source.name, **(inference or {})})
        data["output"]["within"] = organ.get("within", {"channel": 0, "threshold": ORGAN_THRESHOLD})
        data["preprocessing"]["organ_level"] = organ.get("level", {"channel": 0, "threshold": 0.5, "value": 400.0})
        (folder / f"{name}.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
        return folder / f"{name}.json"

    return load_card(write()), ct3d, source, write


ORGAN_THRESHOLD = 0.9


def test_organ_from_takes_the_organ_from_the_other_cards_whole_run(cascade):
    """inference.organ_from: the other card's output channel, from its own whole run, is the organ: the input is
    moved to the organ's level and the tumour kept inside it, each network at its own settings (a cascade)."""
    from TumorSegLib.cards import only_channel
    from TumorSegLib.preprocess import move_to_level

    card, own, source, _ = cascade
    image, truth = lesion_volume("CT")
    fp32 = {"precision": "fp32"}
    organ = Segmenter(only_channel(source, 0), "cpu", backend="torch").predict(image, overrides=fp32).probability
    inside = organ >= ORGAN_THRESHOLD
    assert 0 < inside.sum() < truth.sum()  # the organ cuts the lesion
    moved, shift = move_to_level(image, organ >= 0.5, 400.0)
    assert abs(shift) > 50
    alone = Segmenter(own, "cpu", backend="torch").predict(moved, overrides=fp32).probability
    result = Segmenter(card, "cpu", backend="torch").predict(image, overrides=fp32)
    np.testing.assert_allclose(result.probability, alone * inside, atol=1e-5)
    assert (alone[~inside] >= 0.5).any() and not result.mask[~inside].any()
    assert any(f"moved by {shift:+.1f}" in note for note in result.notes)
    assert any(source.name in note and "organ_from" in note for note in result.notes)
    segmenter = Segmenter(card, "cpu", backend="torch")
    assert segmenter._settings({"precision": "fp32"}).organ.inference.precision == "fp32"
    assert segmenter._settings(None).organ.inference.precision == source.inference.precision


def test_organ_from_keeps_the_largest_region_of_the_organ_of_a_volume(cascade):
    """output.within.largest_component: on a 3D image the tumour is kept inside the organ's largest connected region
    (here the organ has a piece on each of the two lesions, so the smaller lesion goes); a 2D mask keeps its pieces."""
    from TumorSegLib.cards import only_channel
    from TumorSegLib.measure import label_lesions
    from TumorSegLib.postprocess import largest_region

    _, _, source, write = cascade
    image, _ = lesion_volume("CT")
    fp32 = {"precision": "fp32"}
    organ = Segmenter(only_channel(source, 0), "cpu", backend="torch").predict(image, overrides=fp32).probability
    inside = organ >= ORGAN_THRESHOLD
    assert label_lesions(inside)[1] >= 2
    within = {"channel": 0, "threshold": ORGAN_THRESHOLD}
    every, kept = (Segmenter(load_card(write(name=name, within=organ, level=None)), "cpu", backend="torch").predict(
        image, overrides=fp32).probability for name, organ in (("every", within),
                                                               ("largest", {**within, "largest_component": True})))
    np.testing.assert_allclose(kept, every * largest_region(inside), atol=1e-6)
    assert (every[~largest_region(inside)] >= 0.5).any() and not (kept[~largest_region(inside)] > 0).any()
    pieces = np.zeros((9, 9), bool)
    pieces[1:3, 1:3] = pieces[5:8, 5:8] = True
    assert np.array_equal(largest_region(pieces), pieces)


def test_a_named_organ_comes_with_whole_image_runs_only(tmp_path):
    """output.within.organ: a whole-image run also gives the organ region the tumour was kept in (its largest region
    here), post-processed as its card does and joined with the tumour mask; an ROI run and a card naming no organ
    give none."""
    from TumorSegLib.cards import organ_card
    from TumorSegLib.postprocess import largest_region
    from TumorSegLib.testing import tiny_cascade

    card, unnamed = tiny_cascade(tmp_path, threshold=0.1), tiny_cascade(tmp_path, organ=None)
    image, _ = lesion_volume("CT")
    fp32 = {"precision": "fp32"}
    organ = Segmenter(organ_card(card), "cpu", backend="torch").predict(image, overrides=fp32).probability
    region = largest_region(organ >= 0.1)
    result = Segmenter(card, "cpu", backend="torch").predict(image, overrides=fp32)
    assert result.mask.any() and not result.mask[~region].any()
    expected = postprocess(region, image, organ_card(card).postprocessing, [])
    assert np.array_equal(result.organ, expected | result.mask) and (result.organ & ~result.mask).any()
    assert ((organ >= 0.1) & ~result.organ).any()  # the organ's other pieces are not the organ
    assert Segmenter(unnamed, "cpu", backend="torch").predict(image, overrides=fp32).organ is None
    in_box = Segmenter(card, "cpu", backend="torch").predict(image, roi=(0, 40, 0, 36, 0, 20), overrides=fp32)
    assert in_box.organ is None and np.array_equal(in_box.mask, result.mask)


@pytest.mark.parametrize("change, message", [
    ({"name": "missing-organ", "inference": {"organ_from": "missing"}}, "takes its organ from 'missing'.*same folder"),
    ({"name": "mip-organ", "inference": {"organ_from": "tiny-mip-pet-whole-image-2d"}}, "another modality"),
    ({"name": "channel-organ", "within": {"channel": 1, "threshold": 0.5},
      "level": {"channel": 1, "threshold": 0.5, "value": 1.0}}, "has no sigmoid output channel 1"),
])
def test_organ_from_a_card_that_cannot_give_it_is_refused(cascade, mip2d, change, message):
    """Refused when loaded, naming the model that needs it; ``tumorseg models`` shows it in the weights status."""
    card, _, _, write = cascade
    folder = Path(card.path).parent
    (folder / f"{mip2d.name}.json").write_text(json.dumps(mip2d.to_dict()))
    broken = load_card(write(**change))
    with pytest.raises(TumorSegError, match=message):
        Segmenter(broken, "cpu")
    assert weights_status(broken) == PARTNER_UNUSABLE
    assert weights_status(card) == SHA256_OK


@pytest.mark.parametrize("organ, message", [
    ({"within": None, "level": None}, "organ_from needs output.within or preprocessing.organ_level"),
    ({"within": {"channel": 0}, "level": {"channel": 1, "value": 1.0}}, "must name the same channel"),
])
def test_organ_from_needs_one_organ_channel(cascade, organ, message):
    _, _, _, write = cascade
    with pytest.raises(TumorSegError, match=message):
        load_card(write(name="bad-organ", **organ))


def test_resampling_and_reorientation_give_the_mask_on_the_input_grid(ct3d, tmp_path):
    card = variant(ct3d, tmp_path, preprocessing={"spacing": [1.5, 1.5, 1.5], "orientation": "LPS"})
    image, truth = lesion_volume("CT")
    prediction = Segmenter(card, "cpu").predict(image)
    assert prediction.mask.shape == image.shape
    assert dice(prediction.mask, truth) >= 0.8


def test_progress_reaches_one_and_never_goes_back(segmenter):
    seen = []
    segmenter.predict(lesion_volume("CT")[0], progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen) and len(seen) > 4


def test_cancel_stops_between_windows(segmenter):
    cancel, calls = Cancel(), []

    def progress(fraction, message):
        calls.append(message)
        if message.startswith("window"):
            cancel.set()

    with pytest.raises(Cancelled):
        segmenter.predict(lesion_volume("CT", shape=(64, 64, 40))[0], progress=progress, cancel=cancel)
    assert sum(m.startswith("window") for m in calls) == 1


def test_roi_agrees_with_the_full_run_inside_the_roi(segmenter):
    """An ROI run computes only the box plus the network's margin: inside it, the whole run's result."""
    image, truth = lesion_volume("CT", shape=(56, 48, 24))
    fp32 = {"precision": "fp32"}
    full = segmenter.predict(image, overrides=fp32)
    box = (4, 36, 14, 46, 2, 22)
    part = segmenter.predict(image, roi=box, overrides=fp32)
    inside = tuple(slice(lo, hi) for lo, hi in zip(box[0::2], box[1::2]))
    outside = np.ones(image.shape, dtype=bool)
    outside[inside] = False
    assert not part.probability[outside].any() and not part.mask[outside].any()
    assert full.mask[inside].sum() >= 0.5 * truth[inside].sum() > 0  # the box holds a lesion
    # The crop lays its windows out differently, so the probabilities differ a little: measured mean 0.008-0.009
    # and Dice of at least 0.966 on AMX and AVX2-only CPUs; a one-voxel shift in pasting back gives Dice 0.71-0.87.
    assert np.mean(np.abs(part.probability[inside] - full.probability[inside])) < 0.02
    assert dice(part.mask[inside], full.mask[inside]) >= 0.9


def test_point_segments_a_box_around_it(segmenter):
    """A click segments inside its context box only: the clicked lesion is found, nothing beyond the box is marked.

    Checked against the box itself, not against voxel counts that depend on how large the model
    draws each lesion (which differs between CPUs)."""
    image, truth = lesion_volume("CT")
    click = (-6.0, 6.0, 14.0)  # centre of the larger lesion
    prediction = segmenter.predict(image, point=click)
    box = prediction.clicks[0].box
    context = np.asarray(segmenter.card.inference.context_mm) / image.spacing  # the box is the context, cut at edges
    assert all(hi - lo <= c + 2 for (lo, hi), c in zip(box, context))
    inside = np.zeros(image.shape, dtype=bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    assert (prediction.mask & truth & inside).any()
    assert not (prediction.mask & ~inside).any()
    beyond = truth & ~inside  # the part of the other lesion outside the box
    assert np.count_nonzero(beyond) >= 10 and segmenter.predict(image).mask[beyond].any()
    for point in ((500.0, 0.0, 0.0), (np.nan, 5.0, 5.0)):
        with pytest.raises(TumorSegError, match="outside the image|finite"):
            segmenter.predict(image, point=point)


@pytest.mark.parametrize("roi", [(0, 10, 0, 10), (0, 10, 0, 10, 5, 99), (-1, 5, 0, 5, 0, 5), (5, 5, 0, 5, 0, 5)])
def test_bad_roi_is_refused(segmenter, roi):
    with pytest.raises(TumorSegError, match="ROI"):
        segmenter.predict(lesion_volume("CT")[0], roi=roi)


def test_wrong_dimensionality_and_modality_are_refused(segmenter, mip2d):
    with pytest.raises(TumorSegError, match="needs a 3D volume"):
        segmenter.predict(lesion_png()[0])
    with pytest.raises(TumorSegError, match="does not look like CT"):
        segmenter.predict(lesion_volume("PET")[0])
    with pytest.raises(TumorSegError, match="looks like CT"):
        Segmenter(mip2d, "cpu").predict(lesion_volume("CT")[0])


def test_overrides_are_checked(ct3d):
    assert settings_for(ct3d, {"overlap": 0.5, "threshold": None}).inference.overlap == 0.5
    for bad in ({"overlap": 1.0}, {"threshold": 0.0}, {"min_lesion_ml": -1}, {"min_lesion_px": -1}, {"patch": 3},
                {"flip_axes": [3]}, {"flip_axes": [0, 0]}, {"flip_axes": 1}):
        with pytest.raises(TumorSegError):
            settings_for(ct3d, bad)


def pet_volume(affine, shape):
    """A PET volume with a hot lesion at the patient's right, superior, anterior."""
    array = np.zeros(shape, dtype=np.float32)
    array[ellipsoid(shape, affine, (30.0, 20.0, 40.0), (8.0, 8.0, 8.0))] = 9.0
    array[ellipsoid(shape, affine, (-30.0, -20.0, -40.0), (6.0, 6.0, 6.0))] = 7.0
    return Image(array, affine)


def test_mip_is_radiological_superior_up_whatever_the_storage(mip2d):
    shape = (40, 30, 50)
    reference = coronal_mip(pet_volume(grid_affine(shape, (3.0, 3.0, 2.0)), shape), mip2d)
    rows, cols = np.nonzero(reference.array < 100)  # hot = dark
    assert rows.mean() < reference.shape[0] / 2  # superior lesion in the top half
    assert cols.mean() < reference.shape[1] / 2  # patient right on the image left
    assert np.allclose(reference.spacing, (2.0, 3.0))
    # The same patient stored with flipped and permuted voxel axes gives the same MIP pixels.
    flipped = grid_affine(shape, (3.0, 3.0, 2.0), flip=(True, True, True))[:, [2, 0, 1, 3]]
    other = coronal_mip(pet_volume(flipped, (50, 40, 30)), mip2d)
    assert np.array_equal(other.array, reference.array)


def test_mip_card_on_a_3d_pet_volume_gives_a_mip_mask(mip2d):
    shape = (40, 30, 50)
    prediction = Segmenter(mip2d, "cpu").predict(pet_volume(grid_affine(shape, (3.0, 3.0, 2.0)), shape))
    assert prediction.image.ndim == 2 and prediction.mask.shape == prediction.image.shape
    assert dice(prediction.mask, prediction.image.array < 128) >= 0.8  # both lesions (SUV 9 and 7) are dark
    assert any("MIP" in note for note in prediction.notes)


def test_constant_windows_are_computed_once_with_the_same_result(ct3d):
    network = Segmenter(ct3d, "cpu").network
    predictor = Predictor(network, ct3d.output, torch.device("cpu"), None, total=3, progress=lambda f, m: None)
    batch = torch.rand(3, 1, 16, 16, 16)
    batch[0] = 0.0
    batch[2] = 0.0
    out = predictor(batch)
    with torch.inference_mode():
        expected = torch.sigmoid(network(batch))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert len(predictor.constant_cache) == 1


def test_bf16_masks_agree_with_fp32(segmenter):
    image, _ = lesion_volume("CT")
    fp32 = segmenter.predict(image, overrides={"precision": "fp32"}).mask
    bf16 = segmenter.predict(image, overrides={"precision": "bf16"}).mask
    assert dice(fp32, bf16) >= 0.97


def test_auto_precision_follows_the_cpu(mip2d, monkeypatch):
    """bf16 where the CPU computes it natively, fp32 elsewhere; the fp32 re-check only when asked for."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert autocast_dtype(cpu, "auto") is torch.bfloat16 and autocast_dtype(cpu, "fp32") is None
    # PyTorch: its bf16 autocast runs on any CPU (OpenVINO computes f32 where the CPU lacks bf16)
    segmenter, image = Segmenter(mip2d, "cpu", backend="torch"), lesion_png()[0]
    fp32 = segmenter.predict(image, overrides={"precision": "fp32"}).probability
    bf16 = segmenter.predict(image, overrides={"precision": "bf16"}).probability
    assert not np.array_equal(bf16, fp32)  # no re-check by default: bf16 shows in the probability
    rechecked = segmenter.predict(image, overrides={"precision": "bf16", "recheck_margin": 0.49}).probability
    assert np.array_equal(rechecked, fp32)  # a pixel lies within 0.49 of 0.5: the image is computed again in fp32


def test_cuda_out_of_memory_falls_back_to_smaller_batches_then_cpu(ct3d, monkeypatch):
    segmenter = Segmenter(ct3d, "cpu", backend="torch")  # PyTorch: the backend on CUDA
    segmenter.device = torch.device("cuda")  # pretend; every attempt on "cuda" fails
    attempts = []

    def run_once(array, axis, active, settings, progress, cancel):
        attempts.append((segmenter.device.type, settings.inference.sw_batch_size, settings.keep_volume_on_device))
        if segmenter.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.zeros(array.shape, dtype=np.float32)

    monkeypatch.setattr(segmenter, "_run_once", run_once)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    prediction = segmenter.predict(lesion_volume("CT")[0], overrides={"sw_batch_size": 2})
    assert attempts == [("cuda", 2, None), ("cuda", 1, None), ("cuda", 1, False), ("cpu", 1, False)]
    assert prediction.device == "cpu" and any("on the CPU" in note for note in prediction.notes)


def test_gpu_batches_fill_the_gpu_unless_the_user_sets_them(ct3d, monkeypatch):
    segmenter = Segmenter(ct3d, "cpu", backend="torch")  # PyTorch: the backend on CUDA
    segmenter.device = torch.device("cuda")  # pretend; _run_once records the batch instead of running
    batches = []
    monkeypatch.setattr(segmenter, "_run_once", lambda array, axis, active, settings, progress, cancel: (
        batches.append(settings.inference.sw_batch_size), np.zeros(array.shape, dtype=np.float32))[1])
    image = lesion_volume("CT")[0]
    segmenter.predict(image)
    segmenter.predict(image, overrides={"sw_batch_size": 3})
    window = int(np.prod(ct3d.inference.patch_size))
    assert batches == [engine.GPU_BATCH_VOXELS // window, 3] and batches[0] > ct3d.inference.sw_batch_size


def test_postprocessing_removes_small_lesions_and_fills_holes():
    grid = Image(np.zeros((30, 30, 30)), np.diag([2.0, 2.0, 2.0, 1.0]))  # 8 mm3 voxels
    mask = np.zeros(grid.shape, dtype=bool)
    mask[2:12, 2:12, 2:12] = True  # 8 mL
    mask[6, 6, 6] = False  # a hole
    mask[20:22, 20:22, 20:22] = True  # 0.064 mL
    notes = []
    out = postprocess(mask, grid, Postprocessing(min_lesion_ml=0.1, fill_holes=True), notes)
    assert out[6, 6, 6] and not out[20:22, 20:22, 20:22].any() and out.sum() == 1000
    assert notes
    largest = postprocess(mask, grid, Postprocessing(largest_component=True), [])
    assert not largest[20:22, 20:22, 20:22].any()


class PositionalLogits(torch.nn.Module):
    """Logits that depend on the position (ramps along every spatial axis): not flip-equivariant."""

    def forward(self, x):
        logits = 4.0 * x - 2.0
        for axis, slope in zip(range(2, x.ndim), (1.5, -2.5, 0.7)):
            shape = [1] * x.ndim
            shape[axis] = x.shape[axis]
            logits = logits + slope * torch.linspace(-1.0, 1.0, x.shape[axis]).reshape(shape)
        return logits


def flip_mean(network, x, dims_list):
    """The test-time flip probability computed by hand: mean over the identity and each flip."""
    with torch.no_grad():
        outputs = [torch.sigmoid(network(x))] + [torch.sigmoid(network(x.flip(d))).flip(d) for d in dims_list]
    return torch.stack(outputs).mean(dim=0)


def test_flip_axes_average_the_identity_and_each_flip(mip2d, tmp_path):
    image, _ = lesion_png()  # 72 x 56: no padding for divisible_by 4
    network = PositionalLogits()
    x = torch.from_numpy(normalize_intensity(image.array, mip2d))[None, None]
    expected = flip_mean(network, x, [[3]])[0, 0].numpy()
    plain = Segmenter(mip2d, "cpu", network=network).predict(image).probability
    flipped = Segmenter(mip2d, "cpu", network=network).predict(image, overrides={"flip_axes": [1]}).probability
    np.testing.assert_allclose(flipped, expected, atol=1e-6)
    assert np.abs(plain - expected).max() > 0.05  # the network is not flip-equivariant: the flips matter
    from_card = Segmenter(variant(mip2d, tmp_path, inference={"flip_axes": [1]}), "cpu", network=network)
    np.testing.assert_allclose(from_card.predict(image).probability, expected, atol=1e-6)


def test_flip_axes_in_3d_windows_use_every_listed_axis(ct3d):
    network = PositionalLogits()
    batch = torch.rand(2, 1, 8, 6, 10)
    predictor = Predictor(network, ct3d.output, torch.device("cpu"), None, total=2, progress=lambda f, m: None,
                          flip_axes=[0, 2])
    torch.testing.assert_close(predictor(batch), flip_mean(network, batch, [[2], [4]]), atol=1e-6, rtol=0)


def test_invalid_flip_axes_in_a_card_are_refused(mip2d, tmp_path):
    with pytest.raises(TumorSegError, match="flip_axes"):
        variant(mip2d, tmp_path, inference={"flip_axes": [2]})


def test_min_lesion_px_removes_small_2d_lesions_without_spacing():
    grid = Image(np.zeros((40, 40)), np.eye(3), spacing_known=False)
    mask = np.zeros(grid.shape, dtype=bool)
    mask[2:12, 2:12] = True  # 100 pixels
    mask[30:33, 30:33] = True  # 9 pixels
    notes = []
    out = postprocess(mask, grid, Postprocessing(min_lesion_px=10, min_lesion_ml=0.5), notes)
    assert out.sum() == 100 and not out[30:33, 30:33].any()
    assert any("min_lesion_px" in note for note in notes)  # min_lesion_ml does not apply in 2D
