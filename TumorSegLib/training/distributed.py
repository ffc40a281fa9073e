"""Distributed training under torchrun: one process per GPU (NCCL) or per CPU worker (gloo).

``torchrun --nproc_per_node=N -m TumorSegLib train CONFIG ...`` sets RANK, WORLD_SIZE and
LOCAL_RANK; multi-node runs use torchrun's own ``--nnodes``/``--rdzv_endpoint`` options. Without
those variables everything here degrades to a single process. Validation, checkpoints, logs and
the exported model are rank 0's job; the other ranks wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from typing import Any

import torch
import torch.distributed as dist

from ..device import resolve_device


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def start(device: str = "auto") -> Context:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device)
    if world <= 1:
        return Context(device=chosen)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, local_rank=local_rank, device=chosen)


def stop(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(network: torch.nn.Module, context: Context) -> torch.nn.Module:
    """DistributedDataParallel around ``network`` (rank 0's initial weights go to every rank)."""
    if not context.distributed:
        return network
    ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def average_buffers(network: torch.nn.Module, context: Context) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks.

    DDP keeps parameters identical but each rank's last forward pass updates its own running
    statistics; averaging them at the end of an epoch gives every rank the same, better estimate.
    """
    if not context.distributed:
        return
    for buffer in unwrap(network).buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer.data)
            buffer.data /= context.world


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def any_rank(flag: bool, context: Context) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. the time budget ran out)."""
    if not context.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def from_main(obj: Any, context: Context) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not context.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float, context: Context) -> float:
    """The mean of ``value`` over the ranks."""
    if not context.distributed:
        return value
    tensor = torch.tensor([float(value)], device=context.device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world


def gather(obj: Any, context: Context) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not context.distributed:
        return [obj]
    out = [None] * context.world
    dist.all_gather_object(out, obj)
    return out
