"""Inference speed: our engine against a naive MONAI baseline with the same weights.

    python Testing/benchmarks/bench_inference.py [--json OUT.json] [--model NAME] [--model-2d NAME]
                                                  [--cases NAME ...] [--variants NAME ...] [--repeats N]
                                                  [--device cpu|cuda]
    python Testing/benchmarks/bench_inference.py --click [--json OUT.json] [--model NAME] [--repeats N]
                                                  [--nodules N] [--agreement-only]

Click case (``--click``, issue 13), card defaults, one process: the LIDC validation nodule (card's
own split) with the median volume, clicked at its middle voxel in its crop, in the same crop placed
in the middle of a 512x512x300 study on the same world grid (lung-like background: -850 HU, noise
sd 30 HU), and in the study cut to the region the network sees for that click (a crop as large as
the click box): ``--repeats`` timed clicks each after a warm-up click, fastest reported, with the
ratios. Then the round trip of one click on the study file (uncompressed NIfTI) through a one-shot
``tumorseg segment`` process against a warm ``tumorseg worker`` (after its first request, which
reads the study); the Dice between the crop's and the study's masks (over the crop's voxels) for
the first ``--nodules`` validation nodules, with the lung-like background and with air (-1000 HU,
what a click box is padded with beyond an image), and with the crop placed in the lung of the real
chest CT (``totalseg-example-ct/ct_cropped_1p5mm.nii.gz``, resampled onto the crop's grid); and a
click on plain lung in that chest CT: the lung voxel nearest the volume's centre whose 15 mm
neighbourhood averages below -800 HU. ``--agreement-only``: the Dice and the plain-lung click alone.

Cases: a 256x256x128 and a 512x512x300 CT volume (the real TotalSegmentator example CT from
../shared/data resampled to those grids; the CT phantom when the data are absent) and a 2D MIP
(the largest DM i AI patient PNG, else a MIP of the PET phantom).

Weights (the headline): the trained cards ``--model`` (3D; default the shipped ``ct-lung-lesion-3d``)
and ``--model-2d`` (default the shipped ``mip-pet-2d``), each when its weights are present and
verified, else ``random``: a card with the same architecture as before (AttentionUnet, channels
16..256, 3D patch 96^3) and random weights (seed 0), stated in the output. Both sides use the
card's network, weights, intensity window and patch size; the card runs WITHOUT its resampling and
reorientation, test-time flips and the cards it averages with (``inference.average_with``), since the
baseline has none, and masks are the probabilities at the card's threshold (before post-processing). ``dice_vs_fp32`` is over those
masks; ``mask_voxels`` gives both sizes and ``dice_over`` says "nearly empty" when both masks
hold fewer than 1e-4 of the voxels. ``windows`` and ``rechecked_in_fp32`` count the network
items of the run (3D windows; 1 for a 2D image) and those an fp32 re-check computed again.

Variants: ``ours`` (the card's defaults: backend "auto" = OpenVINO on the CPU when installed),
``ours-fp32``, ``ours-torch`` (the PyTorch backend), ``ours-batch16`` (16 windows per network call).
Each row records the backend and precision used, the convolution kernels OpenVINO chose (their names
say the ISA), the network's multiply-adds per window (``cpu_limits.macs_per_call``) and per run
(windows the network computed), and the achieved multiply-adds per second against the CPU's peak for
that precision (``cpu_limits``; the baseline's against the fp32 peak). The JSON's ``cpu`` names the
CPU, its clock and the ISA class the run could use (AMX, AVX512-BF16, AVX512, AVX2), with any ISA
caps set in the environment (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 OV_CPU_MAX_ISA=AVX2``
limits PyTorch and OpenVINO to AVX2).

Stress rows (``ct-256x256x128-random``): random weights with masks at the median of the fp32
probability put every window near the threshold, the worst case for bf16; they show what bf16
gives there and what the optional fp32 re-check (``recheck_margin``) costs and restores.

Baseline: ``normalize_intensity`` then MONAI ``sliding_window_inference`` (fp32, the card's patch
size, overlap 0.25, Gaussian blending, sw_batch_size 1, the whole volume) with sigmoid(network) as
predictor, so probabilities are blended as the engine blends them (blending logits instead moved
probabilities by up to 0.59 with the trained lung model: a change of method, not of precision);
2D: one fp32 forward pass of the image padded to the card's ``divisible_by``. Ours:
``engine.Segmenter.predict`` with the card's defaults (precision "auto" = bf16 autocast on a CPU
with native bfloat16, BatchNorm folded into the convolutions, channels-last layout, constant-window
cache, the card's sw_batch_size), plus variants that switch single settings. Network loading is
outside the timings in both; each run first calls the same code once on a small input (a 96^3
crop; the 2D image itself) to set up the oneDNN kernels, then times ``--repeats`` calls on the case
and reports the fastest (steady state, as in folder mode; the warm-up call's time is reported
too). The input is made once by the parent process and loaded by each run. Both sides use torch's
default thread count and ``--device`` (the CPU by default; with "cuda" both run on the GPU, the
engine with its GPU defaults, and ``peak_gpu_mb`` is reported). Every run is a separate process so
its peak RSS (``ru_maxrss``) is its own.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = REPO.parent / "shared" / "data"

CASES = {  # "model": which command-line model the case uses; "random" forces random weights
    "ct-256x256x128": {"shape": (256, 256, 128), "model": "3d",
                       "variants": ["baseline", "ours", "ours-fp32", "ours-torch", "ours-batch16"]},
    "ct-512x512x300": {"shape": (512, 512, 300), "model": "3d", "variants": ["baseline", "ours"]},
    "mip-2d": {"shape": None, "model": "2d", "variants": ["baseline", "ours", "ours-torch"]},
    "ct-256x256x128-random": {"shape": (256, 256, 128), "model": "random",
                              "variants": ["baseline", "ours", "ours-bf16-rechecked"]},
}
DEFAULT_MODELS = {"3d": "ct-lung-lesion-3d", "2d": "mip-pet-2d"}
CHANNELS = [16, 32, 64, 128, 256]
HARDWARE_KEYS = ("network_input", "macs_per_window", "windows_computed", "macs_total", "achieved_macs_per_s",
                 "peak_macs_per_s", "fraction_of_peak")
NEARLY_EMPTY = 1e-4  # fraction of the voxels under which a mask counts as nearly empty
VARIANTS = {  # engine overrides per variant ("ours" = the card's defaults)
    "ours": {},
    "ours-fp32": {"precision": "fp32"},
    "ours-torch": {},
    "ours-batch16": {"sw_batch_size": 16},
    "ours-bf16-rechecked": {"precision": "bf16", "recheck_margin": 0.05},
}
BACKENDS = {"ours-torch": "torch"}  # the engine's backend per variant (default: the card's, i.e. "auto")


def openvino_version():
    """The installed OpenVINO version, or None."""
    from TumorSegLib.openvino_backend import installed

    if not installed():
        return None
    import openvino

    return openvino.__version__


def random_card_dict(ndim: int) -> dict:
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


def random_card(folder: Path, ndim: int):
    """A card with random (seed 0) weights, written like a shipped model (SHA-256 verified on load)."""
    import torch

    from TumorSegLib.cards import card_from_dict, load_card, sha256
    from TumorSegLib.networks import build_network

    data = random_card_dict(ndim)
    path = folder / f"{data['name']}.json"
    if not path.exists():
        torch.manual_seed(0)
        weights = folder / data["weights"]["file"]
        torch.save(build_network(card_from_dict(data)).state_dict(), weights)
        data["weights"]["sha256"] = sha256(weights)
        path.write_text(json.dumps(data))
    return load_card(path)


def default_model(kind: str) -> str:
    """The shipped trained card for ``kind`` ("3d"/"2d") when its weights verify, else "random"."""
    from TumorSegLib.cards import SHA256_OK, find_card, weights_status
    from TumorSegLib.errors import TumorSegError

    try:
        return DEFAULT_MODELS[kind] if weights_status(find_card(DEFAULT_MODELS[kind])) == SHA256_OK else "random"
    except TumorSegError:
        return "random"


def bench_card(model: str, ndim: int, folder: Path):
    """(card, description of the weights): ``model`` without resampling, reorientation, flips and partner cards."""
    from TumorSegLib.cards import card_from_dict, find_card, verified_weights

    if model == "random":
        return random_card(folder, ndim), "random (seed 0)"
    card = find_card(model)
    weights = verified_weights(card)[0]
    data = card.to_dict()
    data["preprocessing"] = {k: v for k, v in data["preprocessing"].items() if k not in ("orientation", "spacing")}
    data["inference"] = {k: v for k, v in data["inference"].items() if k not in ("flip_axes", "average_with")}
    if card.spatial_dims != ndim:
        raise SystemExit(f"model {model!r} is {card.spatial_dims}D; this case needs a {ndim}D model")
    return card_from_dict(data, card.path), f"{card.name} (trained; {weights.name} sha256 {card.weights.sha256[:12]})"


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
    from TumorSegLib.cards import card_from_dict
    from TumorSegLib.mip import coronal_mip

    volume = pet_phantom(shape=(100, 80, 248))[0]
    card = card_from_dict({**random_card_dict(2), "preprocessing": {"intensity": {"window": [0, 255], "invert": True},
                                                                    "mip": {"window": [0, 10], "invert": True}}})
    return coronal_mip(volume, card), "MIP of the PET phantom"


def worker(name: str, variant: str, model: str, folder: Path, out: Path, threshold: float, repeats: int,
           device: str) -> None:
    """One timed run in this process; writes timings, peak RSS and the probability (.npy)."""
    import torch

    from TumorSegLib.image import Image

    saved = json.loads((folder / f"{name}.input.json").read_text())
    image = Image(np.load(folder / f"{name}.input.npy"), np.asarray(saved["affine"]), saved["spacing_known"])
    source = saved["source"]
    card, weights = bench_card(model, image.ndim, folder)
    from TumorSegLib.device import autocast_dtype

    precision = VARIANTS.get(variant, {}).get("precision", card.inference.precision.value)
    dtype = None if variant == "baseline" else autocast_dtype(torch.device(device), precision)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]  # "auto" is fp16 on CUDA
    if variant == "baseline":
        from monai.inferers import sliding_window_inference

        from TumorSegLib.engine import divisible_by
        from TumorSegLib.inferers import window_count
        from TumorSegLib.networks import load_network
        from TumorSegLib.preprocess import normalize_intensity

        network = load_network(card, device)
        patch = tuple(card.inference.patch_size or (96, 96, 96))
        multiple = divisible_by(card)

        def run(array):
            with torch.inference_mode():
                x = torch.from_numpy(normalize_intensity(array, card))[None, None].to(device)
                if array.ndim == 3:
                    out = sliding_window_inference(x, patch, 1, lambda w: torch.sigmoid(network(w)), overlap=0.25,
                                                   mode="gaussian")
                else:
                    h, w = array.shape
                    out = torch.sigmoid(network(torch.nn.functional.pad(x, (0, -w % multiple, 0, -h % multiple))))
                    out = out[..., :h, :w]
                return out[0, 0].cpu().numpy(), {"computed": window_count(array.shape, patch, 0.25)
                                                 if array.ndim == 3 else 1}
        backend, kernels = "torch", lambda: []
    else:
        from TumorSegLib import inferers
        from TumorSegLib.engine import Segmenter

        segmenter = Segmenter(card, device, backend=BACKENDS.get(variant))
        backend, kernels = segmenter.backend, getattr(segmenter.network, "kernels", lambda: [])
        overrides = {**VARIANTS[variant], "threshold": threshold}
        predictors, computed = [], []  # instrumentation: windows passed, computed by the network, rechecked in fp32
        init, activate = inferers.Predictor.__init__, inferers.Predictor._activate
        inferers.Predictor.__init__ = lambda self, *a, **k: (init(self, *a, **k), predictors.append(self))[0]
        inferers.Predictor._activate = lambda self, batch, dtype: (computed.append(batch.shape[0]),
                                                                   activate(self, batch, dtype))[1]

        def run(array):
            predictors.clear()
            computed.clear()
            prediction = segmenter.predict(image.with_array(array) if array.shape == image.shape
                                           else type(image)(array, image.affine), overrides=overrides)
            return prediction.probability, {"notes": prediction.notes, "items": sum(p.done for p in predictors),
                                            "rechecked_in_fp32": sum(p.rechecked for p in predictors),
                                            "computed": sum(computed)}
    warm = image.array if image.ndim == 2 else np.ascontiguousarray(image.array[:96, :96, :96])
    start = time.perf_counter()
    run(warm)  # first call in the process: oneDNN kernel set-up (a one-off cost, reported as warmup_s)
    cold = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        probability, extra = run(image.array)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    np.save(out.with_suffix(".npy"), probability.astype(np.float32))
    out.write_text(json.dumps({"seconds": seconds, "all_seconds": times, "warmup_s": cold,
                               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "input": source, "weights": weights, "shape": list(image.shape),
                               "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
                               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                               "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
                               "backend": backend, "precision": precision, "kernels": kernels(),
                               **extra, **hardware_use(card, image.array, extra["computed"], seconds, precision, device)}))


def hardware_use(card, array, computed: int, seconds: float, precision: str, device: str) -> dict:
    """Multiply-adds per window (every ensemble member) and per run (windows the network computed), and the
    achieved rate against the CPU's peak (none on a GPU: ``cpu_limits`` models CPUs only)."""
    import torch

    from cpu_limits import cpu_description, macs_per_call, peak_macs_per_s
    from TumorSegLib.engine import divisible_by
    from TumorSegLib.networks import build_network

    shape = card.inference.patch_size or [n + (-n) % divisible_by(card) for n in array.shape]
    per_window = macs_per_call(build_network(card).eval(), (1, card.in_channels, *shape)) * len(card.weights.members)
    cpu = cpu_description()
    peak = peak_macs_per_s(cpu["isa"], precision, torch.get_num_threads(), cpu["clock_ghz"]) if device == "cpu" else None
    achieved = per_window * computed / seconds
    return {"network_input": list(shape), "macs_per_window": per_window, "windows_computed": computed,
            "macs_total": per_window * computed, "achieved_macs_per_s": achieved, "peak_macs_per_s": peak,
            "fraction_of_peak": achieved / peak if peak else None}


def run_case(name: str, model: str, folder: Path, repeats: int, device: str, only=None) -> list:
    """Every variant of case ``name`` (the baseline first; ``only``: these variants), one process each; rows."""
    from TumorSegLib.metrics import dice

    image, source = make_input(name)  # once, here: the workers' peak RSS is then inference (and the input) only
    np.save(folder / f"{name}.input.npy", image.array)
    (folder / f"{name}.input.json").write_text(json.dumps({"affine": image.affine.tolist(), "source": source,
                                                                "spacing_known": image.spacing_known}))
    del image
    runs = {}
    threshold = None if model == "random" else bench_card(model, 3 if CASES[name]["shape"] else 2, folder)[0].threshold
    for variant in (v for v in CASES[name]["variants"] if v == "baseline" or not only or v in only):
        out = folder / f"{name}.{variant}.json"
        subprocess.run([sys.executable, __file__, "--worker", name, variant, model, str(folder), str(out),
                        str(threshold or 0.5), str(repeats), device], check=True)
        if threshold is None:  # random weights: the median of the fp32 baseline probability
            threshold = float(np.median(np.load(folder / f"{name}.baseline.npy")))
        runs[variant] = json.loads(out.read_text())
        print(f"  {name} {variant}: {runs[variant]['seconds']:.2f} s (warm-up call {runs[variant]['warmup_s']:.2f} s), "
              f"peak RSS {runs[variant]['peak_rss_mb']:.0f} MB", flush=True)
    truth = np.load(folder / f"{name}.baseline.npy") >= threshold
    baseline = runs.pop("baseline")
    rows = []
    for variant, result in runs.items():
        mask = np.load(folder / f"{name}.{variant}.npy") >= threshold
        counts = [int(np.count_nonzero(mask)), int(np.count_nonzero(truth))]
        rows.append({"name": name if variant == "ours" else f"{name} ({variant})", "input": result["input"],
                     "weights": result["weights"], "ours_s": round(result["seconds"], 3),
                     "baseline_s": round(baseline["seconds"], 3), "speedup": round(baseline["seconds"] / result["seconds"], 2),
                     "ours_all_s": [round(t, 3) for t in result["all_seconds"]],
                     "baseline_all_s": [round(t, 3) for t in baseline["all_seconds"]],
                     "dice_vs_fp32": round(dice(mask, truth), 5), "peak_rss_mb": round(result["peak_rss_mb"], 1),
                     "baseline_peak_rss_mb": round(baseline["peak_rss_mb"], 1), "device": result["device"],
                     "peak_gpu_mb": result["peak_gpu_mb"], "baseline_peak_gpu_mb": baseline["peak_gpu_mb"],
                     "threshold": round(threshold, 6) if model == "random" else threshold,
                     "threshold_rule": "median of the fp32 baseline probability" if model == "random" else "card threshold",
                     "mask_voxels": {"ours": counts[0], "fp32": counts[1], "total": int(mask.size)},
                     "dice_over": "nearly empty masks" if max(counts) < NEARLY_EMPTY * mask.size else "non-empty masks",
                     "ours_warmup_s": round(result["warmup_s"], 3), "baseline_warmup_s": round(baseline["warmup_s"], 3),
                     "threads": result["threads"], "load_avg_1min": result["load_avg_1min"],
                     "baseline_load_avg_1min": baseline["load_avg_1min"], "windows": result["items"],
                     "rechecked_in_fp32": result["rechecked_in_fp32"], "notes": result["notes"],
                     "backend": result["backend"], "precision": result["precision"], "kernels": result["kernels"],
                     **{key: result[key] for key in HARDWARE_KEYS},
                     "baseline_hardware": {key: baseline[key] for key in HARDWARE_KEYS}})
    return rows


def validation_nodules(card) -> list:
    """(name, image, truth) of the card's own validation nodules (LIDC crops)."""
    from TumorSegLib.training.data import card_validation_cases
    from TumorSegLib.training.transforms import read_pair

    cases = card_validation_cases(card, data_root=DATA / "lidc-nodule-vois" / "dev")
    return [(Path(case.name).name, *read_pair(case)) for case in cases]


def middle_click(image, truth) -> np.ndarray:
    """The world position of the nodule's middle voxel (in array order)."""
    voxels = np.argwhere(truth)
    return image.to_world(voxels[len(voxels) // 2])


def in_study(image, shape, background: float, noise: float):
    """``image`` in the middle of a study of ``shape`` (same world grid): (study Image, slices of the crop)."""
    from TumorSegLib.image import Image

    rng = np.random.default_rng(0)
    array = np.full(shape, background, dtype=np.float32)
    if noise:
        array += (noise * rng.standard_normal(shape, dtype=np.float32))
    corner = (np.asarray(shape) - image.shape) // 2
    inside = tuple(slice(int(c), int(c + n)) for c, n in zip(corner, image.shape))
    array[inside] = image.array
    affine = image.affine.copy()
    affine[:3, 3] = image.to_world(-corner)
    return Image(array, affine), inside


def timed_clicks(segmenter, image, point, repeats: int) -> tuple:
    """(fastest seconds, all seconds, last Prediction) of ``repeats`` clicks at ``point``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prediction = segmenter.predict(image, point=point)
        times.append(time.perf_counter() - start)
    return min(times), times, prediction


def round_trips(card, study, point, folder: Path, repeats: int) -> dict:
    """Seconds per click on a study file: a one-shot ``tumorseg segment`` process against a warm worker."""
    from TumorSegLib.io import write_image

    source = write_image(folder / "study.nii", study)
    command = [sys.executable, "-m", "TumorSegLib"]
    one_shot = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*command, "segment", str(source), "-o", str(folder / "one-shot.nii"), "--model", card.name,
                        "--device", "cpu", "--progress-json", "--point", *map(str, point)],
                       check=True, capture_output=True)
        one_shot.append(time.perf_counter() - start)
    worker = subprocess.Popen([*command, "worker", "--model", card.name, "--device", "cpu"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    started = time.perf_counter()
    json.loads(worker.stdout.readline())  # ready
    ready = time.perf_counter() - started
    warm = {False: [], True: []}  # clicks_only: write the whole mask, or only the box around the click
    for number in range(2 * repeats + 1):
        clicks_only = number > repeats
        start = time.perf_counter()
        worker.stdin.write(json.dumps({"id": number, "command": "segment", "input": str(source),
                                       "output": str(folder / "worker.nii"), "points": [list(point)],
                                       "clicks_only": clicks_only}) + "\n")
        worker.stdin.flush()
        while True:
            answer = json.loads(worker.stdout.readline())
            if answer.keys() & {"done", "error"}:
                break
        if "error" in answer:
            raise SystemExit(f"worker: {answer['error']}")
        warm[clicks_only].append(time.perf_counter() - start)
    worker.stdin.close()
    worker.wait(timeout=60)
    return {"one_shot_process_s": round(min(one_shot), 3), "one_shot_all_s": [round(t, 3) for t in one_shot],
            "worker_start_s": round(ready, 3), "worker_first_request_s": round(warm[False][0], 3),
            "worker_warm_click_s": round(min(warm[False][1:]), 3),
            "worker_warm_all_s": [round(t, 3) for t in warm[False][1:]],
            "worker_warm_click_clicks_only_s": round(min(warm[True]), 3),
            "worker_warm_clicks_only_all_s": [round(t, 3) for t in warm[True]],
            "input_file": "uncompressed NIfTI, 512x512x300 float32; masks written as uncompressed NIfTI"}


def chest_ct_lung() -> tuple:
    """(the real chest CT, its plain-lung voxel nearest the volume's centre: 15 mm around it average below -800 HU)."""
    from scipy import ndimage

    from TumorSegLib.io import read_image

    ct = read_image(DATA / "totalseg-example-ct" / "ct_cropped_1p5mm.nii.gz")
    size = np.maximum(np.round(15.0 / ct.spacing).astype(int), 1)
    lung = ndimage.uniform_filter(np.asarray(ct.array, dtype=np.float32), size=size) < -800
    voxels = np.argwhere(lung)
    return ct, voxels[np.argmin(np.linalg.norm(voxels - (np.asarray(ct.shape) - 1) / 2, axis=1))]


def lung_click(segmenter) -> dict:
    """A click on plain lung in the real chest CT: what it returns."""
    ct, voxel = chest_ct_lung()
    point = ct.to_world(voxel)
    seconds, times, prediction = timed_clicks(segmenter, ct, point, 2)
    return {"input": "totalseg-example-ct/ct_cropped_1p5mm.nii.gz", "shape": list(ct.shape),
            "point_ras_mm": np.round(point, 2).tolist(), "hu_at_point": float(ct.array[tuple(voxel)]),
            "lesion_voxels": int(prediction.mask.sum()), "notes": prediction.notes, "seconds": round(seconds, 3)}


BACKGROUNDS = {"lung-like": (-850.0, 30.0), "air": (-1000.0, 0.0)}  # HU, noise sd
STUDY = (512, 512, 300)


def in_chest_ct(image, chest, pad_mm: float = 60.0):
    """``image`` placed in the real chest CT's lung (``chest_ct_lung``): the CT resampled (linear) onto
    ``image``'s grid grown by ``pad_mm`` on every side, the crop's centre on the lung voxel, then the
    crop pasted in. Returns (study Image, slices of the crop)."""
    from scipy import ndimage

    from TumorSegLib.image import Image

    ct, voxel = chest
    pad = np.ceil(pad_mm / np.asarray(image.spacing)).astype(int)
    shape = tuple(int(n) for n in np.asarray(image.shape) + 2 * pad)
    affine = image.affine.copy()
    affine[:3, 3] = image.to_world(-pad)
    shift = ct.to_world(voxel) - image.to_world((np.asarray(image.shape) - 1) / 2)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3] @ grid + (affine[:3, 3] + shift)[:, None]
    index = np.linalg.inv(ct.affine)[:3] @ np.vstack([world, np.ones(world.shape[1])])
    array = ndimage.map_coordinates(np.asarray(ct.array, dtype=np.float32), index, order=1, cval=-1000.0)
    array = array.reshape(shape)
    inside = tuple(slice(int(p), int(p + n)) for p, n in zip(pad, image.shape))
    array[inside] = image.array
    return Image(array, affine), inside


def agreement(segmenter, nodules, count: int) -> dict:
    """Per background: Dice between the click on the crop and on the crop placed in a study, first ``count`` nodules.

    Studies: 512x512x300 with a lung-like and an air background, and the real chest CT's lung
    around the crop (``in_chest_ct``)."""
    from TumorSegLib.metrics import dice

    chest = chest_ct_lung()
    studies = {**{label: (lambda crop, b=b, n=n: in_study(crop, STUDY, b, n)) for label, (b, n) in BACKGROUNDS.items()},
               "real chest CT lung": lambda crop: in_chest_ct(crop, chest)}
    rows = {label: [] for label in studies}
    for name, crop, truth in nodules[:count]:
        point = middle_click(crop, truth)
        on_crop = segmenter.predict(crop, point=point).mask
        for label, make in studies.items():
            study, inside = make(crop)
            on_study = segmenter.predict(study, point=point).mask[inside]
            rows[label].append({"nodule": name, "crop_shape": list(crop.shape), "dice": round(dice(on_study, on_crop), 4),
                                "voxels_crop_study_truth": [int(on_crop.sum()), int(on_study.sum()), int(truth.sum())],
                                "dice_vs_truth_crop_study": [round(dice(on_crop, truth), 4),
                                                             round(dice(on_study, truth), 4)]})
            del study
    return {label: {"nodules": len(found), "dice_mean": round(float(np.mean([r["dice"] for r in found])), 4),
                    "dice_min": min(r["dice"] for r in found),
                    "at_least_0.99": sum(r["dice"] >= 0.99 for r in found), "cases": found}
            for label, found in rows.items()}


def click_case(model: str, repeats: int, nodule_count: int) -> dict:
    """The issue-13 click benchmark (see the module docstring)."""
    import torch

    from TumorSegLib import boxes
    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.metrics import dice

    card = find_card(model)
    nodules = validation_nodules(card)
    volumes = [float(np.count_nonzero(truth) * image.voxel_volume) for _, image, truth in nodules]
    name, crop, truth = nodules[int(np.argsort(volumes)[len(volumes) // 2])]
    point = middle_click(crop, truth)
    segmenter = Segmenter(card, "cpu")
    segmenter.predict(crop, point=point)  # warm-up: oneDNN kernels
    study, inside = in_study(crop, STUDY, *BACKGROUNDS["lung-like"])
    # the region the network sees for this click, cut out of the study: a crop as large as the click box
    around = boxes.context_box(study, study.to_index(point), boxes.context_mm(card, study))
    margin = boxes.margin_voxels(card, study, card.inference.overlap)
    box_crop = boxes.crop(study, boxes.clip(boxes.grow(around, margin, study.shape), study.shape))
    times, masks = {}, {}
    for label, image in (("nodule crop", crop), ("click-box crop", box_crop), ("512x512x300 study", study)):
        seconds, all_s, prediction = timed_clicks(segmenter, image, point, repeats)
        times[label] = {"shape": list(image.shape), "click_s": round(seconds, 3), "all_s": [round(t, 3) for t in all_s],
                        "lesion_voxels": int(prediction.mask.sum()), "notes": prediction.notes}
        masks[label] = prediction.mask
        print(f"  click on the {label} {image.shape}: {seconds:.3f} s", flush=True)
    outer = boxes.clip(boxes.grow(around, margin, study.shape), study.shape)
    exact = dice(masks["512x512x300 study"][boxes.slices(outer)], masks["click-box crop"])
    result = {"model": card.name, "precision": card.inference.precision.value,
              "threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(), "timed_nodule": name,
              "timed_nodule_voxels": int(truth.sum()), "point_ras_mm": np.round(point, 2).tolist(),
              "study_background": "lung-like: -850 HU, noise sd 30 HU", "clicks": times,
              "ratio_study_to_nodule_crop": round(times["512x512x300 study"]["click_s"] / times["nodule crop"]["click_s"], 2),
              "ratio_study_to_click_box_crop": round(times["512x512x300 study"]["click_s"]
                                                     / times["click-box crop"]["click_s"], 2),
              "dice_study_vs_click_box_crop": round(exact, 4)}
    with tempfile.TemporaryDirectory(prefix="tumorseg-click-") as folder:
        result["round_trip"] = round_trips(card, study, point, Path(folder), repeats)
    print(f"  round trip: {result['round_trip']}", flush=True)
    del study, box_crop
    result["crop_vs_study_dice"] = agreement(segmenter, nodules, nodule_count)
    print("  Dice crop vs study: " + ", ".join(f"{k} mean {v['dice_mean']} min {v['dice_min']}"
                                              for k, v in result["crop_vs_study_dice"].items()), flush=True)
    result["plain_lung_click"] = lung_click(segmenter)
    result["load_avg_end"] = os.getloadavg()
    return result


def agreement_case(model: str, nodule_count: int) -> dict:
    """The click case's accuracy part alone: crop-vs-study Dice and the plain-lung click."""
    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter

    card = find_card(model)
    segmenter = Segmenter(card, "cpu")
    return {"model": card.name, "weights_sha256": card.weights.sha256,
            "precision": card.inference.precision.value,
            "crop_vs_study_dice": agreement(segmenter, validation_nodules(card), nodule_count),
            "plain_lung_click": lung_click(segmenter), "load_avg_end": os.getloadavg()}


def print_table(rows: list) -> None:
    columns = ("name", "backend", "precision", "ours_s", "baseline_s", "speedup", "dice_vs_fp32", "dice_over",
               "peak_rss_mb", "baseline_peak_rss_mb")
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    for row in rows:
        print(f"{row['name']}: weights {row['weights']}; masks at {row['threshold']} ({row['threshold_rule']}), "
              f"voxels ours/fp32/total {row['mask_voxels']['ours']}/{row['mask_voxels']['fp32']}/{row['mask_voxels']['total']}; "
              f"windows {row['windows']}, rechecked in fp32 {row['rechecked_in_fp32']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--model", help="3D card for the CT cases (default: ct-lung-lesion-3d when its weights "
                                        "are present, else 'random')")
    parser.add_argument("--model-2d", help="2D card for the MIP case (default: mip-pet-2d when its weights are "
                                           "present, else 'random')")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="only these variants (and the baseline)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per run; the fastest is reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both sides run")
    parser.add_argument("--click", action="store_true", help="the click case (issue 13) instead of the others")
    parser.add_argument("--nodules", type=int, default=12, help="click case: nodules compared crop vs study")
    parser.add_argument("--agreement-only", action="store_true",
                        help="click case: only the crop-vs-study Dice and the plain-lung click (no timings)")
    parser.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.click:
        model = args.model or DEFAULT_MODELS["3d"]
        result = {"load_avg_start": os.getloadavg(),
                  **(agreement_case(model, args.nodules) if args.agreement_only else
                     click_case(model, args.repeats, args.nodules))}
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.worker:
        name, variant, model, folder, out, threshold, repeats, device = args.worker
        worker(name, variant, model, Path(folder), Path(out), float(threshold), int(repeats), device)
        return 0
    from cpu_limits import cpu_description

    models = {"3d": args.model or default_model("3d"), "2d": args.model_2d or default_model("2d"), "random": "random"}
    load = {"start": os.getloadavg()}
    print(f"models: 3D {models['3d']}, 2D {models['2d']} (random = random weights, seed 0); "
          f"{os.cpu_count()} CPU cores, load average {load['start']}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tumorseg-bench-") as folder:
        for name in args.cases:
            print(f"case {name}", flush=True)
            rows += run_case(name, models[CASES[name]["model"]], Path(folder), args.repeats, args.device, args.variants)
            load["end"] = os.getloadavg()
            if args.json:  # after every case, so that the finished cases survive an interrupted run
                Path(args.json).write_text(json.dumps({"models": models, "cpu_cores": os.cpu_count(),
                                                       "cpu": cpu_description(), "openvino": openvino_version(),
                                                       "torch_threads": rows[0]["threads"], "load_avg": load,
                                                       "cases": rows}, indent=2) + "\n")
    print_table(rows)
    for row in rows:
        baseline = row["baseline_hardware"]["fraction_of_peak"]
        use = (f"{row['fraction_of_peak']:.1%} of the {row['precision']} peak (baseline {baseline:.1%} of the fp32 peak)"
               if baseline is not None else f"{row['achieved_macs_per_s'] / 1e12:.2f} TMAC/s (no peak modelled here)")
        print(f"{row['name']}: {row['macs_per_window'] / 1e9:.2f} GMAC per window x {row['windows_computed']} "
              f"computed, {use}; kernels {row['kernels']}")
    print(f"load average (1, 5, 15 min) at the end: {load['end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
