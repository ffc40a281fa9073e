"""Model cards: validation with clear errors, search folders, weights verification, ``tumorseg models``."""

import json

import pytest

from TumorSegLib import cards
from TumorSegLib.cards import (NO_SHA256, OUTSIDE, SHA256_OK, card_from_dict, find_card, list_cards, load_card,
                               scan_cards, sha256, weights_status)
from TumorSegLib.cli import main
from TumorSegLib.errors import TumorSegError
from TumorSegLib.testing import tiny_card_dict


def write_card(folder, name="m", weights=b"weights", **changes):
    data = tiny_card_dict(name, "sliding-window-3d", "CT")
    data.update(changes)
    if weights is not None:
        (folder / data["weights"]["file"]).write_bytes(weights)
        data["weights"]["sha256"] = sha256(folder / data["weights"]["file"])
    (folder / f"{name}.json").write_text(json.dumps(data))
    return folder / f"{name}.json"


@pytest.mark.parametrize("change, message", [
    ({"modality": "MRI"}, "modality must be one of"),
    ({"mode": "3d"}, "mode must be one of"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"weights": {"sha256": "x"}}, "weights must give at least 'file'"),
    ({"output": {"threshold": 1.5}}, "output.threshold"),
    ({"preprocessing": {"intensity": {"window": [400, -200]}}}, "low < high"),
    ({"preprocessing": {"orientation": "RAX"}}, "preprocessing.orientation"),
    ({"preprocessing": {"spacing": [1.0, -1.0, 1.0]}}, "preprocessing.spacing"),
    ({"inference": {"patch_size": [32, 32]}}, "needs 3 values"),
    ({"inference": {"overlap": "half"}}, "inference.overlap"),
    ({"inference": {"precision": "fp8"}}, "inference.precision"),
    ({"inference": {"sw_batch_size": 0}}, "inference.sw_batch_size"),
    ({"modality": "MIP-PET"}, "MIP-PET model must have mode 'whole-image-2d'"),
    ({"preprocessing": {"organ_level": {"channel": 3, "value": 90}}}, "preprocessing.organ_level must be"),
    ({"preprocessing": {"organ_level": {"channel": 0}}}, "preprocessing.organ_level must be"),
    ({"network": {"args": {"out_channels": 2}}, "output": {"within": {"channel": 1, "largest_component": True}}},
     "output.within.largest_component needs inference.organ_from"),
    ({"network": {"args": {"out_channels": 2}}, "output": {"within": {"channel": 1, "organ": "Liver"}}},
     "output.within.organ (the organ written as a segment of its own) needs inference.organ_from"),
    ({"inference": {"organ_from": "liver"}, "output": {"within": {"channel": 1, "organ": "Spleen"}}},
     "output.within.organ must be null or one of ('Liver',)"),
])
def test_invalid_cards_name_the_problem(change, message):
    data = {**tiny_card_dict("m", "sliding-window-3d", "CT"), **change}
    with pytest.raises(TumorSegError, match="not a valid model card") as error:
        card_from_dict(data)
    assert message in str(error.value)


def test_missing_fields_and_unreadable_files(tmp_path):
    data = tiny_card_dict("m", "slice-2d", "PET")
    del data["network"], data["weights"]
    with pytest.raises(TumorSegError, match="missing field 'network'.*missing field 'weights'"):
        card_from_dict(data)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TumorSegError, match="cannot read model card"):
        load_card(tmp_path / "bad.json")


def test_user_folders_come_first_and_unknown_names_list_the_known(tmp_path, monkeypatch):
    monkeypatch.setattr(cards, "BUILTIN_DIR", tmp_path / "builtin")
    (tmp_path / "builtin").mkdir()
    (tmp_path / "user").mkdir()
    write_card(tmp_path / "builtin", "shared", title="built-in")
    write_card(tmp_path / "builtin", "only-builtin")
    write_card(tmp_path / "user", "shared", title="user")
    (tmp_path / "user" / "shared.train.json").write_text("{}")  # training configs are skipped
    monkeypatch.setenv("TUMORSEG_MODELS", str(tmp_path / "user"))
    found = {card.name: card.title for card in list_cards()}
    assert found == {"shared": "user", "only-builtin": "Tiny test model (CT, sliding-window-3d)"}
    with pytest.raises(TumorSegError, match="unknown model 'nope'; known models: only-builtin, shared"):
        find_card("nope")
    assert find_card(str(tmp_path / "builtin" / "shared.json")).title == "built-in"


def test_weights_states(tmp_path):
    card = load_card(write_card(tmp_path, "ok"))
    assert weights_status(card) == SHA256_OK
    card.weights_path.write_bytes(b"other")
    assert weights_status(card) == "sha256 mismatch"
    card.weights_path.unlink()
    assert weights_status(card) == "missing"
    unverified = load_card(write_card(tmp_path, "nosum", weights=None))
    unverified.weights_path.write_bytes(b"w")
    assert weights_status(unverified) == NO_SHA256


def test_each_ensemble_member_is_checked(tmp_path):
    (tmp_path / "b.pt").write_bytes(b"second")
    member = {"file": "b.pt", "sha256": sha256(tmp_path / "b.pt")}
    path = write_card(tmp_path, "ens")
    data = json.loads(path.read_text())
    data["weights"]["ensemble"] = [member]
    path.write_text(json.dumps(data))
    card = load_card(path)
    first = data["weights"]["file"]
    assert [m.file for m in card.weights.members] == [first, "b.pt"]
    assert weights_status(card) == SHA256_OK
    assert cards.verified_weights(card) == [tmp_path / first, tmp_path / "b.pt"]
    assert card_from_dict(card.to_dict(), card.path) == card
    (tmp_path / "b.pt").write_bytes(b"changed")
    assert weights_status(card) == "sha256 mismatch"
    with pytest.raises(TumorSegError, match="b.pt do not match the SHA-256"):
        cards.verified_weights(card)
    (tmp_path / "b.pt").unlink()
    assert weights_status(card) == "missing"
    data = card.to_dict()
    data["weights"]["ensemble"] = [{"file": "../b.pt"}]
    with pytest.raises(TumorSegError, match="weights.ensemble must be a list of"):
        card_from_dict(data)


def test_models_command_lists_modality_mode_and_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cards, "BUILTIN_DIR", tmp_path / "none")
    monkeypatch.delenv("TUMORSEG_MODELS", raising=False)
    write_card(tmp_path, "good")
    write_card(tmp_path, "broken")
    (tmp_path / "broken.pt").write_bytes(b"changed")
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "modality", "mode", "weights"]
    assert any(line.split()[:5] == ["broken", "CT", "sliding-window-3d", "sha256", "mismatch"] for line in lines)
    assert any(line.split()[:5] == ["good", "CT", "sliding-window-3d", "sha256", "ok"] for line in lines)
    assert main(["models", "--models-dir", str(tmp_path), "--json"]) == 0
    assert {row["name"]: row["weights"] for row in json.loads(capsys.readouterr().out)} == {
        "good": SHA256_OK, "broken": "sha256 mismatch"}


def test_shipped_cards_validate():
    for path in sorted(cards.BUILTIN_DIR.glob("*.json")):
        if not path.name.endswith(".train.json"):
            assert load_card(path).name == path.stem


def test_a_broken_card_is_listed_and_hides_no_other(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TUMORSEG_MODELS", raising=False)
    write_card(tmp_path, "good")
    (tmp_path / "broken.json").write_text('{"name": "broken"')
    found, broken = scan_cards(tmp_path)
    assert "good" in {card.name for card in found} and "ct-lung-lesion-3d" in {card.name for card in found}
    assert list(broken) == [tmp_path / "broken.json"] and "cannot read model card" in broken[tmp_path / "broken.json"]
    assert find_card("good", tmp_path).name == "good"
    with pytest.raises(TumorSegError, match="cannot read model card"):
        find_card("broken", tmp_path)
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "BROKEN: " in out and "ct-lung-lesion-3d" in out and "good" in out


@pytest.mark.parametrize("file", ["../outside.pt", "/etc/passwd", "sub/../../x.pt", ""])
def test_weights_must_be_a_file_in_the_card_folder(file):
    data = tiny_card_dict("m", "sliding-window-3d", "CT")
    data["weights"]["file"] = file
    with pytest.raises(TumorSegError, match="weights.file must be a file name in the card's folder"):
        card_from_dict(data)


def test_weights_symlinked_out_of_the_card_folder_are_refused(tmp_path):
    (tmp_path / "models").mkdir()
    card = load_card(write_card(tmp_path / "models", "m", weights=None))
    (tmp_path / "secret.pt").write_bytes(b"secret")
    card.weights_path  # inside: fine while the file is absent
    (tmp_path / "models" / card.weights.file).symlink_to(tmp_path / "secret.pt")
    assert weights_status(card) == OUTSIDE
    with pytest.raises(TumorSegError, match="outside the card's folder"):
        cards.verified_weights(card)
    (tmp_path / "models" / "sub").mkdir()
    data = json.loads((tmp_path / "models" / "m.json").read_text())
    data["weights"]["file"] = "sub/w.pt"
    (tmp_path / "models" / "sub" / "w.pt").write_bytes(b"w")
    data["weights"]["sha256"] = sha256(tmp_path / "models" / "sub" / "w.pt")
    (tmp_path / "models" / "m.json").write_text(json.dumps(data))
    assert weights_status(load_card(tmp_path / "models" / "m.json")) == SHA256_OK  # a subfolder is inside
