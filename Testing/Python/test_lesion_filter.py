"""The lesion-level false-positive filter of whole-image 2D cards (``postprocessing.lesion_filter``)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from TumorSegLib import cards
from TumorSegLib.engine import Segmenter
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.lesion_filter import FEATURES, PATCH_CHANNELS, filter_lesions, lesion_patches
from TumorSegLib.lesion_net import LesionNet
from TumorSegLib.testing import tiny_card_dict

from conftest import DAMAGES, damage_weights, shipped_mip_metrics

# score = sigmoid(20 * vertical - 4): below 0.5 in the top fifth of the body (where the brain lies)
SPEC = {"features": ["vertical"], "mean": [0.0], "scale": [1.0], "coef": [20.0], "intercept": -4.0, "threshold": 0.5,
        "image_threshold": 0.0}
BRAIN, LESION = (slice(12, 20), slice(26, 34)), (slice(60, 66), slice(20, 26))


def synthetic_mip() -> Image:
    """An inverted MIP (hot = dark): a body from row 10 to 110, a saturated 'brain' at its top, a lesion mid-body."""
    grey = np.full((120, 60), 255.0, dtype=np.float32)
    grey[10:110, 15:45] = 180.0
    grey[BRAIN] = 0.0
    grey[LESION] = 0.0
    return Image(grey, np.eye(3))


class HotIsTumour(torch.nn.Module):
    """A stand-in network: the logit grows with the normalised uptake, so every saturated pixel is 'tumour'."""

    def forward(self, x):
        return 40.0 * (x - 0.8)


def card_with(spec, mode="whole-image-2d", modality="MIP-PET") -> dict:
    data = tiny_card_dict("filtered", mode, modality)
    data["postprocessing"] = {"lesion_filter": spec}
    return data


def test_the_filter_removes_uptake_at_the_top_of_the_body_and_keeps_a_lesion_mid_body():
    image = synthetic_mip()
    uptake = 1.0 - image.array / 255.0
    mask = uptake > 0.9
    notes = []
    kept = filter_lesions(mask, mask.astype(np.float32), uptake, SPEC, notes)
    assert not kept[BRAIN].any() and kept[LESION].all() and kept.sum() == mask[LESION].sum()
    assert notes == ["lesion filter: removed 1 of 2 lesion(s) scored as physiological uptake"]


def test_the_image_gate_clears_an_image_whose_best_lesion_scores_below_it():
    image = synthetic_mip()
    uptake = 1.0 - image.array / 255.0
    mask = uptake > 0.9
    notes = []
    assert not filter_lesions(mask, mask.astype(np.float32), uptake, {**SPEC, "image_threshold": 0.999}, notes).any()
    assert "removed all 2 lesion(s)" in notes[0]


def test_the_engine_filters_whole_image_runs_only():
    card = cards.card_from_dict(card_with(SPEC))
    segmenter = Segmenter(card, "cpu", network=HotIsTumour(), backend="torch")
    image = synthetic_mip()
    filtered = segmenter.predict(image)
    assert not filtered.mask[BRAIN].any() and filtered.mask[LESION].all()
    assert any("lesion filter" in note for note in filtered.notes)
    unfiltered = segmenter.predict(image, overrides={"lesion_filter": False})
    assert unfiltered.mask[BRAIN].all() and unfiltered.mask[LESION].all()
    in_roi = segmenter.predict(image, roi=(0, 120, 0, 60))  # an ROI is the user's choice: not filtered
    assert np.array_equal(in_roi.mask, unfiltered.mask)
    with pytest.raises(TumorSegError, match="can only be switched off"):
        segmenter.predict(image, overrides={"lesion_filter": True})


def test_lesion_patches_centre_each_lesion_and_are_zero_beyond_the_image():
    labels = np.zeros((40, 30), dtype=np.int32)
    labels[18:22, 13:17] = 1  # centroid (19.5, 14.5): rounded to (20, 14)
    labels[0:2, 0:2] = 2  # in the corner: most of its square lies outside the image
    uptake = np.full(labels.shape, 0.5, dtype=np.float32)
    probability = (labels > 0).astype(np.float32)
    patches = lesion_patches(labels, 2, probability, uptake, patch=8, pool=2)
    assert patches.shape == (2, len(PATCH_CHANNELS), 8, 8) and patches.dtype == np.float32
    lesion = PATCH_CHANNELS.index("lesion")
    # the 16-pixel square starts 8 pixels above and left of the centroid: the lesion's 4x4 pixels fill pooled
    # cells (3..4, 3..4) halfway (rows 18..21 from 12, columns 13..16 from 6: 6..9 and 7..10)
    assert np.isclose(patches[0, lesion].sum() * 4, 16) and patches[0, lesion, 4, 4] > 0
    assert patches[0, lesion].max() <= 1 and patches[1, lesion].sum() * 4 == 4  # only its own lesion
    assert np.allclose(patches[0, PATCH_CHANNELS.index("uptake")], 0.5)  # inside the image everywhere
    corner = patches[1, PATCH_CHANNELS.index("uptake")]
    assert corner[:4].max() == 0 and corner[:, :4].max() == 0 and corner[5:, 5:].min() == 0.5
    row = patches[0, PATCH_CHANNELS.index("row")]
    assert np.isclose(row[4, 4], (20 + 0.5) / 40) and np.all(np.diff(row[:, 0]) > 0)


def vertical_lesion_net(tmp_path, name: str = "filtered") -> Path:
    """A card folder with a lesion filter network whose score is sigmoid(relu(20 * vertical - 4) - 0.5): below
    0.5 in the top fifth of the body (the brain), far above it mid-body. Its convolutions are zero."""
    network = LesionNet([2], 1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network.conv[1].weight.fill_(1.0)  # batch norm of a zero map stays zero
        network.head[0].weight[0, 2], network.head[0].bias[0] = 20.0, -4.0
        network.head[2].weight[0, 0], network.head[2].bias[0] = 1.0, -0.5
    path = tmp_path / f"{name}-lesion-filter.pt"
    torch.save(network.state_dict(), path)
    spec = {"features": ["vertical"], "mean": [0.0], "scale": [1.0], "threshold": 0.5, "image_threshold": 0.0,
            "network": {"file": path.name, "sha256": cards.sha256(path), "channels": [2], "patch": 8, "pool": 1}}
    card = tmp_path / f"{name}.json"
    card.write_text(json.dumps(card_with(spec)))
    return card


def test_a_network_filter_reads_its_weights_beside_the_card_and_removes_the_brain(tmp_path):
    card = cards.load_card(vertical_lesion_net(tmp_path))
    assert [m.file for m in cards.weight_files(card)] == ["filtered.pt", "filtered-lesion-filter.pt"]
    filtered = Segmenter(card, "cpu", network=HotIsTumour(), backend="torch").predict(synthetic_mip())
    assert not filtered.mask[BRAIN].any() and filtered.mask[LESION].all()
    assert any("removed 1 of 2 lesion(s)" in note for note in filtered.notes)


@pytest.mark.parametrize("damage, message", DAMAGES, ids=[d for d, _ in DAMAGES])
def test_a_missing_or_broken_filter_network_stops_the_model_with_the_reason(tmp_path, damage, message):
    path = vertical_lesion_net(tmp_path)
    expected = damage_weights(path, tmp_path / "filtered-lesion-filter.pt", damage, "lesion_filter")
    card = cards.load_card(path)
    (tmp_path / "filtered.pt").write_bytes(b"")  # the main weights' status is not the one under test
    assert cards.weights_status(card) == expected  # "not tensors": the file is the one named; the main has no sha256
    with pytest.raises(TumorSegError, match=message):
        Segmenter(card, "cpu", network=HotIsTumour(), backend="torch")


NETWORK_SPEC = {k: v for k, v in SPEC.items() if k not in ("coef", "intercept")} | {
    "network": {"file": "f.pt", "sha256": None, "channels": [2, 4], "patch": 8, "pool": 2}}
BROKEN_NETWORKS = [
    ("both a regression and a network", {**SPEC, "network": NETWORK_SPEC["network"]}, "must have exactly the keys"),
    ("a file in another folder", {**NETWORK_SPEC, "network": {**NETWORK_SPEC["network"], "file": "../f.pt"}},
     "file must be a file name in the card's folder"),
    ("a patch its poolings cannot halve", {**NETWORK_SPEC, "network": {**NETWORK_SPEC["network"], "patch": 6}},
     "patch must be divisible by"),
    ("no channels", {**NETWORK_SPEC, "network": {**NETWORK_SPEC["network"], "channels": []}},
     "channels must be a non-empty list"),
]


@pytest.mark.parametrize("spec, message", [(s, m) for _, s, m in BROKEN_NETWORKS],
                         ids=[name for name, _, _ in BROKEN_NETWORKS])
def test_a_card_with_a_broken_filter_network_is_refused_with_the_reason(spec, message):
    cards.card_from_dict(card_with(NETWORK_SPEC))  # the unbroken spec is accepted
    with pytest.raises(TumorSegError, match=f"not a valid model card.*lesion_filter.*{message}"):
        cards.card_from_dict(card_with(spec))


BROKEN = [
    ("a key missing", {k: v for k, v in SPEC.items() if k != "image_threshold"}, "must have exactly the keys"),
    ("an unknown feature", {**SPEC, "features": ["colour"]}, "features must be a non-empty list"),
    ("coefficients of the wrong length", {**SPEC, "coef": [1.0, 2.0]}, "coef must be 1 finite numbers"),
    ("a zero scale", {**SPEC, "scale": [0.0]}, "scale must be positive"),
    ("threshold 1.5", {**SPEC, "threshold": 1.5}, r"threshold must lie in \[0, 1\)"),
    ("a text intercept", {**SPEC, "intercept": "low"}, "intercept must be a finite number"),
]


@pytest.mark.parametrize("spec, message", [(s, m) for _, s, m in BROKEN], ids=[name for name, _, _ in BROKEN])
def test_a_card_with_a_broken_filter_is_refused_with_the_reason(spec, message):
    with pytest.raises(TumorSegError, match=f"not a valid model card.*lesion_filter.*{message}"):
        cards.card_from_dict(card_with(spec))


def test_a_filter_on_a_3d_card_is_refused():
    with pytest.raises(TumorSegError, match="lesion_filter applies to whole-image-2d models only"):
        cards.card_from_dict(card_with(SPEC, "sliding-window-3d", "CT"))


def test_the_schema_knows_the_filter_and_its_features():
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (the test extra installs it)")
    schema = json.loads((Path(cards.BUILTIN_DIR).parent / "ModelCard.schema.json").read_text())
    node = schema["properties"]["postprocessing"]["properties"]["lesion_filter"]
    assert node["properties"]["features"]["items"]["enum"] == list(FEATURES)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(card_with(SPEC))
    validator.validate(card_with(NETWORK_SPEC))
    assert list(validator.iter_errors(card_with({**SPEC, "threshold": 1.5})))
    for name, spec, _ in BROKEN_NETWORKS:  # the schema and the card agree on a network's form
        if name == "a patch its poolings cannot halve":  # beyond what a schema can say
            continue
        assert list(validator.iter_errors(card_with(spec))), spec


# Validation cases of the shipped card's split (never trained on): controls whose false positives the
# filter removes (fp32: 143, 423, 254 and 361 px without it, none with it) and a patient with 19 lesions
# found either way, whose false-positive pixels drop from 1382 to 173.
CONTROLS = ("control_323", "control_222", "control_046", "control_167")
PATIENT = "033"


def test_the_shipped_mip_card_filter_clears_validation_controls_and_keeps_a_patients_lesions():
    card = cards.find_card("mip-pet-2d")
    assert card.postprocessing.lesion_filter, "the shipped MIP card has no lesion filter"
    segmenter = Segmenter(card, "cpu", backend="torch")
    with_and_without = [{"image_gate": False}, {"image_gate": False, "lesion_filter": False}]  # the filter alone
    fp = np.array([[row["fp_voxels"] for row in shipped_mip_metrics(segmenter, name, with_and_without)]
                   for name in CONTROLS])
    assert fp[:, 1].sum() > 800, f"the controls no longer have false positives without the filter: {fp[:, 1]}"
    assert fp[:, 0].sum() <= 0.1 * fp[:, 1].sum(), f"false-positive pixels with / without the filter: {fp.tolist()}"
    filtered, plain = shipped_mip_metrics(segmenter, f"patient_{PATIENT}", with_and_without)
    assert filtered["tp_lesions"] == plain["tp_lesions"] >= 15
    assert filtered["fp_voxels"] < 0.5 * plain["fp_voxels"] and filtered["dice"] >= plain["dice"] - 0.005
