"""Where and in which precision the network runs.

``device``: "auto" (CUDA when present, else CPU), "cpu" or "cuda". ``precision`` (card
``inference.precision`` or an override): "fp32"; "bf16" (bfloat16 autocast); "auto" = fp16
autocast on CUDA, bf16 autocast on a CPU with native bfloat16 (AMX/AVX512-BF16) except for a
whole 2D image, fp32 elsewhere.
Reduced-precision outputs are checked by the engine: windows whose probability comes within
``inference.recheck_margin`` (default 0.05) of the threshold are recomputed in fp32
(``inferers.Predictor``); without that check bf16 masks agreed with fp32 only at Dice 0.977-0.991
in the benchmark's random-weight stress test (Testing/benchmarks/bench_inference.py), with it at
0.999-1.0. With trained weights unchecked bf16 agreed at 0.996-0.998, and the check recomputed
531 of 539 and 4721 of 4900 windows of whole CTs and the whole MIP: a whole 2D image therefore
runs fp32 on "auto" (on a MIP 0.55 s against 0.73 s for bf16 + recheck).
"""

from __future__ import annotations

import contextlib

import torch

from .errors import TumorSegError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    if device not in DEVICES:
        raise TumorSegError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TumorSegError("device 'cuda' asked for but no CUDA GPU is available (use --device cpu or auto)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (else bf16 autocast is slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str = "auto", mode: str | None = None):
    """The autocast dtype for ``device``, ``precision`` and the card's ``mode``, or None for plain fp32.

    "auto" is fp32 for a "whole-image-2d" card on the CPU: its one item is rechecked whole, so
    bf16 plus the recheck costs more than fp32 whenever any pixel lies near the threshold.
    """
    if precision not in PRECISIONS:
        raise TumorSegError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "bf16" or (mode != "whole-image-2d" and cpu_has_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype):
    """An autocast context for ``dtype`` on ``device`` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
