"""The shipped liver model in the module's logic (real MRML, slicer-core) on a real abdominal CT, loaded as Slicer
loads it (storage node) and under a rotated parent transform: listed for CT, run on the whole volume without a click,
its Tumor and Liver segments equal to the CLI's masks voxel for voxel, the readouts in mL from the volume's spacing,
tumour only in the liver, edits of the liver followed by the readouts and kept from being overwritten."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "TumorSeg"))

import slicer_app  # noqa: E402
import vtk  # noqa: E402
from TumorSegSlicerLib import mrml, selftest  # noqa: E402
from TumorSegSlicerLib.logic import EditedSegmentationError  # noqa: E402

from TumorSegLib.cards import find_card  # noqa: E402
from TumorSegLib.cli import main  # noqa: E402
from TumorSegLib.io import read_image  # noqa: E402
from TumorSegLib.measure import label_lesions  # noqa: E402

NAME = "ct-liver-lesion-2d"


@pytest.fixture
def logic():
    with slicer_app.module_logic() as tumorseg:
        yield tumorseg


def test_liver_model_on_a_whole_ct_under_a_transform(logic, tmp_path):
    """Tumor and Liver segments, each equal to the CLI's mask voxel for voxel; the readouts give the liver's volume
    and the tumour's share of it from the segments as they are, and follow an edit of the liver, which a new run
    then refuses to overwrite."""
    path = shared_data("totalseg-example-ct") / "example_ct.nii.gz"
    names = [card.name for card in logic.models("CT")]
    assert names.index(NAME) < names.index(find_card(NAME).inference.organ_from)  # the cascade before its liver stage
    assert NAME not in [card.name for card in logic.models("PET")]
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rotated")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(selftest.rigid_matrix(20.0, (0, 1, 1), (5, -8, 12))))
    volume = selftest.load_volume(logic, path, "abdomen")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.detectModality(volume) == "CT"

    segmentation = logic.segment(volume, NAME, device="cpu")

    tumour, organ_id = logic.tumorMask(segmentation), logic.organSegmentId(segmentation)
    segment = segmentation.GetSegmentation().GetSegment(organ_id)
    terminology = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
    assert segment.GetName() == "Liver" and "SCT^123037004^Anatomical Structure~SCT^10200004^Liver" in str(terminology)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    liver = mrml.segment_mask(segmentation, organ_id, volume)
    assert main(["segment", str(path), "-o", str(tmp_path / "tumour.nii.gz"), "--organ-mask",
                 str(tmp_path / "liver.nii.gz"), "--model", NAME, "--device", "cpu"]) == 0
    assert np.array_equal(liver, read_image(tmp_path / "liver.nii.gz").array != 0)
    assert np.array_equal(tumour, read_image(tmp_path / "tumour.nii.gz").array != 0)
    assert tumour.any() and not (tumour & ~liver).any()  # the tumour lies in the liver
    image = read_image(path)
    readouts = logic.readouts[segmentation.GetID()]
    assert len(readouts.lesions) == label_lesions(tumour)[1]
    assert sum(lesion.volume_ml for lesion in readouts.lesions) == pytest.approx(tumour.sum() * image.voxel_volume / 1000)
    assert readouts.totals["liver_volume_ml"] == pytest.approx(liver.sum() * image.voxel_volume / 1000)
    assert readouts.totals["liver_volume_ml"] > 300  # mL: a liver
    assert readouts.totals["tumour_percent_of_liver"] == pytest.approx(100 * tumour.sum() / liver.sum())

    edited = liver.copy()
    edited[:, :, : int(np.argwhere(liver)[:, 2].mean())] = False  # the liver's lower half removed
    mrml.set_segment_mask(segmentation, organ_id, edited, volume)
    logic.updatePendingReadouts()
    readouts = logic.readouts[segmentation.GetID()]
    assert readouts.totals["liver_volume_ml"] == pytest.approx(edited.sum() * image.voxel_volume / 1000)
    assert readouts.totals["tumour_percent_of_liver"] == pytest.approx(100 * (tumour & edited).sum() / edited.sum())
    assert "edited" in logic.confirmationNeeded(segmentation)
    with pytest.raises(EditedSegmentationError):
        logic.segment(volume, NAME, device="cpu", outputSegmentation=segmentation)
    assert np.array_equal(mrml.segment_mask(segmentation, organ_id, volume), edited)
