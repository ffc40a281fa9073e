"""Shared pytest helpers: the third-party data beside the repository, skipped when absent."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test with the reason when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"needs real data at {path} (the project's ../shared/data, present in CI)")
    return path


@pytest.fixture(autouse=True, scope="session")
def private_model_cache(tmp_path_factory):
    """OpenVINO's converted models go to a folder of this test session, never the user's cache."""
    previous = os.environ.get("TUMORSEG_CACHE")
    os.environ["TUMORSEG_CACHE"] = str(tmp_path_factory.mktemp("tumorseg-cache"))
    yield
    if previous is None:
        os.environ.pop("TUMORSEG_CACHE", None)
    else:
        os.environ["TUMORSEG_CACHE"] = previous


DAMAGES = [("missing", "not found"), ("altered", "do not match the SHA-256"), ("not tensors", "cannot load")]


def damage_weights(card: Path, weights: Path, damage: str, step: str) -> str:
    """Damage a post-processing network's ``weights`` beside ``card`` as ``DAMAGES`` names it (for "not tensors",
    the card's ``postprocessing.<step>.network.sha256`` is made to match the new file); returns the weights
    status the card must then report."""
    import json

    from TumorSegLib import cards

    if damage == "missing":
        weights.unlink()
    elif damage == "altered":
        weights.write_bytes(weights.read_bytes()[:-8])
    else:
        weights.write_bytes(b"not a torch file")
        data = json.loads(card.read_text())
        data["postprocessing"][step]["network"]["sha256"] = cards.sha256(weights)
        card.write_text(json.dumps(data))
    return {"missing": "missing", "altered": "sha256 mismatch", "not tensors": cards.NO_SHA256}[damage]


def mip_dev_case(name: str):
    """A ``training.data.Case`` of the MIP-PET dev folder: "control_NNN" (no mask) or "patient_NNN" with its mask."""
    from TumorSegLib.training.data import Case

    root = shared_data("dmiai2023-mip-pet") / "dev"
    if name.startswith("control_"):
        return Case(name, name, root / "controls" / "imgs" / f"{name}.png", None)
    number = name.split("_")[1]
    return Case(f"{name}.png", number, root / "patients" / "imgs" / f"{name}.png",
                root / "patients" / "labels" / f"segmentation_{number}.png")


def shipped_mip_metrics(segmenter, name: str, settings: list) -> list:
    """``metrics.case_metrics`` of ``segmenter``'s fp32 mask of the MIP dev case ``name`` under each overrides of
    ``settings``, in order."""
    from TumorSegLib.metrics import case_metrics
    from TumorSegLib.training.transforms import read_pair

    image, truth = read_pair(mip_dev_case(name))
    return [case_metrics(segmenter.predict(image, overrides={"precision": "fp32", **overrides}).mask, truth, image,
                         recist=False) for overrides in settings]

