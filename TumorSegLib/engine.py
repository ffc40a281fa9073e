"""The inference engine: an image and a model card in, a probability map and a mask out.

``Segmenter(card).predict(image)`` returns a ``Prediction`` whose mask lies exactly on the
input's own grid (for a MIP-PET card given a 3D PET volume: on the computed coronal MIP, which
``mip3d.segment_traced`` traces back into the volume). Steps:

1. input checks (dimensionality, size and the modality rule of ``modality``, see ``check_input``);
   3D PET -> MIP when the card
   works on MIPs (``mip.coronal_mip``);
2. optional region of interest: a voxel box ``roi`` = (I0, I1, J0, J1[, K0, K1]), half-open like
   Python slices (I0 <= i < I1), or clicks: ``point`` / ``points`` (world mm; RAS for 3D), each with
   the card's ``inference.context_mm`` box around it (``boxes``). Crop first: only each box plus
   the margin the network sees (the sliding window's overlap band; the whole image for
   ``whole-image-2d``) goes through steps 3-5, and the result is pasted back onto the full grid
   (zero outside the boxes), so the cost does not grow with the image. A click keeps only the lesion holding it, else the
   nearest within the card's ``click.max_distance_mm``, else nothing (a note says so); its box and
   lesion are in ``Prediction.clicks``. An ROI smaller than the card's ``inference.min_roi_mm`` is
   refused; a run with neither on a card that names what it was trained on
   (``inference.trained_on``, e.g. crops around one nodule) says so in ``notes``;
3. the card's preprocessing, the one path training uses too (``preprocess.prepare``): exact
   reorientation (``preprocessing.orientation``), resampling to ``preprocessing.spacing`` (linear,
   same extent), intensity window; after the network ``preprocess.restore`` brings the probability
   back exactly onto the input grid;
4. the network by the card's mode: MONAI sliding window (3D), batches of axial slices (normal to
   ``image.superior_axis``) or the whole 2D image, padded to ``inference.divisible_by``; with
   ``inference.flip_axes``, averaged over test-time flips (``inferers.Predictor``); run by PyTorch or,
   on a CPU with OpenVINO installed, by OpenVINO (``backend``, ``openvino_backend``);
5. threshold and the card's post-processing (per box for ROI and click runs); a card's
   ``postprocessing.lesion_filter`` (module ``lesion_filter``) and then ``postprocessing.image_gate`` (module
   ``image_gate``) act on whole-image runs only. A cascade whose card names its organ (``output.within.organ``)
   also gives that organ, its tumours included, on whole-image runs (``Prediction.organ``).

Reading and writing files, choosing a card for an image and the readouts of a result are in ``runs``.

Progress goes to a ``progress(fraction, message)`` callback and a ``Cancel`` token is checked
before every window or batch. On CUDA out-of-memory the work is retried with smaller batches, then
with the volume kept on the CPU, then on the CPU; every fallback is recorded in ``notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from scipy import ndimage

from . import boxes
from .cards import Activation, Modality, Mode, ModelCard, Output, Settings, organ_card, partner_cards, settings_for
from .errors import TumorSegError
from .hints import Overrides, Point, Shape
from .image import Image, superior_axis
from .image_gate import apply_gate
from .lesion_filter import filter_lesions
from .modality import CT_MIN_BELOW, SUV_P99_MAX, has_air, looks_like_activity, value_range
from .preprocess import Prepared, move_to_level, normalize_intensity, prepare, restore
from .progress import Cancel, ProgressCallback, check_cancel, no_progress, scaled
from .windowed import require_read_for, saturation_note

GPU_BATCH_VOXELS = 2**22  # input voxels per window batch on a GPU (halved on out-of-memory; not yet tuned on a GPU)
MIN_INPUT_VOXELS = 8  # per in-plane axis (any number of slices): less is no image to segment
SAMPLE_VOXELS = 2**20  # voxels of a large CT whose range settles the modality rule for an ROI or click run
MIP_NOTE = "the model works on the coronal MIP: the mask lies on the MIP, not on the 3D volume"  # mip3d drops it


@dataclass
class Click:
    """One click's result: the lesion it selected, inside its own box of the prediction grid."""

    point: tuple  # world mm, as given
    box: tuple  # half-open voxel box ((lo, hi) per axis) on the prediction grid: the only voxels it may change
    mask: np.ndarray  # bool, the box's shape: the selected lesion (all False when the click hit no lesion)
    probability: np.ndarray  # float32, the box's shape: the network's probability in the box
    distance_mm: float | None  # from the click to the lesion (0 inside it); None when no lesion was selected

    @property
    def slices(self) -> tuple:
        """Index the prediction grid with this: ``mask_on_grid[click.slices] |= click.mask``."""
        return boxes.slices(self.box)

    def cut_at_edge(self, shape: Shape) -> bool:
        """Whether the lesion reaches a side of the box that is not the image's edge (it may go on there)."""
        for axis, ((lo, hi), n) in enumerate(zip(self.box, shape)):
            if (lo > 0 and self.mask.take(0, axis).any()) or (hi < n and self.mask.take(-1, axis).any()):
                return True
        return False

    def describe(self, number: int, grid: Image, reach: float) -> str:
        """A note for the user: what the click found."""
        from .measure import image_size_key, size_of

        where = f"click {number} at {np.round(self.point, 1).tolist()}"
        if self.distance_mm is None:
            return f"{where}: no lesion at the click or within {reach:g} mm of it (background): nothing segmented"
        unit = {"volume_ml": "mL", "area_mm2": "mm^2", "area_px": "px"}[image_size_key(grid)]
        size = size_of(int(np.count_nonzero(self.mask)), grid)
        text = f"{where}: lesion of {size:.3g} {unit}" + (
            " at the click" if self.distance_mm == 0 else f", {self.distance_mm:.1f} mm from the click")
        if self.cut_at_edge(grid.shape):
            text += "; it reaches the edge of the click's box and may continue beyond it (give an ROI to segment it whole)"
        return text


@dataclass
class Prediction:
    probability: np.ndarray  # float32 foreground probability on ``image``'s grid
    mask: np.ndarray  # bool, after threshold and post-processing
    image: Image  # the grid of the mask: the input, or the MIP computed from a 3D PET input
    device: str
    notes: list = field(default_factory=list)
    clicks: list = field(default_factory=list)  # one Click per point, in the order given
    organ: np.ndarray | None = None  # bool: the card's named organ (``output.within.organ``) post-processed by its own
    # card, its tumours included; whole-image runs only


def gpu_window_batch(settings: Settings) -> int:
    """Windows per GPU batch: the card's ``sw_batch_size`` or, when more, ``GPU_BATCH_VOXELS`` worth of windows.

    Small windows one at a time leave a GPU idle between kernel launches; the out-of-memory
    fallback halves the batch again where this is too much.
    """
    inference = settings.inference
    if not inference.patch_size:
        return inference.sw_batch_size
    return max(inference.sw_batch_size, GPU_BATCH_VOXELS // int(np.prod(inference.patch_size)))


def divisible_by(card: ModelCard) -> int:
    """What 2D inputs are padded to: the card's ``inference.divisible_by``, else the network's total stride."""
    if card.inference.divisible_by is not None:
        return card.inference.divisible_by
    strides = card.network.kwargs.get("strides", (2, 2, 2, 2))
    return int(np.prod([s if np.isscalar(s) else max(s) for s in strides]))


def check_input(image: Image, card: ModelCard, sample: bool = False) -> None:
    """Refuse an input of the wrong size, dimensionality or modality for ``card`` (clear error).

    Rule: a constant image has nothing to segment; by the modality rule (``modality``) a CT card
    needs a volume with air (values below -100 HU); a PET or MIP-PET card given a 3D volume refuses
    one with air (that is CT, not SUV) or too hot for SUV (activity concentration); a MIP-PET
    card given a 2D image needs values in 0..255 (the MIP PNG representation). With ``sample`` (ROI
    and click runs, which check NaN only where the network reads) a CT card first looks at about
    ``SAMPLE_VOXELS`` evenly spread voxels and reads them all only when those do not settle it.
    """
    step = int(np.ceil((image.array.size / SAMPLE_VOXELS) ** (1.0 / image.ndim))) if sample else 1
    low, high = value_range(image.array, step) if card.modality == Modality.CT and step > 1 else (np.nan, np.nan)
    if not (np.isfinite(low) and np.isfinite(high) and has_air(low) and low < high):  # the sample did not settle it
        low, high = value_range(image.array)
    if not (np.isfinite(low) and np.isfinite(high)):
        image.require_finite("input image")
    what = f"model {card.name!r} ({card.modality}, {card.mode})"
    if low == high:
        raise TumorSegError(f"the input image is constant (every voxel {low:g}): there is nothing to segment")
    if card.modality == "MIP-PET":
        if image.ndim == 2 and (low < 0 or high > 255):
            raise TumorSegError(f"{what} needs a MIP image with values 0..255 (as the MIP PNGs), got "
                                f"{low:g}..{high:g}")
    elif card.spatial_dims == 3 or card.mode == "slice-2d":
        if image.ndim != 3 and not (card.mode == "slice-2d" and "picture" in image.meta):
            raise TumorSegError(f"{what} needs a 3D volume, got a {image.ndim}D image of shape {image.shape}")
    elif image.ndim != 2:
        raise TumorSegError(f"{what} needs a 2D image, got a {image.ndim}D volume of shape {image.shape}")
    in_plane = [a for a in range(image.ndim) if image.ndim == 2 or a != superior_axis(image.affine)]
    if any(image.shape[a] < MIN_INPUT_VOXELS for a in in_plane):
        raise TumorSegError(f"{what}: the input of shape {image.shape} is too small; it needs at least "
                            f"{MIN_INPUT_VOXELS} voxels along each {'in-plane ' if image.ndim == 3 else ''}axis")
    if image.ndim == 3:
        if card.modality == Modality.CT and not has_air(low):
            raise TumorSegError(f"{what}: the input does not look like CT in HU (no value below {CT_MIN_BELOW:g}; "
                                f"range {low:g}..{high:g}); is it PET?")
        if card.modality in (Modality.PET, Modality.MIP_PET) and has_air(low):
            raise TumorSegError(f"{what}: the input looks like CT in HU (values down to {low:g}), "
                                "not PET in SUV")
        if card.modality in (Modality.PET, Modality.MIP_PET) and looks_like_activity(image.array):
            reason = image.meta.get("suv_unavailable")
            raise TumorSegError(f"{what}: the input is not in SUV (99th percentile {np.percentile(image.array, 99):g}; "
                                f"a PET in SUV stays below {SUV_P99_MAX:g}): activity concentration (Bq/mL) is about "
                                "1000x SUV" + (f"; {reason}" if reason else "") + ". Convert it to SUV first (a PT "
                                "DICOM series with dose, weight and times is converted when it is read)")


class Segmenter:
    """A loaded model: call ``predict`` for each image (the network is loaded once)."""

    def __init__(self, card: ModelCard, device: str = "auto", network=None, backend: str | None = None):
        """``backend``: "auto" (OpenVINO on a CPU when installed), "torch" or "openvino"; default the card's
        ``inference.backend``, else "auto" (see ``openvino_backend``)."""
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
        self.backend, self.load_notes = self._use_backend(backend or card.inference.backend)
        self.lesion_net, self.gate_net = _postprocessing_networks(card)
        self.partners = [(self._helper(other, device, backend, "averages with"), weight)
                         for other, weight in partner_cards(card)]
        source = organ_card(card)
        self.organ_source = None if source is None else self._helper(source, device, backend, "takes its organ from")
        if self.partners:
            self.load_notes.append("probability: the weighted mean of " + ", ".join(
                f"{c.name} ({w:g})" for c, w in [(card, self.own_weight)] + [(s.card, w) for s, w in self.partners]))

    def _helper(self, card: ModelCard, device: str, backend: str | None, verb: str) -> "Segmenter":
        """The Segmenter of a card this one needs (``verb`` it); its errors say which model needs it."""
        try:
            return Segmenter(card, device, backend=backend)
        except TumorSegError as error:
            raise TumorSegError(f"model {self.card.name!r} {verb} {card.name!r}, which cannot run: {error}") from error

    @property
    def own_weight(self) -> float:
        """This card's weight in the mean with its ``inference.average_with`` cards (1 without)."""
        return 1.0 - sum(weight for _, weight in self.partners)

    @property
    def _network_output(self) -> Output:
        """The card's output as this network gives it: with ``inference.organ_from`` the organ rule
        (``output.within``) names the other card's channel and is applied after the network (``_probability``)."""
        return replace(self.card.output, within=None) if self.organ_source is not None else self.card.output

    def _use_backend(self, backend: str) -> tuple:
        """(backend used, notes): OpenVINO replaces ``self.network`` where chosen; "auto" falls back to PyTorch."""
        from .openvino_backend import OpenVinoNetwork, resolve_backend

        if resolve_backend(backend, self.device) == "torch":
            return "torch", []
        try:
            self.network = OpenVinoNetwork(self.network, self.card.spatial_dims, self.card.in_channels)
        except TumorSegError as error:
            if backend == "openvino":
                raise
            return "torch", [f"OpenVINO not used, PyTorch runs the network: {error}"]
        self.memory_format = None  # OpenVINO takes plain contiguous arrays
        return "openvino", []

    # -- public -----------------------------------------------------------------------------
    def predict(self, image: Image, roi: Sequence[int] | None = None, point: Point | None = None,
                progress: ProgressCallback = no_progress, cancel: Cancel | None = None, overrides: Overrides = None,
                points: Sequence[Point] | None = None) -> Prediction:
        """Segment ``image``: whole, inside an ``roi`` box, or at clicks (``point``, or several ``points``).

        With an ROI or clicks only each box plus the margin the network sees is resampled and run
        (``boxes``), so the cost does not grow with the image; the result is pasted onto the full
        grid. Clicks keep only the lesion at each click (``Prediction.clicks``).
        """
        settings = self._settings(overrides)
        notes = list(self.load_notes)
        organ = None
        check_cancel(cancel)
        progress(0.0, "preparing")
        points = ([] if point is None else [point]) + list(points or [])
        if roi is not None and points:
            raise TumorSegError("give either an ROI or a point, not both")
        work = self._work_image(image, notes, sample=bool(points) or roi is not None)
        step = scaled(progress, 0.02, 0.95)
        clicks = []
        if points:
            clicks = self._clicks(work, image, points, settings, step, cancel, notes)
            probability, mask = _paste(work.shape, [(c.box, c.probability, c.mask) for c in clicks])
        elif roi is not None:
            box = boxes.parse_box(roi, work.shape)
            boxes.check_roi_size(work, box, self.card)
            probability, mask = _paste(work.shape, [(box, *self._segment_box(work, box, settings, step, cancel,
                                                                             notes))])
        else:
            if self.card.inference.trained_on:
                notes.append(f"model {self.card.name!r} was trained on {self.card.inference.trained_on}, not on "
                             "whole volumes: expect false positives elsewhere; click the lesion (point) or give an ROI")
            organs = []
            probability = self._infer(work, None, settings, step, cancel, notes, organs)
            progress(0.96, "post-processing")
            mask = self._postprocess(probability, work, settings, cancel, notes, whole_image=True)
            if organs and self.card.organ:  # as the organ's card post-processes its own mask
                from .postprocess import postprocess

                organ = postprocess(organs[0], work, settings.organ.postprocessing, []) | mask
        progress(1.0, "done")
        return Prediction(probability, mask, work, str(self.device), notes, clicks, organ)

    def click(self, image: Image, points: Sequence[Point], progress: ProgressCallback = no_progress,
              cancel: Cancel | None = None, overrides: Overrides = None) -> list:
        """One ``Click`` per world point: its box on the prediction grid and the lesion inside it.

        For callers that add lesions up (the Slicer module): each click changes voxels only inside
        its own ``box``.
        """
        return self.predict(image, points=points, progress=progress, cancel=cancel, overrides=overrides).clicks

    # -- steps ------------------------------------------------------------------------------
    def _settings(self, overrides) -> Settings:
        """The run's settings; the cards this one needs (averaged, organ) keep their own, but for a precision the user
        gave."""
        settings = settings_for(self.card, overrides)
        if self.device.type == "cuda" and (overrides or {}).get("sw_batch_size") is None:
            settings = replace(settings, inference=replace(settings.inference, sw_batch_size=gpu_window_batch(settings)))
        precision = (overrides or {}).get("precision")
        shared = {"precision": precision} if precision else None
        return replace(settings, partners=tuple(partner._settings(shared) for partner, _ in self.partners),
                       organ=self.organ_source._settings(shared) if self.organ_source else None)

    def _work_image(self, image: Image, notes: list, sample: bool) -> Image:
        """The checked input, or its coronal MIP for a MIP-PET card given a 3D volume."""
        check_input(image, self.card, sample)
        if self.card.modality == "MIP-PET" and image.ndim == 3:
            from .mip import coronal_mip, scale_note

            notes.append(MIP_NOTE)
            mip = coronal_mip(image, self.card)
            note = scale_note(mip, self.card)
            if note:
                notes.append(note)
            return mip
        return image

    def _clicks(self, work: Image, source: Image, points, settings: Settings, progress, cancel, notes) -> list:
        """Segment the context box around each click and keep the lesion at the click.

        The click chooses the lesion, so the card's ``largest_component`` does not apply: in a context
        box the largest lesion may be another one (a bladder, a larger sphere) than the one clicked.
        """
        settings = replace(settings, postprocessing=replace(settings.postprocessing, largest_component=False))
        points = boxes.check_points(points, source.ndim)
        indices = [boxes.point_index(work, source, p) for p in points]  # every point checked before any work
        context = boxes.context_mm(self.card, work)
        reach = float(self.card.click.max_distance_mm)
        clicks = []
        for number, (point, index) in enumerate(zip(points, indices)):
            box = boxes.clip(boxes.context_box(work, index, context), work.shape)
            step = scaled(progress, number / len(points), (number + 1) / len(points))
            clicks.append(self._click(work, point, index, box, settings, step, cancel, reach))
            notes.append(clicks[-1].describe(number + 1, work, reach))
        return clicks

    def _click(self, work: Image, point, index, box, settings: Settings, progress, cancel, reach: float) -> Click:
        from .postprocess import lesion_at

        probability, found = self._segment_box(work, box, settings, progress, cancel, [])
        corner = np.array([lo for lo, _ in box])
        mask, distance = lesion_at(found, boxes.crop(work, box), index - corner, reach)
        return Click(tuple(point.tolist()), box, mask, probability, distance)

    def _segment_box(self, work: Image, box, settings: Settings, progress, cancel, notes) -> tuple:
        """(probability, post-processed mask) inside ``box``, from the box plus the network's margin only.

        The margin is cut at the image edge, as a whole-image run sees it: an image smaller than a
        window is padded by the inferer as in training (centred, with the window's low end).
        """
        margin = boxes.margin_voxels(self.card, work, settings.inference.overlap)
        outer = boxes.clip(boxes.grow(box, margin, work.shape), work.shape)
        inner = boxes.within(box, outer)
        region = boxes.crop(work, outer)
        region.require_finite("input image (in the region the network reads)")
        probability = self._infer(region, inner, settings, progress, cancel, notes)
        probability = np.ascontiguousarray(probability[boxes.slices(inner)])
        return probability, self._postprocess(probability, boxes.crop(work, box), settings, cancel, notes)

    def _infer(self, image: Image, box, settings: Settings, progress, cancel, notes, organs=None) -> np.ndarray:
        """Foreground probability on ``image``'s grid; with ``inference.average_with`` the weighted mean of this
        card's and each named card's, each computed by its own card on the same input and box. ``organs``: a list
        that gets the organ region this card's tumour was kept in (``_probability``)."""
        if settings.output is not None or not self.partners:  # an organ pass is this network's alone
            return self._probability(image, box, settings, progress, cancel, notes, organs)
        members = [(self, settings, self.own_weight)] + [(partner, partner_settings, weight) for (partner, weight),
                                                         partner_settings in zip(self.partners, settings.partners)]
        total = None
        for number, (segmenter, member_settings, weight) in enumerate(members):
            step = scaled(progress, number / len(members), (number + 1) / len(members))
            part = weight * segmenter._probability(image, box, member_settings, step, cancel, notes,
                                                   organs if segmenter is self else None)
            total = part if total is None else total + part
        return total

    def _probability(self, image: Image, box, settings: Settings, progress, cancel, notes, organs=None) -> np.ndarray:
        """This card's foreground probability on ``image``'s grid: prepare, run, restore (``preprocess``).

        With a ``box``, only the windows or slices touching it are computed (see ``inferers``). A card with
        ``preprocessing.organ_level`` or ``inference.organ_from`` first finds the organ (``_organ``): with
        ``organ_from`` that card's whole run gives it, the move to the organ's level and the tumour-in-organ rule
        (``output.within``), whose organ region goes to ``organs`` when a list is given.
        """
        require_read_for(image, self.card)
        organ = None
        if settings.output is None and (self.card.preprocessing.organ_level or self.organ_source):
            organ = self._organ(image, box, settings, scaled(progress, 0.0, 0.5), cancel, notes)
            progress = scaled(progress, 0.5, 1.0)
            if self.card.preprocessing.organ_level is not None:
                image = self._move_to_organ_level(image, organ, notes)
        prepared = prepare(image, self.card)
        notes.extend(prepared.notes)
        active = None if box is None else _network_box(prepared, image.shape, box)
        probability = restore(prepared, self._run(prepared.array, prepared.axis, active, settings, progress, cancel,
                                                  notes))
        within = self.card.output.within
        if self.organ_source is not None and within is not None:
            inside = organ >= within.threshold
            if within.largest_component:
                from .postprocess import largest_region

                inside = largest_region(inside)
            if organs is not None:
                organs.append(inside)
            probability = probability * inside
        return probability

    def _organ(self, image: Image, box, settings: Settings, progress, cancel, notes) -> np.ndarray:
        """The organ's probability on ``image``'s grid: from the ``inference.organ_from`` card, else from this
        network's ``preprocessing.organ_level`` channel."""
        if self.organ_source is not None:
            notes.append(f"organ: output channel {self.organ_source.card.output.channel} of model "
                         f"{self.organ_source.card.name!r} (inference.organ_from)")
            return self.organ_source._infer(image, box, settings.organ, progress, cancel, [])
        level = self.card.preprocessing.organ_level
        organ_output = Output(activation=Activation.SIGMOID, channel=level.channel, threshold=level.threshold)
        return self._infer(image, box, replace(settings, output=organ_output), progress, cancel, [])

    def _move_to_organ_level(self, image: Image, organ: np.ndarray, notes) -> Image:
        """``image`` moved so that the median inside the organ (probability ``organ``) is the card's level."""
        level = self.card.preprocessing.organ_level
        moved, shift = move_to_level(image, organ >= level.threshold, level.value)
        notes.append(f"organ level: no voxel of output channel {level.channel} found, intensities not moved"
                     if shift is None else f"organ level: intensities moved by {shift:+.1f} so that the median "
                     f"inside output channel {level.channel} is {level.value:g}")
        saturated = shift is not None and saturation_note(
            image, level.value - shift, (self.card.organ or f"organ of output channel {level.channel}").lower())
        if saturated:
            notes.append(saturated)
        return moved

    def _run(self, array: np.ndarray, axis, active, settings: Settings, progress, cancel, notes) -> np.ndarray:
        """The network over a normalised array by the card's mode, with the CUDA out-of-memory fallbacks."""
        import torch

        from .device import is_out_of_memory

        batch_key = "sw_batch_size" if self.card.mode == Mode.SLIDING_WINDOW_3D else "batch_size"
        attempt = settings
        while True:
            try:
                return self._run_once(array, axis, active, attempt, progress, cancel)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
                if self.device.type != "cuda" or not is_out_of_memory(error):
                    raise
                torch.cuda.empty_cache()
                batch = getattr(attempt.inference, batch_key)
                if batch > 1:
                    attempt = replace(attempt, inference=replace(attempt.inference, **{batch_key: max(batch // 2, 1)}))
                    notes.append(f"CUDA out of memory: retrying with {batch_key} {max(batch // 2, 1)}")
                elif self.card.mode == Mode.SLIDING_WINDOW_3D and attempt.keep_volume_on_device is not False:
                    attempt = replace(attempt, keep_volume_on_device=False)
                    notes.append("CUDA out of memory: retrying with the volume kept on the CPU")
                else:
                    notes.append("CUDA out of memory: retrying on the CPU (slower)")
                    from .device import resolve_device

                    self.device = resolve_device("cpu")
                    self.network = self.network.to(self.device)

    def _run_once(self, array: np.ndarray, axis, active, settings: Settings, progress, cancel) -> np.ndarray:
        from . import inferers
        from .device import autocast_dtype

        inference = settings.inference
        predictor_args = {
            "network": self.network,
            "output": settings.output or self._network_output,
            "dtype": autocast_dtype(self.device, inference.precision),
            "progress": progress,
            "cancel": cancel,
            "memory_format": self.memory_format,
            "recheck": (settings.threshold, inference.recheck_margin) if inference.recheck_margin > 0 else None,
            "flip_axes": inference.flip_axes,
        }
        if self.card.mode == "sliding-window-3d":
            patch = inference.patch_size or [boxes.DEFAULT_WINDOW] * 3
            return inferers.sliding_window_3d(
                array, predictor_args, patch, inference.overlap, str(inference.blending),
                inference.sw_batch_size, self.device, self._volume_device(array, settings), active)
        if self.card.mode == "slice-2d" and axis is not None:  # a 2D picture is one axial slice
            return inferers.slices_2d(array, axis, predictor_args, inference.batch_size, divisible_by(self.card),
                                      self.device, active)
        return inferers.whole_image_2d(array, predictor_args, divisible_by(self.card), self.device)

    def _volume_device(self, array: np.ndarray, settings: Settings):
        """Where the whole volume and the blended output live: the GPU only when they fit easily."""
        import torch

        if self.device.type != "cuda" or settings.keep_volume_on_device is False:
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(self.device)
        needed = array.size * 4 * 4  # input, output, blending weights, a copy
        return self.device if needed < free / 4 else torch.device("cpu")

    def _postprocess(self, probability: np.ndarray, grid: Image, settings: Settings, cancel, notes,
                     whole_image: bool = False) -> np.ndarray:
        """Threshold and post-process; the card's ``lesion_filter`` and ``image_gate`` act on whole-image runs only
        (not ROIs, clicks)."""
        from .postprocess import postprocess

        check_cancel(cancel)
        mask = postprocess(probability >= settings.threshold, grid, settings.postprocessing, notes)
        steps = settings.postprocessing
        if whole_image and (steps.lesion_filter or steps.image_gate):
            uptake = normalize_intensity(grid.array, self.card)
            if steps.lesion_filter:
                mask = filter_lesions(mask, probability, uptake, steps.lesion_filter, notes, self.lesion_net)
            if steps.image_gate:
                mask = apply_gate(mask, probability, uptake, steps.image_gate, self.gate_net, notes)
        return mask


def _postprocessing_networks(card: ModelCard) -> tuple:
    """(lesion filter network, image gate network) of the card, each loaded from its verified weights, or None where
    the card has none."""
    from .cards import postprocessing_networks, verified_file
    from .gate_net import load_gate_net
    from .lesion_net import load_lesion_net

    files, steps = postprocessing_networks(card), card.postprocessing
    return tuple(None if name not in files else load(verified_file(card, files[name]), getattr(steps, name))
                 for name, load in (("lesion_filter", load_lesion_net), ("image_gate", load_gate_net)))


def _paste(shape, parts) -> tuple:
    """(probability, mask) on a grid of ``shape`` from (box, probability, mask) parts; zero elsewhere.

    Where boxes overlap, the probability is the larger and the masks are joined.
    """
    probability = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    for box, part_probability, part_mask in parts:
        inside = boxes.slices(box)
        np.maximum(probability[inside], part_probability, out=probability[inside])
        mask[inside] |= part_mask
    return probability, mask


def _network_box(prepared: Prepared, shape, box) -> tuple:
    """The half-open box on the network grid covering ``box`` of the source grid (one voxel more on each side
    after resampling, for the interpolation back)."""
    region = np.zeros(shape, dtype=np.float32)
    region[boxes.slices(box)] = 1.0
    region = prepared.to_network(region) > 0
    if prepared.resampled:
        region = ndimage.binary_dilation(region)
    return tuple((int(s.start), int(s.stop)) for s in ndimage.find_objects(region.astype(np.uint8))[0])
