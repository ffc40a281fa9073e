"""The training loop: train, validate with the inference engine, checkpoint, resume, stop, log.

Validation runs ``engine.Segmenter`` on the full validation images with the in-memory network
(the same preprocessing, windowing, padding and threshold as ``tumorseg segment``) and scores
each mask with ``metrics.case_metrics`` (the Dice of ``tumorseg evaluate``); healthy controls
are reported by their false-positive pixels. The best mean Dice is kept (``best.pt``); the
state after every validated epoch is ``checkpoint.pt`` (``--resume`` continues from it). The run
stops after ``epochs``, after ``patience`` validations without improvement, or when the time
budget runs out, and always ends by exporting the best weights with their model card.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..device import autocast
from ..cards import ModelCard
from ..errors import TumorSegError
from ..hints import PathLike
from ..networks import build_network, load_error_reason
from ..progress import ProgressCallback, no_progress
from . import distributed
from .config import TrainConfig
from .data import (EpochSampler, Split, TrainingDataset, check_cases, data_root, find_cases, manifest_sha256,
                   require_usable, config_split, training_items)
from ..files import atomic_write, write_text
from .export import code_version, save_torch, write_model
from .losses import build_loss
from .transforms import augmentation, load_arrays, read_pair

LOG_FIELDS = ("epoch", "steps", "train_loss", "lr", "val_dice", "val_dice_median", "val_predicted_voxels",
              "val_control_fp_pixels", "val_controls_with_fp", "best_dice", "seconds")


def train(config: TrainConfig, out_dir: PathLike, device: str = "auto", resume: Optional[PathLike] = None, max_minutes: Optional[float] = None,
          progress: ProgressCallback = no_progress, command: str = "") -> Optional[Path]:
    """Run a whole training; returns the written card's path on rank 0 (None on other ranks)."""
    started = time.monotonic()
    context = distributed.start(device)
    try:
        return _Run(config, Path(out_dir), context, progress if context.main else no_progress,
                    started, max_minutes, command).run(resume)
    finally:
        distributed.stop(context)


class _Run:
    def __init__(self, config, out_dir, context, progress, started, max_minutes, command):
        self.config, self.out_dir, self.context = config, out_dir, context
        self.progress, self.started, self.max_minutes, self.command = progress, started, max_minutes, command
        self.train_cfg = config.train
        self.card = config.model_card()

    # ---- set-up ---------------------------------------------------------------------------
    def _data(self):
        cases = find_cases(self.config)
        self.progress(0.0, f"checking {len(cases)} cases")
        check_cases(cases, self.card, load_arrays(self.card, self.config.data["label_values"]))
        split = config_split(self.config, cases)
        require_usable(split, self.card)
        limit = self.train_cfg["validation_controls"]
        controls = [c for c in split.validation if c.mask is None]
        if limit is not None:
            controls = controls[: int(limit)]
        self.validation = [c for c in split.validation if c.mask is not None] + controls
        self.split = split
        return split

    def _model(self, initial: Optional[dict]):
        seed = int(self.train_cfg["seed"])
        torch.manual_seed(seed)  # identical initial weights on every rank
        network = build_network(self.card)
        if initial is not None:
            _start_from(network, initial, self.train_cfg["init_weights"])
        network = network.to(self.context.device)
        self.network = distributed.wrap(network, self.context)
        options = {k: v for k, v in self.train_cfg["optimizer"].items() if k != "name"}
        optimizer_class = torch.optim.AdamW if self.train_cfg["optimizer"]["name"] == "adamw" else torch.optim.NAdam
        self.optimizer = optimizer_class(self.network.parameters(), **options)
        self.scheduler = self._schedule()
        self.loss = build_loss(self.train_cfg["loss"], self.card.output.activation)
        cuda = self.context.device.type == "cuda"
        self.amp_dtype = (torch.float16 if cuda and self.train_cfg["amp"] else
                          torch.bfloat16 if not cuda and self.train_cfg["bf16_cpu"] else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and self.amp_dtype == torch.float16)

    def _schedule(self):
        spec = self.train_cfg["schedule"]
        if spec["name"] == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max", factor=float(spec.get("factor", 0.1)), patience=int(spec.get("patience", 10)))
        if spec["name"] == "none":
            return None
        warmup, epochs = int(spec.get("warmup_epochs", 0)), int(self.train_cfg["epochs"])
        floor = float(spec.get("min_lr_ratio", 0.01))

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(1, epochs - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _loader(self, split):
        cfg, context = self.train_cfg, self.context
        cases = split.train
        items = training_items(cases)
        seed = int(cfg["seed"])
        transform = augmentation(cfg, self.card.spatial_dims, seed + 1000 * context.rank, self.card)
        dataset = TrainingDataset(cases, items, load_arrays(self.card, self.config.data["label_values"]), transform,
                                  bool(cfg["cache"]))
        self.sampler = EpochSampler(items, float(cfg["positive_weight"]), cfg["cases_per_epoch"],
                                    int(cfg["controls_per_epoch"]), seed, int(cfg["cases_per_step"]),
                                    context.rank, context.world, float(cfg["empty_weight"]))
        from monai.data import DataLoader, list_data_collate

        workers = int(cfg["num_workers"])  # kept between epochs: no new processes per epoch
        self.loader = DataLoader(dataset, batch_size=int(cfg["cases_per_step"]), sampler=self.sampler,
                                 num_workers=workers, collate_fn=list_data_collate, persistent_workers=workers > 0,
                                 pin_memory=context.device.type == "cuda", drop_last=True)
        steps = len(self.sampler) // int(cfg["cases_per_step"])
        cap = cfg["max_steps_per_epoch"]
        self.steps_per_epoch = min(steps, int(cap)) if cap else steps

    # ---- state ----------------------------------------------------------------------------
    def _fresh_state(self) -> dict:
        return {"epoch": 0, "step": 0, "best_dice": -1.0, "best_epoch": 0, "best_validation": None, "stale": 0,
                "history": [], "train_seconds": 0.0, "train_steps": 0, "empty_validations": 0}

    def _checkpoint(self) -> dict:
        return {"network": distributed.unwrap(self.network).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict(), "state": self.state, "config": self.config.to_dict()}

    def _apply_checkpoint(self, saved: dict, path: Path) -> None:
        try:
            distributed.unwrap(self.network).load_state_dict(saved["network"])
            self.optimizer.load_state_dict(saved["optimizer"])
            if self.scheduler is not None and saved["scheduler"] is not None:
                self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            self.state = saved["state"]
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise TumorSegError(f"cannot resume from {path}: {error}") from error

    # ---- the run --------------------------------------------------------------------------
    def run(self, resume: Optional[PathLike]) -> Optional[Path]:
        saved = load_checkpoint(resume, self.context.device) if resume else None  # before anything is written
        initial = initial_weights(self.train_cfg["init_weights"])
        if initial is not None:  # a mismatch is refused before anything is written
            _start_from(build_network(self.card), initial, self.train_cfg["init_weights"])
        split = self._data()
        context = self.context
        if context.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.manifest, lines = manifest_sha256(split.cases, data_root(self.config))
            write_text(self.out_dir / "manifest.sha256", "\n".join(lines) + "\n")
        distributed.barrier(context)
        self._model(initial)
        self._loader(split)
        self.state = self._fresh_state()
        if saved is not None:
            self._apply_checkpoint(saved, Path(resume))
        epochs = int(self.train_cfg["epochs"])
        reason = "epochs done"
        while self.state["epoch"] < epochs:
            epoch = self.state["epoch"] + 1
            loss, steps, out_of_time = self._train_epoch(epoch, epochs)
            self.state["epoch"] = epoch
            last = epoch == epochs or out_of_time
            row = {"epoch": epoch, "steps": self.state["step"], "train_loss": loss,
                   "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.monotonic() - self.started, 1)}
            if epoch % int(self.train_cfg["validate_every"]) == 0 or last:
                stop = self._validate_and_keep(row)
                if stop:
                    reason = f"early stop: no better Dice in {self.train_cfg['patience']} validations"
            else:
                stop = False
            if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
                self.scheduler.step()
            if context.main:
                self.state["history"].append(row)
                self._write_logs()
                save_torch(self._checkpoint(), self.out_dir / "checkpoint.pt")
            if out_of_time:
                reason = f"time budget of {self.max_minutes} min used"
            if stop or out_of_time:
                break
        return self._finish(reason)

    def _train_epoch(self, epoch: int, epochs: int):
        context, network = self.context, self.network
        network.train()
        self.sampler.set_epoch(epoch)
        total, count, out_of_time = 0.0, 0, False
        clip = self.train_cfg["clip_grad_norm"]
        tick = time.monotonic()
        for batch in self.loader:
            if count >= self.steps_per_epoch:
                break
            image = batch["image"].to(context.device, non_blocking=True)
            label = batch["label"].to(context.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(context.device, self.amp_dtype):
                loss = self.loss(network(image).float(), label)
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), float(clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach())
            count += 1
            self.state["step"] += 1
            done = ((epoch - 1) * self.steps_per_epoch + count) / (epochs * self.steps_per_epoch)
            self.progress(done, f"epoch {epoch}/{epochs} step {count}/{self.steps_per_epoch} loss {total / count:.4f}")
            out_of_time = distributed.any_rank(self._out_of_time(), context)
            if out_of_time:
                break
        distributed.average_buffers(network, context)
        self.state["train_seconds"] += time.monotonic() - tick
        self.state["train_steps"] += count
        return distributed.mean(total / max(count, 1), context), count, out_of_time

    def _out_of_time(self) -> bool:
        return self.max_minutes is not None and time.monotonic() - self.started > 60.0 * float(self.max_minutes)

    def _done(self) -> float:
        """The share of the training's steps done, for the progress line."""
        return min(1.0, self.state["step"] / max(1, self.steps_per_epoch * int(self.train_cfg["epochs"])))

    def _validate_and_keep(self, row: dict) -> bool:
        """Validate on rank 0, keep the best weights; returns whether to stop early (same on all ranks)."""
        context = self.context
        result = None
        if context.main:
            self.progress(self._done(), f"validating on {len(self.validation)} cases")
            values = self.config.data["label_values"]
            result = validate(distributed.unwrap(self.network), self.card, self.validation, context.device,
                              values[0] if values else None)
            self.network.train()
        result = distributed.from_main(result, context)
        row.update({"val_dice": result["dice_mean"], "val_dice_median": result["dice_median"],
                    "val_predicted_voxels": result["predicted_voxels"],
                    "val_control_fp_pixels": result.get("control_fp_pixels_mean"),
                    "val_controls_with_fp": result.get("controls_with_fp")})
        if result["predicted_voxels"] == 0 and result.get("cases_with_lesions"):
            self.state["empty_validations"] = self.state.get("empty_validations", 0) + 1  # .get: older checkpoints
            self.progress(self._done(), f"warning: epoch {row['epoch']} marks nothing on any of the "
                          f"{result['cases_with_lesions']} validation cases with tumour (a collapsed output? see "
                          "val_predicted_voxels in log.csv)")
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(result["dice_mean"])
        if result["dice_mean"] > self.state["best_dice"]:
            self.state.update(best_dice=result["dice_mean"], best_epoch=row["epoch"], best_validation=result, stale=0)
            if context.main:
                save_torch(distributed.unwrap(self.network).state_dict(), self.out_dir / "best.pt")
        else:
            self.state["stale"] += 1
        row["best_dice"] = self.state["best_dice"]
        patience = int(self.train_cfg["patience"])
        return bool(patience and self.state["stale"] >= patience)

    def _write_logs(self) -> None:
        def write_csv(temporary):
            with open(temporary, "w", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=LOG_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.state["history"])

        atomic_write(self.out_dir / "log.csv", write_csv)
        write_curve(self.state["history"], self.out_dir / "curve.png", self.config.name)

    def _finish(self, reason: str) -> Optional[Path]:
        context = self.context
        final = distributed.gather(state_sha256(distributed.unwrap(self.network).state_dict()), context)
        if not context.main:
            distributed.barrier(context)
            return None
        best = torch.load(str(self.out_dir / "best.pt"), map_location="cpu", weights_only=True)
        state = self.state
        steps = max(state["train_steps"], 1)
        provenance = {
            "training_data": {"root": str(data_root(self.config)), "manifest_sha256": self.manifest,
                              "manifest_file": "manifest.sha256 (in the training run folder)",
                              **split_counts(self.split)},
            "command": self.command,
            "config": self.config.to_dict(),
            "code_version": code_version(),
            "validation": {**state["best_validation"], "epoch": state["best_epoch"]},
            "training": {"epochs": state["epoch"], "steps": state["step"], "stopped": reason,
                         "device": str(context.device), "processes": context.world,
                         "seconds_per_step": round(state["train_seconds"] / steps, 3),
                         "validations_marking_nothing": state.get("empty_validations", 0),
                         "init_weights_sha256": init_sha256(self.train_cfg["init_weights"]),
                         "final_state_sha256_per_rank": final},
        }
        card = write_model(self.out_dir, self.config, best, provenance)
        self.progress(1.0, f"done: best Dice {state['best_dice']:.4f} at epoch {state['best_epoch']} ({reason})")
        distributed.barrier(context)
        return card


def load_checkpoint(path: PathLike, device: torch.device | str) -> dict:
    """A training checkpoint, loaded without running code from it (``weights_only``: tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise TumorSegError(f"cannot resume: checkpoint {path} not found")
    try:
        saved = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors: say what it is, not how to bypass the check
        raise TumorSegError(f"cannot resume from {path}: {load_error_reason(error)}") from None
    if not isinstance(saved, dict) or not {"network", "optimizer", "state"} <= set(saved):
        raise TumorSegError(f"cannot resume from {path}: not a TumorSeg training checkpoint")
    return saved


def init_sha256(path: Optional[PathLike]) -> Optional[str]:
    """The sha256 of the ``train.init_weights`` file (None when training started from random weights)."""
    from ..cards import sha256

    return sha256(path) if path is not None else None


def initial_weights(path: Optional[PathLike]) -> Optional[dict]:
    """The state_dict ``train.init_weights`` names (None when there is none), loaded without running code from it."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise TumorSegError(f"train.init_weights: no file {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors
        raise TumorSegError(f"cannot start from train.init_weights {path}: {load_error_reason(error)}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _start_from(network: torch.nn.Module, state, path) -> None:
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as error:
        raise TumorSegError(f"cannot start from train.init_weights {path}: {error}") from None


def validate(network: torch.nn.Module, card: ModelCard, cases: list, device: torch.device,
             tumour_values: Optional[list] = None) -> dict:
    """Segment every validation case with the engine and score it as ``tumorseg evaluate`` does.

    Returns ``metrics.summarize`` of the cases (Dice mean/median over tumour cases) plus the
    healthy controls' false-positive pixels (voxels in 3D). ``tumour_values``: the mask values
    that are tumour (None: every non-zero value).
    """
    from ..engine import Segmenter
    from ..metrics import case_metrics, summarize

    segmenter = Segmenter(card, device=device.type, network=network, backend="torch")  # weights change every epoch: no conversion
    rows = []
    with torch.no_grad():
        for case in cases:
            image, truth = read_pair(case, card, tumour_values)
            prediction = segmenter.predict(image)
            rows.append(case_metrics(prediction.mask, truth, prediction.image, recist=False))
    summary = summarize(rows)
    summary["predicted_voxels"] = int(sum(row["tp_voxels"] + row["fp_voxels"] for row in rows if not row["control"]))
    controls = [row["fp_voxels"] for row in rows if row["control"]]
    if controls:
        summary.update(control_fp_pixels_mean=float(np.mean(controls)), controls_with_fp=int(np.count_nonzero(controls)))
    return summary


def split_counts(split: Split) -> dict:
    def count(cases, control):
        return sum(1 for c in cases if (c.mask is None) == control)

    return {"train_cases": count(split.train, False), "train_controls": count(split.train, True),
            "validation_cases": count(split.validation, False), "validation_controls": count(split.validation, True),
            "validation_patients": sorted({c.patient for c in split.validation if c.mask is not None})}


def state_sha256(state_dict: dict) -> str:
    """A hash of a state_dict's tensors (names, shapes, values), to compare ranks' weights."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def write_curve(history: list, path: Path, title: str) -> None:
    """Training loss and validation Dice per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4))
    epochs = [row["epoch"] for row in history]
    loss_axis.plot(epochs, [row["train_loss"] for row in history], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    dice_axis = loss_axis.twinx()
    validated = [row for row in history if row.get("val_dice") is not None]
    dice_axis.plot([r["epoch"] for r in validated], [r["val_dice"] for r in validated], "o-", color="tab:red")
    dice_axis.set_ylabel("validation Dice (mean)", color="tab:red")
    dice_axis.set_ylim(0, 1)
    loss_axis.set_title(title)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    plt.close(figure)

