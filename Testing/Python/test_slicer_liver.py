"""The shipped liver model in the module's logic (real MRML, slicer-core) on a real abdominal CT, loaded as Slicer
loads it (storage node) and under a rotated parent transform: listed for CT, run on the whole volume without a click,
the mask equal to the CLI's voxel for voxel, the readouts in mL from the volume's spacing, tumour only in the liver."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from conftest import shared_data

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "TumorSeg"))

import slicer_app  # noqa: E402
from TumorSegSlicerLib import selftest  # noqa: E402

from TumorSegLib.cards import find_card  # noqa: E402
from TumorSegLib.cli import main  # noqa: E402
from TumorSegLib.io import read_image  # noqa: E402
from TumorSegLib.measure import label_lesions  # noqa: E402

NAME = "ct-liver-lesion-2d"


@pytest.fixture
def logic():
    with slicer_app.module_logic() as tumorseg:
        yield tumorseg


def liver_card(folder: Path) -> Path:
    """The card the shipped card takes its liver from (inference.organ_from) with that liver channel as the output,
    weights copied beside it."""
    card = find_card(find_card(NAME).inference.organ_from)
    data = {**json.loads(card.path.read_text()), "output": {"channel": 1, "threshold": 0.5}}
    folder.mkdir()
    for member in card.weights.members:  # every file of an ensemble
        (folder / member.file).write_bytes(card.member_path(member.file).read_bytes())
    (folder / f"{card.name}.json").write_text(json.dumps(data))
    return folder / f"{card.name}.json"


def test_liver_model_on_a_whole_ct_under_a_transform(logic, tmp_path):
    path = shared_data("totalseg-example-ct") / "example_ct.nii.gz"
    names = [card.name for card in logic.models("CT")]
    assert names.index(NAME) < names.index(find_card(NAME).inference.organ_from)  # the cascade before its liver stage
    assert NAME not in [card.name for card in logic.models("PET")]
    transform = logic.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "rotated")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(selftest.rigid_matrix(20.0, (0, 1, 1), (5, -8, 12))))
    volume = selftest.load_volume(logic, path, "abdomen")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert logic.detectModality(volume) == "CT"
    liver = liver_card(tmp_path / "models")

    liver_segmentation = logic.segment(volume, str(liver), device="cpu")
    tumour = logic.tumorMask(logic.segment(volume, NAME, device="cpu"))

    mask = logic.tumorMask(liver_segmentation)
    assert main(["segment", str(path), "-o", str(tmp_path / "liver.nii.gz"), "--model", str(liver), "--device", "cpu"]) == 0
    expected = read_image(tmp_path / "liver.nii.gz").array != 0
    assert mask.shape == expected.shape and np.array_equal(mask, expected)
    image = read_image(path)
    lesions = logic.readouts[liver_segmentation.GetID()].lesions
    assert len(lesions) == label_lesions(mask)[1]
    assert sum(lesion.volume_ml for lesion in lesions) == pytest.approx(mask.sum() * image.voxel_volume / 1000, rel=1e-6)
    assert mask.sum() * image.voxel_volume / 1000 > 300  # mL: a liver
    # tumour only inside the liver: the rule holds on the tumour network's grid (the organ card's liver resampled to
    # it); each mask is resampled on its own to the volume's grid, so their edges may differ by a voxel
    assert tumour.shape == mask.shape and not (tumour & ~ndimage.binary_dilation(mask)).any()
