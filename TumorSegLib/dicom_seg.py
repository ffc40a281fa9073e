"""DICOM Segmentation (SEG) output with highdicom: the tumour mask referencing its source series.

Segment 1 is "Tumor", coded as SNOMED CT Morphologically Altered Structure / Neoplasm; a run that found the organ its
tumours lie in adds it as segment 2 (e.g. Anatomical Structure / Liver). The codes are those the Slicer module gives
its segments (``terminology``). Algorithm type AUTOMATIC with the model's name and version as algorithm
identification (family: Artificial Intelligence). Frames follow the source slices, so a PACS or viewer overlays it
on the series it was computed from. Needs the ``dicom`` extra (highdicom).
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
from .terminology import TUMOR, Segment

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


def write_dicom_seg(path: PathLike, mask: np.ndarray, source: Image, model_name: str, model_version: str,
                    organ: tuple | None = None) -> Path:
    """Write ``mask`` (on ``source``'s grid) as a DICOM SEG referencing ``source``'s series; atomic. ``organ``:
    ``(terminology.Segment, mask)``, written as segment 2."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.sr.codedict import codes

    path = require_writable(path, "DICOM SEG")
    files = require_dicom_source(source)
    segments = [(TUMOR, mask)] + ([organ] if organ is not None else [])
    for segment, segment_mask in segments:
        if segment_mask.shape != source.shape:
            raise TumorSegError(f"{segment.name} mask shape {segment_mask.shape} does not match the series grid "
                                f"{source.shape}")
    hd = _highdicom()
    try:
        datasets = [pydicom.dcmread(str(f)) for f in files]
    except Exception as error:
        raise TumorSegError(f"cannot re-read the source series for the DICOM SEG: {error}") from error
    # (slice, row, column[, segment])
    frames = np.stack([np.transpose(m != 0, (2, 1, 0)) for _, m in segments], axis=-1).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=model_version,
                                                   family=codes.cid7162.ArtificialIntelligence, source="TumorSeg")
    descriptions = [_description(hd, number, segment, algorithm)
                    for number, (segment, _) in enumerate(segments, start=1)]
    names = [segment.name for segment, _ in segments]
    frames = np.ascontiguousarray(frames if organ is not None else frames[..., 0])
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="TumorSeg",
            manufacturer_model_name=model_name, software_versions=f"TumorSegLib {__version__}",
            device_serial_number="none", series_description=f"TumorSeg {model_name}",
            content_label="TUMOR", content_description=f"{' and '.join(names)} by {model_name} {model_version}",
            omit_empty_frames=bool(frames.any()),
        )
        buffer = DicomBytesIO()
        seg.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as error:
        raise TumorSegError(f"cannot build the DICOM SEG: {error}") from error
    return write_bytes(path, buffer.getvalue(), "DICOM SEG")


def _description(hd, number: int, segment: Segment, algorithm):
    from pydicom.sr.coding import Code

    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment.name, segmented_property_category=Code(*segment.category),
        segmented_property_type=Code(*segment.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)


def read_dicom_seg(path: PathLike, source: Image, segment: int = 1) -> np.ndarray:
    """Segment ``segment`` (1: Tumor) of a DICOM SEG on ``source``'s grid (bool, shape ``source.shape``)."""
    import pydicom

    hd = _highdicom()
    try:
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(str(path)))
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source.meta["sop_instance_uids"], segment_numbers=[segment],
            combine_segments=True, skip_overlap_checks=True)
    except Exception as error:
        raise TumorSegError(f"cannot read DICOM SEG {path}: {error}") from error
    return np.transpose(frames != 0, (2, 1, 0))
