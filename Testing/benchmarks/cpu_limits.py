"""The CPU a benchmark ran on and how far from its arithmetic limit the network ran.

``cpu_description()`` reads the model name, clock and instruction sets from ``/proc/cpuinfo`` and
the ISA caps set in the environment (``ONEDNN_MAX_CPU_ISA`` for oneDNN in PyTorch and OpenVINO,
``ATEN_CPU_CAPABILITY`` for PyTorch's own kernels, ``OV_CPU_MAX_ISA`` for OpenVINO's own kernels),
and names the ISA class the run could use: "AMX", "AVX512-BF16", "AVX512" or "AVX2".

``peak_macs_per_s(isa, precision, cores, hz)`` is the multiply-add limit: cores x clock x
multiply-adds per cycle per core, assuming two 512-bit FMA ports (Intel Xeon; AMD Zen 4 has half):
fp32 32 (AVX-512) or 16 (AVX2); bf16 64 with AVX512-BF16 (``vdpbf16ps``) and 512 with AMX
(one 16x16x32 tile product per 16 cycles). ``macs_per_call(network, shape)`` counts the network's
multiply-adds for one input of ``shape`` (``torch.utils.flop_counter``: convolutions and matrix
products, transposed convolutions included; element-wise work not counted).
"""

from __future__ import annotations

import os
from pathlib import Path

MACS_PER_CYCLE = {("AVX2", "fp32"): 16, ("AVX512", "fp32"): 32, ("AVX512-BF16", "fp32"): 32, ("AMX", "fp32"): 32,
                  ("AVX512-BF16", "bf16"): 64, ("AMX", "bf16"): 512}
ISA_ORDER = ("AVX2", "AVX512", "AVX512-BF16", "AMX")
CAP_NAMES = {"AVX2": "AVX2", "AVX512_CORE": "AVX512", "AVX512_CORE_VNNI": "AVX512",
             "AVX512_CORE_BF16": "AVX512-BF16", "AVX512_CORE_AMX": "AMX"}


def _cpuinfo(text: str) -> dict:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break  # the first processor only
        fields.setdefault(key.strip(), value.strip())
    return fields


def hardware_isa(flags: set) -> str:
    """The best ISA class in the CPU's flags."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "AVX512" if "avx512f" in flags else "AVX2"


def capped_isa(hardware: str, cap: str | None) -> str:
    """The ISA class under an ``ONEDNN_MAX_CPU_ISA`` cap (None: no cap)."""
    if not cap or cap.upper() not in CAP_NAMES:
        return hardware
    return min(hardware, CAP_NAMES[cap.upper()], key=ISA_ORDER.index)


def cpu_description(cpuinfo: str | None = None) -> dict:
    """Model, cores usable by this process, clock (GHz), flags-derived ISA and the ISA allowed by the caps."""
    if cpuinfo is None:
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = _cpuinfo(cpuinfo)
    flags = set(fields.get("flags", "").split())
    hardware = hardware_isa(flags)
    mhz = float(fields.get("cpu MHz", "0") or 0)
    maximum = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if maximum.is_file():
        mhz = max(mhz, int(maximum.read_text()) / 1000)
    caps = {name: os.environ[name] for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OV_CPU_MAX_ISA")
            if name in os.environ}
    return {"model": fields.get("model name", "unknown"), "cores": len(os.sched_getaffinity(0)),
            "clock_ghz": round(mhz / 1000, 3), "hardware_isa": hardware,
            "isa": capped_isa(hardware, caps.get("ONEDNN_MAX_CPU_ISA")), "isa_caps": caps,
            "flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})}


def peak_macs_per_s(isa: str, precision: str, cores: int, ghz: float) -> float:
    """Multiply-adds per second at the limit (``precision`` "fp32" or "bf16"; bf16 without hardware runs fp32)."""
    key = (isa, precision) if (isa, precision) in MACS_PER_CYCLE else (isa, "fp32")
    return cores * ghz * 1e9 * MACS_PER_CYCLE[key]


def macs_per_call(network, shape) -> int:
    """Multiply-adds of one call of ``network`` on a zero input of ``shape`` (batch included)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(torch.zeros(shape))
    return int(counter.get_total_flops()) // 2
