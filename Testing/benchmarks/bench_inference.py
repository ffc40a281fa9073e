"""Inference speed: our engine against a naive MONAI baseline with the same weights.

    python Testing/benchmarks/bench_inference.py [--json OUT.json] [--cases NAME ...]

Cases: a 256x256x128 and a 512x512x300 CT volume (the real TotalSegmentator example CT from
../shared/data resampled to those grids; the CT phantom when the data are absent) with a 3D
AttentionUnet (channels 16..256, strides 2x4, patch 96^3), and a 2D MIP (the largest DM i AI
patient PNG, else a MIP of the PET phantom) with a 2D AttentionUnet of the same channels.
Weights are random (seed 0): fine for timing; for agreement the masks are the fp32 baseline's
probability thresholded at its median, and our probability at the same value
(``dice_vs_fp32``).

Baseline: ``normalize_intensity`` then MONAI ``sliding_window_inference`` (fp32, overlap 0.25,
Gaussian blending, sw_batch_size 1, the whole volume, the network as predictor) and a sigmoid; 2D:
one fp32 forward pass. Ours: ``engine.Segmenter.predict`` with the card's defaults (precision
"auto": bf16 autocast on a CPU with native bf16, channels-last layout, constant-window cache),
plus variants that switch single tricks off. Network loading is outside the timings in both;
each run first calls the same code once on a small input (a 96^3 crop; the 2D image itself) to
set up the oneDNN kernels, and the timing is of the next call (steady state, as in folder mode;
the warm-up call's time is reported too). Every run is a separate process so its peak RSS
(``ru_maxrss`` of that process) is its own. Because median-thresholded random networks are a
harsh and artificial test of reduced precision, the agreement of bf16 with fp32 is also measured
on the tiny trained models of ``TumorSegLib.testing`` (masks at their 0.5 threshold).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

CASES = {
    "ct-256x256x128": {"shape": (256, 256, 128), "variants": ["baseline", "ours", "ours-bf16-unchecked", "ours-fp32"]},
    "ct-512x512x300": {"shape": (512, 512, 300), "variants": ["baseline", "ours", "ours-bf16-unchecked"]},
    "mip-2d": {"shape": None, "variants": ["baseline", "ours", "ours-bf16-unchecked", "ours-fp32"]},
}
CHANNELS = [16, 32, 64, 128, 256]


def card_dict(ndim: int) -> dict:
    if ndim == 3:
        return {"name": "bench-3d", "title": "benchmark 3D (random weights)", "modality": "CT",
                "mode": "sliding-window-3d",
                "network": {"name": "AttentionUnet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                                              "channels": CHANNELS, "strides": [2, 2, 2, 2]}},
                "preprocessing": {"intensity": {"window": [-1000, 400]}},
                "inference": {"patch_size": [96, 96, 96], "overlap": 0.25, "blending": "gaussian", "sw_batch_size": 1},
                "output": {"activation": "sigmoid", "threshold": 0.5}, "weights": {"file": "bench-3d.pt"}}
    return {"name": "bench-2d", "title": "benchmark 2D (random weights)", "modality": "MIP-PET", "mode": "whole-image-2d",
            "network": {"name": "AttentionUnet", "args": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1,
                                                          "channels": CHANNELS, "strides": [2, 2, 2, 2]}},
            "preprocessing": {"intensity": {"window": [0, 255], "invert": True}},
            "inference": {"divisible_by": 16}, "output": {"activation": "sigmoid", "threshold": 0.5},
            "weights": {"file": "bench-2d.pt"}}


def make_card(folder: Path, ndim: int):
    """A card with random (seed 0) weights, written like a shipped model (SHA-256 verified on load)."""
    import torch

    from TumorSegLib.cards import card_from_dict, load_card, sha256
    from TumorSegLib.networks import build_network

    data = card_dict(ndim)
    path = folder / f"{data['name']}.json"
    if not path.exists():
        torch.manual_seed(0)
        weights = folder / data["weights"]["file"]
        torch.save(build_network(card_from_dict(data)).state_dict(), weights)
        data["weights"]["sha256"] = sha256(weights)
        path.write_text(json.dumps(data))
    return load_card(path)


def make_input(name: str):
    from TumorSegLib.image import Image
    from TumorSegLib.io import read_image
    from TumorSegLib.phantoms import ct_phantom, pet_phantom
    from TumorSegLib.preprocess import resample

    shape = CASES[name]["shape"]
    if shape is not None:
        source = DATA / "totalseg-example-ct" / "example_ct.nii.gz"
        if not source.is_file():
            return ct_phantom(shape=shape, spacing=(0.8, 0.8, 1.5))[0], "CT phantom"
        ct = read_image(source)
        array = resample(np.asarray(ct.array, dtype=np.float32), shape)
        affine = ct.affine.copy()
        affine[:3, :3] = ct.affine[:3, :3] * (np.asarray(ct.shape) / np.asarray(shape))
        return Image(array, affine), f"{source.name} resampled to {shape}"
    pngs = sorted((DATA / "dmiai2023-mip-pet" / "dev").glob("**/patient_*.png"))
    if pngs:
        best = max(pngs, key=lambda p: read_image(p).shape[0])
        return read_image(best), f"{best.name} {read_image(best).shape}"
    from TumorSegLib.mip import coronal_mip
    from TumorSegLib.cards import card_from_dict

    volume = pet_phantom(shape=(100, 80, 248))[0]
    card = card_from_dict({**card_dict(2), "preprocessing": {"intensity": {"window": [0, 255], "invert": True},
                                                             "mip": {"window": [0, 10], "invert": True}}})
    return coronal_mip(volume, card), "MIP of the PET phantom"


VARIANTS = {  # engine overrides per variant ("ours" = the card's defaults)
    "ours": {},
    "ours-bf16-unchecked": {"precision": "bf16", "recheck_margin": 0.0},
    "ours-fp32": {"precision": "fp32"},
}


def worker(name: str, variant: str, folder: Path, out: Path, threshold: float) -> None:
    """One timed run in this process; writes timings, peak RSS and the probability (.npy)."""
    import torch

    image, source = make_input(name)
    card = make_card(folder, image.ndim)
    if variant == "baseline":
        from monai.inferers import sliding_window_inference

        from TumorSegLib.networks import load_network
        from TumorSegLib.preprocess import normalize_intensity

        network = load_network(card, "cpu")

        def run(array):
            with torch.inference_mode():
                x = torch.from_numpy(normalize_intensity(array, card))[None, None]
                if array.ndim == 3:
                    logits = sliding_window_inference(x, (96, 96, 96), 1, network, overlap=0.25, mode="gaussian")
                else:
                    h, w = array.shape
                    logits = network(torch.nn.functional.pad(x, (0, -w % 16, 0, -h % 16)))[..., :h, :w]
                return torch.sigmoid(logits)[0, 0].numpy(), []
    else:
        from TumorSegLib.engine import Segmenter

        segmenter = Segmenter(card, "cpu")
        overrides = {**VARIANTS[variant], "threshold": threshold}

        def run(array):
            prediction = segmenter.predict(image.with_array(array) if array.shape == image.shape
                                           else type(image)(array, image.affine), overrides=overrides)
            return prediction.probability, prediction.notes
    warm = image.array if image.ndim == 2 else np.ascontiguousarray(image.array[:96, :96, :96])
    start = time.perf_counter()
    run(warm)  # first call in the process: oneDNN kernel set-up (a one-off cost, reported as cold_s)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    probability, notes = run(image.array)
    seconds = time.perf_counter() - start
    np.save(out.with_suffix(".npy"), probability.astype(np.float32))
    out.write_text(json.dumps({"seconds": seconds, "warmup_s": cold, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "input": source, "shape": list(image.shape), "threads": torch.get_num_threads(),
                               "notes": notes}))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def run_case(name: str, folder: Path) -> list:
    runs = {}
    threshold = 0.5
    for variant in CASES[name]["variants"]:  # the baseline first: its median is the threshold of the others
        out = folder / f"{name}.{variant}.json"
        subprocess.run([sys.executable, __file__, "--worker", name, variant, str(folder), str(out), str(threshold)],
                       check=True)
        if variant == "baseline":
            threshold = float(np.median(np.load(folder / f"{name}.baseline.npy")))
        runs[variant] = json.loads(out.read_text())
        print(f"  {name} {variant}: {runs[variant]['seconds']:.2f} s (warm-up call {runs[variant]['warmup_s']:.2f} s), peak RSS {runs[variant]['peak_rss_mb']:.0f} MB",
              flush=True)
    truth = np.load(folder / f"{name}.baseline.npy") >= threshold
    rows = []
    for variant, result in runs.items():
        if variant == "baseline":
            continue
        mask = np.load(folder / f"{name}.{variant}.npy") >= threshold
        rows.append({"name": name if variant == "ours" else f"{name} ({variant})", "input": result["input"],
                     "ours_s": round(result["seconds"], 3), "baseline_s": round(runs["baseline"]["seconds"], 3),
                     "speedup": round(runs["baseline"]["seconds"] / result["seconds"], 2),
                     "ours_warmup_s": round(result["warmup_s"], 3), "baseline_warmup_s": round(runs["baseline"]["warmup_s"], 3),
                     "dice_vs_fp32": round(dice(mask, truth), 5), "peak_rss_mb": round(result["peak_rss_mb"], 1),
                     "baseline_peak_rss_mb": round(runs["baseline"]["peak_rss_mb"], 1), "threads": result["threads"]})
    return rows


def trained_agreement(folder: Path) -> dict:
    """Dice of bf16 ("auto") against fp32 masks of the tiny trained models on their test images."""
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.testing import lesion_png, lesion_volume, tiny_model

    result = {}
    for label, mode, modality, image in (("3d", "sliding-window-3d", "CT", lesion_volume("CT", shape=(96, 96, 64))[0]),
                                         ("2d", "whole-image-2d", "MIP-PET", lesion_png(shape=(480, 400))[0])):
        segmenter = Segmenter(tiny_model(folder / "tiny", mode, modality), "cpu")
        fp32 = segmenter.predict(image, overrides={"precision": "fp32"}).mask
        for variant in ("ours", "ours-bf16-unchecked"):
            mask = segmenter.predict(image, overrides={**VARIANTS[variant], "precision": "bf16"}).mask
            result[f"tiny_trained_{label}_{variant}_dice_vs_fp32"] = round(dice(mask, fp32), 5)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, variant, folder, out, threshold = args.worker
        worker(name, variant, Path(folder), Path(out), float(threshold))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="tumorseg-bench-") as folder:
        for name in args.cases:
            print(f"case {name}", flush=True)
            rows += run_case(name, Path(folder))
        agreement = trained_agreement(Path(folder))
    columns = ("name", "ours_s", "baseline_s", "speedup", "dice_vs_fp32", "peak_rss_mb", "baseline_peak_rss_mb")
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths)))
    print(f"cpu cores: {os.cpu_count()}; dice_vs_fp32: masks at the median of the fp32 baseline probability")
    print(json.dumps(agreement))
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": rows, "agreement": agreement}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
