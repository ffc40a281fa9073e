"""The pixel size of the MIP-PET PNGs (issue 16), which the files do not carry, estimated from the brain.

The brain is the hottest large region at the top of a whole-body FDG MIP. For each TRAINING image of mip-pet-2d's
split (patients and controls; never a validation image) whose top quarter holds a region of grey level below ``HOT``
(dark = hot) of at least ``MIN_PX`` pixels, the widest row of the largest such region is its brain width in pixels;
the pixel size is ``BRAIN_MM`` over the median width, rounded to 0.1 mm (the rule in docs/ship-rules.md, fixed before
it was run). The brain's height in rows is printed beside it: about 0.75-0.85 of its width if rows and columns share
one pixel size. Prints the figures as JSON. Run from the repository root::

    .venv/bin/python Testing/benchmarks/mip_pixel_size.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
BRAIN_MM = 137.0  # mean adult brain width (about 130-145 mm)
BRAIN_MM_RANGE = (130.0, 145.0)
HOT = 30  # grey level below which a PNG pixel is hot (the PNGs are inverted: dark = hot)
MIN_PX = 200
TOP = 0.25  # the brain is looked for in this top fraction of the image's rows


def brain_extent(picture: np.ndarray) -> tuple | None:
    """(width, height) in pixels of the largest hot region of the image's top quarter, or None without one of at
    least ``MIN_PX`` pixels. Width: the widest row (first to last pixel of the region in it); height: its rows."""
    top = np.asarray(picture)[: int(round(picture.shape[0] * TOP))] < HOT
    labels, count = ndimage.label(top)
    if not count:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < MIN_PX:
        return None
    region = labels == 1 + int(np.argmax(sizes))
    rows = np.flatnonzero(region.any(axis=1))
    width = max(int(np.ptp(np.flatnonzero(region[r]))) + 1 for r in rows)
    return width, int(rows[-1] - rows[0] + 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(SHARED / "dmiai2023-mip-pet" / "dev"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from TumorSegLib.cards import find_card
    from TumorSegLib.io import read_image
    from TumorSegLib.training.data import card_split

    training = card_split(find_card("mip-pet-2d"), args.data_root).train
    extents = [e for e in (brain_extent(read_image(case.image).array) for case in training) if e is not None]
    widths, heights = np.array([w for w, _ in extents]), np.array([h for _, h in extents])
    width = float(np.median(widths))
    result = {
        "training_images": len(training), "images_with_a_brain": len(extents),
        "brain_width_px": {"median": width, "quartiles": np.percentile(widths, [25, 75]).tolist()},
        "brain_height_px": {"median": float(np.median(heights)), "quartiles": np.percentile(heights, [25, 75]).tolist()},
        "height_over_width": float(np.median(heights / widths)),
        "pixel_mm": round(BRAIN_MM / width, 1),
        "pixel_mm_for_brain_widths": [round(mm / width, 2) for mm in BRAIN_MM_RANGE],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
