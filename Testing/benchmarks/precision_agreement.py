"""Reduced precision against fp32 on the shipped models' own validation cases (issue 3).

For each card (default: every shipped model), the validation cases of its own training split
(``TumorSegLib.training.data.card_validation_cases``) are segmented twice on the CPU by
``Segmenter.predict`` (``--backend``: PyTorch or OpenVINO): with ``precision "fp32"`` and ``"bf16"``
(PyTorch autocast or OpenVINO's bf16 inference precision; the card's
``recheck_margin`` applies), so that a card can choose its precision from the figures (the
table also says what the card's precision runs as on this CPU). Whole MIP images run whole; CT nodule cases run as a click
on the nodule (the mask voxel nearest its centroid), as in ``evaluate_ct_lesions.py``. Per case:
the Dice between the two final masks (1 when both are empty), their sizes, each one's Dice against
the truth, and both times. Summaries per model: agreement (minimum, median, pooled over all cases,
cases under 0.99), the change of mean Dice against the truth and the median time of each.

Writes ``docs/precision-agreement.md`` and, with ``--rows``, the per-case rows as JSON. Run from the
repository root::

    .venv/bin/python Testing/benchmarks/precision_agreement.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
MODELS = ("mip-pet-2d", "ct-lung-lesion-3d", "ct-lung-lesion-2d", "ct-liver-lesion-2d")
AGREEMENT = 0.99  # the bar for reduced precision: masks agree with fp32 at Dice >= 0.99


def run(segmenter, image, point, overrides) -> tuple:
    tick = time.perf_counter()
    prediction = segmenter.predict(image, point=point, overrides=overrides)
    return prediction.mask, time.perf_counter() - tick


def compare_case(segmenter, case) -> dict:
    """One case segmented in fp32 and in bf16: agreement, accuracy, times. The case is read as the card reads
    it (JPEG pictures by its channel); the truth is the first label channel of its training config (tumour)."""
    from evaluate_ct_lesions import click_point

    from TumorSegLib.metrics import dice
    from TumorSegLib.training.transforms import read_pair

    card = segmenter.card
    values = (card.provenance.get("config", {}).get("data", {}).get("label_values") or [None])[0]
    image, truth = read_pair(case, card, values)
    point = click_point(image, truth) if image.ndim == 3 and truth.any() else None
    fp32, fp32_s = run(segmenter, image, point, {"precision": "fp32"})
    bf16, bf16_s = run(segmenter, image, point, {"precision": "bf16"})
    return {"case": Path(case.name).name.split(".")[0], "patient": case.patient, "control": not truth.any(),
            "agreement": dice(bf16, fp32), "overlap_voxels": int(np.count_nonzero(bf16 & fp32)),
            "bf16_voxels": int(np.count_nonzero(bf16)), "fp32_voxels": int(np.count_nonzero(fp32)),
            "dice_fp32": dice(fp32, truth), "dice_bf16": dice(bf16, truth), "fp32_s": fp32_s, "bf16_s": bf16_s}


def summary(rows: list) -> dict:
    agreements = [r["agreement"] for r in rows]
    patients = [r for r in rows if not r["control"]]
    pooled = 2.0 * sum(r["overlap_voxels"] for r in rows) / max(sum(r["bf16_voxels"] + r["fp32_voxels"] for r in rows), 1)
    return {"cases": len(rows), "patients": len(patients), "agreement_min": min(agreements),
            "agreement_median": statistics.median(agreements), "agreement_pooled": pooled,
            "cases_below": sum(a < AGREEMENT for a in agreements),
            "dice_fp32_mean": float(np.mean([r["dice_fp32"] for r in patients])),
            "dice_bf16_mean": float(np.mean([r["dice_bf16"] for r in patients])),
            "fp32_s_median": statistics.median(r["fp32_s"] for r in rows),
            "bf16_s_median": statistics.median(r["bf16_s"] for r in rows)}


def report(summaries: dict, rows: dict, precisions: dict, environment: str) -> str:
    lines = ["# Reduced precision against fp32\n\n",
             "Made by `Testing/benchmarks/precision_agreement.py`; every figure below was measured by that script "
             f"in one run ({environment}). Each shipped model's validation cases (its own training split) are "
             "segmented in fp32 and in bf16 (PyTorch autocast, or OpenVINO's bf16 inference precision with "
             "backend openvino); agreement is the Dice between the two final masks "
             "(1 when both are empty). CT nodules are segmented from a click, MIP images whole. The last "
             "column is what the card's own precision runs as on this CPU.\n\n",
             "| model | cases | agreement min | median | pooled | cases < 0.99 | "
             "mean Dice vs truth, fp32 | bf16 | median s, fp32 | bf16 | card runs |\n",
             "|---|---|---|---|---|---|---|---|---|---|---|\n"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['cases']} ({s['patients']} with tumour) | "
                     f"{s['agreement_min']:.4f} | {s['agreement_median']:.4f} | {s['agreement_pooled']:.4f} | "
                     f"{s['cases_below']} | {s['dice_fp32_mean']:.4f} | {s['dice_bf16_mean']:.4f} | "
                     f"{s['fp32_s_median']:.3f} | {s['bf16_s_median']:.3f} | {precisions[name]} |\n")
    lines.append("\nCases whose bf16 and fp32 masks agree below 0.99:\n\n")
    below = [(name, r) for name, model_rows in rows.items() for r in model_rows if r["agreement"] < AGREEMENT]
    for name, r in below:
        lines.append(f"- {name} {r['case']}{' (control)' if r['control'] else ''}: agreement {r['agreement']:.4f}, "
                     f"voxels bf16/fp32/both {r['bf16_voxels']}/{r['fp32_voxels']}/{r['overlap_voxels']}, "
                     f"Dice vs truth fp32 {r['dice_fp32']:.4f}, bf16 {r['dice_bf16']:.4f}\n")
    if not below:
        lines.append("- none\n")
    return "".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--models-dir", help="folder of the cards (default: the installed ones)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                        help="what runs the network (auto: OpenVINO when installed); bf16 is its bf16 precision")
    parser.add_argument("--limit", type=int, help="only the first N validation cases of each model (a quick look)")
    parser.add_argument("--report", default=str(REPO / "docs" / "precision-agreement.md"))
    parser.add_argument("--rows", help="write per-case rows and summaries as JSON here")
    args = parser.parse_args(argv)

    import torch

    from TumorSegLib.cards import find_card
    from TumorSegLib.device import autocast_dtype
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.training.data import card_validation_cases

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, summaries, precisions = {}, {}, {}
    for name in args.models:
        card = find_card(name, args.models_dir)
        precision = card.inference.precision.value
        dtype = autocast_dtype(torch.device("cpu"), precision)
        precisions[name] = f"{precision} = {'fp32' if dtype is None else str(dtype).replace('torch.', '')}"
        segmenter = Segmenter(card, "cpu", backend=args.backend)
        backend = segmenter.backend
        cases = card_validation_cases(card)[: args.limit]
        compare_case(segmenter, cases[0])  # warm-up: the first calls pay one-off set-up costs
        rows[name] = []
        for number, case in enumerate(cases):
            rows[name].append(compare_case(segmenter, case))
            print(f"{name} {number + 1}/{len(cases)} {rows[name][-1]['case']}: agreement "
                  f"{rows[name][-1]['agreement']:.4f}", file=sys.stderr, flush=True)
        summaries[name] = summary(rows[name])
        print(json.dumps({name: summaries[name]}), flush=True)
    environment = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, backend {backend}"
                   f"{', first ' + str(args.limit) + ' validation cases per model' if args.limit else ''}")
    Path(args.report).write_text(report(summaries, rows, precisions, environment))
    if args.rows:
        Path(args.rows).write_text(json.dumps({"summaries": summaries, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
