"""``tumorseg segment INPUT -o OUTPUT [--model NAME] [--device auto|cpu|cuda] [--roi ...] [--point R A S] ...``.

INPUT is a NIfTI, NRRD, PNG or JPEG file, or a folder of them (OUTPUT is then a folder; the network
is loaded once), or a DICOM series (its folder or one of its files; one input; --series picks a
series in a folder of several). The mask lands on INPUT's grid in the same kind of file (PNG masks
0/255; a JPEG, a windowed CT slice read through the card's picture channel, gets a PNG mask, never
a JPEG; a DICOM series gives .nii.gz/.nrrd, or a DICOM SEG with -o NAME.dcm or --dicom-seg). A
MIP-PET model given a 3D PET volume writes a 3D mask (each MIP lesion traced back to the depth of
its maximum and delineated in 3D) and, with --mip-mask (or an OUTPUT ending in .png instead), the 2D
MIP mask as PNG with the MIP image beside it. A model that finds the organ its tumours lie in (the liver
model) writes that organ with --organ-mask (a folder for a folder INPUT) and adds its size and the
tumour's share of it to the readouts; its DICOM SEG holds both segments. PET models need SUV: a PT
series converts from its header (Units BQML or GML), else --suv-factor.
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
from typing import Iterator

from . import HelpFormatter
from ..errors import TumorSegError
from ..dicom_seg import card_version, is_dicom_seg_path, write_dicom_seg
from ..files import require_not_input, require_writable, same_file, write_json
from ..io import JPEG_SUFFIXES, PNG_SUFFIXES, SUFFIXES, case_name, image_suffix, is_dicom
from ..progress import Cancel, ProgressBar, ProgressCallback, check_cancel, json_lines, scaled
from ..report import readouts_text
from ..suv import read_input, require_suv
from ..terminology import ORGANS
from ..windowed import default_picture_card, is_picture, read_input as read_picture


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment tumours in a PET, CT or MIP image (or a folder of them) and measure them",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("input", help="image file (.nii, .nii.gz, .nrrd, .png, .jpg) or a folder of them, or a DICOM series")
    parser.add_argument("-o", "--output", required=True,
                        help="mask file (same kind as INPUT; .dcm: DICOM SEG of a DICOM series) or folder")
    add_dicom_arguments(parser)
    parser.add_argument("--dicom-seg", metavar="SEG.dcm", help="also write the mask as a DICOM SEG (DICOM input)")
    parser.add_argument("--roi", type=int, nargs="+", metavar="I0 I1",
                        help="restrict to a voxel box I0 I1 J0 J1 [K0 K1], half-open (I0 <= i < I1), "
                        "in the indices of the grid the mask is written on")
    parser.add_argument("--point", type=float, nargs="+", metavar="R A S", action="append",
                        help="segment the lesion at this world point (RAS mm; 2D: row col mm), in a box of the model's "
                        "inference.context_mm; repeat for several lesions (one mask)")
    parser.add_argument("--mip-mask", metavar="PATH.png",
                        help="MIP-PET model on a 3D PET volume: also write the 2D MIP mask here (and the MIP beside it)")
    parser.add_argument("--organ-mask", metavar="PATH",
                        help="also write the organ the model finds (e.g. the liver, its tumours included) on the mask's "
                        "grid; a folder for a folder INPUT (whole-image runs of a model whose card names an organ)")
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
    for step, what in (("lesion-filter", "the card's lesion-level false-positive filter"),
                       ("image-gate", "the card's whole-image 'any tumour' gate")):
        parser.add_argument(f"--no-{step}", action="store_false", default=None, dest=step.replace("-", "_"),
                            help=f"switch off {what} (whole-image 2D cards that have one)")
    parser.set_defaults(func=run)


def add_dicom_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", metavar="UID", help="the Series Instance UID to read from a DICOM folder of several")
    parser.add_argument("--suv-factor", type=float, metavar="F",
                        help="PET: SUV = stored value x F (instead of the DICOM header's SUV; for Bq/mL input)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name or card file (default: the one installed model that fits INPUT)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the network runs")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"),
                        help="what runs the network (default: the card's, else auto = OpenVINO on a CPU when installed)")
    parser.add_argument("--models-dir", help="extra folder of model cards (also: TUMORSEG_MODELS)")


@contextlib.contextmanager
def cancel_on_signals(cancel: Cancel) -> Iterator[None]:
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
def progress_reporter(as_json: bool, description: str) -> Iterator[ProgressCallback]:
    if as_json:
        yield json_lines()
    else:
        with ProgressBar(description) as bar:
            yield bar


def run(args: argparse.Namespace) -> int:
    from ..cards import find_card
    from ..engine import Segmenter
    from ..runs import default_card, require_organ

    inputs, outputs = _pairs(Path(args.input), Path(args.output))
    organs = _organ_paths(args, inputs, outputs)
    seg_paths = _dicom_seg_paths(args, inputs)
    for path in [args.json, *seg_paths]:
        if path:
            require_writable(path, "output")
    require_not_input(outputs + organs + [args.json, args.mip_mask, *seg_paths], inputs)
    first = None
    if args.model:
        card = find_card(args.model, args.models_dir)
    elif is_picture(inputs[0]):
        card = default_picture_card(args.models_dir)
    else:
        first = read_input(inputs[0], "input image", args.series, args.suv_factor)
        card = default_card(first, args.models_dir)
    if first is None and len(inputs) == 1:
        first = _read(inputs[0], card, args)
    if args.organ_mask:
        require_organ(card, args.roi, args.point)
    if seg_paths and card.modality == "MIP-PET":
        raise TumorSegError(f"model {card.name!r} gives a 2D MIP mask, which a DICOM SEG of the series cannot hold")
    if first is not None:
        _require_units(first, card, inputs[0])
    overrides = {"overlap": args.overlap, "threshold": args.threshold, "min_lesion_ml": args.min_lesion_ml,
                 "min_lesion_px": args.min_lesion_px, "precision": args.precision, "flip_axes": args.flip_axes,
                 "lesion_filter": args.lesion_filter, "image_gate": args.image_gate}
    cancel = Cancel()
    say = sys.stderr if args.progress_json else sys.stdout
    results, failed = [], []
    with cancel_on_signals(cancel), progress_reporter(args.progress_json, f"segment ({card.name})") as progress:
        segmenter = Segmenter(card, args.device, backend=args.backend)
        if _is_folder(Path(args.input)):
            for folder in (args.output, args.organ_mask):
                if folder:
                    Path(folder).mkdir(exist_ok=True)
        for number, (source, target, organ) in enumerate(zip(inputs, outputs, organs or [None] * len(inputs))):
            step = scaled(progress, number / len(inputs), (number + 1) / len(inputs))
            try:
                image = first if number == 0 and first is not None else \
                    _read(source, card, args)
                _require_units(image, card, source)
                results.append(_segment_one(segmenter, source, target, organ, image, args, step, cancel, overrides))
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


def _segment_one(segmenter, source: Path, target: Path, organ, image, args, progress, cancel, overrides) -> dict:
    from ..runs import readouts, segment_file

    if is_dicom_seg_path(target):
        prediction = segmenter.predict(image, roi=args.roi, points=args.point, progress=progress, cancel=cancel,
                                       overrides=overrides)
        check_cancel(cancel)
        written = _write_seg(target, prediction, segmenter.card)
    else:
        prediction, written = segment_file(source, target, segmenter, roi=args.roi, points=args.point,
                                           progress=progress, cancel=cancel, overrides=overrides, image=image,
                                           mip_mask=args.mip_mask, organ_mask=organ)
        if args.dicom_seg:
            try:
                _write_seg(args.dicom_seg, prediction, segmenter.card)
            except BaseException:
                Path(written).unlink(missing_ok=True)
                raise
    values = readouts(prediction, segmenter.card)
    notes = [*image.meta.get("suv_notes", []), *prediction.notes]
    return {"input": str(source), "output": str(written), "model": segmenter.card.name, "device": prediction.device,
            "notes": notes, "readouts": values.to_dict(), "text": readouts_text(values)}


def _read(source: Path, card, args):
    """One input: a JPEG through the card's picture channel and window, else an image file or DICOM series
    (times ``--suv-factor`` when given)."""
    if is_picture(source):
        return read_picture(source, card)
    return read_input(source, "input image", args.series, args.suv_factor)


def _require_units(image, card, source) -> None:
    """PET models take SUV: a PT series whose header gave none is refused with the reason."""
    if card.modality in ("PET", "MIP-PET"):
        require_suv(image, f"the PET input {source}")


def _dicom_seg_paths(args, inputs: list) -> list:
    """The DICOM SEG files asked for (-o NAME.dcm and/or --dicom-seg), checked before any work."""
    paths = [p for p in (args.output, args.dicom_seg) if p and is_dicom_seg_path(p)]
    if args.dicom_seg and not is_dicom_seg_path(args.dicom_seg):
        raise TumorSegError(f"--dicom-seg needs a .dcm file name, got {args.dicom_seg}")
    if paths and (len(inputs) > 1 or not is_dicom(inputs[0])):
        raise TumorSegError("a DICOM SEG output needs one DICOM series as INPUT")
    return paths


def _write_seg(path, prediction, card) -> Path:
    """The 3D mask as a DICOM SEG of its series, with the organ as a second segment when the run gave one (``run``
    refused MIP models, whose mask here is 2D, before any work)."""
    organ = None if prediction.organ is None else (ORGANS[card.organ], prediction.organ)
    return write_dicom_seg(path, prediction.mask, prediction.image, card.name, card_version(card), organ)


def _organ_paths(args, inputs: list, outputs: list) -> list:
    """Where each input's organ mask goes (``--organ-mask``; in folder mode a folder, each mask named as its tumour
    mask), or [] without it."""
    if not args.organ_mask:
        return []
    folder = Path(args.organ_mask)
    if is_dicom_seg_path(args.output):
        raise TumorSegError("with -o NAME.dcm the organ is a segment of the DICOM SEG: drop --organ-mask, or write "
                            "the mask as .nii.gz with --dicom-seg beside it")
    if not _is_folder(Path(args.input)):
        return [folder]
    for other, what in ((Path(args.input), "input"), (Path(args.output), "output")):
        if same_file(folder, other) or folder == other:
            raise TumorSegError(f"the organ mask folder {folder} is the {what} folder; choose another folder")
    if folder.exists() and not folder.is_dir():
        raise TumorSegError(f"INPUT is a folder, so --organ-mask must be a folder; {folder} is a file")
    if not folder.exists():
        require_writable(folder, "organ mask folder")
    return [folder / target.name for target in outputs]


def _is_folder(source: Path) -> bool:
    """Whether INPUT is a folder of image files (folder mode), not a file or a DICOM series."""
    return source.is_dir() and not is_dicom(source)


def _pairs(source: Path, target: Path) -> tuple:
    """(inputs, outputs): one file or DICOM series, or every image file of a folder into a folder of the same names."""
    if not _is_folder(source):
        return [source], [target]
    inputs = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")
                    and str(p).lower().endswith(SUFFIXES))
    if not inputs:
        raise TumorSegError(f"no image files (.nii, .nii.gz, .nrrd, .png, .jpg) in folder {source}")
    if target.exists() and not target.is_dir():
        raise TumorSegError(f"INPUT is a folder, so OUTPUT must be a folder; {target} is a file")
    if same_file(target, source):
        raise TumorSegError(f"output folder {target} is the input folder: the masks would replace the images; "
                            "choose another output folder")
    if not target.exists():
        require_writable(target, "output folder")  # made by ``run`` once the model is loaded
    return inputs, [target / f"{case_name(p)}{mask_suffix(p)}" for p in inputs]


def mask_suffix(path: Path) -> str:
    """The suffix of the mask of input ``path``: its own, PNG for a (lossy) JPEG."""
    suffix = image_suffix(path)
    return PNG_SUFFIXES[0] if suffix in JPEG_SUFFIXES else suffix
