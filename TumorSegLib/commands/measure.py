"""``tumorseg measure MASK [--image IMAGE] [--modality PET|CT] [--json OUT] [--csv OUT]``."""

from __future__ import annotations

import argparse

from . import HelpFormatter
from ..io import read_image
from ..measure import MODALITIES, measure_lesions
from ..files import require_not_input, require_writable, write_json
from ..report import readouts_text, write_csv


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="measure the lesions of a mask (volume, RECIST axes, 3D diameter, SUV or HU)",
        description="Measure every lesion (connected component; 18-connectivity in 3D, 8 in 2D) of a mask: "
        "volume, centroid, RECIST long and short axis, 3D maximum diameter and, with --image, PET or CT "
        "statistics. Every non-zero voxel is tumour (several labels are merged).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("mask", help="mask file (.nii, .nii.gz, .nrrd, .png)")
    parser.add_argument("--image", help="image on the same grid, for SUV (PET) or HU (CT) statistics")
    parser.add_argument(
        "--modality", type=str.upper, choices=MODALITIES,
        help="how to read --image; default: the image's own modality, else PET for a 3D floating-point image "
        "with values in [0, 100), CT otherwise (2D images: no statistics unless given)",
    )
    parser.add_argument("--json", metavar="OUT.json", help="write lesions and totals as JSON")
    parser.add_argument("--csv", metavar="OUT.csv", help="write one row per lesion as CSV")
    parser.set_defaults(func=run)


def run(args) -> int:
    for path in (args.json, args.csv):
        if path:
            require_writable(path)
    require_not_input([args.json, args.csv], [args.mask, args.image])
    mask = read_image(args.mask, "mask")
    image = read_image(args.image, "image") if args.image else None
    readouts = measure_lesions(mask, image, args.modality)
    print(readouts_text(readouts))
    if args.json:
        write_json(args.json, readouts.to_dict())
    if args.csv:
        write_csv(args.csv, readouts.table_rows())
    return 0
