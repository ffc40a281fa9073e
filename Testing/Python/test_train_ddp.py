"""Distributed training: two gloo processes on the CPU end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch

from TumorSegLib.cards import load_card
from TumorSegLib.networks import build_network
from TumorSegLib.training.loop import state_sha256

from test_train import mip_config, mip_dataset, write_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    root = mip_dataset(tmp_path / "data", patients=6, controls=3)
    config = mip_config(epochs=2, max_steps_per_epoch=3, cases_per_step=1)
    path = write_config(tmp_path, config)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "--master_addr=127.0.0.1", "-m", "TumorSegLib", "train", str(path), "-o", str(out),
               "--data-root", str(root), "--device", "cpu", "--threads", "1", "--progress-json"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    card = load_card(out / "mip-pet-2d.json")
    training = card.provenance["training"]
    assert training["processes"] == 2 and training["steps"] == 6
    assert card.provenance["command"].startswith("torchrun ")
    hashes = training["final_state_sha256_per_rank"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    torch.manual_seed(config["train"]["seed"])
    initial = build_network(load_card(out / "mip-pet-2d.json"))
    assert state_sha256(initial.state_dict()) != hashes[0]  # the ranks trained, and stayed in step
    assert json.loads((out / "mip-pet-2d.train.json").read_text())["name"] == "mip-pet-2d"
