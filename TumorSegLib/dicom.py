"""Reading DICOM image series (CT, PT and other single-frame slices) with their exact geometry.

- A series is the set of single-frame image files of one folder (not its sub-folders) sharing a
  Series Instance UID; a folder holding several is refused with their list unless one is chosen
  (``series_uid``). Non-image objects (RTSTRUCT, SR, SEG, ...) beside the images are ignored; a
  folder holding only those, a DICOMDIR, multi-frame and localizer images are refused.
- Voxel order (i, j, k) = (column, row, slice), as ITK and 3D Slicer load a series. Slices are
  sorted along the normal of Image Orientation (Patient); the slice step is the mean step between
  Image Position (Patient) of the first and last slice (so a gantry tilt gives a sheared affine),
  and every slice must lie on that line: a missing slice, uneven spacing, duplicate positions or
  mixed orientations are errors. The affine is converted from DICOM's LPS to RAS.
- Values: each slice's own Rescale Slope and Intercept. PT series are converted to SUV when the
  header allows (``TumorSegLib.suv``); otherwise they stay in their stored units and
  ``meta["suv_unavailable"]`` says why.
- Compressed transfer syntaxes need a decoder (JPEG 2000: ``pip install "TumorSegLib[dicom-jpeg2000]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TumorSegError
from .hints import PathLike
from .image import Image

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
MODALITY_NAMES = {"PT": "PET", "CT": "CT"}
POSITION_TOLERANCE = 0.01  # deviation of a slice from its place on the line, as a fraction of the step
ORIENTATION_TOLERANCE = 1e-4


@dataclass
class Series:
    """The headers (no pixels) of one series found in a folder."""

    uid: str
    datasets: list  # pydicom Datasets read without pixel data
    files: list

    @property
    def modality(self) -> str:
        return str(self.datasets[0].get("Modality", ""))

    @property
    def description(self) -> str:
        return str(self.datasets[0].get("SeriesDescription", ""))

    def summary(self) -> str:
        return f"{self.uid or '(no Series Instance UID)'} ({self.modality}, {len(self.files)} files, {self.description!r})"


def _pydicom():
    try:
        import pydicom
    except ImportError as error:  # a core dependency; only a broken install lacks it
        raise TumorSegError("reading DICOM needs pydicom: pip install pydicom") from error
    return pydicom


def is_dicom_file(path: PathLike) -> bool:
    """True for a file starting with the DICOM preamble ("DICM" at byte 128) or named *.dcm."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() in (".dcm", ".dicom") or path.name.upper() == "DICOMDIR":
        return True
    with open(path, "rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM"


def is_dicom_input(path: PathLike) -> bool:
    """True when ``path`` is a DICOM file or a folder holding at least one DICOM file."""
    path = Path(path)
    if path.is_dir():
        return any(is_dicom_file(p) for p in _folder_files(path))
    return is_dicom_file(path)


def _folder_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read_header(path: Path):
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as error:  # truncated or corrupt files raise many kinds of errors
        raise TumorSegError(f"cannot read DICOM file {path}: {error}") from error


def _check_not_dicomdir(path: Path, dataset) -> None:
    sop_class = str(getattr(dataset.get("file_meta", {}), "MediaStorageSOPClassUID", "") or "")
    if path.name.upper() == "DICOMDIR" or sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
        raise TumorSegError(f"{path} is a DICOMDIR (a media index, not images): give the folder of one series")


def _is_image(path: Path, dataset) -> bool:
    """True for an image slice; non-image objects give False; incomplete headers are errors."""
    if "SOPClassUID" not in dataset:
        raise TumorSegError(f"{path} is not a complete DICOM object (no SOP Class UID: truncated?)")
    complete = all(k in dataset for k in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient"))
    if "Image Storage" in _sop_class_name(dataset) and not complete and "PixelData" not in dataset:
        raise TumorSegError(f"{path}: image header without geometry or pixel data (truncated?)")
    return complete


def find_series(path: PathLike) -> list:
    """Every image series of ``path``: a folder, or one file (then only that file's series in its folder)."""
    path = Path(path)
    if not path.exists():
        raise TumorSegError(f"DICOM input not found: {path}")
    folder = path if path.is_dir() else path.parent
    wanted = None
    if not path.is_dir():
        dataset = _read_header(path)
        _check_not_dicomdir(path, dataset)
        if not _is_image(path, dataset):
            raise TumorSegError(f"{path} is not a DICOM image ({dataset.get('Modality', '?')}, "
                                f"{_sop_class_name(dataset)})")
        wanted = str(dataset.get("SeriesInstanceUID", ""))
    headers = []
    for file in (p for p in _folder_files(folder) if is_dicom_file(p)):
        dataset = _read_header(file)
        _check_not_dicomdir(file, dataset)
        headers.append((file, dataset))
    if not headers:
        raise TumorSegError(f"no DICOM files in folder {folder}")
    images = [(f, d) for f, d in headers if _is_image(f, d)]
    if not images:
        kinds = sorted({f"{d.get('Modality', '?')} ({_sop_class_name(d)})" for _, d in headers})
        raise TumorSegError(f"{path} holds no DICOM images, only non-image objects: {', '.join(kinds)}")
    groups: dict = {}
    for file, dataset in images:
        groups.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((file, dataset))
    if wanted is not None:
        groups = {wanted: groups[wanted]}
    return [Series(uid, [d for _, d in members], [f for f, _ in members]) for uid, members in groups.items()]


def _sop_class_name(dataset) -> str:
    uid = dataset.get("SOPClassUID")
    return getattr(uid, "name", str(uid or "unknown SOP class"))


def choose_series(series: list, series_uid: str | None, where: PathLike) -> Series:
    """The series with ``series_uid``, or the only one; a clear error listing them otherwise."""
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            listing = "; ".join(s.summary() for s in series)
            raise TumorSegError(f"no series {series_uid} in {where}; series there: {listing}")
        return chosen[0]
    if len(series) > 1:
        listing = "; ".join(s.summary() for s in series)
        raise TumorSegError(f"{where} holds {len(series)} series, choose one with --series UID: {listing}")
    return series[0]


def read_series(path: PathLike, series_uid: str | None = None, *, suv: str = "bw") -> Image:
    """Read one DICOM series as a 3D image (RAS affine) with its values in physical units.

    ``path`` is the series folder or any one file of it. PT series come in SUV when the header
    allows: ``suv`` is "bw" (body weight, default), "lbm" (lean body mass, SUL) or "none" (stored
    Bq/mL). ``meta`` records modality, units, the SUV factor (or why it is unavailable), the series
    UID and the files and SOP Instance UIDs in slice order.
    """
    from .suv import suv_factor_for

    series = choose_series(find_series(path), series_uid, path)
    _check_single_frames(series)
    order, affine = _geometry(series)
    datasets = [series.datasets[i] for i in order]
    files = [series.files[i] for i in order]
    array = _pixels(files, datasets)
    modality = series.modality
    meta = {
        "source": str(path),
        "dicom_modality": modality,
        "series_uid": series.uid,
        "study_uid": str(datasets[0].get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(datasets[0].get("FrameOfReferenceUID", "")),
        "sop_instance_uids": [str(d.get("SOPInstanceUID", "")) for d in datasets],
        "dicom_files": [str(f) for f in files],
        "units": _stored_units(datasets[0]),
    }
    if modality in MODALITY_NAMES:
        meta["modality"] = MODALITY_NAMES[modality]
    if modality == "PT" and suv != "none":
        factor = suv_factor_for(datasets, kind=suv)
        meta.update(factor.meta())
        if factor.value not in (None, 1.0):
            array = (array * factor.value).astype(np.float32)
    return Image(array=_compact(array, modality), affine=affine, meta=meta)


def _stored_units(dataset) -> str:
    if dataset.get("Modality") == "CT":
        return str(dataset.get("RescaleType", "") or "HU")
    return str(dataset.get("Units", "") or dataset.get("RescaleType", "") or "unknown")


def _check_single_frames(series: Series) -> None:
    for file, dataset in zip(series.files, series.datasets):
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise TumorSegError(f"{file}: multi-frame DICOM images ({dataset.NumberOfFrames} frames) are not supported; "
                                "convert to single-frame slices")
        image_type = [str(v).upper() for v in (dataset.get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            raise TumorSegError(f"{file}: a localizer (scout) image is in series {series.uid}; "
                                "remove it or give the folder of the axial series only")
        if int(dataset.get("SamplesPerPixel", 1)) != 1:
            raise TumorSegError(f"{file}: colour DICOM images are not supported")


def _orientation(file, dataset) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
        spacing = [float(v) for v in dataset.PixelSpacing]
    except (AttributeError, TypeError, ValueError) as error:
        raise TumorSegError(f"{file}: missing or invalid Image Orientation (Patient) or Pixel Spacing") from error
    if values.shape != (6,) or len(spacing) != 2 or min(spacing) <= 0:
        raise TumorSegError(f"{file}: invalid Image Orientation (Patient) or Pixel Spacing")
    return values


def _geometry(series: Series) -> tuple:
    """(slice order, 4x4 RAS affine) of a series; clear errors for anything a grid cannot hold."""
    first = series.datasets[0]
    orientation = _orientation(series.files[0], first)
    shape = (int(first.Rows), int(first.Columns))
    spacing = [float(v) for v in first.PixelSpacing]
    for file, dataset in zip(series.files, series.datasets):
        if not np.allclose(_orientation(file, dataset), orientation, atol=ORIENTATION_TOLERANCE):
            raise TumorSegError(f"series {series.uid} mixes image orientations ({file}); give one orientation per series")
        if (int(dataset.Rows), int(dataset.Columns)) != shape or not np.allclose(
                [float(v) for v in dataset.PixelSpacing], spacing, rtol=1e-4):
            raise TumorSegError(f"series {series.uid} mixes slice sizes or pixel spacings ({file})")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([[float(v) for v in d.ImagePositionPatient] for d in series.datasets], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    step = _slice_step(series, positions, normal, order)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]  # i = column index, along the row direction
    lps[:3, 1] = col_dir * spacing[0]  # j = row index
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return [int(i) for i in order], LPS_TO_RAS @ lps


def _slice_step(series: Series, positions: np.ndarray, normal: np.ndarray, order) -> np.ndarray:
    count = len(positions)
    if count == 1:
        dataset = series.datasets[0]
        thickness = float(dataset.get("SpacingBetweenSlices") or dataset.get("SliceThickness") or 1.0)
        return normal * thickness
    step = (positions[-1] - positions[0]) / (count - 1)
    gaps = np.diff(positions @ normal)
    if np.any(gaps < 1e-6 * max(1.0, abs(float(step @ normal)))):
        duplicate = series.files[order[int(np.argmin(gaps)) + 1]]
        raise TumorSegError(f"series {series.uid} has two slices at the same position ({duplicate}); "
                            "several acquisitions or time frames in one series are not supported")
    length = float(np.linalg.norm(step))
    expected = positions[0] + np.arange(count)[:, None] * step
    deviation = np.linalg.norm(positions - expected, axis=1)
    if deviation.max() > POSITION_TOLERANCE * length:
        median = float(np.median(gaps))
        worst = int(np.argmax(np.abs(gaps - median)))
        ratio = gaps[worst] / median
        where = f"between slice positions {positions[worst] @ normal:.2f} and {positions[worst + 1] @ normal:.2f} mm"
        if abs(ratio - round(ratio)) < POSITION_TOLERANCE * 5 and round(ratio) >= 2:
            raise TumorSegError(f"series {series.uid} is missing {round(ratio) - 1} slice(s) {where} "
                                f"(step {median:.3f} mm elsewhere)")
        raise TumorSegError(f"series {series.uid} has inconsistent slice spacing: {gaps[worst]:.3f} mm {where}, "
                            f"{median:.3f} mm elsewhere (or slices not on one line)")
    return step


def _pixels(files: list, datasets: list) -> np.ndarray:
    """(columns, rows, slices) float32 in physical units, each slice with its own rescale.

    The rescale is float32 arithmetic, which gives bit for bit the IBSI NIfTI converted from the same files.
    """
    pydicom = _pydicom()
    first = datasets[0]
    array = np.empty((int(first.Columns), int(first.Rows), len(files)), dtype=np.float32)
    for k, file in enumerate(files):
        try:
            dataset = pydicom.dcmread(str(file))
            stored = dataset.pixel_array
        except Exception as error:
            raise TumorSegError(_pixel_error(file, error)) from error
        slope = np.float32(dataset.get("RescaleSlope", 1) or 1)
        intercept = np.float32(dataset.get("RescaleIntercept", 0) or 0)
        array[:, :, k] = stored.T.astype(np.float32) * slope + intercept
    return array


def _pixel_error(file, error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    lowered = text.lower()
    if "jpeg 2000" in lowered or "jpeg2000" in lowered or ".4.90" in text or ".4.91" in text:
        return (f"{file}: JPEG 2000 compressed DICOM needs a decoder: "
                f'pip install "TumorSegLib[dicom-jpeg2000]" (pylibjpeg-openjpeg) ({text})')
    if "no pixel data handler" in lowered or "unable to decompress" in lowered or "missing required dependencies" in lowered \
            or "unsupported transfer syntax" in lowered or "not supported" in lowered:
        return f"{file}: unsupported or undecodable transfer syntax: {text}"
    return f"cannot read the pixels of {file} (truncated or corrupt file?): {text}"


def _compact(array: np.ndarray, modality: str) -> np.ndarray:
    """CT in whole HU as int16 (as CT NIfTI files hold it), everything else float32."""
    if modality == "CT" and array.size and np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        return array.astype(np.int16)
    return array.astype(np.float32)
