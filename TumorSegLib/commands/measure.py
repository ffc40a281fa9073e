"""``tumorseg measure MASK [--image IMAGE] [--modality PET|CT] [--organ ORGAN_MASK] [--json OUT] [--csv OUT]``."""

from __future__ import annotations

import argparse

import numpy as np

from . import HelpFormatter
from ..dicom_seg import is_dicom_seg_path, read_dicom_seg
from ..errors import TumorSegError
from ..hints import PathLike
from ..image import Image
from ..files import require_not_input, require_writable, write_json
from ..io import read_image
from ..measure import MODALITIES, measure_lesions, organ_totals
from ..report import readouts_text, write_csv
from ..suv import read_input, require_suv
from ..terminology import ORGANS
from .segment import add_dicom_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "measure",
        help="measure the lesions of a mask (volume, RECIST axes, 3D diameter, SUV or HU)",
        description="Measure every lesion (connected component; 18-connectivity in 3D, 8 in 2D) of a mask: "
        "volume, centroid, RECIST long and short axis, 3D maximum diameter and, with --image, PET or CT "
        "statistics. Every non-zero voxel is tumour (several labels are merged).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("mask", help="mask file (.nii, .nii.gz, .nrrd, .png) or a DICOM SEG (.dcm) of --image")
    parser.add_argument("--image", help="image on the same grid, or a DICOM series, for SUV (PET) or HU (CT) statistics")
    add_dicom_arguments(parser)
    parser.add_argument(
        "--modality", type=str.upper, choices=MODALITIES,
        help="how to read --image; default: the image's own modality, else PET for a 3D floating-point image "
        "with values in [0, 100), CT otherwise (2D images: no statistics unless given)",
    )
    parser.add_argument("--organ", metavar="ORGAN_MASK",
                        help="the organ the tumours lie in, on the mask's grid (e.g. the liver of --organ-mask, or the "
                        "DICOM SEG itself: its segment 2): adds the organ's size and the tumour's share of it")
    parser.add_argument("--organ-name", choices=tuple(ORGANS), default=next(iter(ORGANS)),
                        help="what --organ holds (names the readouts)")
    parser.add_argument("--json", metavar="OUT.json", help="write lesions and totals as JSON")
    parser.add_argument("--csv", metavar="OUT.csv", help="write one row per lesion as CSV")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path in (args.json, args.csv):
        if path:
            require_writable(path)
    require_not_input([args.json, args.csv], [args.mask, args.image, args.organ])
    image = read_input(args.image, "image", args.series, args.suv_factor) if args.image else None
    if image is not None and args.modality != "CT":
        require_suv(image, "--image")
    mask = read_mask(args.mask, image)
    readouts = measure_lesions(mask, image, args.modality)
    if args.organ:
        organ = read_mask(args.organ, image, segment=2)
        organ.require_same_grid(mask, "--organ", "mask")
        inside = (organ.array != 0) & (mask.array != 0)
        readouts.totals.update(organ_totals(args.organ_name, int(np.count_nonzero(organ.array)),
                                            int(np.count_nonzero(inside)), mask))
    print(readouts_text(readouts))
    if args.json:
        write_json(args.json, readouts.to_dict())
    if args.csv:
        write_csv(args.csv, readouts.table_rows())
    return 0


def read_mask(path: PathLike, image: Image | None, segment: int = 1) -> Image:
    """The mask file, or segment ``segment`` of a DICOM SEG placed on the grid of the DICOM series ``image`` it
    references."""
    if not is_dicom_seg_path(path):
        return read_image(path, "mask")
    if image is None or not image.meta.get("sop_instance_uids"):
        raise TumorSegError("a DICOM SEG mask needs its source DICOM series as --image")
    return image.with_array(read_dicom_seg(path, image, segment).astype("uint8"))
