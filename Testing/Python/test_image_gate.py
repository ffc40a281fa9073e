"""The whole-image 'any tumour' gate of whole-image 2D cards (``postprocessing.image_gate``)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from TumorSegLib import cards
from TumorSegLib.engine import Segmenter
from TumorSegLib.errors import TumorSegError
from TumorSegLib.gate_net import GateNet
from TumorSegLib.image import Image
from TumorSegLib.image_gate import GATE_CHANNELS, gate_input
from TumorSegLib.testing import tiny_card_dict

from conftest import DAMAGES, damage_weights, shipped_mip_metrics

SHAPE = {"channels": [1], "height": 128, "width": 64, "pool": 4}
LESION = (slice(60, 66), slice(20, 26))


def mip(uptake: float) -> Image:
    """An inverted MIP (hot = dark): a body from row 10 to 110 with one lesion of the given uptake (0..1)."""
    grey = np.full((120, 60), 255.0, dtype=np.float32)
    grey[10:110, 15:45] = 180.0
    grey[LESION] = 255.0 * (1.0 - uptake)
    return Image(grey, np.eye(3))


class HotIsTumour(torch.nn.Module):
    """A stand-in network: probability sigmoid(40 * (uptake - 0.8)); a lesion of uptake 1 gets about 1, one of
    uptake 0.82 about 0.69 (both above the card's threshold 0.5)."""

    def forward(self, x):
        return 40.0 * (x - 0.8)


def gate_card(tmp_path, threshold: float = 0.5, name: str = "gated", **options) -> Path:
    """A card folder with a gate scoring sigmoid(10 * (highest probability in the image) - 8): about 0.88 for an
    image with a certain lesion, 0.25 for one whose best lesion is uncertain (probability 0.69)."""
    network = GateNet(SHAPE["channels"])
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network.conv[0].weight[0, GATE_CHANNELS.index("probability"), 1, 1] = 1.0
        network.conv[1].weight.fill_(1.0)  # batch norm (eval: running mean 0, variance 1) passes it on
        network.head[1].weight[0, 0], network.head[1].bias[0] = 10.0, -8.0
    path = tmp_path / f"{name}-image-gate.pt"
    torch.save(network.state_dict(), path)
    data = tiny_card_dict(name, "whole-image-2d", "MIP-PET")
    data["postprocessing"] = {"image_gate": {"network": {"file": path.name, "sha256": cards.sha256(path), **SHAPE},
                                             "threshold": threshold, **options}}
    card = tmp_path / f"{name}.json"
    card.write_text(json.dumps(data))
    (tmp_path / f"{name}.pt").write_bytes(b"")  # the segmentation network is given to the Segmenter
    return card


def test_gate_input_puts_the_image_top_left_on_its_canvas_and_keeps_hot_pixels_through_the_pooling():
    uptake = np.zeros((10, 7), np.float32)
    uptake[5, 6] = 0.9  # one hot pixel: pooled cell (1, 1) of 4x4 cells
    probability = np.full((10, 7), 0.2, np.float32)
    pooled = gate_input(uptake, probability, {"height": 12, "width": 8, "pool": 4})
    assert pooled.shape == (len(GATE_CHANNELS), 3, 2) and pooled.dtype == np.float32
    up, prob = pooled[GATE_CHANNELS.index("uptake")], pooled[GATE_CHANNELS.index("probability")]
    assert up[1, 1] == np.float32(0.9) and up.sum() == np.float32(0.9)
    assert np.allclose(prob, 0.2)  # every cell holds some of the image (rows 8..11 hold rows 8 and 9)
    tall = gate_input(np.ones((30, 7), np.float32), np.ones((30, 7), np.float32), {"height": 12, "width": 8, "pool": 4})
    assert tall.shape == (2, 3, 2) and tall.min() == 1  # cropped to the canvas (columns 4..7 hold 4..6)


def test_the_engine_clears_an_image_the_gate_scores_as_free_of_tumour_and_keeps_a_certain_lesion(tmp_path):
    card = cards.load_card(gate_card(tmp_path))
    assert [m.file for m in cards.weight_files(card)] == ["gated.pt", "gated-image-gate.pt"]
    segmenter = Segmenter(card, "cpu", network=HotIsTumour(), backend="torch")
    certain = segmenter.predict(mip(1.0))
    assert certain.mask[LESION].all() and certain.mask.sum() == 36
    uncertain = segmenter.predict(mip(0.82))
    assert not uncertain.mask.any()
    assert any("image gate: removed every lesion" in note and "0.25 < 0.5" in note for note in uncertain.notes)
    ungated = segmenter.predict(mip(0.82), overrides={"image_gate": False})
    assert ungated.mask[LESION].all()
    in_roi = segmenter.predict(mip(0.82), roi=(0, 120, 0, 60))  # an ROI is the user's choice: not gated
    assert in_roi.mask[LESION].all()
    with pytest.raises(TumorSegError, match="can only be switched off"):
        segmenter.predict(mip(0.82), overrides={"image_gate": True})


def test_a_lesion_as_large_as_protect_px_keeps_the_image_from_the_gate(tmp_path):
    segmenter = Segmenter(cards.load_card(gate_card(tmp_path, protect_px=36)), "cpu", network=HotIsTumour(),
                          backend="torch")
    assert segmenter.predict(mip(0.82)).mask[LESION].all()  # its 6 x 6 lesion has 36 pixels
    smaller = Segmenter(cards.load_card(gate_card(tmp_path, protect_px=37)), "cpu", network=HotIsTumour(),
                        backend="torch")
    assert not smaller.predict(mip(0.82)).mask.any()


@pytest.mark.parametrize("damage, message", DAMAGES, ids=[d for d, _ in DAMAGES])
def test_a_missing_or_broken_gate_network_stops_the_model_with_the_reason(tmp_path, damage, message):
    path = gate_card(tmp_path)
    expected = damage_weights(path, tmp_path / "gated-image-gate.pt", damage, "image_gate")
    card = cards.load_card(path)
    assert cards.weights_status(card) == expected  # "not tensors": the file is the one named; the main has no sha256
    with pytest.raises(TumorSegError, match=message):
        Segmenter(card, "cpu", network=HotIsTumour(), backend="torch")


GATE = {"network": {"file": "g.pt", "sha256": None, **SHAPE}, "threshold": 0.5}
BROKEN = [
    ("a key missing", {"network": GATE["network"]}, "must have the keys"),
    ("threshold 1", {**GATE, "threshold": 1.0}, r"threshold must lie in \[0, 1\)"),
    ("a file in another folder", {**GATE, "network": {**GATE["network"], "file": "../g.pt"}},
     "file must be a file name in the card's folder"),
    ("no channels", {**GATE, "network": {**GATE["network"], "channels": []}}, "channels must be a non-empty list"),
    ("a canvas the pooling cannot divide", {**GATE, "network": {**GATE["network"], "height": 130}},
     "multiples of pool"),
    ("a canvas too small for its poolings", {**GATE, "network": {**GATE["network"], "channels": [1] * 6}},
     "must allow 5 halvings"),
    ("no pool", {**GATE, "network": {k: v for k, v in GATE["network"].items() if k != "pool"}}, "must have the keys"),
    ("an unknown key", {**GATE, "protect_ml": 1.0}, "must have the keys"),
    ("protect_px 0", {**GATE, "protect_px": 0}, "protect_px must be a positive whole number"),
]


@pytest.mark.parametrize("spec, message", [(s, m) for _, s, m in BROKEN], ids=[name for name, _, _ in BROKEN])
def test_a_card_with_a_broken_gate_is_refused_with_the_reason(spec, message):
    data = tiny_card_dict("gated", "whole-image-2d", "MIP-PET")
    data["postprocessing"] = {"image_gate": GATE}
    cards.card_from_dict(data)  # the unbroken spec is accepted
    data["postprocessing"] = {"image_gate": spec}
    with pytest.raises(TumorSegError, match=f"not a valid model card.*image_gate.*{message}"):
        cards.card_from_dict(data)


def test_a_gate_on_a_3d_card_is_refused():
    data = tiny_card_dict("gated", "sliding-window-3d", "CT")
    data["postprocessing"] = {"image_gate": GATE}
    with pytest.raises(TumorSegError, match="image_gate applies to whole-image-2d models only"):
        cards.card_from_dict(data)


def test_the_schema_knows_the_gate():
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (the test extra installs it)")
    schema = json.loads((Path(cards.BUILTIN_DIR).parent / "ModelCard.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    data = tiny_card_dict("gated", "whole-image-2d", "MIP-PET")
    data["postprocessing"] = {"image_gate": {**GATE, "protect_px": 300}}
    validator.validate(data)
    for name, spec, _ in BROKEN:
        if name in ("a canvas the pooling cannot divide", "a canvas too small for its poolings"):  # beyond a schema
            continue
        data["postprocessing"] = {"image_gate": spec}
        assert list(validator.iter_errors(data)), name


# Validation cases of the shipped card's split (never trained on): controls the lesion filter leaves with false
# positives (fp32: 341, 536 and 273 px) that the gate clears (scores 0.02), and patient_039, whose tumour beside the
# heart the gate scores as healthy but whose largest lesion (653 px) protects it (protect_px 300).
CONTROLS = ("control_042", "control_123", "control_189")
PATIENT = "039"


def test_the_shipped_mip_card_gate_clears_validation_controls_and_keeps_a_protected_patients_tumour():
    card = cards.find_card("mip-pet-2d")
    assert card.postprocessing.image_gate, "the shipped MIP card has no image gate"
    segmenter = Segmenter(card, "cpu", backend="torch")
    with_and_without = [{}, {"image_gate": False}]
    for name in CONTROLS:
        gated, plain = shipped_mip_metrics(segmenter, name, with_and_without)
        assert plain["fp_voxels"] > 0 and gated["fp_voxels"] == 0, (name, plain["fp_voxels"], gated["fp_voxels"])
    gated, plain = shipped_mip_metrics(segmenter, f"patient_{PATIENT}", with_and_without)
    assert gated["dice"] == plain["dice"] > 0.6 and gated["tp_lesions"] >= 1
