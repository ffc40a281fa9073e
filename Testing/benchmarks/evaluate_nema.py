"""Sphere volumes on the NEMA IEC body phantom (issue 12): pet-lesion-3d and the threshold rules.

Input: the two PT DICOM reconstructions of ``../shared/data/nema-iec-pet`` (read with
``TumorSegLib.dicom.read_series``). They carry no dose or weight: the values are activity
concentration, not SUV. They are scaled to SUV-like units by dividing by the background
concentration B, so that the warm background reads 1 (as SUV ~1 in soft tissue) and the spheres
their sphere-to-background ratio. B = median of the voxels within [0.5, 2] x B0, B0 = median of the
voxels above 10 % of the 99.9th percentile (the phantom body, whose voxels are mostly background).

The six hot spheres are found, not assumed: components of the volume smoothed by 1 voxel above
3 B, the six largest, ordered by size and matched to the nominal 10, 13, 17, 22, 28, 37 mm; the
click is each sphere's centre of mass (voxels >= 50 % of its smoothed peak). Each method
segments around the click:

- pet-lesion-3d: ``Segmenter.predict(point=click)`` (the card's context box), then the component
  holding the click voxel (the box holds several spheres; none when the click voxel is not segmented);
- the rules of ``TumorSegLib.pet_thresholds`` in a ``BOX_MM`` box centred on the click.

Measured volume (mL) and equivalent-sphere diameter (6 V / pi)^(1/3) against the nominal sphere.
Writes ``docs/nema-report.md`` (``--report``) and prints the rows as JSON. Run from the repository root::

    .venv/bin/python Testing/benchmarks/evaluate_nema.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "nema-iec-pet" / "data"
RECONSTRUCTIONS = ("pet_recon_1", "pet_recon_2")
NOMINAL_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
BOX_MM = 60.0  # threshold box around a click: a sphere and its background, not its neighbours (>= 50 mm apart)
MODEL = "pet-lesion-3d"


def nominal_ml(diameter_mm: float) -> float:
    return math.pi / 6.0 * diameter_mm**3 / 1000.0


def background(array: np.ndarray) -> float:
    """The background concentration B (see the module docstring)."""
    first = float(np.median(array[array > 0.1 * np.percentile(array, 99.9)]))
    return float(np.median(array[(array > 0.5 * first) & (array < 2.0 * first)]))


def spheres(image) -> list:
    """[(nominal diameter mm, click voxel index)] of the six hot spheres of a background-scaled volume."""
    smooth = ndimage.gaussian_filter(np.asarray(image.array, dtype=np.float32), 1.0)
    labels, count = ndimage.label(smooth > 3.0)
    found = []
    for number in range(1, count + 1):
        component = labels == number
        core = component & (smooth >= 0.5 * smooth[component].max())
        found.append((int(component.sum()), np.array(ndimage.center_of_mass(core))))
    found.sort(key=lambda item: item[0])
    if len(found) < 6:
        raise SystemExit(f"found {len(found)} hot spheres, expected 6")
    return [(nominal, centre) for nominal, (_, centre) in zip(NOMINAL_MM, found[-6:])]


def scaled_volume(path: Path):
    """(SUV-like Image = concentration / B, B) of one reconstruction."""
    from TumorSegLib.dicom import read_series

    image = read_series(path)
    level = background(np.asarray(image.array, dtype=np.float32))
    return image.with_array((np.asarray(image.array, dtype=np.float32) / level).astype(np.float32)), level


def clicked_component(mask: np.ndarray, index) -> np.ndarray:
    """The 26-connected component of ``mask`` holding the click voxel (empty when the click is off the mask)."""
    from TumorSegLib.pet_thresholds import component_at

    return component_at(mask, np.rint(index).astype(int))


def threshold_in_box(image, index, method: str) -> np.ndarray:
    from TumorSegLib.pet_thresholds import threshold_mask

    half = np.ceil(BOX_MM / 2.0 / image.spacing).astype(int)
    centre = np.rint(index).astype(int)
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, image.shape))
    mask = np.zeros(image.shape, dtype=bool)
    mask[box] = threshold_mask(image.array[box], method)
    return mask


def measure(mask: np.ndarray, image, nominal: float) -> dict:
    ml = float(mask.sum()) * image.voxel_volume / 1000.0
    return {"ml": ml, "volume_error": ml / nominal_ml(nominal) - 1.0,
            "diameter_mm": (6.0 * ml * 1000.0 / math.pi) ** (1.0 / 3.0)}


def evaluate(path: Path, segmenter=None) -> list:
    """Rows (reconstruction, method, nominal, ml, volume error, diameter) for one reconstruction."""
    from TumorSegLib.pet_thresholds import METHODS

    image, _ = scaled_volume(path)
    rows = []
    for nominal, index in spheres(image):
        masks = {m: threshold_in_box(image, index, m) for m in METHODS}
        if segmenter is not None:
            prediction = segmenter.predict(image, point=image.to_world(index))
            masks[MODEL] = clicked_component(prediction.mask, index)
        for method, mask in masks.items():
            rows.append({"reconstruction": path.name, "method": method, "nominal_mm": nominal,
                         "nominal_ml": nominal_ml(nominal), **measure(mask, image, nominal)})
    return rows


def report_text(rows: list, levels: dict) -> str:
    from TumorSegLib.pet_thresholds import LABELS

    labels = {MODEL: MODEL, **LABELS}
    lines = ["# NEMA IEC body phantom: sphere volumes\n",
             "Generated by `Testing/benchmarks/evaluate_nema.py`; every figure was measured by that script.\n",
             "- Data: `../shared/data/nema-iec-pet`, two reconstructions of one acquisition (PT DICOM, 2.08 x 2.08 x "
             "2.78 mm), read by `TumorSegLib.dicom.read_series`. No dose or weight: activity concentration, not SUV.",
             "- Scaling to SUV-like units: divided by the background concentration B (background = 1); B = "
             + ", ".join(f"{name} {level:.0f}" for name, level in levels.items()) + " (stored units).",
             "- Spheres found automatically (six largest hot components, ordered by size); click = centre of mass; "
             f"thresholds in a {BOX_MM:g} mm box around the click, pet-lesion-3d in its context box (component of "
             "the click).",
             "- Equivalent diameter = (6 V / pi)^(1/3). Aim of the issue: volume within 20 % for spheres >= 17 mm.\n"]
    for reconstruction in sorted({r["reconstruction"] for r in rows}):
        lines += [f"## {reconstruction}\n", "| method | " + " | ".join(f"{d:g} mm ({nominal_ml(d):.2f} mL)" for d in NOMINAL_MM)
                  + " | spheres >= 17 mm within 20 % |", "|---|" + "---|" * (len(NOMINAL_MM) + 1)]
        for method in labels:
            found = {r["nominal_mm"]: r for r in rows if r["reconstruction"] == reconstruction and r["method"] == method}
            if not found:
                continue
            cells = [f"{found[d]['ml']:.2f} mL ({100 * found[d]['volume_error']:+.0f} %), {found[d]['diameter_mm']:.1f} mm"
                     for d in NOMINAL_MM]
            within = sum(1 for d in NOMINAL_MM if d >= 17 and abs(found[d]["volume_error"]) <= 0.2)
            lines.append(f"| {labels[method]} | " + " | ".join(cells) + f" | {within}/4 |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="folder holding pet_recon_1 and pet_recon_2")
    parser.add_argument("--model", default=MODEL, help="PET lesion card (name or file); 'none' for thresholds only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", default=str(REPO / "docs" / "nema-report.md"))
    args = parser.parse_args(argv)

    import torch

    from TumorSegLib.cards import find_card
    from TumorSegLib.engine import Segmenter

    torch.set_num_threads(args.threads)
    segmenter = None if args.model == "none" else Segmenter(find_card(args.model), "cpu")
    rows, levels = [], {}
    for name in RECONSTRUCTIONS:
        path = Path(args.data) / name
        levels[name] = scaled_volume(path)[1]
        rows += evaluate(path, segmenter)
    Path(args.report).write_text(report_text(rows, levels))
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
