"""mip-pet-2d on 3D PET volumes (issue 16): the pixel size the card resamples a volume's MIP to.

The network learnt on PNG MIPs, which carry no pixel size (``mip_pixel_size.py`` estimates it from the brain); the MIP
the engine computes from a 3D PET has the volume's own voxel size. Two cards are compared, built from the shipped one:
"native" (the shipped card, no ``preprocessing.spacing``: a volume's MIP reaches the network at its own pixel size)
and "resampled" (the candidate, ``preprocessing.spacing`` = ``--pixel-mm``: resampled to the PNGs' estimated pixel
size and the probability back). PNGs carry no spacing, so both cards give the same PNG figures.

1. Scale: the card's validation PNGs shrunk by each of ``--factors`` (linear), as the MIP of a coarser volume would
   be, each mask scaled back onto the PNG: mean patient Dice and clean controls of each card, "native" reading the
   shrunk image at its own pixel scale, "resampled" given its pixel size (``--pixel-mm`` / f).
2. Real 3D PET: the ``ibsi-sts-pet`` crops (SUV, tumour masks; 3.9-5.5 mm in-plane, 3.3 mm slices) through the card's
   3D path (``mip3d.segment_traced``, as ``tumorseg segment`` runs a 3D PET): 3D Dice and the MIP's 2D Dice against
   the projected mask, per crop, and the paired change.

Writes ``docs/mip-pet-2d-3d-volumes.md``, ``docs/figures/mip-3d-sts.png`` and, with ``--json``, the figures. Run from
the repository root::

    .venv/bin/python Testing/benchmarks/evaluate_mip_3d.py --pixel-mm 2.1 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_ct_lesions import panel, stack  # noqa: E402  (the shared overlay panels)
from paired import paired_change  # noqa: E402

NAME = "mip-pet-2d"
FP32 = {"precision": "fp32"}
CARDS = ("native", "resampled")


def cards(pixel_mm: float) -> dict:
    """The shipped card without and with ``preprocessing.spacing`` [pixel_mm, pixel_mm]."""
    from TumorSegLib.cards import find_card

    card = find_card(NAME)
    return {name: dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, spacing=spacing))
            for name, spacing in zip(CARDS, (None, [pixel_mm, pixel_mm]))}


def shrunk(picture: np.ndarray, factor: float, pixel_mm: float, known: bool):
    """The PNG as the MIP of a volume ``1 / factor`` times coarser: shrunk (linear), given its pixel size or not."""
    from scipy import ndimage

    from TumorSegLib.image import Image

    small = np.clip(ndimage.zoom(picture, factor, order=1), 0, 255) if factor != 1 else picture
    mm = pixel_mm * np.array(picture.shape) / np.array(small.shape)
    return Image(small.astype(np.float32), np.diag([mm[0], mm[1], 1.0]) if known else np.eye(3), spacing_known=known)


def back_onto(mask: np.ndarray, shape) -> np.ndarray:
    """A mask of a shrunk image back onto the PNG's grid (nearest)."""
    from scipy import ndimage

    return ndimage.zoom(mask.astype(np.uint8), np.array(shape) / np.array(mask.shape), order=0)[: shape[0], : shape[1]] > 0


def scale_rows(segmenters: dict, factors, pixel_mm: float, data_root: Path) -> list:
    """Mean patient Dice and clean controls of each card on the validation PNGs shrunk by each factor."""
    from TumorSegLib.io import read_image
    from TumorSegLib.metrics import dice
    from TumorSegLib.training.data import card_validation_cases

    cases = card_validation_cases(segmenters["native"].card, data_root)
    pictures = [(np.asarray(read_image(c.image).array, dtype=np.float32),
                 None if c.mask is None else read_image(c.mask).array > 0) for c in cases]
    rows = []
    for factor in factors:
        row = {"factor": factor}
        for name, segmenter in segmenters.items():
            dices, clean = [], 0
            for picture, truth in pictures:
                image = shrunk(picture, factor, pixel_mm, known=name == "resampled")
                mask = back_onto(segmenter.predict(image, overrides=FP32).mask, picture.shape)
                if truth is None:
                    clean += not mask.any()
                else:
                    dices.append(dice(mask, truth))
            row[name] = {"dice": float(np.mean(dices)), "clean": clean, "controls": len(pictures) - len(dices)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def crop_rows(segmenters: dict, root: Path) -> tuple:
    """Per ibsi-sts-pet crop: 3D Dice and MIP Dice of each card; and the arrays of each crop for the overlay."""
    from TumorSegLib.io import read_image
    from TumorSegLib.metrics import dice
    from TumorSegLib.mip import project_max
    from TumorSegLib.mip3d import segment_traced

    rows, arrays = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image = read_image(folder / "PET_image.nii.gz")
        truth = read_image(folder / "PET_mask.nii.gz").array > 0
        row = {"case": folder.name, "spacing_mm": [round(float(s), 2) for s in image.spacing],
               "gtv_ml": float(truth.sum() * image.voxel_volume / 1000)}
        masks = {}
        for name, segmenter in segmenters.items():
            volume, flat = segment_traced(segmenter, image, overrides=FP32)
            projected = project_max(truth.astype(np.uint8), flat.image.meta["mip"]) > 0
            row[name] = {"dice_3d": dice(volume.mask, truth), "dice_mip": dice(flat.mask, projected),
                         "ml": float(volume.mask.sum() * image.voxel_volume / 1000)}
            masks[name] = volume.mask
        rows.append(row)
        arrays[folder.name] = (image, truth, masks)
        print(json.dumps(row), flush=True)
    return rows, arrays


def overlay(path: Path, rows: list, arrays: dict) -> tuple:
    """The crop of median 'resampled' 3D Dice: the tumour mask, then each card's 3D mask (three orthogonal views)."""
    ranked = sorted(rows, key=lambda r: r["resampled"]["dice_3d"])
    case = ranked[len(ranked) // 2]["case"]
    image, truth, masks = arrays[case]
    panels = [panel(image, truth, f"{case}: tumour mask (GTV)", (0, 8), 3)]
    panels += [panel(image, masks[name], f"{name}: Dice {dice_of(rows, case, name):.3f}", (0, 8), 3) for name in CARDS]
    return stack(path, panels), case


def dice_of(rows: list, case: str, name: str) -> float:
    return next(r[name]["dice_3d"] for r in rows if r["case"] == case)


def report(result: dict, figure: str, case: str) -> str:
    pixel, scale, crops, change = result["pixel_mm"], result["scale"], result["crops"], result["change_dice_3d"]
    mean = lambda name, key: float(np.mean([r[name][key] for r in crops]))  # noqa: E731
    lines = [
        "# mip-pet-2d on 3D PET volumes: the pixel size of a volume's MIP", "",
        f"Produced by `Testing/benchmarks/evaluate_mip_3d.py --pixel-mm {pixel:g}` on {result['machine']}, CPU, fp32.",
        "", "The network learnt on PNG MIPs, which carry no pixel size; `Testing/benchmarks/mip_pixel_size.py` estimates "
        f"it from the brain's width on the training images ({pixel:g} mm). Two cards: **native** (the shipped card, "
        "no `preprocessing.spacing`: a volume's MIP reaches the network at the volume's own voxel size) and "
        "**resampled** (the candidate of `docs/ship-rules.md`, `preprocessing.spacing` = "
        f"[{pixel:g}, {pixel:g}]: the MIP is resampled to that pixel size for the network and the probability back; "
        "the lesion filter and image gate stay on the MIP's own grid). PNGs carry no spacing: both give the same PNG "
        "figures.", "",
        "## Scale: the validation PNGs shrunk as the MIP of a coarser volume", "",
        "Each PNG shrunk by the factor f (linear), the mask scaled back onto it (29 patients, 68 controls; f = 0.5 is "
        f"a {2 * pixel:g} mm volume if the PNGs are {pixel:g} mm).", "",
        "| f | native: mean patient Dice | native: clean controls | resampled: mean patient Dice | resampled: clean controls |",
        "|---|---|---|---|---|",
        *[f"| {r['factor']:g} | {r['native']['dice']:.3f} | {r['native']['clean']}/{r['native']['controls']} | "
          f"{r['resampled']['dice']:.3f} | {r['resampled']['clean']}/{r['resampled']['controls']} |" for r in scale],
        "", "## Real 3D PET: the ibsi-sts-pet crops", "",
        f"{len(crops)} FDG-PET crops in SUV with the sarcoma's GTV mask (5 cm around it; 3.9-5.5 mm in-plane, 3.3 mm "
        "slices), each segmented by the card's 3D path (the coronal MIP segmented, each MIP lesion traced into 3D: "
        "`mip3d.segment_traced`, what `tumorseg segment` does with this card on a 3D PET). Not whole-body scans: "
        "the network sees a crop, without the body around it.", "",
        "| | native | resampled |", "|---|---|---|",
        f"| mean 3D Dice | {mean('native', 'dice_3d'):.3f} | {mean('resampled', 'dice_3d'):.3f} |",
        f"| mean MIP Dice (against the projected mask) | {mean('native', 'dice_mip'):.3f} | "
        f"{mean('resampled', 'dice_mip'):.3f} |",
        f"| crops with no tumour found | {sum(r['native']['ml'] == 0 for r in crops)} | "
        f"{sum(r['resampled']['ml'] == 0 for r in crops)} |", "",
        f"Paired change of the 3D Dice (resampled - native): {change['mean']:+.3f}, bootstrap 95 % interval "
        f"{change['low']:+.3f}..{change['high']:+.3f}; {change['better']} crops up, {change['worse']} down: the "
        f"ship rule's first condition (interval above 0) is {'met' if change['low'] > 0 else 'not met'}.", "",
        f"![median crop]({figure}) the crop of median 3D Dice with the resampled card ({case}): the tumour mask, then "
        "each card's mask, three orthogonal views.", "",
        "| crop | spacing (mm) | GTV (mL) | native 3D Dice | resampled 3D Dice | native MIP Dice | resampled MIP Dice |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['case']} | {r['spacing_mm']} | {r['gtv_ml']:.0f} | {r['native']['dice_3d']:.3f} | "
          f"{r['resampled']['dice_3d']:.3f} | {r['native']['dice_mip']:.3f} | {r['resampled']['dice_mip']:.3f} |"
          for r in crops], "",
        "## Limits", "",
        "- The pixel size of the PNGs is an estimate from anatomy (adult brain width 130-145 mm gives "
        f"{result['pixel_range_mm'][0]:g}-{result['pixel_range_mm'][1]:g} mm); the scale table shows how fast "
        "accuracy falls when the scale is off.",
        "- No labelled whole-body 3D PET is available here: the crops are the only real 3D check.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixel-mm", type=float, required=True, help="the PNGs' pixel size (mip_pixel_size.py)")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 0.7, 0.5])
    parser.add_argument("--mip-root", default=str(SHARED / "dmiai2023-mip-pet" / "dev"))
    parser.add_argument("--sts-root", default=str(SHARED / "ibsi-sts-pet" / "nifti"))
    parser.add_argument("--report", default=str(REPO / "docs" / "mip-pet-2d-3d-volumes.md"))
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    from TumorSegLib.engine import Segmenter

    if args.threads:
        torch.set_num_threads(args.threads)
    segmenters = {name: Segmenter(card, device="cpu") for name, card in cards(args.pixel_mm).items()}
    crops, arrays = crop_rows(segmenters, Path(args.sts_root))
    scale = scale_rows(segmenters, args.factors, args.pixel_mm, Path(args.mip_root))
    change = paired_change([r["resampled"]["dice_3d"] for r in crops], [r["native"]["dice_3d"] for r in crops])
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "pixel_mm": args.pixel_mm,
              "pixel_range_mm": [round(130 / (137 / args.pixel_mm), 2), round(145 / (137 / args.pixel_mm), 2)],
              "scale": scale, "crops": crops, "change_dice_3d": change}
    figures = Path(args.report).parent / "figures"
    path, case = overlay(figures / "mip-3d-sts.png", crops, arrays)
    Path(args.report).write_text(report(result, f"figures/{path.name}", case))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(change))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
