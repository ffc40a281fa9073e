"""A PNG picture of a mask over its image, for the demo and training reports.

2D images are shown as they are (stretched to their pixel aspect). 3D volumes are shown as three orthogonal slices (axial,
coronal, sagittal) through the centre of the largest lesion (the volume's centre when empty), turned to the
nearest RAS axes and drawn in the radiological convention (patient right on the image left,
anterior and superior at the top), with pixels stretched to their physical aspect. The mask is
tinted red with a solid outline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .image import Image
from .measure import label_lesions
from .preprocess import reorient

RED = np.array([230, 40, 40], dtype=np.float32)
MIN_HEIGHT = 256  # pixels: small volumes are enlarged to at least about this height


def overlay_png(path, image: Image, mask: np.ndarray, window=None) -> Path:
    """Write the overlay of bool ``mask`` (on ``image``'s grid) to ``path`` (PNG); ``window`` = (low, high)."""
    mask = np.asarray(mask, dtype=bool)
    if window is None:
        window = np.percentile(image.array, (1.0, 99.5)) if image.array.size else (0.0, 1.0)
    low, high = float(window[0]), float(window[1])
    gray = np.clip((np.asarray(image.array, dtype=np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0
    if image.ndim == 2:
        rows, cols = image.spacing / min(image.spacing)
        zoom = max(1.0, MIN_HEIGHT / (image.shape[0] * rows))
        picture = _stretch(_tint(gray, mask), zoom * rows, zoom * cols)
    else:
        picture = _three_views(image.with_array(gray), mask)
    return _save_rgb(path, picture)


def _tint(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * RED
    outline = mask & ~ndimage.binary_erosion(mask)
    rgb[outline] = RED
    return rgb.astype(np.uint8)


def _three_views(gray: Image, mask: np.ndarray) -> np.ndarray:
    ras, _ = reorient(gray, "RAS")
    ras_mask, _ = reorient(gray.with_array(mask), "RAS")
    m = ras_mask.array.astype(bool)
    labels, count = label_lesions(m)
    if count:
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        i, j, k = np.round(ndimage.center_of_mass(labels == largest)).astype(int)
    else:
        i, j, k = np.array(m.shape) // 2
    sx, sy, sz = ras.spacing
    a = ras.array
    views = [  # (image slice, mask slice, row spacing, column spacing)
        (a[::-1, ::-1, k].T, m[::-1, ::-1, k].T, sy, sx),  # axial: anterior up, patient right on the left
        (a[::-1, j, ::-1].T, m[::-1, j, ::-1].T, sz, sx),  # coronal: superior up
        (a[i, ::-1, ::-1].T, m[i, ::-1, ::-1].T, sz, sy),  # sagittal: superior up, anterior on the left
    ]
    step = min(sx, sy, sz)
    zoom = max(1.0, MIN_HEIGHT / max(a.shape[2] * sz, a.shape[1] * sy) * step)
    panels = [_stretch(_tint(v, vm), zoom * rs / step, zoom * cs / step) for v, vm, rs, cs in views]
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 4, 3), dtype=np.uint8)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    return np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1)


def _stretch(rgb: np.ndarray, row_scale: float, col_scale: float) -> np.ndarray:
    rows = np.minimum((np.arange(max(int(round(rgb.shape[0] * row_scale)), 1)) / row_scale).astype(int), rgb.shape[0] - 1)
    cols = np.minimum((np.arange(max(int(round(rgb.shape[1] * col_scale)), 1)) / col_scale).astype(int), rgb.shape[1] - 1)
    return rgb[rows][:, cols]


def _save_rgb(path, rgb: np.ndarray) -> Path:
    """Atomic RGB PNG (``io.write_image`` writes one-channel images only)."""
    from PIL import Image as PILImage

    from .files import atomic_write

    return atomic_write(path, lambda temporary: PILImage.fromarray(np.ascontiguousarray(rgb)).save(temporary, format="PNG"),
                        "overlay")
