"""DICOM Segmentation (SEG) output with highdicom: the tumour mask referencing its source series.

One binary segment "Tumor" coded as SNOMED CT Morphologically Altered Structure / Neoplasm (the
coding the Slicer module gives its segment), algorithm type AUTOMATIC with the model's name and
version as algorithm identification (family: Artificial Intelligence). Frames follow the source
slices, so a PACS or viewer overlays it on the series it was computed from. Needs the ``dicom``
extra (highdicom).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import __version__
from .cards import ModelCard
from .errors import TumorSegError
from .hints import PathLike
from .image import Image
from .files import require_writable, write_bytes

NEOPLASM = ("108369006", "SCT", "Neoplasm")
MORPHOLOGICALLY_ALTERED_STRUCTURE = ("49755003", "SCT", "Morphologically Altered Structure")
SEG_SUFFIXES = (".dcm",)


def _highdicom():
    try:
        import highdicom
    except ImportError as error:
        raise TumorSegError('writing DICOM SEG needs highdicom: pip install "TumorSegLib[dicom]"') from error
    return highdicom


def card_version(card: ModelCard) -> str:
    """The model version written in the SEG: the card's ``version`` if it has one, else its weights' SHA-256 prefix."""
    version = card.provenance.get("version")
    return str(version) if version else f"sha256:{str(card.weights.sha256 or 'unknown')[:16]}"


def is_dicom_seg_path(path: PathLike) -> bool:
    return str(path).lower().endswith(SEG_SUFFIXES)


def require_dicom_source(image: Image) -> list:
    """The source files of a DICOM-read image, or a clear error (a SEG must reference a series)."""
    files = image.meta.get("dicom_files")
    if not files:
        raise TumorSegError("a DICOM SEG needs a DICOM series as input (this input is not DICOM)")
    if not all(image.meta.get("sop_instance_uids", [])) or not image.meta.get("series_uid"):
        raise TumorSegError("the input series has no SOP Instance or Series Instance UIDs (anonymised without "
                            "them?); a DICOM SEG cannot reference it")
    return files


def write_dicom_seg(path: PathLike, mask: np.ndarray, source: Image, model_name: str, model_version: str) -> Path:
    """Write ``mask`` (on ``source``'s grid) as a DICOM SEG referencing ``source``'s series; atomic."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    path = require_writable(path, "DICOM SEG")
    files = require_dicom_source(source)
    if mask.shape != source.shape:
        raise TumorSegError(f"mask shape {mask.shape} does not match the series grid {source.shape}")
    hd = _highdicom()
    try:
        datasets = [pydicom.dcmread(str(f)) for f in files]
    except Exception as error:
        raise TumorSegError(f"cannot re-read the source series for the DICOM SEG: {error}") from error
    frames = np.ascontiguousarray(np.transpose(mask != 0, (2, 1, 0)).astype(np.uint8))  # (slice, row, column)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumor",
        segmented_property_category=Code(*MORPHOLOGICALLY_ALTERED_STRUCTURE),
        segmented_property_type=Code(*NEOPLASM),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name, version=model_version, family=codes.cid7162.ArtificialIntelligence,
            source="TumorSeg"),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="TumorSeg",
            manufacturer_model_name=model_name, software_versions=f"TumorSegLib {__version__}",
            device_serial_number="none", series_description=f"TumorSeg {model_name}",
            content_label="TUMOR", content_description=f"Tumour mask by {model_name} {model_version}",
            omit_empty_frames=bool(frames.any()),
        )
        buffer = DicomBytesIO()
        seg.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as error:
        raise TumorSegError(f"cannot build the DICOM SEG: {error}") from error
    return write_bytes(path, buffer.getvalue(), "DICOM SEG")


def read_dicom_seg(path: PathLike, source: Image) -> np.ndarray:
    """The Tumor mask of a DICOM SEG on ``source``'s grid (bool, shape ``source.shape``)."""
    import pydicom

    hd = _highdicom()
    try:
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(str(path)))
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source.meta["sop_instance_uids"], segment_numbers=[1],
            combine_segments=True, skip_overlap_checks=True)
    except Exception as error:
        raise TumorSegError(f"cannot read DICOM SEG {path}: {error}") from error
    return np.transpose(frames != 0, (2, 1, 0))
