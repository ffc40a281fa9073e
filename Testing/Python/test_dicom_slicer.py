"""The Slicer side of DICOM SUV (TumorSegSlicerLib.dicomsuv) on real MRML volume nodes (slicer-core)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "TumorSeg"))

from TumorSegSlicerLib import dicomsuv  # noqa: E402

from TumorSegLib.dicom import read_series  # noqa: E402
from TumorSegLib.io import read_image  # noqa: E402
from TumorSegLib.suv_reference import BqmlHeader, rewrite_as_bqml  # noqa: E402


class DicomDatabase:
    """What the module uses of Slicer's ctkDICOMDatabase: ``fileForInstance(uid)`` ("" when unknown)."""

    def __init__(self, folder):
        import pydicom

        self.files = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in Path(folder).iterdir()}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


def pet_volume(folder):
    """A volume node as Slicer's DICOM loader leaves it: the instance UIDs in ``DICOM.instanceUIDs``."""
    image = read_series(folder, suv="none")
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetAttribute(dicomsuv.INSTANCE_UIDS_ATTRIBUTE, " ".join(image.meta["sop_instance_uids"]))
    return node, image


def test_bq_per_ml_volume_gets_suv_from_its_header(tmp_path):
    data = shared_data("ibsi-sts-pet")
    rewrite_as_bqml(sorted((data / "dicom" / "STS_021" / "PET" / "image").glob("*.dcm")), tmp_path, BqmlHeader())
    node, stored = pet_volume(tmp_path)
    converted, note = dicomsuv.suv_image(stored, node, DicomDatabase(tmp_path))
    assert "SUV computed from the DICOM header (SUVbw" in note
    reference = read_image(data / "nifti" / "STS_021" / "PET_image.nii.gz").array
    tissue = reference >= 1
    np.testing.assert_allclose(converted.array[tissue], reference[tissue], rtol=0.01)


def test_volume_in_suv_units_is_not_converted(tmp_path):
    node = slicer.vtkMRMLScalarVolumeNode()
    units = slicer.vtkCodedEntry()
    units.SetValueSchemeMeaning("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
    node.SetVoxelValueUnits(units)
    node.SetAttribute(dicomsuv.INSTANCE_UIDS_ATTRIBUTE, "1.2.3")
    factor = dicomsuv.suv_factor(node, DicomDatabase(tmp_path))
    assert factor.value == 1.0 and factor.units == "SUVbw"


def test_header_without_suv_says_why():
    folder = shared_data("nema-iec-pet") / "data" / "pet_recon_1"
    node, stored = pet_volume(folder)
    same, note = dicomsuv.suv_image(stored, node, DicomDatabase(folder))
    assert same is stored and "not SUV: no SUV from the DICOM header: Units is absent" in note
    _, note = dicomsuv.suv_image(stored, node, DicomDatabase(folder.parent / "pet_recon_2"))
    assert "not in Slicer's DICOM database" in note


def test_volume_without_dicom_is_left_alone():
    node = slicer.vtkMRMLScalarVolumeNode()
    assert dicomsuv.suv_factor(node) is None


def test_a_pet_model_gets_suv_from_a_bq_per_ml_volume(tmp_path, monkeypatch):
    """The module's model input for a PET model is in SUV (the same header rule as the CLI), not in Bq/mL."""
    from TumorSegSlicerLib import mrml
    from TumorSegSlicerLib.logic import TumorSegLogic

    from TumorSegLib.cards import find_card

    data = shared_data("ibsi-sts-pet")
    rewrite_as_bqml(sorted((data / "dicom" / "STS_021" / "PET" / "image").glob("*.dcm")), tmp_path / "bq", BqmlHeader())
    _, stored = pet_volume(tmp_path / "bq")
    scene = slicer.vtkMRMLScene()
    node = mrml.add_volume_from_image(scene, stored, "pet")
    node.SetAttribute(dicomsuv.INSTANCE_UIDS_ATTRIBUTE, " ".join(stored.meta["sop_instance_uids"]))
    monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabase(tmp_path / "bq"), raising=False)
    TumorSegLogic._writeInput(node, find_card("mip-pet-2d"), tmp_path / "input.nii")
    written = read_image(tmp_path / "input.nii")
    reference = read_image(data / "nifti" / "STS_021" / "PET_image.nii.gz").array
    tissue = reference >= 1
    np.testing.assert_allclose(written.array[tissue], reference[tissue], rtol=0.01)
    TumorSegLogic._writeInput(node, find_card("ct-lung-lesion-3d"), tmp_path / "ct-input.nii")  # not a PET model
    np.testing.assert_array_equal(read_image(tmp_path / "ct-input.nii").array, stored.array)
