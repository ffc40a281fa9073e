"""``tumorseg train``: data set-up and bad input, sampling, losses, end-to-end 2D / slice / 3D PET runs."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from TumorSegLib.cards import SHA256_OK, load_card, weights_status
from TumorSegLib.cli import main
from TumorSegLib.commands import train as train_command
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.io import read_image, write_image, write_mask
from TumorSegLib.phantoms import ct_phantom, ellipsoid, grid_affine, pet_phantom
from TumorSegLib.progress import no_progress
from TumorSegLib.training import distributed, loop
from TumorSegLib.training.config import config_from_dict, load_config
from TumorSegLib.training.data import EpochSampler, find_cases, manifest_sha256, split_cases, training_items
from TumorSegLib.training.losses import build_loss
from TumorSegLib.training.loop import train
from TumorSegLib.training.transforms import augmentation

MODELS = Path(__file__).resolve().parents[2] / "Resources" / "Models"
TINY_2D = {"name": "AttentionUnet", "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                                              "channels": [4, 8], "strides": [2]}}
TINY_3D = {"name": "AttentionUnet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                              "channels": [4, 8], "strides": [2]}}
FAST = {"epochs": 2, "max_steps_per_epoch": 2, "cases_per_step": 2, "crops_per_case": 2, "validate_every": 1,
        "patience": 0, "optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"name": "none"}}


def mip_png(path: Path, seed: int, shape=(64, 48), lesion=True) -> np.ndarray:
    """A DM i AI-like inverted gray MIP (background 255, hot = dark); returns the lesion mask."""
    rng = np.random.default_rng(seed)
    affine = np.eye(3)
    body = ellipsoid(shape, affine, (shape[0] / 2, shape[1] / 2), (shape[0] * 0.45, shape[1] * 0.3))
    gray = np.where(body, 200.0, 250.0) + rng.normal(0, 5, shape)
    mask = np.zeros(shape, bool)
    if lesion:
        center = (rng.uniform(15, shape[0] - 15), rng.uniform(15, shape[1] - 15))
        mask = ellipsoid(shape, affine, center, (4 + 2 * rng.random(), 4 + 2 * rng.random()))
        gray[mask] = 40.0
    write_image(path, Image(np.clip(gray, 0, 255).astype(np.uint8), affine, spacing_known=False))
    return mask


def mip_dataset(root: Path, patients=6, controls=3) -> Path:
    for folder in ("patients/imgs", "patients/labels", "controls/imgs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(patients):
        mask = mip_png(root / f"patients/imgs/patient_{i:03d}.png", i)
        write_mask(root / f"patients/labels/segmentation_{i:03d}.png", mask, read_image(root / f"patients/imgs/patient_{i:03d}.png"))
    for i in range(controls):
        mip_png(root / f"controls/imgs/control_{i:03d}.png", 100 + i, lesion=False)
    return root


def mip_config(**train) -> dict:
    config = json.loads((MODELS / "mip-pet-2d.train.json").read_text())
    config["card"]["network"] = TINY_2D
    config["card"]["inference"] = {"divisible_by": 2}
    config["train"].update({**FAST, "patch_size": [32, 32], "cases_per_epoch": None, "controls_per_epoch": 2,
                            "validation_controls": None, **train})
    config["data"]["validation_fraction"] = 0.34
    return config


STS_SHAPE, STS_SPACING = (24, 24, 28), (5.0, 5.0, 5.0)


def sts_dataset(root: Path, patients: int = 6) -> Path:
    """Synthetic PET crops in the IBSI STS layout (nifti/STS_xxx/PET_image and PET_mask)."""
    for i in range(patients):
        folder = root / "nifti" / f"STS_{i:03d}"
        folder.mkdir(parents=True)
        image, mask = pet_phantom(shape=STS_SHAPE, spacing=STS_SPACING, seed=i)
        write_image(folder / "PET_image.nii.gz", image)
        write_mask(folder / "PET_mask.nii.gz", mask, image)
    return root


def tiny_pet_config(**train) -> dict:
    """The shipped pet-lesion-3d config with a tiny network and 16^3 patches, fast settings."""
    config = json.loads((MODELS / "pet-lesion-3d.train.json").read_text())
    config["card"]["network"] = TINY_3D
    config["card"]["preprocessing"]["spacing"] = [6.0, 6.0, 6.0]
    config["card"]["inference"].update(patch_size=[16, 16, 16], sw_batch_size=1, flip_axes=[])
    config["train"].update({**FAST, "patch_size": [16, 16, 16], "cases_per_step": 2, **train})
    return config


def write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / f"{config['name']}.train.json"
    path.write_text(json.dumps(config))
    return path


def run_cli(config_path, root, out, *extra) -> int:
    """``tumorseg train`` as the CLI runs it (parser of the train command, then its ``run``)."""
    parser = argparse.ArgumentParser(prog="tumorseg")
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(["train", str(config_path), "-o", str(out), "--data-root", str(root), "--device", "cpu",
                              "--progress-json", *extra])
    return args.func(args)


# ---- configs and data set-up --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(MODELS.glob("*.train.json")), ids=lambda p: p.name)
def test_shipped_configs_are_complete(path):
    config = load_config(path)
    card = config.model_card()
    assert card.name == path.name[: -len(".train.json")]
    strides = card.network.kwargs["strides"]
    assert all(p % int(np.prod(strides)) == 0 for p in config.patch_size)
    assert config.data["images"] and config.data["mask"]


def test_lidc_patient_id_and_split_keep_patients_together(tmp_path):
    config = json.loads((MODELS / "ct-lung-lesion-3d.train.json").read_text())
    for folder in ("image", "nodule_mask"):
        (tmp_path / folder).mkdir()
        for patient in range(10):
            for nodule in range(1, 1 + patient % 3 + 1):
                (tmp_path / folder / f"LIDC-IDRI-{patient:04d}_R_{nodule}.nii.gz").write_bytes(b"")
    cases = find_cases(config_from_dict(config, data_root=tmp_path))
    assert {c.patient for c in cases} == {f"LIDC-IDRI-{p:04d}" for p in range(10)}
    assert cases[0].mask == tmp_path / "nodule_mask" / "LIDC-IDRI-0000_R_1.nii.gz"
    split = split_cases(cases, 0.2, 7)
    assert not {c.patient for c in split.train} & {c.patient for c in split.validation}
    assert len({c.patient for c in split.validation}) == 2
    assert [c.name for c in split_cases(cases, 0.2, 7).validation] == [c.name for c in split.validation]
    assert [c.name for c in split_cases(cases, 0.2, 8).validation] != [c.name for c in split.validation]
    # k-fold: every patient (with all its nodules) is validated in exactly one fold
    folds = [split_cases(cases, 0.2, 7, folds=3, fold=k) for k in range(3)]
    held = [{c.patient for c in f.validation} for f in folds]
    assert sorted(p for h in held for p in h) == sorted({c.patient for c in cases})
    assert all(not h & {c.patient for c in f.train} for h, f in zip(held, folds))
    assert sorted(len(h) for h in held) == [3, 3, 4]
    # inner folds: the held-out patients stay out of every run; each other patient is validated once
    outer = {c.patient for c in split.validation}
    inner = [split_cases(cases, 0.2, 7, inner_folds=4, inner_fold=k) for k in range(4)]
    assert all(not outer & {c.patient for c in f.train + f.validation} for f in inner)
    validated = sorted(c.name for f in inner for c in f.validation)
    assert validated == sorted(c.name for c in split.train)
    assert all(not {c.patient for c in f.validation} & {c.patient for c in f.train} for f in inner)


def test_fold_settings_are_checked_and_fold_replaces_data_fold(tmp_path):
    config = json.loads((MODELS / "pet-lesion-3d.train.json").read_text())
    path = tmp_path / "pet.train.json"
    path.write_text(json.dumps(config))
    assert load_config(path, fold=2).data["fold"] == 2
    with pytest.raises(TumorSegError, match="data.folds"):
        load_config(path, fold=3)
    config["data"].update(inner_folds=5, inner_fold=5)
    path.write_text(json.dumps(config))
    with pytest.raises(TumorSegError, match="data.inner_folds must be at least 2 and data.inner_fold in"):
        load_config(path)
    config["data"].update(inner_folds=None, inner_fold=1)
    path.write_text(json.dumps(config))
    with pytest.raises(TumorSegError, match="data.inner_fold needs data.inner_folds"):
        load_config(path)


def test_dmiai_pairs_and_controls(tmp_path):
    root = mip_dataset(tmp_path / "data", patients=3, controls=2)
    cases = find_cases(config_from_dict(mip_config(), data_root=root))
    pairs = [(c.image.name, c.mask.name, c.patient) for c in cases if c.mask]
    assert pairs[1] == ("patient_001.png", "segmentation_001.png", "001")
    assert [c.image.name for c in cases if c.mask is None] == ["control_000.png", "control_001.png"]
    digest, lines = manifest_sha256(cases, root)
    assert len(lines) == 8 and len(digest) == 64
    (root / "patients/labels/segmentation_001.png").write_bytes(b"changed")
    assert manifest_sha256(cases, root)[0] != digest


def _bad_mismatch(root):
    mip_png(root / "patients/imgs/patient_001.png", 1, shape=(64, 40))


def _bad_no_positive_validation(root):
    for label in (root / "patients/labels").glob("*.png"):
        image = read_image(label)
        if label.name not in ("segmentation_000.png",):
            write_image(label, image.with_array(np.zeros_like(image.array)))


@pytest.mark.parametrize("breaker, message", [
    (lambda root: (root / "patients/labels/segmentation_002.png").unlink(), "mask file.*missing"),
    (_bad_mismatch, "different grids"),
    (lambda root: [p.unlink() for p in (root / "patients/imgs").glob("*.png")], "empty dataset"),
    (_bad_no_positive_validation, "validation split has no case with tumour"),
    (lambda root: [p.unlink() for p in (root / "controls/imgs").glob("*.png")], "no controls match"),
])
def test_bad_input_fails_before_training(tmp_path, breaker, message):
    root = mip_dataset(tmp_path / "data", patients=4, controls=2)
    breaker(root)
    config = config_from_dict(mip_config(), data_root=root)
    with pytest.raises(TumorSegError, match=message):
        train(config, tmp_path / "run", device="cpu")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_data_root_and_bad_config(tmp_path, capsys):
    path = write_config(tmp_path, mip_config())
    assert main(["train", str(path), "--data-root", str(tmp_path / "nowhere"), "-o", str(tmp_path / "run")]) == 2
    assert "data root" in capsys.readouterr().err and not (tmp_path / "run").exists()
    broken = mip_config(learning_rate=1)
    with pytest.raises(TumorSegError, match="unknown train setting"):
        config_from_dict(broken)
    with_weights = mip_config()
    with_weights["card"]["weights"] = {"file": "x.pt"}
    with pytest.raises(TumorSegError, match="written by training"):
        config_from_dict(with_weights)
    cascade = json.loads((MODELS / "ct-liver-lesion-2d.train.json").read_text())
    cascade["card"]["inference"]["organ_from"] = "ct-liver-lesion-2d-coarse"
    with pytest.raises(TumorSegError, match="inference.organ_from names other cards.*add it to the trained card"):
        config_from_dict(cascade)


# ---- sampling, augmentation, losses -------------------------------------------------------------------------

def test_sampler_weights_controls_and_ranks():
    items = [(i, None, i < 5, False, False) for i in range(50)] + [(50 + i, None, False, True, True) for i in range(20)]
    kwargs = dict(positive_weight=9.0, num_items=400, num_controls=8, seed=3, batch=4)
    draw = list(EpochSampler(items, **kwargs))
    drawn_items = [i for i in draw if not items[i][3]]
    assert len(draw) == 408
    assert sum(items[i][2] for i in drawn_items) / len(drawn_items) == pytest.approx(0.5, abs=0.08)  # 45/(45+45)
    assert sum(items[i][3] for i in draw) == 8 and len({i for i in draw if items[i][3]}) == 8
    ranks = [EpochSampler(items, **kwargs, rank=r, world=3) for r in range(3)]
    shards = [list(r) for r in ranks]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ranks[0]) == 136
    assert sorted(sum(shards, [])) == sorted(draw[: 3 * 136])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != shards[0]


def test_sampler_draws_empty_slices_by_their_weight(tmp_path):
    """Slices with neither tumour nor organ are found per slice and drawn ``empty_weight`` times as often."""
    from TumorSegLib.training.data import Case, check_cases

    label = np.zeros((2, 4, 8, 8), np.uint8)  # channels (tumour, organ), 4 slices along axis 0
    label[0, 0, 2:4, 2:4] = label[1, 0, 1:5, 1:5] = 1  # slice 0: tumour in organ
    label[1, 1, 1:5, 1:5] = 1  # slice 1: organ only; slices 2 and 3: empty
    card = load_card(MODELS / "ct-liver-lesion-2d.json")
    case = Case(name="v", patient="p", image=tmp_path, mask=tmp_path)
    check_cases([case], card, lambda c: {"image": np.zeros((4, 8, 8), np.float32), "label": label, "axis": 0})
    items = training_items([case])
    assert [item[2] for item in items] == [True, False, False, False]
    assert [item[4] for item in items] == [False, False, True, True]
    draw = list(EpochSampler(items, positive_weight=2.0, num_items=6000, num_controls=0, seed=1, batch=4,
                             empty_weight=3.5))
    share = np.bincount([items[i][1] for i in draw], minlength=4) / len(draw)
    assert share == pytest.approx(np.array([2, 1, 3.5, 3.5]) / 10, abs=0.02)


def test_augmentation_crops_balanced_and_padded():
    image = np.zeros((20, 40), np.float32)
    label = np.zeros((20, 40), np.uint8)
    label[8:11, 30:33] = 1
    image[label > 0] = 1.0
    train = load_config(MODELS / "mip-pet-2d.train.json").train
    train.update(patch_size=[32, 32], pos=1.0, neg=0.0, crops_per_case=4)
    crops = augmentation(train, 2, seed=1)({"image": image[None], "label": label[None]})
    assert len(crops) == 4
    for crop in crops:
        assert crop["image"].shape == (1, 32, 32) and crop["image"].dtype == torch.float32
        assert set(torch.unique(crop["label"]).tolist()) <= {0.0, 1.0}
        assert crop["label"].sum() > 0


def test_2d_augmentation_with_noise_and_lower_resolution():
    """Noise and simulated lower resolution also run on 2D slices (MONAI's default upsampling is 3D);
    the label is left as it was drawn."""
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    label = np.zeros((64, 64), np.uint8)
    label[20:40, 20:40] = 1
    train = load_config(MODELS / "ct-liver-lesion-2d.train.json").train
    train.update(patch_size=[64, 64], crops_per_case=1)
    train["augment"].update(noise_prob=1.0, noise_std=0.05, lowres_prob=1.0, lowres_zoom=[0.5, 0.5],
                            affine_prob=0.0, intensity_prob=0.0)
    crop = augmentation(train, 2, seed=3)({"image": image[None], "label": label[None]})[0]
    assert crop["image"].shape == (1, 64, 64)
    assert not torch.allclose(crop["image"], torch.from_numpy(image)[None], atol=0.01)
    assert torch.equal(crop["label"], torch.from_numpy(label[None]).float())


@pytest.mark.parametrize("name", ["dicefocal", "dicece", "bce", "dice"])
def test_losses_prefer_the_right_answer(name):
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:9, 4:9] = 1
    loss = build_loss({"name": name})
    right, wrong = loss(10 * (2 * target - 1), target), loss(-10 * (2 * target - 1), target)
    assert torch.isfinite(right) and right < 0.05 < wrong


@pytest.mark.parametrize("name", ["dicece", "dice", "bce"])
def test_sigmoid_losses_take_overlapping_label_channels(name):
    """Tumour inside liver: two sigmoid channels that are both on must cost nothing when predicted
    (MONAI's DiceCELoss would apply a softmax cross-entropy across them)."""
    target = torch.zeros(2, 2, 16, 16)
    target[:, 1, 2:12, 2:12] = 1  # liver
    target[:, 0, 4:8, 4:8] = 1  # tumour, inside the liver
    loss = build_loss({"name": name})
    right, wrong = loss(10 * (2 * target - 1), target), loss(10 * (2 * target.flip(1) - 1), target)
    assert torch.isfinite(right) and right < 0.05 < wrong


# ---- end to end ------------------------------------------------------------------------------------------------

def test_train_2d_end_to_end_card_reproduces_validation(tmp_path):
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.metrics import case_metrics

    root = mip_dataset(tmp_path / "data")
    out, models = tmp_path / "run", tmp_path / "models"
    models.mkdir()
    path = write_config(tmp_path, mip_config())
    assert run_cli(path, root, out, "--publish", str(models)) == 0
    card = load_card(models / "mip-pet-2d.json")
    assert weights_status(card) == SHA256_OK
    assert json.loads((models / "mip-pet-2d.train.json").read_text())["notes"] == mip_config()["notes"]
    provenance = card.provenance
    cases = find_cases(config_from_dict(mip_config(), data_root=root))
    assert provenance["training_data"]["manifest_sha256"] == manifest_sha256(cases, root)[0]
    assert provenance["command"].startswith("tumorseg train ") and "--data-root" in provenance["command"]
    assert provenance["config"]["train"]["epochs"] == 2 and provenance["code_version"].startswith("tumorseg ")
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    validation = provenance["validation"]
    names = provenance["training_data"]["validation_patients"]
    assert validation["cases_with_lesions"] == len(names) == 2 and validation["controls"] == 1
    segmenter = Segmenter(card, device="cpu", backend="torch")  # the backend training validates with
    dice = []
    for name in names:
        image = read_image(root / f"patients/imgs/patient_{name}.png")
        truth = read_image(root / f"patients/labels/segmentation_{name}.png").array > 0
        dice.append(case_metrics(segmenter.predict(image).mask, truth, image)["dice"])
    assert float(np.mean(dice)) == pytest.approx(validation["dice_mean"], abs=1e-9)
    best = max(float(r["val_dice"]) for r in rows)
    assert validation["dice_mean"] == pytest.approx(best)


class ConstantLogit(torch.nn.Module):
    """A network whose every output is one logit: marks everything (> 0) or nothing (< 0)."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(float(logit)))

    def forward(self, x):
        return torch.zeros_like(x) + self.logit


def test_validation_counts_the_voxels_the_network_marks(tmp_path):
    from TumorSegLib.training.data import config_split
    from TumorSegLib.training.loop import validate

    config = config_from_dict(mip_config(), data_root=mip_dataset(tmp_path / "data"))
    cases = [c for c in config_split(config, find_cases(config)).validation if c.mask is not None]
    card, cpu = config.model_card(), torch.device("cpu")
    assert validate(ConstantLogit(-10.0), card, cases, cpu)["predicted_voxels"] == 0
    pixels = sum(read_image(case.image).array.size for case in cases)
    assert validate(ConstantLogit(10.0), card, cases, cpu)["predicted_voxels"] == pixels


def test_a_validation_that_marks_nothing_is_reported(tmp_path, monkeypatch, capsys):
    """An output that marks nothing on any validation case with tumour (a collapsed channel) is named while
    training runs, logged per epoch and counted in the card."""
    from TumorSegLib.training import loop

    real = loop.validate
    monkeypatch.setattr(loop, "validate", lambda *args, **kwargs: {**real(*args, **kwargs), "predicted_voxels": 0})
    root = mip_dataset(tmp_path / "data", patients=4, controls=2)
    assert run_cli(write_config(tmp_path, mip_config()), root, tmp_path / "run") == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["val_predicted_voxels"] for r in rows] == ["0", "0"]
    assert load_card(tmp_path / "run" / "mip-pet-2d.json").provenance["training"]["validations_marking_nothing"] == 2
    captured = capsys.readouterr()
    assert "marks nothing on any of the" in captured.out + captured.err


def test_resume_time_budget_and_early_stop(tmp_path):
    root = mip_dataset(tmp_path / "data", patients=4, controls=2)
    out = tmp_path / "run"
    path = write_config(tmp_path, mip_config())
    assert run_cli(path, root, out) == 0
    before = list(csv.DictReader(open(out / "log.csv")))
    assert run_cli(path, root, out, "--resume", "--epochs", "3") == 0
    after = list(csv.DictReader(open(out / "log.csv")))
    assert [r["epoch"] for r in after] == ["1", "2", "3"] and after[:2] == before
    assert load_card(out / "mip-pet-2d.json").provenance["training"]["epochs"] == 3

    budget = tmp_path / "budget"
    assert run_cli(path, root, budget, "--max-minutes", "0", "--epochs", "50") == 0
    training = load_card(budget / "mip-pet-2d.json").provenance["training"]
    assert training["epochs"] == 1 and training["steps"] == 1 and "time budget" in training["stopped"]

    frozen = write_config(tmp_path, mip_config(epochs=20, patience=2, optimizer={"name": "nadam", "lr": 0.0}))
    assert run_cli(frozen, root, tmp_path / "frozen") == 0
    provenance = load_card(tmp_path / "frozen" / "mip-pet-2d.json").provenance
    assert provenance["training"]["stopped"].startswith("early stop")
    assert provenance["training"]["epochs"] == provenance["validation"]["epoch"] + 2 < 20


def test_loader_workers_persist_across_epochs(tmp_path):
    """With workers the loader keeps them between epochs (no new processes per epoch; their random streams go on)."""
    root = mip_dataset(tmp_path / "data", patients=4, controls=2)
    for workers in (0, 2):
        config = config_from_dict(mip_config(num_workers=workers), data_root=root)
        run = loop._Run(config, tmp_path / f"run{workers}", distributed.start("cpu"), no_progress, 0.0, None, "")
        run._loader(run._data())
        assert run.loader.num_workers == workers and run.loader.persistent_workers == (workers > 0)
    assert run_cli(write_config(tmp_path, mip_config(num_workers=2)), root, tmp_path / "run") == 0
    assert [r["epoch"] for r in csv.DictReader(open(tmp_path / "run" / "log.csv"))] == ["1", "2"]


def test_slice_2d_training_on_ct_volumes(tmp_path):
    for folder in ("image", "nodule_mask"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for i in range(5):
        image, mask = ct_phantom(shape=(24, 24, 6), spacing=(1.4, 1.4, 2.5), seed=i,
                                 affine=grid_affine((24, 24, 6), (1.4, 1.4, 2.5), flip=(True, True, False)))
        name = f"LIDC-IDRI-{i // 2:04d}_R_{i % 2 + 1}.nii.gz"
        write_image(tmp_path / "data" / "image" / name, image.with_array(image.array.astype(np.int16)))
        write_mask(tmp_path / "data" / "nodule_mask" / name, mask, image)
    config = json.loads((MODELS / "ct-lung-lesion-2d.train.json").read_text())
    config["card"]["network"] = TINY_2D
    config["card"]["preprocessing"]["spacing"] = [1.0, 1.0]
    config["card"]["inference"] = {"batch_size": 4, "divisible_by": 2}
    config["train"].update({**FAST, "patch_size": [32, 32], "cases_per_step": 4, "crops_per_case": 1})
    config["data"]["validation_fraction"] = 0.34
    assert run_cli(write_config(tmp_path, config), tmp_path / "data", tmp_path / "run") == 0
    card = load_card(tmp_path / "run" / "ct-lung-lesion-2d.json")
    counts = card.provenance["training_data"]
    assert card.mode == "slice-2d" and counts["train_cases"] + counts["validation_cases"] == 5


def test_pet_lesion_3d_config_end_to_end_on_one_fold(tmp_path):
    """The shipped pet-lesion-3d recipe (IBSI layout, k-fold, noise and lower-resolution augmentation) on
    six synthetic PET crops, with a tiny network; fold 1 of 3 holds out two patients."""
    from TumorSegLib.engine import Segmenter

    sts_dataset(tmp_path / "ibsi")
    config = tiny_pet_config()
    config["train"]["augment"].update(noise_prob=1.0, lowres_prob=1.0)
    config["data"]["fold"] = 1
    assert run_cli(write_config(tmp_path, config), tmp_path / "ibsi", tmp_path / "run") == 0
    card = load_card(tmp_path / "run" / "pet-lesion-3d.json")
    held = card.provenance["training_data"]["validation_patients"]
    assert len(held) == 2 and card.provenance["config"]["data"]["folds"] == 3
    image, _ = pet_phantom(shape=STS_SHAPE, spacing=STS_SPACING, seed=9)
    prediction = Segmenter(card, device="cpu").predict(image)
    assert prediction.mask.shape == STS_SHAPE and np.isfinite(prediction.probability).all()


@pytest.mark.parametrize("name", ["mip-pet-2d", "ct-lung-lesion-3d", "pet-lesion-3d"])
def test_shipped_card_validation_split_is_rebuilt_exactly(name):
    """Reports are made on the validation patients the shipped card lists (rebuilt from its config)."""
    from TumorSegLib.cards import find_card
    from conftest import shared_data
    from TumorSegLib.training.data import card_validation_cases

    card = find_card(name)
    folder = card.provenance["config"]["data"]["root"].split("shared/data/")[-1].split("/")[0]
    root = shared_data(folder)
    cases = card_validation_cases(card, data_root=root / "dev" if (root / "dev").is_dir() else root)
    patients = sorted({c.patient for c in cases if c.mask is not None})
    assert patients == sorted(card.provenance["training_data"]["validation_patients"])
