"""SUV from a PET DICOM header, following the QIBA vendor-neutral rule.

Units GML: the series is already body-weight SUV (factor 1; never converted twice).
Units BQML, Corrected Image with ATTN and DECY:
- Decay Correction ADMIN: the values are decay-corrected to the injection, so
  SUVbw = value x weight [g] / injected dose [Bq].
- Decay Correction START: the values are decay-corrected to the scan start, so the dose is decayed
  to it: SUVbw = value x weight / (dose x 2^(-(scan - injection) / half-life)). The scan time is the
  Series Date/Time, or the earliest Acquisition Date/Time when the series time is later than it
  (post-processed series). The injection is Radiopharmaceutical Start DateTime, else Radiopharmaceutical
  Start Time on the scan date (the day before when that time is after the scan, an injection before
  midnight).
- Radiopharmaceutical Start DateTime whose date puts the injection after the scan while its time of
  day is before the scan time (a date shifted by de-identification, e.g. TCIA STS_012 and STS_029):
  the time of day is used on the scan date, as the QIBA time-only rule does, and a note says so.
SUL (lean body mass, James formula from Patient's Size and Sex) replaces the weight when asked.
Anything else (Units CNTS or absent, no dose, no weight, no half-life, tags that differ between
slices or contradict each other) leaves the series in its stored units with the reason recorded.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from .errors import TumorSegError
from .hints import PathLike
from .image import Image

SUV_UNITS = {"bw": "SUVbw", "lbm": "SUVlbm"}
TIME_TOLERANCE_S = 1.0


@dataclass
class SuvFactor:
    """Multiply stored values by ``value`` to get ``units``; ``value`` is None with ``reason`` when unavailable."""

    value: float | None
    units: str
    reason: str | None = None
    notes: list = field(default_factory=list)

    def meta(self) -> dict:
        """The image ``meta`` entries for this factor."""
        if self.value is None:
            return {"suv_factor": None, "suv_unavailable": self.reason}
        return {"suv_factor": self.value, "units": self.units, "suv_notes": list(self.notes)}


class _Unavailable(Exception):
    """Why the header cannot give SUV (internal: becomes ``SuvFactor.reason``)."""


def suv_factor_for(datasets: list, kind: str = "bw") -> SuvFactor:
    """The SUV factor of a PT series from its slices' headers (pydicom Datasets)."""
    if kind not in SUV_UNITS:
        raise TumorSegError(f"unknown SUV kind {kind!r}: use one of {', '.join(SUV_UNITS)}")
    notes: list = []
    units = ""
    try:
        units = _common(datasets, "Units", str).upper() if any("Units" in d for d in datasets) else ""
        if units not in ("GML", "BQML"):
            raise _Unavailable(f"Units is {units or 'absent'} (SUV needs BQML or GML)")
        mass_g = _body_mass_g(datasets, kind)
        if units == "GML":
            suv_type = str(datasets[0].get("SUVType", "") or "BW").upper()
            if suv_type != "BW":
                raise _Unavailable(f"Units GML with SUV Type {suv_type}: only body-weight SUV (BW) is read as SUV")
            weight_g = _common(datasets, "PatientWeight", float) * 1000.0 if kind == "lbm" else mass_g
            notes.append("stored in SUV already (Units GML): not converted again")
            return SuvFactor(mass_g / weight_g, SUV_UNITS[kind], notes=notes)
        return SuvFactor(mass_g / _decayed_dose_bq(datasets, notes), SUV_UNITS[kind], notes=notes)
    except _Unavailable as reason:
        return SuvFactor(None, units or "stored units", reason=f"no SUV from the DICOM header: {reason}")


def suv_factor_from_files(files: list, kind: str = "bw") -> SuvFactor:
    """The SUV factor of the PT series made of ``files`` (what the Slicer module calls)."""
    import pydicom

    if not files:
        raise TumorSegError("no DICOM files given for the SUV factor")
    try:
        datasets = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    except Exception as error:
        raise TumorSegError(f"cannot read the DICOM header for SUV: {error}") from error
    if any(str(d.get("Modality", "")) != "PT" for d in datasets):
        return SuvFactor(None, "stored units", reason="no SUV from the DICOM header: not a PT series")
    return suv_factor_for(datasets, kind)


def _common(datasets: list, keyword: str, kind, source=None):
    """The one value of ``keyword`` over all slices (in ``source(dataset)`` when given)."""
    values = set()
    for dataset in datasets:
        holder = source(dataset) if source else dataset
        value = holder.get(keyword) if holder is not None else None
        if value is None or str(value).strip() == "":
            raise _Unavailable(f"{keyword} is missing")
        try:
            values.add(kind(value))
        except (TypeError, ValueError) as error:
            raise _Unavailable(f"{keyword} {value!r} is not valid") from error
    if len(values) > 1:
        raise _Unavailable(f"{keyword} differs between slices ({sorted(map(str, values))[:3]})")
    return values.pop()


def _radiopharmaceutical(dataset):
    sequence = dataset.get("RadiopharmaceuticalInformationSequence")
    return sequence[0] if sequence else None


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise _Unavailable(f"{name} is {value} (must be positive)")
    return value


def _body_mass_g(datasets: list, kind: str) -> float:
    weight_kg = _positive(_common(datasets, "PatientWeight", float), "Patient's Weight")
    if kind == "bw":
        return weight_kg * 1000.0
    height_cm = _positive(_common(datasets, "PatientSize", float), "Patient's Size") * 100.0
    sex = _common(datasets, "PatientSex", str).upper()
    if sex not in ("M", "F"):
        raise _Unavailable(f"Patient's Sex is {sex!r}: lean body mass needs M or F")
    return 1000.0 * lean_body_mass_kg(weight_kg, height_cm, sex)


def lean_body_mass_kg(weight_kg: float, height_cm: float, sex: str) -> float:
    """James formula (as in PERCIST's SUL): men 1.10 W - 128 (W/H)^2, women 1.07 W - 148 (W/H)^2."""
    ratio = weight_kg / height_cm
    if sex == "M":
        return 1.10 * weight_kg - 128.0 * ratio**2
    return 1.07 * weight_kg - 148.0 * ratio**2


def _decayed_dose_bq(datasets: list, notes: list) -> float:
    corrected = {str(v).upper() for d in datasets for v in (d.get("CorrectedImage") or [])}
    missing = {"ATTN", "DECY"} - corrected
    if missing:
        raise _Unavailable(f"Corrected Image {sorted(corrected)} lacks {' and '.join(sorted(missing))}")
    dose = _positive(_common(datasets, "RadionuclideTotalDose", float, _radiopharmaceutical), "Radionuclide Total Dose")
    decay = _common(datasets, "DecayCorrection", str).upper()
    if decay == "ADMIN":
        notes.append(f"Bq/mL decay-corrected to the injection (ADMIN): SUV = value x weight / dose ({dose:.4g} Bq)")
        return dose
    if decay != "START":
        raise _Unavailable(f"Decay Correction is {decay} (SUV needs START or ADMIN)")
    half_life = _positive(_common(datasets, "RadionuclideHalfLife", float, _radiopharmaceutical), "Radionuclide Half Life")
    scan = _scan_time(datasets, notes)
    injection = _injection_time(datasets, scan, notes)
    elapsed = (scan - injection).total_seconds()
    notes.append(f"Bq/mL decay-corrected to the scan start (START): dose {dose:.4g} Bq decayed over "
                 f"{elapsed / 60:.1f} min (half-life {half_life:g} s)")
    return dose * 2.0 ** (-elapsed / half_life)


def _date_time(date, time) -> datetime.datetime | None:
    from pydicom.valuerep import DA, TM

    if not date or not time:
        return None
    try:
        return datetime.datetime.combine(DA(str(date)), TM(str(time)))
    except (TypeError, ValueError) as error:
        raise _Unavailable(f"date/time {date} {time} is not valid") from error


def _scan_time(datasets: list, notes: list) -> datetime.datetime:
    series = _date_time(_common(datasets, "SeriesDate", str), _common(datasets, "SeriesTime", str))
    acquisitions = [t for d in datasets if (t := _date_time(d.get("AcquisitionDate"), d.get("AcquisitionTime")))]
    if acquisitions and min(acquisitions) < series:
        notes.append(f"Series Time {series:%H:%M:%S} is after the earliest Acquisition Time: "
                     f"the scan time is the acquisition's {min(acquisitions):%H:%M:%S} (QIBA)")
        return min(acquisitions)
    return series


def _injection_time(datasets: list, scan: datetime.datetime, notes: list) -> datetime.datetime:
    from pydicom.valuerep import DT, TM

    info = [_radiopharmaceutical(d) for d in datasets]
    if any(i is None for i in info):
        raise _Unavailable("Radiopharmaceutical Information Sequence is missing")
    with_datetime = [i for i in info if i.get("RadiopharmaceuticalStartDateTime")]
    with_time = [i for i in info if i.get("RadiopharmaceuticalStartTime")]
    time_of_day = None
    if with_time:
        time_of_day = _common(with_time, "RadiopharmaceuticalStartTime", lambda v: TM(str(v)).replace(microsecond=0))
    if not with_datetime:
        if time_of_day is None:
            raise _Unavailable("neither Radiopharmaceutical Start DateTime nor Start Time is given")
        injection = datetime.datetime.combine(scan.date(), time_of_day)
        if injection > scan:
            injection -= datetime.timedelta(days=1)
            notes.append("Radiopharmaceutical Start Time is after the scan time: injection taken the day before")
        return injection
    injection = _common(with_datetime, "RadiopharmaceuticalStartDateTime", lambda v: DT(str(v)).replace(tzinfo=None))
    if time_of_day is not None and abs((datetime.datetime.combine(injection.date(), time_of_day) - injection.replace(
            microsecond=0)).total_seconds()) > TIME_TOLERANCE_S:
        raise _Unavailable(f"Radiopharmaceutical Start DateTime {injection} and Start Time {time_of_day} disagree")
    if injection <= scan:
        return injection
    same_day = datetime.datetime.combine(scan.date(), injection.time())
    if same_day <= scan:
        notes.append(f"Radiopharmaceutical Start DateTime {injection:%Y-%m-%d %H:%M} is after the scan "
                     f"({scan:%Y-%m-%d %H:%M}); its date is taken as wrong and its time of day used on the scan date")
        return same_day
    raise _Unavailable(f"the injection ({injection}) is after the scan ({scan})")


def require_suv(image: Image, what: str = "PET image") -> None:
    """Refuse SUV readouts on a PT image whose values are not SUV, with the reason."""
    meta = image.meta
    if meta.get("dicom_modality") == "PT" and not str(meta.get("units", "")).startswith("SUV"):
        reason = meta.get("suv_unavailable") or f"its values are in {meta.get('units', 'stored units')}"
        raise TumorSegError(f"{what} is not in SUV ({reason}); give --suv-factor F (SUV = stored value x F)")


def read_input(path: PathLike, what: str = "image", series_uid: str | None = None,
               suv_factor: float | None = None) -> Image:
    """Read an image or a DICOM series (``series_uid`` picks one); with ``suv_factor`` its stored values times it."""
    from .io import is_dicom, read_image

    if is_dicom(path):
        from .dicom import read_series

        image = read_series(path, series_uid, suv="none" if suv_factor is not None else "bw")
    elif series_uid is not None:
        raise TumorSegError(f"--series applies to a DICOM folder; {path} is not DICOM")
    else:
        image = read_image(path, what)
    return image if suv_factor is None else apply_suv_factor(image, suv_factor)


def apply_suv_factor(image: Image, factor: float) -> Image:
    """``image`` (in stored units, e.g. Bq/mL) times a user-given SUV factor."""
    if not factor > 0:
        raise TumorSegError(f"--suv-factor must be positive, got {factor}")
    if image.meta.get("modality") == "CT":
        raise TumorSegError("--suv-factor applies to PET images, not CT")
    return image.with_array((image.array * factor).astype("float32"), units="SUVbw", suv_factor=factor,
                            suv_notes=[f"SUV factor {factor:g} given by the user"], suv_unavailable=None)
