"""The inference engine: an image and a model card in, a probability map and a mask out.

``Segmenter(card).predict(image)`` returns a ``Prediction`` whose mask lies exactly on the
input's own grid (for a MIP-PET card given a 3D PET volume: on the computed coronal MIP). Steps:

1. input checks (dimensionality and modality, see ``check_input``); 3D PET -> MIP when the card
   works on MIPs (``mip.coronal_mip``);
2. optional region of interest: a voxel box ``roi`` = (I0, I1, J0, J1[, K0, K1]), half-open like
   Python slices (I0 <= i < I1), or a ``point`` (world mm; RAS for 3D) with the card's
   ``inference.context_mm`` box around it. Windows (or slices) are laid out as for the whole
   image and only those touching the box are computed, so inside the box the result equals the
   whole-image run exactly; probability and mask are zero outside the box. An ROI smaller than
   the card's ``inference.min_roi_mm`` is refused; a run with neither on a card that names what
   it was trained on (``inference.trained_on``, e.g. crops around one nodule) says so in ``notes``;
3. the card's preprocessing: exact reorientation (``preprocessing.orientation``), resampling to
   ``preprocessing.spacing`` and back (linear, same extent, so the result is exactly on the
   input grid), intensity window;
4. the network by the card's mode: MONAI sliding window (3D), batches of axial slices (normal to
   ``image.superior_axis``) or the whole 2D image, padded to ``inference.divisible_by``; with
   ``inference.flip_axes``, averaged over test-time flips (``inferers.Predictor``);
5. threshold and the card's post-processing.

Progress goes to a ``progress(fraction, message)`` callback and a ``Cancel`` token is checked
before every window or batch. On CUDA out-of-memory the work is retried with smaller batches, then
with the volume kept on the CPU, then on the CPU; every fallback is recorded in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .cards import ModelCard, flip_axes_problem, list_cards, weights_status
from .errors import Cancelled, TumorSegError
from .image import Image, superior_axis
from .io import image_suffix, write_image, write_mask, PNG_SUFFIXES
from .progress import check_cancel, no_progress, scaled
from .report import require_writable

OVERRIDES = ("overlap", "threshold", "min_lesion_ml", "min_lesion_px", "precision", "recheck_margin", "sw_batch_size",
             "batch_size", "flip_axes")
GPU_BATCH_VOXELS = 2**22  # input voxels per window batch on a GPU (halved on out-of-memory; not yet tuned on a GPU)
CT_MIN_BELOW = -100.0  # a CT in HU has air or fat below this; PET (SUV) never reaches it


@dataclass
class Prediction:
    probability: np.ndarray  # float32 foreground probability on ``image``'s grid
    mask: np.ndarray  # bool, after threshold and post-processing
    image: Image  # the grid of the mask: the input, or the MIP computed from a 3D PET input
    device: str
    notes: list = field(default_factory=list)


def settings_for(card: ModelCard, overrides: dict | None = None) -> dict:
    """The card's inference, output and post-processing settings with the user's overrides."""
    inference = card.inference
    settings = {
        "patch_size": inference.get("patch_size"),
        "overlap": float(inference.get("overlap", 0.25)),
        "blending": inference.get("blending", "gaussian"),
        "sw_batch_size": int(inference.get("sw_batch_size", 1)),
        "batch_size": int(inference.get("batch_size", 8)),
        "precision": inference.get("precision", "auto"),
        "recheck_margin": float(inference.get("recheck_margin", 0.0)),
        "flip_axes": inference.get("flip_axes", []),
        "threshold": card.threshold,
        **card.postprocessing,
    }
    unknown = sorted(set(overrides or {}) - set(OVERRIDES))
    if unknown:
        raise TumorSegError(f"unknown setting(s) {unknown}; settings that can be changed: {OVERRIDES}")
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not 0.0 <= float(settings["overlap"]) < 1.0:
        raise TumorSegError(f"overlap must be in [0, 1), got {settings['overlap']}")
    if not 0.0 < float(settings["threshold"]) < 1.0:
        raise TumorSegError(f"threshold must lie strictly between 0 and 1, got {settings['threshold']}")
    for key in ("min_lesion_ml", "min_lesion_px"):
        if float(settings.get(key) or 0.0) < 0.0:
            raise TumorSegError(f"{key} must be >= 0, got {settings[key]}")
    problem = flip_axes_problem(settings["flip_axes"], card.spatial_dims)
    if problem:
        raise TumorSegError(problem)
    return settings


def gpu_window_batch(settings: dict) -> int:
    """Windows per GPU batch: the card's ``sw_batch_size`` or, when more, ``GPU_BATCH_VOXELS`` worth of windows.

    Small windows one at a time leave a GPU idle between kernel launches; the out-of-memory
    fallback halves the batch again where this is too much.
    """
    patch = settings["patch_size"]
    if not patch:
        return int(settings["sw_batch_size"])
    return max(int(settings["sw_batch_size"]), GPU_BATCH_VOXELS // int(np.prod(patch)))


def divisible_by(card: ModelCard) -> int:
    """What 2D inputs are padded to: the card's ``inference.divisible_by``, else the network's total stride."""
    if "divisible_by" in card.inference:
        return int(card.inference["divisible_by"])
    strides = card.network.get("args", {}).get("strides", (2, 2, 2, 2))
    return int(np.prod([s if np.isscalar(s) else max(s) for s in strides]))


def looks_like_ct(image: Image) -> bool:
    """The card rule for modality checks: an image with values below -100 is CT in HU, else not."""
    return bool(np.min(image.array) < CT_MIN_BELOW)


def check_input(image: Image, card: ModelCard) -> None:
    """Refuse an input of the wrong dimensionality or modality for ``card`` (clear error).

    Rule: a CT card needs values below -100 (HU: air, fat); a PET or MIP-PET card given a 3D
    volume refuses one with such values (that is CT, not SUV); a MIP-PET card given a 2D image
    needs values in 0..255 (the MIP PNG representation).
    """
    image.require_finite("input image")
    what = f"model {card.name!r} ({card.modality}, {card.mode})"
    if card.modality == "MIP-PET":
        if image.ndim == 2 and (np.min(image.array) < 0 or np.max(image.array) > 255):
            raise TumorSegError(f"{what} needs a MIP image with values 0..255 (as the MIP PNGs), got "
                                f"{np.min(image.array)}..{np.max(image.array)}")
    elif card.spatial_dims == 3 or card.mode == "slice-2d":
        if image.ndim != 3 and not (card.mode == "slice-2d" and "picture" in image.meta):
            raise TumorSegError(f"{what} needs a 3D volume, got a {image.ndim}D image of shape {image.shape}")
    elif image.ndim != 2:
        raise TumorSegError(f"{what} needs a 2D image, got a {image.ndim}D volume of shape {image.shape}")
    if image.ndim == 3:
        if card.modality == "CT" and not looks_like_ct(image):
            raise TumorSegError(f"{what}: the input does not look like CT in HU (no value below {CT_MIN_BELOW:g}; "
                                f"range {np.min(image.array):g}..{np.max(image.array):g}); is it PET?")
        if card.modality in ("PET", "MIP-PET") and looks_like_ct(image):
            raise TumorSegError(f"{what}: the input looks like CT in HU (values down to {np.min(image.array):g}), "
                                "not PET in SUV")


def parse_box(roi, shape) -> tuple:
    """A half-open voxel box ((lo, hi) per axis) from I0 I1 J0 J1 [K0 K1]; it must lie in the image."""
    values = [int(v) for v in roi]
    if len(values) != 2 * len(shape):
        raise TumorSegError(f"ROI needs {2 * len(shape)} values (I0 I1 ...) for a {len(shape)}D image, got {len(values)}")
    box = tuple(zip(values[0::2], values[1::2]))
    for axis, ((lo, hi), n) in enumerate(zip(box, shape)):
        if not 0 <= lo < hi <= n:
            raise TumorSegError(f"ROI {values} lies outside the image of shape {tuple(shape)} on axis {axis} "
                                f"(half-open: need 0 <= lo < hi <= {n})")
    return box


def check_roi_size(image: Image, box, card: ModelCard) -> None:
    """Refuse an ROI smaller than the card's ``inference.min_roi_mm`` (mm per axis of the card's orientation)."""
    minimum = card.inference.get("min_roi_mm")
    if minimum is None:
        return
    extent = np.array([hi - lo for lo, hi in box], dtype=np.float64) * image.spacing
    orientation = card.preprocessing.get("orientation")
    if orientation and image.ndim == 3:  # voxel axis -> axis of the card's orientation (a permutation)
        from nibabel import orientations as ornt

        transform = ornt.ornt_transform(ornt.io_orientation(image.affine), ornt.axcodes2ornt(tuple(orientation)))
        oriented = np.empty_like(extent)
        oriented[transform[:, 0].astype(int)] = extent
        extent = oriented
    minimum = np.broadcast_to(np.asarray(minimum, dtype=np.float64), extent.shape)
    if np.any(extent < minimum - 1e-6):
        raise TumorSegError(f"ROI of {np.round(extent, 1).tolist()} mm is smaller than the model's minimum context "
                            f"{minimum.tolist()} mm ({orientation or 'voxel'} axes): enlarge it, or click the lesion "
                            "(point) to use the model's context box")


def point_box(image: Image, source: Image, point, context_mm) -> tuple:
    """The voxel box of ``context_mm`` (edge lengths per axis, mm) centred on a world ``point``.

    ``source`` is the image the point refers to (the 3D volume when ``image`` is its MIP).
    """
    point = np.asarray(point, dtype=np.float64)
    if point.shape != (source.ndim,):
        raise TumorSegError(f"point needs {source.ndim} coordinates, got {point.tolist()}")
    index = source.to_index(point)
    if np.any(index < -0.5) or np.any(index > np.asarray(source.shape) - 0.5):
        raise TumorSegError(f"point {point.tolist()} mm lies outside the image (voxel index {np.round(index, 1).tolist()}, "
                            f"shape {source.shape})")
    if source is not image:
        index = image.meta["mip"].pixel(index)
    context = np.broadcast_to(np.asarray(context_mm, dtype=np.float64), (image.ndim,))
    half = context / 2.0 / image.spacing
    lo = np.clip(np.floor(index - half + 0.5), 0, None).astype(int)
    hi = np.minimum(np.floor(index + half + 0.5).astype(int) + 1, image.shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi))


class Segmenter:
    """A loaded model: call ``predict`` for each image (the network is loaded once)."""

    def __init__(self, card: ModelCard, device: str = "auto", network=None):
        from .device import resolve_device
        from .networks import for_inference, load_network

        self.card = card
        self.device = resolve_device(device)
        if card.in_channels != 1:
            raise TumorSegError(f"model {card.name!r} expects {card.in_channels} input channels; the engine feeds one")
        if network is None:
            network = load_network(card, self.device)
        network, self.memory_format = for_inference(network, card.spatial_dims)  # a copy: the caller's is untouched
        self.network = network.to(self.device)

    # -- public -----------------------------------------------------------------------------
    def predict(self, image: Image, roi=None, point=None, progress=no_progress, cancel=None,
                overrides=None) -> Prediction:
        settings = settings_for(self.card, overrides)
        if self.device.type == "cuda" and (overrides or {}).get("sw_batch_size") is None:
            settings["sw_batch_size"] = gpu_window_batch(settings)
        notes = []
        check_cancel(cancel)
        progress(0.0, "preparing")
        check_input(image, self.card)
        work = image
        if self.card.modality == "MIP-PET" and image.ndim == 3:
            from .mip import coronal_mip

            work = coronal_mip(image, self.card)
            notes.append("the model works on the coronal MIP: the mask lies on the MIP, not on the 3D volume")
        if roi is not None and point is not None:
            raise TumorSegError("give either an ROI or a point, not both")
        box = None
        if roi is not None:
            box = parse_box(roi, work.shape)
            check_roi_size(work, box, self.card)
        elif point is not None:
            box = point_box(work, image, point, self._context_mm(work))
        elif self.card.inference.get("trained_on"):
            notes.append(f"model {self.card.name!r} was trained on {self.card.inference['trained_on']}, not on whole "
                         "volumes: expect false positives elsewhere; click the lesion (point) or give an ROI")
        probability = self._infer(work, box, settings, scaled(progress, 0.02, 0.95), cancel, notes)
        if box is not None:
            inside = np.zeros(work.shape, dtype=bool)
            inside[tuple(slice(lo, hi) for lo, hi in box)] = True
            probability[~inside] = 0.0
        check_cancel(cancel)
        progress(0.96, "post-processing")
        from .postprocess import postprocess

        mask = postprocess(probability >= float(settings["threshold"]), work, settings, notes)
        progress(1.0, "done")
        return Prediction(probability, mask, work, str(self.device), notes)

    # -- steps ------------------------------------------------------------------------------
    def _context_mm(self, work: Image):
        context = self.card.inference.get("context_mm")
        if context is not None:
            return context
        patch = self.card.inference.get("patch_size") or [256] * work.ndim
        return (np.resize(np.asarray(patch, dtype=float), work.ndim) * work.spacing).tolist()

    def _infer(self, image: Image, box, settings: dict, progress, cancel, notes) -> np.ndarray:
        """Foreground probability on ``image``'s grid: reorient, resample, normalise, run, undo.

        With a ``box``, only the windows or slices touching it are computed (see ``inferers``).
        """
        from .preprocess import normalize_intensity, reorient, resample, resampled_shape, undo_reorient

        orientation = self.card.preprocessing.get("orientation")
        oriented, transform = reorient(image, orientation)
        array = np.asarray(oriented.array, dtype=np.float32)
        region = None
        if box is not None:
            region = np.zeros(image.shape, dtype=np.float32)
            region[tuple(slice(lo, hi) for lo, hi in box)] = 1.0
            region = reorient(image.with_array(region), orientation)[0].array
        axis = superior_axis(oriented.affine) if oriented.ndim == 3 else None
        spacing = self.card.preprocessing.get("spacing")
        if spacing and not oriented.spacing_known:
            notes.append("the image has no pixel spacing: it was not resampled to the model's spacing")
            spacing = None
        if spacing:
            spacing = list(spacing)
            if self.card.mode == "slice-2d" and len(spacing) == 2 and axis is not None:
                spacing.insert(axis, None)
            shape = resampled_shape(array.shape, oriented.spacing, spacing)
            array = resample(array, shape)
            if region is not None:  # one voxel more on each side for the interpolation back
                region = ndimage.binary_dilation(resample(region, shape) > 0)
        active = None if region is None else _bounding_box(region)
        probability = self._run(normalize_intensity(array, self.card), axis, active, settings, progress, cancel, notes)
        probability = resample(probability, oriented.shape)
        return undo_reorient(probability, transform)

    def _run(self, array: np.ndarray, axis, active, settings: dict, progress, cancel, notes) -> np.ndarray:
        """The network over a normalised array by the card's mode, with the CUDA out-of-memory fallbacks."""
        import torch

        from .device import is_out_of_memory

        batch_key = "sw_batch_size" if self.card.mode == "sliding-window-3d" else "batch_size"
        attempt = dict(settings, keep_volume_on_device=None)
        while True:
            try:
                return self._run_once(array, axis, active, attempt, progress, cancel)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
                if self.device.type != "cuda" or not is_out_of_memory(error):
                    raise
                torch.cuda.empty_cache()
                if int(attempt[batch_key]) > 1:
                    attempt[batch_key] = max(int(attempt[batch_key]) // 2, 1)
                    notes.append(f"CUDA out of memory: retrying with {batch_key} {attempt[batch_key]}")
                elif self.card.mode == "sliding-window-3d" and attempt["keep_volume_on_device"] is not False:
                    attempt["keep_volume_on_device"] = False
                    notes.append("CUDA out of memory: retrying with the volume kept on the CPU")
                else:
                    notes.append("CUDA out of memory: retrying on the CPU (slower)")
                    from .device import resolve_device

                    self.device = resolve_device("cpu")
                    self.network = self.network.to(self.device)

    def _run_once(self, array: np.ndarray, axis, active, settings: dict, progress, cancel) -> np.ndarray:
        from . import inferers
        from .device import autocast_dtype

        predictor_args = {
            "network": self.network,
            "output": self.card.output,
            "dtype": autocast_dtype(self.device, settings["precision"]),
            "progress": progress,
            "cancel": cancel,
            "memory_format": self.memory_format,
            "recheck": (float(settings["threshold"]), float(settings["recheck_margin"]))
            if float(settings["recheck_margin"]) > 0 else None,
            "flip_axes": settings["flip_axes"],
        }
        if self.card.mode == "sliding-window-3d":
            patch = settings["patch_size"] or [96, 96, 96]
            return inferers.sliding_window_3d(
                array, predictor_args, patch, float(settings["overlap"]), settings["blending"],
                int(settings["sw_batch_size"]), self.device, self._volume_device(array, settings), active)
        if self.card.mode == "slice-2d" and axis is not None:  # a 2D picture is one axial slice
            return inferers.slices_2d(array, axis, predictor_args, int(settings["batch_size"]), divisible_by(self.card),
                                      self.device, active)
        return inferers.whole_image_2d(array, predictor_args, divisible_by(self.card), self.device)

    def _volume_device(self, array: np.ndarray, settings: dict):
        """Where the whole volume and the blended output live: the GPU only when they fit easily."""
        import torch

        if self.device.type != "cuda" or settings.get("keep_volume_on_device") is False:
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(self.device)
        needed = array.size * 4 * 4  # input, output, blending weights, a copy
        return self.device if needed < free / 4 else torch.device("cpu")


def _bounding_box(region: np.ndarray) -> tuple:
    """Half-open bounding box of the non-zero voxels of ``region``."""
    return tuple((int(s.start), int(s.stop)) for s in ndimage.find_objects(region.astype(np.uint8))[0])


def default_card(image: Image, extra_dir=None) -> ModelCard:
    """The one card with weights present that fits ``image`` (by dimensionality and the modality rule)."""
    candidates = []
    for card in list_cards(extra_dir):
        if weights_status(card) in ("missing", "sha256 mismatch"):
            continue
        try:
            check_input(image, card)
        except TumorSegError:
            continue
        candidates.append(card)
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(c.name for c in candidates) or "none"
    if not candidates:
        raise TumorSegError(f"no model with weights fits this {image.ndim}D image (models that fit: none); "
                            "see 'tumorseg models'")
    raise TumorSegError(f"several models fit this image ({names}); choose one with --model")


def output_path_for(input_image: Image, prediction_image: Image, output) -> tuple:
    """Where the mask goes: ``output``, or with .png when a 3D input was segmented on its MIP or
    ``output`` names a (lossy) JPEG."""
    output = Path(output)
    notes = []
    if prediction_image.ndim == 2 and image_suffix(output) not in PNG_SUFFIXES:
        suffix = image_suffix(output)
        output = output.with_name(output.name[: len(output.name) - len(suffix)] + ".png")
        what = "2D MIP mask" if input_image.ndim == 3 else "mask of a 2D picture"
        notes.append(f"the mask is a {what}, written as PNG (never JPEG): {output}")
    return output, notes


def segment_file(input_path, output_path, segmenter: Segmenter, roi=None, point=None, progress=no_progress,
                 cancel=None, overrides=None) -> tuple:
    """Segment one file and write its mask; returns (Prediction, written mask path).

    For a MIP-PET model given a 3D PET volume the mask is the 2D MIP mask (PNG) and the MIP itself
    is written beside it as ``<name>_mip.png``. Nothing is written when the run fails or is cancelled.
    """
    image_suffix(output_path)
    require_writable(output_path, "mask")
    from .windowed import picture_notes, read_input

    image = read_input(input_path, segmenter.card)
    if image.ndim == 3 and Path(output_path).suffix.lower() == ".png" and segmenter.card.modality != "MIP-PET":
        raise TumorSegError(f"cannot write the mask of a 3D volume as PNG ({output_path}); use .nii.gz or .nrrd")
    prediction = segmenter.predict(image, roi=roi, point=point, progress=progress, cancel=cancel, overrides=overrides)
    output, notes = output_path_for(image, prediction.image, output_path)
    prediction.notes.extend(notes + picture_notes(image))
    check_cancel(cancel)
    written = [write_mask(output, prediction.mask, prediction.image)]
    try:
        if prediction.image is not image:
            mip_path = output.with_name(output.name[: -len(".png")] + "_mip.png")
            written.append(write_image(mip_path, prediction.image))
        check_cancel(cancel)
    except (Cancelled, TumorSegError, KeyboardInterrupt):
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise
    return prediction, written[0]


def readouts(prediction: Prediction, card: ModelCard):
    """Lesion readouts of a prediction (``measure.measure_lesions``); MIP grey levels are not SUV."""
    from .measure import measure_lesions

    modality = card.modality if card.modality in ("PET", "CT") else None
    image = prediction.image if modality else None
    mask = prediction.image.with_array(prediction.mask.astype(np.uint8))
    return measure_lesions(mask, image, modality)
