"""Running a network over a normalised array: 3D sliding window, axial slices, or a whole 2D image.

Every network call goes through ``Predictor``, which checks the cancel token, reports progress,
runs under ``torch.inference_mode`` and autocast, turns logits into the card's foreground
probability (one channel, float32), and computes the output for an input window whose values are
all equal (air in CT, zero in PET) only once per value: such windows give identical outputs, so
caching them changes nothing but the time.

Test-time flips: with ``flip_axes`` (spatial axes of the network input), the probability is the
mean over the identity and each single-axis flip of the input (each output flipped back).

Reduced precision can be checked: with ``recheck = (threshold, margin)`` (the card's
``inference.recheck_margin``; None, the default, for no check), a window (or slice batch item) whose
reduced-precision probability comes within ``margin`` of the threshold anywhere is computed again in
fp32, so the voxels that decide the mask boundary come from fp32 outputs.

``active`` (a half-open box, or None) restricts the work to a region of interest: the windows (or
slices) are laid out over the whole array exactly as for a full run, and only those that touch the
box are computed (the others give zeros). Every window that covers a voxel of the box touches the
box, so inside it the result equals the full run's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .cards import Output
from .device import autocast
from .hints import Box, Shape
from .progress import ProgressCallback, check_cancel


class Predictor:
    """``batch (B, C, *spatial) -> foreground probability (B, 1, *spatial)`` on ``device``."""

    def __init__(self, network, output: Output, device: torch.device, dtype, total: int,
                 progress: ProgressCallback, cancel=None, what: str = "window", active=None, offset=None,
                 memory_format=None, recheck=None, flip_axes=()):
        self.network = network
        self.flip_dims = [[2 + int(axis)] for axis in flip_axes]  # batch dims of the spatial axes
        self.activation = output.activation
        self.channel = output.channel
        self.within = output.within
        self.device = device
        self.dtype = dtype
        self.total = max(int(total), 1)
        self.progress = progress
        self.cancel = cancel
        self.what = what
        self.active = active
        self.memory_format = memory_format
        self.recheck = recheck
        self.rechecked = 0
        self.offset = offset or (0,) * (len(active) if active else 0)
        self.done = 0
        self.constant_cache = {}

    def __call__(self, batch: torch.Tensor, coords=None) -> torch.Tensor:
        """``coords``: MONAI's window slices (batch, channel, *spatial), used with ``active``."""
        check_cancel(self.cancel)
        batch = batch.to(self.device)
        flat = batch.reshape(batch.shape[0], -1)
        low, high = flat.amin(dim=1), flat.amax(dim=1)
        constant = (low == high).tolist()
        wanted = [True] * batch.shape[0] if coords is None else [self._touches(c[2:]) for c in coords]
        out = torch.zeros((batch.shape[0], 1, *batch.shape[2:]), dtype=torch.float32, device=self.device)
        constant = [c and w for c, w in zip(constant, wanted)]
        varying = [i for i, (c, w) in enumerate(zip(constant, wanted)) if w and not c]
        if varying:
            out[varying] = self._probability(batch[varying])
        for i in (i for i, c in enumerate(constant) if c):
            key = (float(low[i]), tuple(batch.shape[1:]))
            if key not in self.constant_cache:
                self.constant_cache[key] = self._probability(batch[i : i + 1])[0]
            out[i] = self.constant_cache[key]
        self.done += batch.shape[0]
        self.progress(min(self.done / self.total, 1.0), f"{self.what} {min(self.done, self.total)}/{self.total}")
        return out

    def _touches(self, window) -> bool:
        if self.active is None:
            return True
        return all(w.start < hi + o and lo + o < w.stop for w, (lo, hi), o in zip(window, self.active, self.offset))

    def _probability(self, batch: torch.Tensor) -> torch.Tensor:
        probability = self._forward(batch, self.dtype)
        if self.dtype is not None and self.recheck is not None:
            threshold, margin = self.recheck
            near = ((probability - threshold).abs() < margin).flatten(1).any(dim=1)
            if near.any():
                self.rechecked += int(near.sum())
                probability[near] = self._forward(batch[near], None)
        return probability

    def _forward(self, batch: torch.Tensor, dtype) -> torch.Tensor:
        """Probability of ``batch``: the mean over the identity and each test-time flip."""
        probability = self._activate(batch, dtype)
        for dims in self.flip_dims:
            probability = probability + self._activate(batch.flip(dims), dtype).flip(dims)
        return probability / (1 + len(self.flip_dims))

    def _activate(self, batch: torch.Tensor, dtype) -> torch.Tensor:
        if self.memory_format is not None:
            batch = batch.contiguous(memory_format=self.memory_format)
        if getattr(self.network, "runs_dtype", False):  # a backend that sets its own precision (OpenVINO)
            logits = self.network(batch, dtype)
        else:
            with torch.inference_mode(), autocast(self.device, dtype):
                logits = self.network(batch)
        logits = logits.float()
        if self.activation == "softmax":
            return torch.softmax(logits, dim=1)[:, self.channel : self.channel + 1]
        probability = torch.sigmoid(logits[:, self.channel : self.channel + 1])
        if self.within:  # tumour only inside the organ channel (card output.within)
            organ = torch.sigmoid(logits[:, self.within.channel][:, None])
            probability = probability * (organ >= self.within.threshold)
        return probability


def window_count(shape: Shape, patch: Shape, overlap: float) -> int:
    """Number of windows MONAI's sliding_window_inference visits (same scan rule)."""
    count = 1
    for size, roi in zip(shape, patch):
        size = max(size, roi)
        interval = roi if roi == size else max(int(roi * (1 - overlap)), 1)
        count *= math.ceil((size - roi) / interval) + 1
    return count


def sliding_window_3d(array: np.ndarray, predictor_args: dict, patch: Shape, overlap: float, blending: str,
                      sw_batch_size: int, sw_device: torch.device, volume_device: torch.device,
                      active: Box | None = None) -> np.ndarray:
    """Foreground probability of a normalised 3D array by MONAI's sliding-window inferer.

    The volume and the blended output stay on ``volume_device`` (the CPU for large volumes on a
    GPU); only the windows go to ``sw_device``.
    """
    from monai.inferers import sliding_window_inference

    patch = tuple(int(p) for p in patch)
    offset = tuple(max(p - n, 0) // 2 for p, n in zip(patch, array.shape))  # MONAI pads small volumes centrally
    predictor = Predictor(device=sw_device, total=window_count(array.shape, patch, overlap), active=active,
                          offset=offset, **predictor_args)
    inputs = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(volume_device)
    with torch.inference_mode():
        out = sliding_window_inference(inputs, patch, sw_batch_size, predictor, overlap=overlap, mode=blending,
                                       sw_device=sw_device, device=volume_device, with_coord=True)
    return out[0, 0].float().cpu().numpy()


def _pad_to(tensor: torch.Tensor, multiple: int) -> tuple:
    """Zero-pad (as training and MONAI's inferer pad) the last two axes up to multiples of ``multiple``."""
    h, w = tensor.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        tensor = torch.nn.functional.pad(tensor, (0, pw, 0, ph))
    return tensor, (h, w)


def slices_2d(array: np.ndarray, axis: int, predictor_args: dict, batch_size: int, divisible_by: int,
              device: torch.device, active: Box | None = None) -> np.ndarray:
    """Foreground probability of a 3D array by a 2D network over its slices normal to ``axis``.

    With ``active``, only the slices crossing the box are computed (whole slices, as in a full run).
    """
    stack = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    first, last = active[axis] if active else (0, stack.shape[0])
    predictor = Predictor(device=device, total=last - first, what="slice", **predictor_args)
    out = np.zeros(stack.shape, dtype=np.float32)
    for start in range(first, last, batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(stack[start : min(start + batch_size, last)]))[:, None]
        padded, (h, w) = _pad_to(batch, divisible_by)
        out[start : start + batch.shape[0]] = predictor(padded)[:, 0, :h, :w].cpu().numpy()
    return np.moveaxis(out, 0, axis)


def whole_image_2d(array: np.ndarray, predictor_args: dict, divisible_by: int, device: torch.device) -> np.ndarray:
    """Foreground probability of a 2D array in one network call (padded to ``divisible_by``)."""
    predictor = Predictor(device=device, total=1, what="image", **predictor_args)
    padded, (h, w) = _pad_to(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None], divisible_by)
    return predictor(padded)[0, 0, :h, :w].cpu().numpy()
