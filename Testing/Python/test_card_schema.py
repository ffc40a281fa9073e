"""The model card JSON Schema (Resources/ModelCard.schema.json) agrees with the loader (``cards.card_from_dict``)."""

import dataclasses
import json
from pathlib import Path

import pytest

from TumorSegLib import cards
from TumorSegLib.errors import TumorSegError
from TumorSegLib.terminology import ORGANS
from TumorSegLib.testing import tiny_card_dict

jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (the test extra installs it)")

RESOURCES = Path(__file__).resolve().parents[2] / "Resources"
MODELS = RESOURCES / "Models"
SCHEMA = json.loads((RESOURCES / "ModelCard.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def shipped_cards() -> list:
    return [path for path in sorted(cards.BUILTIN_DIR.glob("*.json")) if not path.name.endswith(".train.json")]


def test_the_schema_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", shipped_cards(), ids=lambda path: path.stem)
def test_every_shipped_card_validates(path):
    VALIDATOR.validate(json.loads(path.read_text()))


@pytest.mark.parametrize("mode, modality", [("sliding-window-3d", "CT"), ("slice-2d", "PET"), ("whole-image-2d", "MIP-PET")])
def test_test_cards_validate(mode, modality):
    VALIDATOR.validate(tiny_card_dict("tiny", mode, modality))


BROKEN = [
    ("modality MRI", {"modality": "MRI"}),
    ("unknown mode", {"mode": "3d"}),
    ("unknown field", {"colour": "red"}),
    ("weights without file", {"weights": {"sha256": "0" * 64}}),
    ("weights outside the folder", {"weights": {"file": "../x.pt"}}),
    ("weights at an absolute path", {"weights": {"file": "/etc/passwd"}}),
    ("threshold 1.5", {"output": {"threshold": 1.5}}),
    ("activation relu", {"output": {"activation": "relu"}}),
    ("orientation RAX", {"preprocessing": {"orientation": "RAX"}}),
    ("negative spacing", {"preprocessing": {"spacing": [1.0, -1.0, 1.0]}}),
    ("overlap as text", {"inference": {"overlap": "half"}}),
    ("overlap 1", {"inference": {"overlap": 1.0}}),
    ("precision fp8", {"inference": {"precision": "fp8"}}),
    ("sw_batch_size 0", {"inference": {"sw_batch_size": 0}}),
    ("blending linear", {"inference": {"blending": "linear"}}),
    ("weights format onnx", {"weights": {"file": "m.pt", "format": "onnx"}}),
    ("ensemble member outside the folder", {"weights": {"file": "m.pt", "ensemble": [{"file": "../x.pt"}]}}),
    ("ensemble member with a format", {"weights": {"file": "m.pt", "ensemble": [{"file": "b.pt", "format": "onnx"}]}}),
    ("empty ensemble", {"weights": {"file": "m.pt", "ensemble": []}}),
    ("unknown inference field", {"inference": {"overlapp": 0.5}}),
    ("unknown window field", {"preprocessing": {"intensity": {"window": [0, 1], "level": 0.5}}}),
    ("lesion filter not a mapping", {"postprocessing": {"lesion_filter": 3}}),
    ("average with a card in another folder", {"inference": {"average_with": [{"card": "../x", "weight": 0.5}]}}),
    ("average with a weight of 1", {"inference": {"average_with": [{"card": "x", "weight": 1}]}}),
    ("average with no weight", {"inference": {"average_with": [{"card": "x"}]}}),
    ("an organ without a terminology", {"inference": {"organ_from": "x"}, "output": {"within": {"channel": 1,
                                                                                              "organ": "Gut"}}}),
]


@pytest.mark.parametrize("change", [change for _, change in BROKEN], ids=[name for name, _ in BROKEN])
def test_broken_cards_are_rejected_by_the_schema_and_the_loader(change):
    data = {**tiny_card_dict("m", "sliding-window-3d", "CT"), **change}
    assert list(VALIDATOR.iter_errors(data)), f"the schema accepts {change}"
    with pytest.raises(TumorSegError, match="not a valid model card"):
        cards.card_from_dict(data)


def test_a_lesion_filter_is_validated_and_kept_by_the_typed_card():
    spec = json.loads((MODELS / "mip-pet-2d.json").read_text())["postprocessing"]["lesion_filter"]
    data = tiny_card_dict("m", "whole-image-2d", "MIP-PET")
    data["postprocessing"] = {"lesion_filter": spec}
    VALIDATOR.validate(data)
    card = cards.card_from_dict(data)
    assert card.postprocessing.lesion_filter == spec
    assert cards.card_from_dict(card.to_dict()) == card
    data["postprocessing"]["lesion_filter"] = {"kind": "anything"}
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(data)
    with pytest.raises(TumorSegError, match="lesion_filter"):
        cards.card_from_dict(data)


SECTIONS = {"network": cards.Network, "preprocessing": cards.Preprocessing, "preprocessing.intensity": cards.Intensity,
            "preprocessing.mip": cards.Mip, "preprocessing.picture": cards.Picture, "inference": cards.Inference,
            "click": cards.Click, "output": cards.Output, "output.within": cards.Within,
            "postprocessing": cards.Postprocessing, "weights": cards.Weights}


def schema_node(dotted: str) -> dict:
    node = SCHEMA
    for key in dotted.split("."):
        node = node["properties"][key]
    return node


@pytest.mark.parametrize("dotted", sorted(SECTIONS))
def test_the_schema_names_the_fields_and_choices_of_each_typed_section(dotted):
    """A field added to a section (or a choice to an enum) must be added to the schema too, and back."""
    node = schema_node(dotted)
    fields = {f.name: f for f in dataclasses.fields(SECTIONS[dotted])}
    assert set(node["properties"]) == set(fields) and node.get("additionalProperties") is False
    for name, spec in fields.items():
        kind = spec.metadata.get("convert")
        if isinstance(kind, type) and issubclass(kind, cards.Choice):
            assert node["properties"][name]["enum"] == list(kind.values()), name


def test_the_schema_names_the_organs_that_have_a_terminology():
    assert schema_node("output.within.organ")["enum"] == [None, *ORGANS]


def test_the_schema_names_the_top_level_fields_and_choices():
    fields = {f.name for f in dataclasses.fields(cards.ModelCard)} - {"path"}
    assert set(SCHEMA["properties"]) == fields | {"schema"}
    assert SCHEMA["properties"]["modality"]["enum"] == list(cards.Modality.values())
    assert SCHEMA["properties"]["mode"]["enum"] == list(cards.Mode.values())
