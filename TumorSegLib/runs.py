"""A segmentation run on files, around the engine: the model for an image, the files a run writes, its readouts.

- ``default_card``: the one installed card that fits an image (by dimensionality and the modality rule);
- ``segment_file`` / ``planned_flat_masks`` / ``mip_image_path``: segment one input and write its mask
  (and a MIP-PET model's 2D MIP masks with the MIP beside each, or a cascade's organ mask), every output
  checked before any work, written atomically, never over an input;
- ``readouts``: the lesion readouts of a ``Prediction`` (``measure``), only in the clicks' boxes after clicks, with
  the organ's when the run gave one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import boxes
from .cards import USABLE, ModelCard, list_cards, weights_status
from .engine import Prediction, Segmenter, check_input
from .errors import TumorSegError
from .files import require_not_input, require_writable
from .hints import Box, Overrides, PathLike, Point
from .image import Image
from .io import PNG_SUFFIXES, image_suffix, write_image, write_mask
from .measure import Readouts
from .progress import Cancel, ProgressCallback, check_cancel, no_progress


def default_card(image: Image, extra_dir: PathLike | None = None) -> ModelCard:
    """The one card with weights present that fits ``image`` (by dimensionality and the modality rule)."""
    candidates, reasons = [], []
    for card in list_cards(extra_dir):
        status = weights_status(card)
        if status not in USABLE:
            reasons.append(f"{card.name}: weights {status}")
            continue
        try:
            check_input(image, card)
        except TumorSegError as error:
            reasons.append(str(error))
            continue
        candidates.append(card)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise TumorSegError(f"no installed model fits this {image.ndim}D image of shape {image.shape}: "
                            + "; ".join(reasons or ["no model cards found"]) + " (see 'tumorseg models')")
    raise TumorSegError(f"several models fit this image ({', '.join(c.name for c in candidates)}); "
                        "choose one with --model")


def mip_image_path(mask_path: PathLike) -> Path:
    """Where the MIP image goes beside a 2D MIP mask of a 3D PET input: ``<mask>_mip-image.png``."""
    mask_path = Path(mask_path)
    return mask_path.with_name(mask_path.name[: -len(image_suffix(mask_path))] + "_mip-image.png")


def planned_flat_masks(image: Image, card: ModelCard, output_path: PathLike, mip_mask: PathLike | None = None) -> list:
    """The 2D MIP masks ``segment_file`` will write (each with its ``mip_image_path``), after checking
    that every requested file type suits its mask; a type is never changed silently.

    A 2D input gives a 2D mask (PNG). A 3D input gives a 3D mask (NIfTI or NRRD); with a MIP-PET
    model, an output ending in .png asks for the 2D MIP mask instead, and ``mip_mask`` for it as well.
    """
    output_path = Path(output_path)
    is_png = image_suffix(output_path) in PNG_SUFFIXES
    on_mip = card.modality == "MIP-PET" and image.ndim == 3
    if image.ndim == 2 and not is_png:
        raise TumorSegError(f"model {card.name!r} segments 2D images, so its mask is a 2D image: give an output "
                            f"ending in .png, not {output_path.name}")
    if image.ndim == 3 and is_png and not on_mip:
        raise TumorSegError(f"cannot write the mask of a 3D volume as PNG ({output_path}); use .nii.gz or .nrrd")
    if mip_mask is not None:
        if not on_mip:
            raise TumorSegError("a MIP mask is written only for a MIP-PET model given a 3D PET volume")
        if image_suffix(mip_mask) not in PNG_SUFFIXES:
            raise TumorSegError(f"the MIP mask is a 2D image: give a .png path, got {mip_mask}")
    flat = ([output_path] if on_mip and is_png else []) + ([Path(mip_mask)] if mip_mask is not None else [])
    return list(dict.fromkeys(flat))


def segment_file(input_path: PathLike, output_path: PathLike, segmenter: Segmenter, roi: Sequence[int] | None = None,
                 points: Sequence[Point] | None = None, progress: ProgressCallback = no_progress,
                 cancel: Cancel | None = None, overrides: Overrides = None, image: Image | None = None,
                 mip_mask: PathLike | None = None, clicks_only: bool = False,
                 organ_mask: PathLike | None = None) -> tuple:
    """Segment one file and write its mask; returns (Prediction, written mask path).

    For a MIP-PET model given a 3D PET volume the mask is 3D, on the volume's grid: each MIP lesion
    traced back into the volume (``mip3d``); 2D MIP masks are written as ``planned_flat_masks`` says,
    each with the MIP image beside it. Every output is checked before any work, none may be the
    input, and nothing is written when the run fails or is cancelled. ``image``: the input already
    read (a DICOM series converted to SUV; the worker keeps it between requests), else it is read
    here (a JPEG through the card's picture channel, ``windowed``). ``clicks_only``: after clicks,
    write only the box holding every click's box (its own exact geometry), not the whole grid. ``organ_mask``: where
    the organ of a card that names one (``output.within.organ``) goes, on the same grid as the mask (whole-image runs).
    """
    from .windowed import picture_notes, read_input

    image_suffix(output_path)
    require_writable(output_path, "mask")
    require_not_input([output_path], [input_path])
    image = read_input(input_path, segmenter.card) if image is None else image
    flat_paths = planned_flat_masks(image, segmenter.card, output_path, mip_mask)
    if organ_mask is not None:
        _check_organ_path(organ_mask, output_path, image, segmenter.card, roi, points)
    outputs = [Path(output_path), *flat_paths, *map(mip_image_path, flat_paths)] + (
        [Path(organ_mask)] if organ_mask is not None else [])
    for path in outputs:
        require_writable(path, "output")
    require_not_input(outputs, [input_path])
    if segmenter.card.modality == "MIP-PET" and image.ndim == 3 and Path(output_path) not in flat_paths:
        from .mip3d import segment_traced

        prediction, flat = segment_traced(segmenter, image, roi=roi, points=points, progress=progress, cancel=cancel,
                                          overrides=overrides)
    else:
        prediction = flat = segmenter.predict(image, roi=roi, points=points, progress=progress, cancel=cancel,
                                              overrides=overrides)
    prediction.notes.extend(picture_notes(image))
    check_cancel(cancel)
    grid, mask = prediction.image, prediction.mask
    if clicks_only and prediction.clicks:
        box = clicks_box(prediction)
        grid, mask = boxes.crop(grid, box), mask[boxes.slices(box)]
    written = []
    try:
        written.append(write_mask(output_path, mask, grid))
        for path in flat_paths:
            if path != Path(output_path):
                written.append(write_mask(path, flat.mask, flat.image))
            written.append(write_image(mip_image_path(path), flat.image))
        if organ_mask is not None:
            written.append(write_mask(organ_mask, prediction.organ, prediction.image))
        check_cancel(cancel)
    except BaseException:
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise
    return prediction, written[0]


def require_organ(card: ModelCard, roi=None, points=None) -> str:
    """The organ a run of ``card`` can write as a segment of its own (``output.within.organ``), or a clear error:
    the card names none, or the run has an ROI or clicks (the organ is found on the whole image)."""
    organ = card.organ
    if not organ:
        raise TumorSegError(f"model {card.name!r} gives no organ mask (its card names no output.within.organ)")
    if roi is not None or points:
        raise TumorSegError("the organ mask comes from a whole-image run: drop the ROI or the points")
    return organ


def _check_organ_path(organ_mask: PathLike, output_path: PathLike, image: Image, card: ModelCard, roi, points) -> None:
    """Refuse an organ mask the run cannot write (``require_organ``), in the wrong kind of file for its grid (PNG for a
    2D image, NIfTI or NRRD for a volume) or in the mask's own file."""
    require_organ(card, roi, points)
    if (image_suffix(organ_mask) in PNG_SUFFIXES) != (image.ndim == 2):
        kind = ".png" if image.ndim == 2 else ".nii.gz or .nrrd"
        raise TumorSegError(f"the organ mask of a {image.ndim}D image is written as {kind}, not {Path(organ_mask).name}")
    if Path(organ_mask) == Path(output_path):
        raise TumorSegError("the organ mask and the mask need two different files")


def clicks_box(prediction: Prediction, reach: int | np.ndarray = 0) -> Box:
    """The smallest box holding every click's box, grown by ``reach`` voxels and cut at the image edge."""
    lows = np.min([[lo for lo, _ in c.box] for c in prediction.clicks], axis=0) - reach
    highs = np.max([[hi for _, hi in c.box] for c in prediction.clicks], axis=0) + reach
    return boxes.clip(tuple(zip(lows.tolist(), highs.tolist())), prediction.image.shape)


def readouts(prediction: Prediction, card: ModelCard) -> Readouts:
    """Lesion readouts of a prediction (``measure.measure_lesions``); MIP grey levels are not SUV (a traced 3D
    MIP-PET result is measured on the SUV volume).

    After clicks only the clicks' boxes are measured (every lesion lies in them; plus the SUVpeak
    sphere for PET), with voxel indices given on the full grid, so a click's cost does not grow
    with the image here either.
    """
    from .measure import SUV_PEAK_RADIUS_MM, measure_lesions, organ_totals

    modality = "PET" if card.modality == "MIP-PET" and prediction.image.ndim == 3 else card.modality
    modality = modality if modality in ("PET", "CT") else None
    grid, corner = prediction.image, np.zeros(prediction.image.ndim, dtype=int)
    mask = prediction.mask
    if prediction.clicks:
        reach = np.ceil(SUV_PEAK_RADIUS_MM / grid.spacing).astype(int) if modality == "PET" else 0
        box = clicks_box(prediction, reach)
        grid, mask, corner = boxes.crop(grid, box), mask[boxes.slices(box)], np.array([lo for lo, _ in box])
    values = measure_lesions(grid.with_array(mask.astype(np.uint8)), grid if modality else None, modality)
    values.offset_indices(corner)  # box indices -> full-grid indices
    if prediction.organ is not None:
        values.totals.update(organ_totals(card.organ, int(np.count_nonzero(prediction.organ)),
                                          int(np.count_nonzero(prediction.mask & prediction.organ)), grid))
    if card.modality == "MIP-PET" and modality is None:
        values.modality = "MIP-PET"
        values.notes.append("a MIP's grey levels are not SUV: no SUV readouts on a MIP mask")
    return values
