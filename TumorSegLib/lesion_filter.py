"""Lesion-level false-positive filter of a whole-image 2D mask (the card's ``postprocessing.lesion_filter``).

Every predicted lesion (8-connected) is described by ``FEATURES``: its area (log pixels); the
network's probability (max, mean) and the image's uptake (the card's normalised intensity,
1 = hottest; max, mean) under it; its centroid's place in the body (``vertical``: 0 at the top of
the body, 1 at its bottom; ``lateral``: distance from the body's midline in half widths; both also
squared); its bounding box (log height/width, fill); ``mirror_ratio``, the mean uptake of its
mirror image across the midline over its own (symmetric organs such as kidneys near 1); and
``ring_ratio``, the mean uptake of a ``RING_PX`` ring around it over its own (low for a focal hot
spot; where rings of two lesions overlap the pixel counts for the later label). The body is every
pixel with uptake >= ``BODY_UPTAKE``; its extent is taken between the 1st and 99th percentiles of
those pixels' rows and columns, so a stray line or speck does not stretch it. A logistic
regression scores each lesion::

    score = 1 / (1 + exp(-(intercept + sum_i coef_i * (x_i - mean_i) / scale_i)))

A filter with a ``network`` instead of ``coef`` and ``intercept`` scores each lesion with that small CNN
(``lesion_net``) from ``lesion_patches`` and the same standardised features. Lesions scoring below ``threshold``
are removed; an image whose best lesion scores below ``image_threshold`` (an 'any tumour' gate, 0 for none) loses
every lesion. Physiological uptake (brain, bladder, kidneys, heart) sits at typical heights and offsets from the
midline with typical shapes, which the position and shape features let the regression tell from tumour.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .measure import label_lesions

BODY_UPTAKE = 0.06  # uptake (0..1) above which a pixel counts as body, not background
RING_PX = 3  # width in pixels of the ring around a lesion that stands for its surroundings
FEATURES = ("log_area", "prob_max", "prob_mean", "uptake_max", "uptake_mean", "vertical", "vertical_sq", "lateral",
            "lateral_sq", "log_aspect", "fill", "mirror_ratio", "ring_ratio")
SPEC_KEYS = {"features", "mean", "scale", "coef", "intercept", "threshold", "image_threshold"}
NETWORK_SPEC_KEYS = SPEC_KEYS - {"coef", "intercept"} | {"network"}
PATCH_CHANNELS = ("uptake", "probability", "lesion", "row", "lateral")  # row: 0 at the image's top, 1 at its
# bottom; lateral: distance from the image's centre column in half widths


def body_extent(uptake: np.ndarray) -> tuple:
    """(top row, bottom row, midline column, half width) of the body; the whole image when no body is found."""
    rows, cols = np.nonzero(uptake >= BODY_UPTAKE)
    if len(rows) < 2:
        height, width = uptake.shape
        return 0.0, float(height - 1), (width - 1) / 2.0, max(width / 2.0, 1.0)
    top, bottom = np.percentile(rows, (1, 99))
    left, right = np.percentile(cols, (1, 99))
    return float(top), float(max(bottom, top + 1.0)), float(np.median(cols)), float(max((right - left) / 2.0, 1.0))


def lesion_features(labels: np.ndarray, count: int, probability: np.ndarray, uptake: np.ndarray) -> np.ndarray:
    """(count, len(FEATURES)) float64: one row per lesion label 1..count of a 2D label image."""
    if count == 0:
        return np.zeros((0, len(FEATURES)))
    width = labels.shape[1]
    inside = np.flatnonzero(labels)  # only the lesions' pixels and their rings are read
    label = labels.ravel()[inside]
    order = np.argsort(label, kind="stable")
    starts = np.searchsorted(label[order], np.arange(1, count + 1))

    def mean_of(values, of=label):
        """Mean per lesion of per-pixel ``values`` whose lesion labels are ``of``."""
        return np.bincount(of, values, count + 1)[1:] / np.maximum(np.bincount(of, minlength=count + 1)[1:], 1)

    def max_of(image):
        return np.maximum.reduceat(image.ravel()[inside][order].astype(np.float64), starts)

    area = np.bincount(label, minlength=count + 1)[1:].astype(np.float64)
    rows, cols = np.divmod(inside, width)
    top, bottom, midline, half_width = body_extent(uptake)
    vertical = (mean_of(rows) - top) / (bottom - top)
    lateral = np.abs(mean_of(cols) - midline) / half_width
    boxes = ndimage.find_objects(labels, count)
    height = np.array([b[0].stop - b[0].start for b in boxes], dtype=np.float64)
    box_width = np.array([b[1].stop - b[1].start for b in boxes], dtype=np.float64)
    flat_uptake = uptake.ravel()
    uptake_mean = mean_of(flat_uptake[inside])
    mirror_cols = np.clip(np.rint(2 * midline - cols), 0, width - 1).astype(np.int64)
    grown = ndimage.grey_dilation(labels, size=2 * RING_PX + 1).ravel()
    ring = np.flatnonzero((grown > 0) & (labels.ravel() == 0))
    columns = {
        "log_area": np.log(area),
        "prob_max": max_of(probability),
        "prob_mean": mean_of(probability.ravel()[inside]),
        "uptake_max": max_of(uptake),
        "uptake_mean": uptake_mean,
        "vertical": vertical, "vertical_sq": vertical ** 2,
        "lateral": lateral, "lateral_sq": lateral ** 2,
        "log_aspect": np.log(height / box_width),
        "fill": area / (height * box_width),
        "mirror_ratio": mean_of(uptake[rows, mirror_cols]) / np.maximum(uptake_mean, 1e-3),
        "ring_ratio": mean_of(flat_uptake[ring], grown[ring]) / np.maximum(uptake_mean, 1e-3),
    }
    return np.stack([columns[name] for name in FEATURES], axis=1)


def lesion_patches(labels: np.ndarray, count: int, probability: np.ndarray, uptake: np.ndarray, patch: int,
                   pool: int) -> np.ndarray:
    """(count, 5, patch, patch) float32: ``PATCH_CHANNELS`` over a square of ``patch * pool`` pixels centred on each
    lesion's centroid (zero beyond the image), average-pooled by ``pool``; the lesion channel is 1 on that lesion."""
    height, width = labels.shape
    half = patch * pool // 2
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    maps = np.stack([uptake.astype(np.float32), probability.astype(np.float32), np.zeros((height, width), np.float32),
                     rows / height, np.abs(cols - width / 2) / (width / 2)])
    padded = np.pad(maps, ((0, 0), (half, half), (half, half)))
    padded_labels = np.pad(labels, half)
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, range(1, count + 1))
    result = np.empty((count, len(PATCH_CHANNELS), patch, patch), np.float32)
    for k, (row, col) in enumerate(centres):
        top, left = int(round(row)), int(round(col))
        window = (slice(top, top + 2 * half), slice(left, left + 2 * half))
        square = padded[(slice(None),) + window].copy()
        square[2] = padded_labels[window] == k + 1
        result[k] = square.reshape(len(PATCH_CHANNELS), patch, pool, patch, pool).mean(axis=(2, 4))
    return result


def standardised(features: np.ndarray, spec: dict) -> np.ndarray:
    """The columns ``spec['features']`` of ``features`` (``FEATURES`` order), standardised by the spec's mean and scale."""
    chosen = features[:, [FEATURES.index(name) for name in spec["features"]]]
    return (chosen - np.asarray(spec["mean"])) / np.asarray(spec["scale"])


def lesion_scores(labels: np.ndarray, count: int, probability: np.ndarray, uptake: np.ndarray, spec: dict,
                  network=None) -> np.ndarray:
    """Each lesion's score by the spec's regression, or by its ``network`` (a loaded ``lesion_net.LesionNet``)."""
    features = lesion_features(labels, count, probability, uptake)
    if "network" not in spec:
        return scores(features, spec)
    from .lesion_net import lesion_net_scores

    shape = spec["network"]
    patches = lesion_patches(labels, count, probability, uptake, shape["patch"], shape["pool"])
    return lesion_net_scores(network, patches, standardised(features, spec))


def scores(features: np.ndarray, spec: dict) -> np.ndarray:
    """The regression's probability that each lesion (row of ``features`` in ``FEATURES`` order) is tumour."""
    logit = float(spec["intercept"]) + standardised(features, spec) @ np.asarray(spec["coef"], dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -50.0, 50.0)))


def filter_lesions(mask: np.ndarray, probability: np.ndarray, uptake: np.ndarray, spec: dict,
                   notes: list, network=None) -> np.ndarray:
    """``mask`` without the lesions ``spec`` rejects (see the module); what was removed goes to ``notes``.
    ``network``: the spec's loaded network, where it has one."""
    labels, count = label_lesions(np.asarray(mask, dtype=bool), 2)
    if count == 0:
        return np.asarray(mask, dtype=bool)
    score = lesion_scores(labels, count, probability, uptake, spec, network)
    if score.max() < float(spec["image_threshold"]):
        notes.append(f"lesion filter: removed all {count} lesion(s): none scores as tumour (best score "
                     f"{score.max():.2f} < {spec['image_threshold']:g})")
        return np.zeros(mask.shape, dtype=bool)
    keep = np.concatenate([[False], score >= float(spec["threshold"])])
    removed = int(count - keep.sum())
    if removed:
        notes.append(f"lesion filter: removed {removed} of {count} lesion(s) scored as physiological uptake")
    return keep[labels]


def spec_problems(spec, mode: str) -> list:
    """What is wrong with a card's ``postprocessing.lesion_filter`` (empty list: usable)."""
    if spec is None:
        return []
    where = "postprocessing.lesion_filter"
    if mode != "whole-image-2d":
        return [f"{where} applies to whole-image-2d models only, not {mode!r}"]
    if not isinstance(spec, dict) or set(spec) not in (SPEC_KEYS, NETWORK_SPEC_KEYS):
        return [f"{where} must have exactly the keys {sorted(SPEC_KEYS)} (a regression) or "
                f"{sorted(NETWORK_SPEC_KEYS)} (a network)"]
    names = spec["features"]
    if not isinstance(names, list) or not names or any(name not in FEATURES for name in names):
        return [f"{where}.features must be a non-empty list of {FEATURES}, got {names!r}"]
    problems = network_problems(spec["network"]) if "network" in spec else []
    for key in ("mean", "scale") + (() if "network" in spec else ("coef",)):
        values = spec[key]
        if not isinstance(values, list) or len(values) != len(names) or not all(map(is_finite_number, values)):
            problems.append(f"{where}.{key} must be {len(names)} finite numbers (one per feature)")
    if not problems and not all(value > 0 for value in spec["scale"]):
        problems.append(f"{where}.scale must be positive")
    if "intercept" in spec and not is_finite_number(spec["intercept"]):
        problems.append(f"{where}.intercept must be a finite number")
    for key in ("threshold", "image_threshold"):
        if not (is_finite_number(spec[key]) and 0.0 <= spec[key] < 1.0):
            problems.append(f"{where}.{key} must lie in [0, 1), got {spec[key]!r}")
    return problems


def network_problems(network) -> list:
    """What is wrong with a lesion filter's ``network`` entry (its file is checked where the card is run)."""
    where = "postprocessing.lesion_filter.network"
    problems = network_entry_problems(network, where, ("patch", "pool"))
    if not problems and network["patch"] % 2 ** len(network["channels"]):
        problems.append(f"{where}.patch must be divisible by 2 ** len(channels) = {2 ** len(network['channels'])}")
    return problems


def network_entry_problems(network, where: str, sizes: tuple) -> list:
    """What is wrong with a post-processing step's network entry at ``where``: its keys (file, channels, ``sizes``,
    optionally sha256), its file name, its channels and ``sizes`` as positive whole numbers."""
    keys = {"file", "channels", *sizes}
    if not isinstance(network, dict) or not keys <= set(network) <= keys | {"sha256"}:
        return [f"{where} must have the keys file, channels, {', '.join(sizes)} (and sha256)"]
    problems = []
    if not file_in_folder(network["file"]):
        problems.append(f"{where}.file must be a file name in the card's folder, got {network['file']!r}")
    channels = network["channels"]
    if not isinstance(channels, list) or not channels or not all(is_whole_number(c) and c > 0 for c in channels):
        problems.append(f"{where}.channels must be a non-empty list of positive whole numbers")
    elif not all(is_whole_number(network[k]) and network[k] > 0 for k in sizes):
        problems.append(f"{where}: {', '.join(sizes)} must be positive whole numbers")
    return problems


def file_in_folder(file) -> bool:
    """Whether ``file`` is a plain file name (so the file lies in the card's folder)."""
    return isinstance(file, str) and bool(file) and file not in (".", "..") and "/" not in file and "\\" not in file


def is_whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
