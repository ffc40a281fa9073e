"""A Bq/mL reference for the SUV conversion, built from a PET series stored in SUV (Units GML).

No real Bq/mL series with a known SUV is available, so one is made: every slice of an SUV series
is rewritten as Units BQML with chosen weight, dose, injection and series times and the F-18
half-life, values = SUV x decayed dose / weight (decayed to the series time for Decay Correction
START, the injected dose for ADMIN), stored as int16 with a new per-slice Rescale Slope (slice
maximum / 32000). Reading it back must give the SUV again, within the re-quantisation.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TumorSegError

F18_HALF_LIFE_S = 6586.2
STORED_MAX = 32000


@dataclass
class BqmlHeader:
    """What the rewritten series says: who, how much, when (``None`` leaves a tag out)."""

    weight_kg: float = 72.5
    dose_bq: float = 3.7e8
    injection: datetime.datetime | None = datetime.datetime(2024, 3, 5, 9, 41, 10)
    series: datetime.datetime = datetime.datetime(2024, 3, 5, 10, 43, 10)
    decay_correction: str = "START"
    half_life_s: float = F18_HALF_LIFE_S
    start_datetime: bool = True  # write RadiopharmaceuticalStartDateTime
    start_time: bool = True  # write RadiopharmaceuticalStartTime
    injection_date_tag: datetime.date | None = None  # a different date in the DateTime tag (header quirk)

    def decayed_dose_bq(self) -> float:
        if self.decay_correction == "ADMIN":
            return self.dose_bq
        elapsed = (self.series - self.injection).total_seconds()
        return self.dose_bq * 2.0 ** (-elapsed / self.half_life_s)


def rewrite_as_bqml(files: list, target: Path, header: BqmlHeader) -> list:
    """Rewrite the SUV slices ``files`` as a BQML series in folder ``target``; returns the new files."""
    import pydicom
    from pydicom.uid import generate_uid

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    to_bqml = header.decayed_dose_bq() / (header.weight_kg * 1000.0)
    series_uid, written = generate_uid(), []
    for number, file in enumerate(files):
        ds = pydicom.dcmread(str(file))
        if str(ds.get("Units", "")).upper() != "GML":
            raise TumorSegError(f"{file}: the BQML reference is built from a series in SUV (Units GML)")
        suv = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        bqml = suv * to_bqml
        slope = max(float(np.abs(bqml).max()), 1e-6) / STORED_MAX
        ds.PixelData = np.round(bqml / slope).astype(np.int16).tobytes()
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue", "SUVType"):
            if tag in ds:
                delattr(ds, tag)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        _set_header(ds, header)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = target / f"BQML{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _set_header(ds, header: BqmlHeader) -> None:
    ds.Units, ds.DecayCorrection = "BQML", header.decay_correction
    ds.PatientWeight = f"{header.weight_kg:g}"
    ds.SeriesDate, ds.SeriesTime = f"{header.series:%Y%m%d}", f"{header.series:%H%M%S}"
    ds.AcquisitionDate, ds.AcquisitionTime = ds.SeriesDate, ds.SeriesTime
    info = ds.RadiopharmaceuticalInformationSequence[0]
    info.RadionuclideTotalDose = f"{header.dose_bq:.6e}"
    info.RadionuclideHalfLife = f"{header.half_life_s:g}"
    for tag in ("RadiopharmaceuticalStartDateTime", "RadiopharmaceuticalStartTime"):
        if tag in info:
            delattr(info, tag)
    if header.injection is not None and header.start_datetime:
        date = header.injection_date_tag or header.injection.date()
        info.RadiopharmaceuticalStartDateTime = f"{date:%Y%m%d}{header.injection:%H%M%S}.00"
    if header.injection is not None and header.start_time:
        info.RadiopharmaceuticalStartTime = f"{header.injection:%H%M%S}"
