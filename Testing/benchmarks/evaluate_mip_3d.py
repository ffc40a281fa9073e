"""mip-pet-2d on 3D PET volumes (issue 16): the pixel size the card resamples a volume's MIP to.

The network learnt on PNG MIPs, which carry no pixel size (``mip_pixel_size.py`` estimates it from the brain); the MIP
the engine computes from a 3D PET has the volume's own voxel size. Two cards are compared, built from the shipped one:
"native" (no resampling: a volume's MIP reaches the network at its own pixel size) and "resampled"
(``preprocessing.mip.pixel_mm`` = ``--pixel-mm`` and ``resample_width_mm`` = ``--resample-width-mm``: a volume's MIP
at least that wide is resampled to that pixel size for the network and the probability back; 0 resamples every one).
PNGs are never resampled. Everything below goes through the engine's 3D path (``mip3d.segment_traced``, what
``tumorseg segment`` runs on a 3D PET with this card):

1. Whole-body volumes from the card's validation PNGs: each PNG (29 patients, 68 controls) shrunk by each of
   ``--factors`` (linear), turned back into SUV by the card's MIP window and written as a coronal slab of a 3D volume
   of ``--pixel-mm`` / f mm voxels, so that its MIP is the shrunk PNG (840 mm wide at 2.1 mm); the MIP mask is scaled
   back onto the PNG: mean patient Dice (paired change) and clean controls of each card. f = 1 reads the PNGs
   themselves.
2. The ``ibsi-sts-pet`` crops (SUV, tumour masks; 3.9-5.5 mm in-plane, 3.3 mm slices; 5 cm around one tumour): 3D Dice
   and the MIP's 2D Dice against the projected mask, per crop; the paired change; crops whose masks are identical.

Writes ``docs/mip-pet-2d-3d-volumes.md``, ``docs/figures/mip-3d-sts.png`` and, with ``--json``, the figures. Run from
the repository root::

    .venv/bin/python Testing/benchmarks/evaluate_mip_3d.py --pixel-mm 2.1 --resample-width-mm 420 --threads 1
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
SLAB = 8  # voxels of depth of a volume built from a PNG (the engine needs 8 along each in-plane axis)


def cards(pixel_mm: float, width_mm: float) -> dict:
    """The shipped card without resampling and with ``preprocessing.mip`` resampling MIPs at least ``width_mm`` wide
    to ``pixel_mm``."""
    from TumorSegLib.cards import find_card

    card = find_card(NAME)
    mip = card.preprocessing.mip
    settings = {"native": dataclasses.replace(mip, resample_width_mm=None),
                "resampled": dataclasses.replace(mip, pixel_mm=pixel_mm, resample_width_mm=width_mm or 1e-6)}
    return {name: dataclasses.replace(card, preprocessing=dataclasses.replace(card.preprocessing, mip=settings[name]))
            for name in CARDS}


def volume_of(picture: np.ndarray, factor: float, pixel_mm: float, card):
    """A 3D SUV volume whose coronal MIP (``mip.coronal_mip``) is the PNG shrunk by ``factor``: a slab of ``SLAB``
    voxels of ``pixel_mm / factor`` mm, columns to the patient's left, rows to inferior."""
    from scipy import ndimage

    from TumorSegLib.image import Image

    small = np.clip(ndimage.zoom(picture, factor, order=1), 0, 255) if factor != 1 else picture
    low, high = card.preprocessing.mip.window
    fraction = small / 255.0
    suv = low + (1.0 - fraction if card.preprocessing.mip.invert else fraction) * (high - low)
    array = np.repeat(suv.T[:, None, :], SLAB, axis=1).astype(np.float32)  # (column, depth, row)
    size = pixel_mm / factor
    return Image(array, np.diag([-size, size, -size, 1.0]), meta={"modality": "PET"})


def back_onto(mask: np.ndarray, shape) -> np.ndarray:
    """A mask of a shrunk image back onto the PNG's grid (nearest)."""
    from scipy import ndimage

    return ndimage.zoom(mask.astype(np.uint8), np.array(shape) / np.array(mask.shape), order=0)[: shape[0], : shape[1]] > 0


def scale_rows(segmenters: dict, factors, pixel_mm: float, data_root: Path) -> list:
    """Per factor: each card's mean patient Dice and clean controls on the whole-body volumes built from the
    validation PNGs (f = 1: the PNGs), and the paired change of the patient Dice."""
    from TumorSegLib.io import read_image
    from TumorSegLib.metrics import dice
    from TumorSegLib.mip3d import segment_traced
    from TumorSegLib.training.data import card_validation_cases

    cases = card_validation_cases(segmenters["native"].card, data_root)
    pictures = [(read_image(c.image), None if c.mask is None else read_image(c.mask).array > 0) for c in cases]
    rows = []
    for factor in factors:
        row, patient_dice = {"factor": factor}, {}
        for name, segmenter in segmenters.items():
            dices, clean = [], 0
            for png, truth in pictures:
                if factor == 1:
                    flat = segmenter.predict(png, overrides=FP32)
                else:
                    volume = volume_of(np.asarray(png.array, dtype=np.float32), factor, pixel_mm, segmenter.card)
                    _, flat = segment_traced(segmenter, volume, overrides=FP32)
                mask = back_onto(flat.mask, png.shape)
                if truth is None:
                    clean += not mask.any()
                else:
                    dices.append(dice(mask, truth))
            patient_dice[name] = dices
            row[name] = {"dice": float(np.mean(dices)), "clean": clean, "controls": len(pictures) - len(dices)}
        row["change"] = paired_change(patient_dice["resampled"], patient_dice["native"])
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
        row["identical"] = bool(np.array_equal(*masks.values()))
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
    pixel, width, scale, crops = result["pixel_mm"], result["resample_width_mm"], result["scale"], result["crops"]
    change = result["change_dice_3d"]
    mean = lambda name, key: float(np.mean([r[name][key] for r in crops]))  # noqa: E731
    interval = lambda c: f"{c['mean']:+.3f} ({c['low']:+.3f}..{c['high']:+.3f}; {c['better']} up, {c['worse']} down)"  # noqa: E731
    lines = [
        "# mip-pet-2d on 3D PET volumes: the pixel size of a volume's MIP", "",
        f"Produced by `Testing/benchmarks/evaluate_mip_3d.py --pixel-mm {pixel:g} --resample-width-mm {width:g}` on "
        f"{result['machine']}, CPU, fp32.", "",
        "The network learnt on PNG MIPs, which carry no pixel size; `Testing/benchmarks/mip_pixel_size.py` estimates "
        f"it from the brain's width on the training images ({pixel:g} mm: 400 pixels are about {400 * pixel:.0f} mm). "
        "Two cards: **native** (no resampling: a volume's MIP reaches the network at the volume's own voxel size) and "
        f"**resampled** (`preprocessing.mip.pixel_mm` {pixel:g}, `resample_width_mm` {width:g}: the MIP of a volume "
        f"at least {width:g} mm wide is resampled to {pixel:g} mm for the network and the probability back onto the "
        "MIP's grid; narrower MIPs keep their own pixel size; the lesion filter and the gate stay on the MIP's grid). "
        "PNGs are never resampled. Every figure goes through the engine's 3D path (`mip3d.segment_traced`, what "
        "`tumorseg segment` runs on a 3D PET).", "",
        "## Whole-body volumes built from the validation PNGs", "",
        "Each validation PNG (29 patients, 68 controls) shrunk by f (linear), turned back into SUV by the card's MIP "
        f"window and written as a coronal slab of a 3D volume of {pixel:g} / f mm voxels (about {400 * pixel:.0f} mm "
        "wide), so that its MIP is the shrunk PNG; the MIP mask scaled back onto the PNG. f = 1: the PNGs themselves.",
        "", "| f (voxel mm) | native: mean patient Dice | native: clean controls | resampled: mean patient Dice | "
        "resampled: clean controls | paired change of patient Dice (95 % interval) |", "|---|---|---|---|---|---|",
        *[f"| {r['factor']:g} ({pixel / r['factor']:.1f}) | {r['native']['dice']:.3f} | "
          f"{r['native']['clean']}/{r['native']['controls']} | {r['resampled']['dice']:.3f} | "
          f"{r['resampled']['clean']}/{r['resampled']['controls']} | {interval(r['change'])} |" for r in scale],
        "", "Against the ship rule of this candidate (`docs/ship-rules.md`): the Dice change's interval lies above 0 at "
        f"every f < 1: {met(all(r['change']['low'] > 0 for r in scale if r['factor'] < 1))}; at least as many clean "
        "controls at every f: "
        f"{met(all(r['resampled']['clean'] >= r['native']['clean'] for r in scale))}.",
        "", "## Real 3D PET: the ibsi-sts-pet crops", "",
        f"{len(crops)} FDG-PET crops in SUV with the sarcoma's GTV mask (5 cm around it; 3.9-5.5 mm in-plane, 3.3 mm "
        "slices; 150-310 mm wide). Not whole-body scans: the network sees a crop, without the body around it.", "",
        "| | native | resampled |", "|---|---|---|",
        f"| mean 3D Dice | {mean('native', 'dice_3d'):.3f} | {mean('resampled', 'dice_3d'):.3f} |",
        f"| mean MIP Dice (against the projected mask) | {mean('native', 'dice_mip'):.3f} | "
        f"{mean('resampled', 'dice_mip'):.3f} |",
        f"| crops with no tumour found | {sum(r['native']['ml'] == 0 for r in crops)} | "
        f"{sum(r['resampled']['ml'] == 0 for r in crops)} |", "",
        f"Paired change of the 3D Dice (resampled - native): {interval(change)}; crops with identical 3D masks: "
        f"{sum(r['identical'] for r in crops)} of {len(crops)}.", "",
        f"![median crop]({figure}) the crop of median 3D Dice with the resampled card ({case}): the tumour mask, then "
        "each card's mask, three orthogonal views.", "",
        "| crop | spacing (mm) | GTV (mL) | native 3D Dice | resampled 3D Dice | native MIP Dice | resampled MIP Dice |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r['case']} | {r['spacing_mm']} | {r['gtv_ml']:.0f} | {r['native']['dice_3d']:.3f} | "
          f"{r['resampled']['dice_3d']:.3f} | {r['native']['dice_mip']:.3f} | {r['resampled']['dice_mip']:.3f} |"
          for r in crops], "",
        "## Limits", "",
        "- The pixel size of the PNGs is an estimate from anatomy (adult brain width 130-145 mm gives "
        f"{result['pixel_range_mm'][0]:g}-{result['pixel_range_mm'][1]:g} mm).",
        "- `--resample-width-mm 0` resamples every MIP of a volume: the first candidate of `docs/ship-rules.md` "
        "(its outcome on the crops is recorded there).",
        "- The whole-body volumes are built from the PNGs: real whole-body 3D PET with tumour masks would be the test; "
        "none is available here. A coarser real scan also loses contrast to partial volume, which the linear shrinking "
        "only approximates.", ""]
    return "\n".join(lines)


def met(condition: bool) -> str:
    return "met" if condition else "**not met**"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixel-mm", type=float, required=True, help="the PNGs' pixel size (mip_pixel_size.py)")
    parser.add_argument("--resample-width-mm", type=float, required=True,
                        help="MIPs at least this wide are resampled (0: every MIP of a volume)")
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
    segmenters = {name: Segmenter(card, device="cpu")
                  for name, card in cards(args.pixel_mm, args.resample_width_mm).items()}
    crops, arrays = crop_rows(segmenters, Path(args.sts_root))
    scale = scale_rows(segmenters, args.factors, args.pixel_mm, Path(args.mip_root))
    change = paired_change([r["resampled"]["dice_3d"] for r in crops], [r["native"]["dice_3d"] for r in crops])
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "pixel_mm": args.pixel_mm,
              "resample_width_mm": args.resample_width_mm,
              "pixel_range_mm": [round(130 * args.pixel_mm / 137, 2), round(145 * args.pixel_mm / 137, 2)],
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
