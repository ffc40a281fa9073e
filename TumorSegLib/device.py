"""Where and in which precision the network runs.

``device``: "auto" (CUDA when present, else CPU), "cpu" or "cuda". ``precision`` (card
``inference.precision`` or an override): "fp32"; "bf16" (bfloat16 autocast); "auto" = fp16
autocast on CUDA, bf16 autocast on a CPU with native bfloat16 (AMX/AVX512-BF16), fp32 elsewhere.

bf16 is the CPU default where a card does not say otherwise: on the CT models' 148 validation
nodules each, bf16 masks agree with fp32 at Dice >= 0.985 (pooled 0.999), and on whole CTs at
0.998 (``Testing/benchmarks/precision_agreement.py`` and ``bench_inference.py``). A card whose
model disagrees pins ``"precision": "fp32"`` (``mip-pet-2d``: bf16 moved 4 of its 29 validation
patients below 0.99, docs/precision-agreement.md), or sets ``inference.recheck_margin`` so that
reduced-precision windows near the threshold are recomputed in fp32 (``inferers.Predictor``; off by
default: with the trained models nearly every window of a whole CT lies near the threshold
somewhere, so the check cost more than fp32).
"""

from __future__ import annotations

import contextlib

import torch

from .cards import Precision
from .errors import TumorSegError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = Precision.values()


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


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` and ``precision``, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise TumorSegError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "bf16" or cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast context for ``dtype`` on ``device`` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
