"""Network time per window by backend, precision, batch and window size (no sliding-window loop).

    python Testing/benchmarks/bench_windows.py [--model NAME] [--batches 1 4 16] [--windows 48x48x16 96x96x32]
                                               [--repeats N] [--json OUT.json]

For the 3D card ``--model`` (default the shipped ``ct-lung-lesion-3d``; its network folded as the
engine runs it), each backend (PyTorch with channels-last and autocast as ``inferers.Predictor``
runs it; OpenVINO when installed), precision (fp32; bf16 where the CPU computes it natively) and
input (batch x window) is called once to set up, then ``--repeats`` times on random input; the
fastest call is reported, with milliseconds per window, per million voxels, the multiply-adds of
the call (``cpu_limits.macs_per_call``) and the fraction of the CPU's peak for that precision.
Comparing ``ms_per_window`` with the end-to-end time per window of ``bench_inference.py`` gives the
sliding-window loop's own share. ``max_abs_diff_vs_fp32``: the logits' largest difference from the
same backend's fp32 on the same input (OpenVINO f32 against PyTorch fp32: ``test_openvino.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(call, repeats: int) -> tuple:
    """(output, fastest seconds) of ``call`` after one untimed call."""
    out = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return out, min(times)


def backends(card) -> dict:
    """name -> ``(batch, dtype) -> logits`` for each available backend."""
    import torch

    from TumorSegLib import openvino_backend
    from TumorSegLib.device import autocast
    from TumorSegLib.networks import for_inference, load_network

    network, memory_format = for_inference(load_network(card), card.spatial_dims)

    def torch_call(batch, dtype):
        with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
            return network(batch.contiguous(memory_format=memory_format)).float()

    found = {"torch": torch_call}
    if openvino_backend.installed():
        found["openvino"] = openvino_backend.OpenVinoNetwork(network, card.spatial_dims, card.in_channels)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ct-lung-lesion-3d")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--windows", nargs="+", default=["48x48x16", "96x96x32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from cpu_limits import cpu_description, macs_per_call, peak_macs_per_s
    from TumorSegLib.cards import find_card
    from TumorSegLib.device import cpu_has_bf16
    from TumorSegLib.networks import build_network

    card = find_card(args.model)
    cpu = cpu_description()
    precisions = {"fp32": None, **({"bf16": torch.bfloat16} if cpu_has_bf16() else {})}
    rows = []
    for name, call in backends(card).items():
        for window in args.windows:
            size = [int(v) for v in window.split("x")]
            for batch in args.batches:
                shape = (batch, card.in_channels, *size)
                macs = macs_per_call(build_network(card).eval(), shape)
                x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
                reference = None  # this backend's fp32 logits (the first precision)
                for precision, dtype in precisions.items():
                    out, seconds = timed(lambda: call(x, dtype), args.repeats)
                    reference = out if reference is None else reference
                    rate = macs / seconds
                    rows.append({"backend": name, "precision": precision, "window": size, "batch": batch,
                                 "seconds": round(seconds, 4), "ms_per_window": round(1e3 * seconds / batch, 2),
                                 "ms_per_mvoxel": round(1e3 * seconds / (batch * x[0, 0].numel() / 1e6), 1),
                                 "macs": macs, "achieved_macs_per_s": rate,
                                 "fraction_of_peak": rate / peak_macs_per_s(cpu["isa"], precision,
                                                                            torch.get_num_threads(), cpu["clock_ghz"]),
                                 "max_abs_diff_vs_fp32": float((out - reference).abs().max())})
                    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": card.name, "cpu": cpu, "threads": torch.get_num_threads(),
                                               "repeats": args.repeats, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
