"""The Slicer round trip of a click (issue 13): logic call to segment in the scene, warm worker against one-shot.

The study is the one of ``bench_inference.py --click``: the median-volume validation nodule of the
card's split in the middle of a 512x512x300 study (lung-like background), here stored as int16 HU
in a volume node of a headless Slicer scene (the slicer-core wheel: real MRML, see
``Testing/Python/slicer_app.py``), and clicked at the nodule's middle voxel:

- warm worker: ``TumorSegLogic.click`` (the module's click path). The first click starts the worker
  and writes the volume once; each timed click follows a "Remove last lesion", so every click adds
  its lesion into the same segmentation. The readouts update that follows a click (as after an
  edit, ``updatePendingReadouts``) is timed apart;
- one-shot: ``TumorSegLogic.segment(point=...)`` (the module's path before this change): writes the
  volume, starts ``tumorseg segment``, reads the whole-grid mask back, measures every lesion;
- inference alone: ``Segmenter.predict`` for the same click in this process (after a warm-up).

Times are the fastest of ``--repeats``; "added" is a round trip minus inference alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (REPO, REPO / "TumorSeg", REPO / "Testing" / "Python", HERE):
    sys.path.insert(0, str(path))

from bench_inference import BACKGROUNDS, STUDY, in_study, middle_click, validation_nodules  # noqa: E402


def timed(call, repeats: int) -> tuple:
    """(fastest seconds, all seconds rounded, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), [round(t, 3) for t in times], result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ct-lung-lesion-3d")
    parser.add_argument("--repeats", type=int, default=3, help="timed clicks per path; the fastest is reported")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import slicer_app
    import torch

    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter
    from TumorSegLib.image import Image
    from TumorSegSlicerLib import mrml
    from TumorSegSlicerLib.logic import TumorSegLogic

    card = find_card(args.model)
    nodules = validation_nodules(card)
    volumes = [float(np.count_nonzero(truth) * image.voxel_volume) for _, image, truth in nodules]
    name, crop, truth = nodules[int(np.argsort(volumes)[len(volumes) // 2])]
    point = middle_click(crop, truth).tolist()
    study, _ = in_study(crop, STUDY, *BACKGROUNDS["lung-like"])
    study = Image(np.round(study.array).astype(np.int16), study.affine)
    segmenter = Segmenter(card, "cpu")
    segmenter.predict(study, points=[point])  # warm-up
    inference, inference_all, prediction = timed(lambda: segmenter.predict(study, points=[point]), args.repeats)
    print(f"inference alone: {inference:.3f} s", flush=True)

    scene = slicer_app.start()
    logic = TumorSegLogic()
    result = {"model": card.name, "nodule": name, "point_ras_mm": np.round(point, 2).tolist(), "study": list(STUDY),
              "study_dtype": "int16", "threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
              "load_avg_start": os.getloadavg(), "inference_s": round(inference, 3), "inference_all_s": inference_all,
              "lesion_voxels": int(prediction.mask.sum())}
    try:
        with tempfile.TemporaryDirectory(prefix="tumorseg-slicer-click-") as folder:
            logic.tempRoot = Path(folder)
            start = time.perf_counter()
            volume = mrml.add_volume_from_image(scene, study, "study")
            result["add_volume_s"] = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            segmentation = logic.click(volume, card.name, point, device="cpu")
            result["warm_first_click_s"] = round(time.perf_counter() - start, 3)
            result["clicked_voxels"] = int(logic.tumorMask(segmentation).sum())
            start = time.perf_counter()
            logic.updatePendingReadouts()
            result["readouts_update_s"] = round(time.perf_counter() - start, 3)
            warm, requests, removals = [], [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                logic.removeLastLesion(segmentation)
                removals.append(time.perf_counter() - start)
                start = time.perf_counter()
                run = logic.click(volume, card.name, point, outputSegmentation=segmentation, device="cpu",
                                  waitForCompletion=False)
                run.wait()
                warm.append(time.perf_counter() - start)
                requests.append(run.process.done["seconds"])
            result["warm_click_s"] = round(min(warm), 3)
            result["warm_click_all_s"] = [round(t, 3) for t in warm]
            result["worker_request_s"] = min(requests)  # the worker's own time per request (read, infer, write)
            result["remove_lesion_s"] = round(min(removals), 3)
            result["warm_added_s"] = round(min(warm) - inference, 3)
            one_shot, one_shot_all, _ = timed(lambda: logic.segment(volume, card.name, device="cpu", point=point),
                                              args.repeats)
            result["one_shot_s"] = round(one_shot, 3)
            result["one_shot_all_s"] = one_shot_all
            result["one_shot_added_s"] = round(one_shot - inference, 3)
    finally:
        logic.shutdown()
        slicer_app.stop(scene)
    result["load_avg_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
