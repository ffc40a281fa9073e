"""Synthetic DICOM series written with pydicom, for reader tests (any RAS affine, per-slice rescale)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "PT": "1.2.840.10008.5.1.4.1.1.128"}
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slice_dataset(modality: str, series_uid: str, study_uid: str, frame_uid: str) -> Dataset:
    """The header shared by every slice of a synthetic series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Synthetic^Case", "SYN1", "F", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20240102", "101500", "20240102", "101500"
    ds.StudyID, ds.SeriesNumber, ds.AccessionNumber, ds.ReferringPhysicianName = "1", 3, "", ""
    ds.Manufacturer = "TumorSeg tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(folder, values: np.ndarray, affine: np.ndarray, modality: str = "CT", slopes=None,
                 intercept: float = 0.0, header: dict | None = None, shuffle: bool = True) -> list:
    """Write ``values`` (i, j, k) on RAS ``affine`` as one single-frame file per k; returns the files.

    Stored integers are ``round((values - intercept) / slope)`` with slice k's slope ``slopes[k]``
    (default 1). ``header`` sets extra attributes on every slice; files are named in shuffled order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    count = values.shape[2]
    slopes = np.ones(count) if slopes is None else np.asarray(slopes, dtype=np.float64)
    base = slice_dataset(modality, generate_uid(), generate_uid(), generate_uid())
    names = np.random.default_rng(0).permutation(count) if shuffle else np.arange(count)
    files = []
    for k in range(count):
        ds = Dataset()
        ds.update(base)
        ds.file_meta = base.file_meta
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in np.concatenate([lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]])]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.Rows, ds.Columns = values.shape[1], values.shape[0]
        ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[k]:.10g}", f"{intercept:.10g}"
        for key, value in (header or {}).items():
            setattr(ds, key, value)
        stored = np.round((values[:, :, k].T - intercept) / slopes[k]).astype(np.int16)
        ds.PixelData = stored.tobytes()
        path = folder / f"IM{names[k]:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files
