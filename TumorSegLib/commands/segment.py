"""``tumorseg segment INPUT -o OUTPUT [--model NAME] [--device auto|cpu|cuda] [--roi ...] [--point R A S] ...``.

INPUT is a NIfTI, NRRD, PNG or JPEG file, or a folder of them (OUTPUT is then a folder; the network
is loaded once). The mask lands on INPUT's grid in the same kind of file (PNG masks 0/255); a
MIP-PET model given a 3D PET volume writes the 2D MIP mask as PNG, with the MIP beside it. A JPEG
(a windowed CT slice, read through the card's picture channel) gets a PNG mask, never a JPEG.
SIGINT/SIGTERM cancel the run: exit 130 and no output file for the case in progress.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from ..errors import TumorSegError
from ..io import JPEG_SUFFIXES, PNG_SUFFIXES, SUFFIXES, case_name, image_suffix, read_image
from ..progress import Cancel, ProgressBar, json_lines, scaled
from ..report import readouts_text, require_writable, write_json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment tumours in a PET, CT or MIP image (or a folder of them) and measure them",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("input", help="image file (.nii, .nii.gz, .nrrd, .png, .jpg) or a folder of them")
    parser.add_argument("-o", "--output", required=True, help="mask file (same kind as INPUT) or folder")
    parser.add_argument("--roi", type=int, nargs="+", metavar="I0 I1",
                        help="restrict to a voxel box I0 I1 J0 J1 [K0 K1], half-open (I0 <= i < I1), "
                        "in the indices of the grid the mask is written on")
    parser.add_argument("--point", type=float, nargs="+", metavar="R A S",
                        help="segment around this world point (RAS mm; 2D: row col mm), in a box of the model's "
                        "inference.context_mm")
    parser.add_argument("--json", metavar="READOUTS.json", help="write the lesion readouts as JSON")
    parser.add_argument("--progress-json", action="store_true",
                        help="print one JSON object per progress step on stdout (for a calling process)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default: the model card's)")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model card's)")
    parser.add_argument("--min-lesion-ml", type=float, help="remove lesions smaller than this (3D; default: card)")
    parser.add_argument("--min-lesion-px", type=int, help="remove lesions with fewer pixels (2D; default: card)")
    parser.add_argument("--flip-axes", type=int, nargs="*", metavar="AXIS",
                        help="test-time flips: average over the identity and a flip of each of these spatial axes "
                        "of the network input (none given: no flips; default: the card's)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="network precision (default: card)")
    parser.set_defaults(func=run)


def add_model_arguments(parser) -> None:
    parser.add_argument("--model", help="model name or card file (default: the one installed model that fits INPUT)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the network runs")
    parser.add_argument("--models-dir", help="extra folder of model cards (also: TUMORSEG_MODELS)")


@contextlib.contextmanager
def cancel_on_signals(cancel: Cancel):
    """SIGINT and SIGTERM set ``cancel`` (the work stops at its next check) while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: cancel.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def progress_reporter(as_json: bool, description: str):
    if as_json:
        yield json_lines()
    else:
        with ProgressBar(description) as bar:
            yield bar


def run(args) -> int:
    from ..cards import find_card
    from ..engine import Segmenter, default_card
    from ..windowed import default_picture_card, is_picture

    inputs, outputs = _pairs(Path(args.input), Path(args.output))
    if args.json:
        require_writable(args.json, "readouts")
    if args.model:
        card = find_card(args.model, args.models_dir)
    elif is_picture(inputs[0]):
        card = default_picture_card(args.models_dir)
    else:
        card = default_card(read_image(inputs[0]), args.models_dir)
    overrides = {"overlap": args.overlap, "threshold": args.threshold, "min_lesion_ml": args.min_lesion_ml,
                 "min_lesion_px": args.min_lesion_px, "precision": args.precision, "flip_axes": args.flip_axes}
    cancel = Cancel()
    say = sys.stderr if args.progress_json else sys.stdout
    results, failed = [], []
    with cancel_on_signals(cancel), progress_reporter(args.progress_json, f"segment ({card.name})") as progress:
        segmenter = Segmenter(card, args.device)
        for number, (source, target) in enumerate(zip(inputs, outputs)):
            step = scaled(progress, number / len(inputs), (number + 1) / len(inputs))
            try:
                results.append(_segment_one(segmenter, source, target, args, step, cancel, overrides))
            except TumorSegError as error:
                if len(inputs) == 1 or cancel.is_set():
                    raise
                failed.append(source)
                print(f"tumorseg: error: {source}: {error}", file=sys.stderr)
    for result in results:
        print(f"{result['input']} -> {result['output']} (model {card.name}, {result['device']})", file=say)
        print(result.pop("text"), file=say)
        for note in result["notes"]:
            print(f"note: {note}", file=say)
    if args.json:
        write_json(args.json, results[0] if len(inputs) == 1 else {"model": card.name, "cases": results})
    if args.progress_json:
        print(json.dumps({"done": True, "output": str(args.output) if len(inputs) > 1 else results[0]["output"],
                          "lesions": sum(r["readouts"]["totals"]["lesion_count"] for r in results)}), flush=True)
    if failed:
        print(f"tumorseg: {len(failed)} of {len(inputs)} input(s) failed", file=sys.stderr)
        return 2
    return 0


def _segment_one(segmenter, source: Path, target: Path, args, progress, cancel, overrides) -> dict:
    from ..engine import readouts, segment_file

    prediction, written = segment_file(source, target, segmenter, roi=args.roi, point=args.point, progress=progress,
                                       cancel=cancel, overrides=overrides)
    values = readouts(prediction, segmenter.card)
    return {"input": str(source), "output": str(written), "model": segmenter.card.name, "device": prediction.device,
            "notes": prediction.notes, "readouts": values.to_dict(), "text": readouts_text(values)}


def _pairs(source: Path, target: Path) -> tuple:
    """(inputs, outputs): one file, or every image file of a folder into a folder of the same names."""
    if not source.is_dir():
        return [source], [target]
    inputs = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")
                    and str(p).lower().endswith(SUFFIXES))
    if not inputs:
        raise TumorSegError(f"no image files (.nii, .nii.gz, .nrrd, .png, .jpg) in folder {source}")
    if target.exists() and not target.is_dir():
        raise TumorSegError(f"INPUT is a folder, so OUTPUT must be a folder; {target} is a file")
    if not target.exists():
        require_writable(target, "output folder")
        target.mkdir()
    return inputs, [target / f"{case_name(p)}{mask_suffix(p)}" for p in inputs]


def mask_suffix(path: Path) -> str:
    """The suffix of the mask of input ``path``: its own, PNG for a (lossy) JPEG."""
    suffix = image_suffix(path)
    return PNG_SUFFIXES[0] if suffix in JPEG_SUFFIXES else suffix
