"""Context augmentation (``train.augment.context``) and fine-tuning from weights (``train.init_weights``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from TumorSegLib.cards import load_card, sha256
from TumorSegLib.errors import TumorSegError
from TumorSegLib.training.config import TRAIN_DEFAULTS, config_from_dict
from TumorSegLib.training.loop import initial_weights
from TumorSegLib.training.transforms import augmentation

from test_train import MODELS, TINY_3D, run_cli, sts_dataset, tiny_pet_config, write_config

PATCH = [16, 16, 8]
WINDOW = [-1000, 400]  # the CT card's window: HU -> [0, 1]


def ct_setup(backgrounds, prob=1.0, pos=1.0, neg=0.0, samples=4) -> tuple:
    config = json.loads((MODELS / "ct-lung-lesion-3d.train.json").read_text())
    config["train"].update(patch_size=PATCH, pos=pos, neg=neg, crops_per_case=samples)
    config["train"]["augment"].update(flip_prob=0.0, affine_prob=0.0, intensity_prob=0.0,
                                      context={"prob": prob, "backgrounds": backgrounds})
    parsed = config_from_dict(config)
    return parsed.train, parsed.model_card()


def coded_case(shape=(12, 10, 6)) -> tuple:
    """An image whose values (windowed, in (0.1, 0.9)) encode each voxel's index, and a box label."""
    size = int(np.prod(shape))
    image = (0.1 + 0.8 * np.arange(size, dtype=np.float64) / size).reshape(shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:7, 3:6, 2:4] = 1
    return image, label


def windows(train, card, image, label, seed=0) -> list:
    return augmentation(train, 3, seed, card)({"image": image[None], "label": label[None]})


def test_context_is_off_by_default_and_off_leaves_training_as_it_was():
    assert TRAIN_DEFAULTS["augment"]["context"]["prob"] == 0.0 and TRAIN_DEFAULTS["init_weights"] is None
    image, label = coded_case()
    off, card = ct_setup([{"kind": "edge"}], prob=0.0)
    plain = dict(off, augment={k: v for k, v in off["augment"].items() if k != "context"})
    for a, b in zip(windows(off, card, image, label), windows(plain, None, image, label)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    on, card = ct_setup([{"kind": "edge"}], prob=1.0)
    assert not all(torch.equal(a["image"], b["image"]) for a, b in
                   zip(windows(on, card, image, label), windows(off, card, image, label)))


def test_mask_stays_with_the_image_and_the_lesion_lands_anywhere_in_the_window():
    """Background far above the window (reads 1.0): every other voxel is a case voxel, whose value
    names its index; the label at each window voxel must be the case label at that index."""
    image, label = coded_case()
    train, card = ct_setup([{"kind": "noise", "mean": [5000, 5000], "sd": [0, 0]}], samples=200)
    places = []
    for crop in windows(train, card, image, label):
        values, mask = crop["image"][0].numpy(), crop["label"][0].numpy()
        assert values.shape == tuple(PATCH) and mask.shape == tuple(PATCH)
        inside = values < 1.0
        assert inside.any() and not mask[~inside].any()
        index = np.rint((values[inside].astype(np.float64) - 0.1) / 0.8 * image.size).astype(int)
        case_voxels = np.array(np.unravel_index(index, image.shape)).T
        offsets = case_voxels - np.argwhere(inside)
        assert (offsets == offsets[0]).all()  # one translation: the case is pasted, not resampled
        np.testing.assert_array_equal(mask[inside], label[tuple(case_voxels.T)])
        assert mask.any()  # pos 1, neg 0: every window holds tumour
        places.append(np.argwhere(mask).mean(axis=0) / (np.array(PATCH) - 1))
    places = np.array(places)
    assert (places.min(axis=0) < 0.15).all() and (places.max(axis=0) > 0.85).all()


def test_background_statistics_in_working_units():
    image, label = coded_case((4, 4, 2))
    scale = WINDOW[1] - WINDOW[0]
    for smooth in ([0, 0], [2, 2]):
        train, card = ct_setup([{"kind": "noise", "mean": [-850, -850], "sd": [30, 30], "smooth": smooth}],
                               pos=0.0, neg=1.0, samples=40)
        crops = [c["image"][0].numpy() for c in windows(train, card, image, label)]
        values = np.concatenate([c[~np.isin(c, image)] for c in crops])  # the background voxels
        hu = values * scale + WINDOW[0]
        assert abs(hu.mean() + 850) < 3 and abs(hu.std() - 30) < 3
    train, card = ct_setup([{"kind": "noise", "mean": [-1000, -1000], "sd": [0, 0]}], pos=0.0, neg=1.0)
    crop = windows(train, card, image, label)[0]["image"][0].numpy()
    assert np.isin(crop, np.append(image.ravel(), 0.0)).all() and (crop == 0.0).any()  # air reads 0


def test_edge_background_replicates_the_case_border():
    image, label = coded_case()
    train, card = ct_setup([{"kind": "edge"}], samples=20)
    for crop in windows(train, card, image, label):
        values = crop["image"][0].numpy()
        index = np.rint((values.astype(np.float64) - 0.1) / 0.8 * image.size).astype(int)
        voxels = np.array(np.unravel_index(index.ravel(), image.shape)).T.reshape(values.shape + (3,))
        for axis in range(3):  # along each axis the case index never decreases and stays in the case
            assert (np.diff(voxels[..., axis], axis=axis) >= 0).all()
        np.testing.assert_array_equal(crop["label"][0].numpy(), label[tuple(np.moveaxis(voxels, -1, 0))])


@pytest.mark.parametrize("context, message", [
    ({"prob": 1.5, "backgrounds": [{"kind": "edge"}]}, "prob must lie in"),
    ({"prob": 0.5, "backgrounds": []}, "at least one background"),
    ({"prob": 0.5, "backgrounds": [{"kind": "plasma"}]}, "needs a kind"),
    ({"prob": 0.5, "backgrounds": [{"kind": "noise", "mean": [-800, -900], "sd": [1, 2]}]}, "mean must be"),
    ({"prob": 0.5, "backgrounds": [{"kind": "noise", "mean": [-900, -800]}]}, "sd must be"),
    ({"prob": 0.5, "backgrounds": [{"kind": "edge", "mean": [0, 1]}]}, "unknown setting"),
    ({"prob": 0.5, "size": 3}, "must be an object"),
])
def test_bad_context_settings_are_refused(context, message):
    config = json.loads((MODELS / "ct-lung-lesion-3d.train.json").read_text())
    config["train"]["augment"]["context"] = context
    with pytest.raises(TumorSegError, match=message):
        config_from_dict(config)


def test_fine_tune_from_weights_with_context_end_to_end(tmp_path):
    """A tiny 3D PET run with the context augmentation always on, started from given weights with a
    learning rate of 0: the exported parameters are the starting ones, and the card names them."""
    from TumorSegLib.networks import build_network

    sts_dataset(tmp_path / "ibsi")
    config = tiny_pet_config()
    torch.manual_seed(5)
    start = build_network(config_from_dict(config).model_card()).state_dict()
    torch.save(start, tmp_path / "start.pt")
    config["train"].update(init_weights=str(tmp_path / "start.pt"), optimizer={"name": "adamw", "lr": 0.0})
    config["train"]["augment"]["context"] = {"prob": 1.0, "backgrounds": [
        {"kind": "noise", "mean": [0.3, 2.5], "sd": [0.05, 0.5], "smooth": [0, 1.5]}, {"kind": "edge"}]}
    assert run_cli(write_config(tmp_path, config), tmp_path / "ibsi", tmp_path / "run") == 0
    card = load_card(tmp_path / "run" / "pet-lesion-3d.json")
    assert card.provenance["training"]["init_weights_sha256"] == sha256(tmp_path / "start.pt")
    trained = torch.load(str(tmp_path / "run" / "pet-lesion-3d.pt"), weights_only=True)
    network = build_network(card)
    for name, _ in network.named_parameters():
        assert torch.equal(trained[name], start[name]), name

    config["train"]["init_weights"] = str(tmp_path / "missing.pt")
    with pytest.raises(TumorSegError, match="init_weights: no file"):
        initial_weights(config_from_dict(config).train["init_weights"])
    other = dict(TINY_3D, args={**TINY_3D["args"], "channels": [2, 4]})
    torch.save(build_network(config_from_dict({**config, "card": {**config["card"], "network": other}}).model_card()).state_dict(),
               tmp_path / "other.pt")
    config["train"]["init_weights"] = str(tmp_path / "other.pt")
    with pytest.raises(TumorSegError, match="cannot start from train.init_weights"):
        run_cli(write_config(tmp_path, config), tmp_path / "ibsi", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
