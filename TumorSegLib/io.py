"""Reading and writing images with their exact geometry: NIfTI, NRRD and PNG; DICOM series read.

- NIfTI: voxel order and affine as in the file. When sform and qform disagree the affine is
  chosen the way ITK and 3D Slicer choose it (sform if its code is 1 (scanner), else qform if
  set, else sform), so a file measures here exactly as it does in Slicer.
- NRRD: ``space directions``/``space origin`` converted from the file's space (LPS or RAS) to RAS.
- DICOM: a series folder or one file of a series, read by ``TumorSegLib.dicom.read_series``.
- PNG: one channel. Gray, gray+alpha, RGB and RGBA with R=G=B keep that gray channel; true colour
  is reduced to ITU-R 601 luma; alpha is ignored. Pixel spacing is unknown (identity affine).
- JPEG (read only): the channel a card names (``channel``: 0 = R, 1 = G, 2 = B; a grey JPEG has
  only 0); without one, as PNG. JPEG is lossy, so masks are never written as JPEG.

Writes are atomic: the file appears complete under its name or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .errors import TumorSegError
from .files import atomic_write
from .hints import PathLike
from .image import Image

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")
SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + PNG_SUFFIXES + JPEG_SUFFIXES

_NRRD_SPACE_TO_RAS = {
    "left-posterior-superior": (-1, -1, 1),
    "right-anterior-superior": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "right-posterior-superior": (1, -1, 1),
}


def image_suffix(path: PathLike) -> str:
    """The recognised suffix of ``path`` (".nii.gz", ".nrrd", ".png", ...), or a clear error."""
    name = str(path).lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise TumorSegError(f"unsupported file type: {path} (use .nii, .nii.gz, .nrrd, .png or, to read, .jpg)")


def is_dicom(path: PathLike) -> bool:
    """True for a DICOM series folder or a DICOM file (not a file with a NIfTI, NRRD or PNG suffix)."""
    from .dicom import is_dicom_input

    path = Path(path)
    if path.is_file() and str(path).lower().endswith(SUFFIXES):
        return False
    return is_dicom_input(path)


def case_name(path: PathLike) -> str:
    """File name without its image suffix: how cases are matched between folders."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(name))]


def read_image(path: PathLike, what: str = "image", channel: Optional[int] = None, *, series_uid: str | None = None) -> Image:
    """Read a 2D or 3D image. 4D data (other than a trailing singleton axis) is refused.

    A DICOM series folder (or a file of one: .dcm or no image suffix) is read as one volume;
    ``series_uid`` picks the series when the folder holds several. ``channel`` picks one colour
    channel of a JPEG (see the module docstring).
    """
    path = Path(path)
    if is_dicom(path):
        from .dicom import read_series

        return read_series(path, series_uid)
    if path.is_dir():
        raise TumorSegError(f"{what} {path} is a folder without DICOM files (give an image file or a DICOM series folder)")
    if not path.is_file():
        raise TumorSegError(f"{what} not found: {path}")
    suffix = image_suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            image = _read_nifti(path)
        elif suffix in NRRD_SUFFIXES:
            image = _read_nrrd(path)
        elif suffix in JPEG_SUFFIXES and channel is not None:
            image = _read_jpeg_channel(path, int(channel))
        else:
            image = _read_png(path)
    except TumorSegError:
        raise
    except Exception as error:  # corrupt or truncated files raise many kinds of errors
        raise TumorSegError(f"cannot read {what} {path}: {error}") from error
    image.meta.setdefault("source", str(path))
    return image


def _squeeze_to_3d(array: np.ndarray, path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise TumorSegError(
            f"{path}: expected a 3D volume, got shape {array.shape} (4D, vector or RGB volumes are not supported)"
        )
    return array


def _read_nifti(path) -> Image:
    import nibabel as nib

    img = nib.load(str(path))
    array = _squeeze_to_3d(np.asanyarray(img.dataobj), path)
    return Image(array=array, affine=_nifti_affine(img))


def _nifti_affine(img) -> np.ndarray:
    sform, scode = img.header.get_sform(coded=True)
    qform, qcode = img.header.get_qform(coded=True)
    if scode == 1:
        return sform
    if qcode > 0:
        return qform
    if scode > 0:
        return sform
    return img.affine


def _read_nrrd(path) -> Image:
    import nrrd

    data, header = nrrd.read(str(path))
    kinds = [k.lower() for k in header.get("kinds", [])]
    if any(k not in ("domain", "space", "none", "???") for k in kinds):
        raise TumorSegError(f"{path}: NRRD with non-spatial axes {kinds} (vector or colour volume) is not supported")
    array = _squeeze_to_3d(data, path)
    affine = np.eye(4)
    if "space directions" in header:
        directions = np.array(
            [d for d in header["space directions"] if d is not None and not np.all(np.isnan(d))], dtype=float
        )
        affine[:3, :3] = directions.T
        affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
        space = header.get("space", "left-posterior-superior").lower()
        if space not in _NRRD_SPACE_TO_RAS:
            raise TumorSegError(f"{path}: unsupported NRRD space {space!r}")
        affine = np.diag([*_NRRD_SPACE_TO_RAS[space], 1]) @ affine
    elif "spacings" in header:
        affine[:3, :3] = np.diag(np.asarray(header["spacings"], dtype=float)[:3])
    return Image(array=array, affine=affine)


def _read_png(path) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as pil:
        mode = pil.mode
        array = np.asarray(pil)
    if array.ndim == 3:
        color = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if color.shape[-1] == 1 or (np.array_equal(color[..., 0], color[..., 1]) and np.array_equal(color[..., 0], color[..., 2])):
            array = color[..., 0]
        else:
            array = np.rint(color.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return Image(array=np.ascontiguousarray(array), affine=np.eye(3), spacing_known=False, meta={"png_mode": mode})


def _read_jpeg_channel(path, channel: int) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(path) as pil:
        if pil.format != "JPEG":
            raise TumorSegError(f"{path} is not a JPEG file (format {pil.format})")
        mode = pil.mode
        array = np.asarray(pil.convert("RGB") if pil.mode not in ("L", "RGB") else pil)
    bands = 1 if array.ndim == 2 else array.shape[-1]
    if not 0 <= channel < bands:
        raise TumorSegError(f"{path}: JPEG channel {channel} requested, the image has {bands} channel(s) ({mode})")
    array = array if array.ndim == 2 else array[..., channel]
    return Image(array=np.ascontiguousarray(array), affine=np.eye(3), spacing_known=False,
                 meta={"jpeg_mode": mode, "jpeg_channel": channel})


def write_mask(path: PathLike, mask: np.ndarray, like: Image) -> Path:
    """Write a binary or label mask on the grid of ``like`` (its shape and affine exactly).

    PNG masks are 0/255 uint8; volumes are uint8 labels in NIfTI or NRRD by ``path``'s suffix.
    """
    if mask.shape != like.shape:
        raise TumorSegError(f"mask shape {mask.shape} does not match the image shape {like.shape}")
    data = mask.astype(np.uint8)
    if image_suffix(path) in PNG_SUFFIXES:
        data = np.where(data > 0, 255, 0).astype(np.uint8)
    return write_image(path, like.with_array(data))


def write_image(path: PathLike, image: Image) -> Path:
    """Write ``image`` atomically; the suffix picks the format. 2D images go to PNG only."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix in JPEG_SUFFIXES:
        raise TumorSegError(f"cannot write {path}: JPEG is lossy; write masks and images as PNG")
    if (image.ndim == 2) != (suffix in PNG_SUFFIXES):
        raise TumorSegError(f"cannot write a {image.ndim}D image as {suffix} ({path})")
    if suffix == ".nhdr":
        raise TumorSegError(f"cannot write {path}: detached-header NRRD (.nhdr) output is not supported; use .nrrd")
    writer = {**dict.fromkeys(NIFTI_SUFFIXES, _write_nifti), **dict.fromkeys(NRRD_SUFFIXES, _write_nrrd)}.get(suffix, _write_png)
    return atomic_write(path, lambda temporary: writer(temporary, image), "image")


def _write_nifti(path, image: Image) -> None:
    import nibabel as nib

    out = nib.Nifti1Image(np.asarray(image.array), image.affine)
    out.header.set_qform(image.affine, code=1)
    out.header.set_sform(image.affine, code=1)
    nib.save(out, str(path))


def _write_nrrd(path, image: Image) -> None:
    import nrrd

    lps = np.diag([-1, -1, 1, 1]) @ image.affine
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(path), np.asarray(image.array), header)


def _write_png(path, image: Image) -> None:
    from PIL import Image as PILImage

    array = np.asarray(image.array)
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise TumorSegError("PNG output needs values in 0..255")
        array = array.astype(np.uint8)
    PILImage.fromarray(array).save(path, format="PNG")
