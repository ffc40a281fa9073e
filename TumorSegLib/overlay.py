"""A PNG picture of a mask over its image, for the demo and training reports.

2D images are shown as they are (stretched to their pixel aspect). 3D volumes are shown as three orthogonal slices (axial,
coronal, sagittal) through the centre of the largest lesion (the volume's centre when empty), turned to the
nearest RAS axes and drawn in the radiological convention (patient right on the image left,
anterior and superior at the top), with pixels stretched to their physical aspect. The mask is
tinted red with a solid outline; an organ given for context (``organ``) is outlined in blue.

``mip_overlay_png`` draws what a nuclear-medicine reader looks at first for a whole-body PET: the
coronal MIP (inverted grey, hot = dark) with every lesion's outline projected on it, numbered as
in the readouts table (``measure.label_lesions`` order), an SUV colour bar and orientation letters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .hints import PathLike
from .image import Image
from .measure import label_lesions
from .preprocess import reorient

RED = np.array([230, 40, 40], dtype=np.float32)
BLUE = np.array([60, 120, 255], dtype=np.uint8)  # the outline of an organ drawn for context (``organ``)
MIN_HEIGHT = 256  # pixels: small volumes are enlarged to at least about this height


def overlay_png(path: PathLike, image: Image, mask: np.ndarray, window: Sequence[float] | None = None,
                organ: np.ndarray | None = None) -> Path:
    """Write the overlay of bool ``mask`` (on ``image``'s grid) to ``path`` (PNG); ``window`` = (low, high).

    ``organ`` (bool, same grid), when given, is outlined in blue beneath the mask (e.g. the liver a tumour lies in).
    """
    mask = np.asarray(mask, dtype=bool)
    organ = np.zeros_like(mask) if organ is None else np.asarray(organ, dtype=bool)
    if window is None:
        window = np.percentile(image.array, (1.0, 99.5)) if image.array.size else (0.0, 1.0)
    low, high = float(window[0]), float(window[1])
    gray = np.clip((np.asarray(image.array, dtype=np.float32) - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0
    if image.ndim == 2:
        rows, cols = image.spacing / min(image.spacing)
        zoom = max(1.0, MIN_HEIGHT / (image.shape[0] * rows))
        picture = _stretch(_tint(gray, mask, organ), zoom * rows, zoom * cols)
    else:
        picture = _three_views(image.with_array(gray), mask, organ)
    return _save_rgb(path, picture)


def _tint(gray: np.ndarray, mask: np.ndarray, organ: np.ndarray) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[organ & ~ndimage.binary_erosion(organ)] = BLUE
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * RED
    outline = mask & ~ndimage.binary_erosion(mask)
    rgb[outline] = RED
    return rgb.astype(np.uint8)


def _three_views(gray: Image, mask: np.ndarray, organ: np.ndarray) -> np.ndarray:
    ras, _ = reorient(gray, "RAS")
    m = reorient(gray.with_array(mask), "RAS")[0].array.astype(bool)
    o = reorient(gray.with_array(organ), "RAS")[0].array.astype(bool)
    labels, count = label_lesions(m)
    if count:
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        i, j, k = np.round(ndimage.center_of_mass(labels == largest)).astype(int)
    else:
        i, j, k = np.array(m.shape) // 2
    sx, sy, sz = ras.spacing
    a = ras.array
    cuts = [  # (view of a RAS array, row spacing, column spacing)
        (lambda v: v[::-1, ::-1, k].T, sy, sx),  # axial: anterior up, patient right on the left
        (lambda v: v[::-1, j, ::-1].T, sz, sx),  # coronal: superior up
        (lambda v: v[i, ::-1, ::-1].T, sz, sy),  # sagittal: superior up, anterior on the left
    ]
    step = min(sx, sy, sz)
    zoom = max(1.0, MIN_HEIGHT / max(a.shape[2] * sz, a.shape[1] * sy) * step)
    panels = [_stretch(_tint(cut(a), cut(m), cut(o)), zoom * rs / step, zoom * cs / step) for cut, rs, cs in cuts]
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


def mip_overlay_png(path: PathLike, image: Image, mask: np.ndarray, window: Sequence[float]) -> Path:
    """Coronal MIP of a 3D SUV volume with numbered lesion outlines, SUV colour bar and R/L/S/I letters."""
    from PIL import Image as PILImage, ImageDraw, ImageFont

    from .mip import mip_geometry, project_max

    geometry = mip_geometry(image.affine, image.shape)
    low, high = float(window[0]), float(window[1])
    suv = project_max(np.asarray(image.array, dtype=np.float32), geometry)
    gray = 255.0 * (1.0 - np.clip((suv - low) / max(high - low, 1e-6), 0.0, 1.0))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labels, count = label_lesions(np.asarray(mask, dtype=bool))
    footprints = [project_max(labels == n, geometry) for n in range(1, count + 1)]
    for footprint in footprints:
        rgb[footprint & ~ndimage.binary_erosion(footprint)] = RED
    rows, cols = image.spacing[geometry.row_axis], image.spacing[geometry.col_axis]
    zoom = max(2 * MIN_HEIGHT / (suv.shape[0] * rows), 1.0 / min(rows, cols))  # output pixels per mm
    picture = _stretch(rgb.astype(np.uint8), zoom * rows, zoom * cols)
    height, width = picture.shape[:2]
    margin, bar = 30, 20
    sheet = PILImage.new("RGB", (width + 2 * margin + bar + 60, height + 2 * margin), (255, 255, 255))
    sheet.paste(PILImage.fromarray(picture), (margin, margin))
    draw = ImageDraw.Draw(sheet)
    draw.font = ImageFont.load_default(size=16)
    for number, footprint in enumerate(footprints, start=1):
        row, col = np.argwhere(footprint).max(axis=0) * [zoom * rows, zoom * cols]
        draw.text((margin + col + 4, margin + row - 16), str(number), fill=(200, 0, 0))
    for letter, (x, y) in {"S": (margin + width // 2, 6), "I": (margin + width // 2, margin + height + 6),
                           "R": (6, margin + height // 2), "L": (margin + width + 6, margin + height // 2)}.items():
        draw.text((x, y), letter, fill=(0, 0, 0))
    left = margin + width + 24
    for y in range(height):  # colour bar: SUV high (dark) at the top, as the MIP shows it
        shade = int(round(255.0 * y / max(height - 1, 1)))
        draw.line([(left, margin + y), (left + bar, margin + y)], fill=(shade, shade, shade))
    draw.rectangle([left, margin, left + bar, margin + height - 1], outline=(0, 0, 0))
    for fraction in (0.0, 0.5, 1.0):
        value = high - fraction * (high - low)
        draw.text((left + bar + 4, margin + fraction * (height - 16)), f"{value:g}", fill=(0, 0, 0))
    draw.text((left - 4, margin + height + 6), "SUV", fill=(0, 0, 0))
    return _save_rgb(path, np.asarray(sheet))
