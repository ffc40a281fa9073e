"""SUV agreement of the DICOM reader (issue 15): the IBSI PT series against the IBSI SUV NIfTI.

For each IBSI patient with DICOM in ../shared/data/ibsi-sts-pet:
- GML: the series as stored (Units GML, already SUV) read by ``read_series`` against the NIfTI;
- BQML: the same series rewritten as Bq/mL (``TumorSegLib.suv_reference``, Decay Correction START,
  62 min uptake) read back; on STS_012 also the header variants of the tests.
Per row: the largest relative difference over all voxels and over voxels >= 1 SUV, the share of voxels
within 1 % (+ half the re-quantisation step), SUVmax in the GTV and its relative difference, and the
largest affine difference (mm). Writes a markdown table (stdout, or ``--out``). Run from the repository root::

    .venv/bin/python Testing/benchmarks/suv_agreement.py --out docs/suv-agreement.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom

from TumorSegLib.dicom import read_series
from TumorSegLib.io import read_image
from TumorSegLib.suv_reference import BqmlHeader, rewrite_as_bqml

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ibsi-sts-pet"
VARIANTS = {
    "BQML START, injection the day before": BqmlHeader(injection=datetime.datetime(2024, 3, 4, 23, 20),
                                                       series=datetime.datetime(2024, 3, 5, 0, 41)),
    "BQML ADMIN": BqmlHeader(decay_correction="ADMIN", injection=None),
    "BQML START, only StartTime": BqmlHeader(start_datetime=False),
    "BQML START, STS_012 date quirk": BqmlHeader(injection=datetime.datetime(2005, 2, 16, 11, 29),
                                                 series=datetime.datetime(2005, 2, 16, 12, 47, 20),
                                                 injection_date_tag=datetime.date(2005, 2, 17)),
}


def row(case: str, kind: str, image, reference, gtv, header: BqmlHeader | None) -> str:
    ref, ours = reference.array.astype(np.float64), image.array.astype(np.float64)
    relative = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-12)
    step = np.zeros(ours.shape[2])
    if header is not None:
        slopes = [float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in image.meta["dicom_files"]]
        step = np.array(slopes) / (header.decayed_dose_bq() / (header.weight_kg * 1000.0))
    within = np.abs(ours - ref) <= 0.01 * np.abs(ref) + step[None, None, :] / 2
    suv_max, ref_max = ours[gtv].max(), ref[gtv].max()
    return (f"| {case} | {kind} | {relative.max():.2e} | {relative[ref >= 1].max():.2e} | {100 * within.mean():.2f} % "
            f"| {ref_max:.3f} | {(suv_max - ref_max) / ref_max:+.1e} | {np.abs(image.affine - reference.affine).max():.1e} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="markdown file to write (default: stdout)")
    args = parser.parse_args(argv)
    lines = ["| case | series | max rel. diff, all voxels | max rel. diff, >= 1 SUV | voxels within 1 % "
             "| SUVmax in GTV (NIfTI) | SUVmax rel. diff | affine max diff (mm) |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for folder in sorted((DATA / "dicom").iterdir()):
            case = folder.name
            files = sorted((folder / "PET" / "image").glob("*.dcm"))
            reference = read_image(DATA / "nifti" / case / "PET_image.nii.gz")
            gtv = read_image(DATA / "nifti" / case / "PET_mask.nii.gz").array != 0
            lines.append(row(case, "GML (as stored)", read_series(files[0]), reference, gtv, None))
            variants = {"BQML START, 62 min": BqmlHeader(), **(VARIANTS if case == "STS_012" else {})}
            for number, (kind, header) in enumerate(variants.items()):
                target = Path(scratch) / f"{case}-{number}"
                rewrite_as_bqml(files, target, header)
                lines.append(row(case, kind, read_series(target), reference, gtv, header))
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
