"""SUV from PET DICOM headers: the IBSI series rewritten in Bq/mL read back as the SUV NIfTI, header quirks, refusals."""

import datetime

import numpy as np
import pydicom
import pytest
from conftest import shared_data

from TumorSegLib.dicom import read_series
from TumorSegLib.errors import TumorSegError
from TumorSegLib.io import read_image
from TumorSegLib.suv import apply_suv_factor, lean_body_mass_kg, require_suv, suv_factor_from_files
from TumorSegLib.suv_reference import BqmlHeader, rewrite_as_bqml

IBSI_DICOM_CASES = ("STS_001", "STS_004", "STS_005", "STS_012", "STS_021", "STS_029", "STS_036", "STS_043")
DAY = datetime.timedelta(days=1)


def ibsi(case: str) -> tuple:
    data = shared_data("ibsi-sts-pet")
    files = sorted((data / "dicom" / case / "PET" / "image").glob("*.dcm"))
    return files, read_image(data / "nifti" / case / "PET_image.nii.gz")


def assert_suv_within_1_percent(image, reference, header: BqmlHeader) -> None:
    """Voxel-wise: |SUV - reference| <= 1 % of the reference + half the slice's int16 step (in SUV)."""
    to_bqml = header.decayed_dose_bq() / (header.weight_kg * 1000.0)
    steps = np.array([float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in image.meta["dicom_files"]])
    allowed = 0.01 * np.abs(reference.array) + steps[None, None, :] / to_bqml / 2
    assert image.shape == reference.shape
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-4)
    assert np.all(np.abs(image.array - reference.array) <= allowed)
    assert image.meta["units"] == "SUVbw"


@pytest.mark.parametrize("case", IBSI_DICOM_CASES)
def test_bqml_rewrite_gives_the_suv_nifti(case, tmp_path):
    files, reference = ibsi(case)
    header = BqmlHeader()
    image = read_series(tmp_path) if rewrite_as_bqml(files, tmp_path, header) else None
    assert_suv_within_1_percent(image, reference, header)
    assert image.meta["suv_factor"] == pytest.approx(72500 / header.decayed_dose_bq(), rel=1e-6)


VARIANTS = {
    "injection the day before": BqmlHeader(injection=datetime.datetime(2024, 3, 4, 23, 20), series=datetime.datetime(2024, 3, 5, 0, 41)),
    "decay correction ADMIN, no injection time": BqmlHeader(decay_correction="ADMIN", injection=None),
    "only RadiopharmaceuticalStartTime": BqmlHeader(start_datetime=False),
    "only StartTime, injection before midnight": BqmlHeader(injection=datetime.datetime(2024, 3, 4, 23, 20),
                                                            series=datetime.datetime(2024, 3, 5, 0, 41), start_datetime=False),
    "STS_012 quirk: StartDateTime a day after the series": BqmlHeader(
        injection=datetime.datetime(2005, 2, 16, 11, 29), series=datetime.datetime(2005, 2, 16, 12, 47, 20),
        injection_date_tag=datetime.date(2005, 2, 17)),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_bqml_header_variants(variant, tmp_path):
    files, reference = ibsi("STS_012")
    header = VARIANTS[variant]
    rewrite_as_bqml(files, tmp_path, header)
    image = read_series(tmp_path)
    assert_suv_within_1_percent(image, reference, header)
    if "quirk" in variant:
        assert any("its date is taken as wrong" in note for note in image.meta["suv_notes"])


def test_start_and_admin_differ_by_the_decay(tmp_path):
    """The same Bq/mL values read as START and as ADMIN: SUV ratio = 2^(elapsed / half-life)."""
    files, _ = ibsi("STS_001")
    header = BqmlHeader()
    rewrite_as_bqml(files, tmp_path / "start", header)
    start = read_series(tmp_path / "start")
    for file in (tmp_path / "start").iterdir():
        ds = pydicom.dcmread(file)
        ds.DecayCorrection = "ADMIN"
        ds.save_as(file)
    admin = read_series(tmp_path / "start")
    elapsed = (header.series - header.injection).total_seconds()
    assert start.meta["suv_factor"] / admin.meta["suv_factor"] == pytest.approx(2 ** (elapsed / header.half_life_s))


def test_lean_body_mass_sul(tmp_path):
    files, _ = ibsi("STS_012")  # female, 61 kg, 1.59 m
    bw, sul = read_series(files[0]), read_series(files[0], suv="lbm")
    lbm = lean_body_mass_kg(61.0, 159.0, "F")
    assert lbm == pytest.approx(1.07 * 61 - 148 * (61 / 159) ** 2) and 30 < lbm < 61
    assert sul.meta["units"] == "SUVlbm"
    np.testing.assert_allclose(sul.array, bw.array * lbm / 61.0, rtol=1e-6)


def edited_copy(tmp_path, case: str, edit) -> list:
    files, _ = ibsi(case)
    written = rewrite_as_bqml(files, tmp_path, BqmlHeader())
    for file in written:
        ds = pydicom.dcmread(file)
        edit(ds)
        ds.save_as(file)
    return written


def drop(keyword, sequence=False):
    def edit(ds):
        holder = ds.RadiopharmaceuticalInformationSequence[0] if sequence else ds
        delattr(holder, keyword)
    return edit


def set_to(keyword, value, sequence=False):
    def edit(ds):
        setattr(ds.RadiopharmaceuticalInformationSequence[0] if sequence else ds, keyword, value)
    return edit


BAD_HEADERS = {
    "PatientWeight is missing": drop("PatientWeight"),
    "Patient's Weight is 0.0": set_to("PatientWeight", "0"),
    "RadionuclideTotalDose is missing": drop("RadionuclideTotalDose", sequence=True),
    "RadionuclideHalfLife is missing": drop("RadionuclideHalfLife", sequence=True),
    "Decay Correction is NONE": set_to("DecayCorrection", "NONE"),
    "Units is CNTS": set_to("Units", "CNTS"),
    "Radiopharmaceutical Start DateTime .* and Start Time .* disagree": set_to("RadiopharmaceuticalStartTime", "080000", sequence=True),
    "Units GML with SUV Type LBM": lambda ds: (set_to("Units", "GML")(ds), set_to("SUVType", "LBM")(ds)),
    "Corrected Image .* lacks DECY": set_to("CorrectedImage", ["ATTN", "SCAT"]),
}


@pytest.mark.parametrize("problem", BAD_HEADERS)
def test_missing_or_contradictory_suv_tags_are_refused_with_the_reason(problem, tmp_path):
    written = edited_copy(tmp_path, "STS_005", BAD_HEADERS[problem])
    image = read_series(tmp_path)
    assert image.meta["suv_factor"] is None and image.meta["units"] != "SUVbw"
    with pytest.raises(TumorSegError, match=f"PET image is not in SUV .no SUV from the DICOM header: {problem}"):
        require_suv(image)
    assert suv_factor_from_files(written).reason == image.meta["suv_unavailable"]


def test_tags_differing_between_slices(tmp_path):
    edited_copy(tmp_path, "STS_005", lambda ds: None)
    first = sorted(tmp_path.iterdir())[0]
    set_to("PatientWeight", "80")(ds := pydicom.dcmread(first))
    ds.save_as(first)
    assert "PatientWeight differs between slices" in read_series(tmp_path).meta["suv_unavailable"]


def test_user_suv_factor_on_the_nema_phantom():
    image = read_series(shared_data("nema-iec-pet") / "data" / "pet_recon_1")
    with pytest.raises(TumorSegError, match="not in SUV .no SUV from the DICOM header: Units is absent"):
        require_suv(image)
    converted = apply_suv_factor(image, 1e-3)
    require_suv(converted)
    np.testing.assert_allclose(converted.array, image.array * 1e-3, rtol=1e-6)
    with pytest.raises(TumorSegError, match="must be positive"):
        apply_suv_factor(image, 0)


def test_slicer_backend_factor_from_files():
    files, _ = ibsi("STS_021")
    factor = suv_factor_from_files(files)
    assert factor.value == 1.0 and factor.units == "SUVbw"
    nema = sorted((shared_data("nema-iec-pet") / "data" / "pet_recon_1").iterdir())
    assert suv_factor_from_files(nema).value is None


def test_series_time_after_the_acquisition_uses_the_acquisition(tmp_path):
    """QIBA: a series time reset by post-processing (later than the acquisition) is not the scan time."""
    files, reference = ibsi("STS_036")
    header = BqmlHeader()
    for file in rewrite_as_bqml(files, tmp_path, header):
        ds = pydicom.dcmread(file)
        ds.SeriesTime = "113000"
        ds.save_as(file)
    image = read_series(tmp_path)
    assert_suv_within_1_percent(image, reference, header)
    assert any("earliest Acquisition Time" in note for note in image.meta["suv_notes"])
