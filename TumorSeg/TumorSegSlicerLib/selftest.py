"""Test bodies shared by Slicer's ``TumorSegTest`` and pytest (Testing/Python/test_slicer_logic.py).

Each body takes a ``TumorSegLogic`` on a live scene and a ``Workspace`` (a folder for files and
tiny test models); they use real MRML nodes, the real background ``tumorseg segment`` process on
the CPU and synthetic volumes with known lesions on a flipped, oblique, anisotropic grid.
"""

from __future__ import annotations

import csv
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from scipy import ndimage

from TumorSegLib import testing
from TumorSegLib.errors import Cancelled
from TumorSegLib.io import read_image, write_image
from TumorSegLib.mip import coronal_mip
from TumorSegLib.phantoms import ellipsoid

from . import mrml, readouts as readouts_table
from .logic import INPUT_ROLE, READOUTS_ROLE, EditedSegmentationError, TumorSegLogic
from .process import BackgroundProcess, python_executable


@dataclass
class Workspace:
    directory: Path
    models: dict = field(default_factory=dict)

    def model(self, mode="sliding-window-3d", modality="CT"):
        """A tiny trained model card (cached in the workspace folder)."""
        key = (mode, modality)
        if key not in self.models:
            self.models[key] = testing.tiny_model(self.directory / "models", mode, modality)
        return self.models[key]

    def folder(self, name) -> Path:
        path = self.directory / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


_WORKSPACE = None


def workspace(directory=None) -> Workspace:
    global _WORKSPACE
    if directory is not None:
        return Workspace(Path(directory))
    if _WORKSPACE is None:
        _WORKSPACE = Workspace(Path(tempfile.gettempdir()) / "TumorSegSelfTest")
    return _WORKSPACE


def check(condition, message) -> None:
    """An assertion that survives ``python -O`` (Slicer self-tests report the message)."""
    if not condition:
        raise AssertionError(message)


def add_case(logic, modality="CT"):
    """The oblique, flipped, anisotropic two-lesion volume as a volume node: (node, Image, truth mask)."""
    image, truth = testing.lesion_volume(modality)
    volume = mrml.add_volume_from_image(logic.scene, image, f"case {modality}")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "patient"), "study")
    item = shNode.GetItemByDataNode(volume)
    if item:
        shNode.SetItemParent(item, study)
    else:  # headless: no subject hierarchy plugins to create the item
        shNode.CreateItem(study, volume)
    return volume, image, truth


def study_of(logic, node) -> int:
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    return shNode.GetItemParent(shNode.GetItemByDataNode(node))


def cli(*args) -> None:
    """Run ``tumorseg ARGS`` with the same Python the module uses; fail with its error line."""
    process = BackgroundProcess([python_executable(), "-m", "TumorSegLib", *map(str, args)])
    code = process.wait()
    check(code == 0, f"tumorseg {' '.join(map(str, args))} failed: {process.error_message()}")


def scene_state(scene) -> list:
    return [(n.GetID(), n.GetClassName(), n.GetName(), n.GetMTime()) for n in
            (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))]


def dice(a, b) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_segment_lands_on_lesions(logic: TumorSegLogic, ws: Workspace) -> None:
    """Slicer's round trip (write volume, process, read mask, segment) equals the CLI on the same image, voxel for voxel."""
    card = ws.model()
    volume, image, truth = add_case(logic)
    progress = []
    leftovers = set(Path(tempfile.gettempdir()).glob("TumorSeg-*"))
    segmentation = logic.segment(volume, str(card.path), device="cpu", progressCallback=lambda f, m: progress.append(f))
    mask = logic.tumorMask(segmentation)
    folder = ws.folder("cli")
    write_image(folder / "case.nii.gz", image)
    cli("segment", folder / "case.nii.gz", "-o", folder / "mask.nrrd", "--model", card.path, "--device", "cpu")
    expected = read_image(folder / "mask.nrrd").array != 0
    check(mask.shape == image.shape, f"segment grid {mask.shape} != volume grid {image.shape}")
    check(np.array_equal(mask, expected), f"{np.count_nonzero(mask != expected)} voxels differ from the CLI's mask")
    check(dice(mask, truth) > 0.7, f"segmentation misses the lesions (Dice {dice(mask, truth):.2f})")
    check(progress and progress[-1] == 1.0 and progress == sorted(progress), f"progress not monotonic to 1: {progress}")
    segment = segmentation.GetSegmentation().GetSegment(logic.tumorSegmentId(segmentation))
    check(segmentation.GetSegmentation().GetNumberOfSegments() == 1 and segment.GetName() == "Tumor", "one Tumor segment")
    terminology = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), terminology)
    check("108369006" in str(terminology), f"Neoplasm terminology missing: {terminology}")
    check(not logic.isEdited(segmentation), "a fresh TumorSeg segmentation must not count as edited")
    table = segmentation.GetNodeReference(READOUTS_ROLE)
    check(study_of(logic, segmentation) == study_of(logic, volume) == study_of(logic, table) != 0,
          "segmentation and readouts must be placed in the input volume's study")
    check(set(Path(tempfile.gettempdir()).glob("TumorSeg-*")) <= leftovers, "temporary folders left behind")


def test_readouts_match_cli(logic: TumorSegLogic, ws: Workspace) -> None:
    """The table equals ``tumorseg measure`` on the labelmap Slicer exports; volumes = voxels x spacing product.

    Exported as NRRD, which keeps the geometry in double precision: both sides measure the same grid.
    """
    volume, image, truth = add_case(logic)
    segmentation = logic.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.SetNodeReferenceID(INPUT_ROLE, volume.GetID())
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), truth, volume)
    table = logic.computeReadouts(segmentation, volume)
    folder = ws.folder("measure")
    labelmap = logic.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "export")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(segmentation, labelmap, 0)
    mrml.write_volume(labelmap, folder / "mask.nrrd")
    logic.scene.RemoveNode(labelmap)
    mrml.write_volume(volume, folder / "image.nrrd")
    cli("measure", folder / "mask.nrrd", "--image", folder / "image.nrrd", "--modality", "CT",
        "--csv", folder / "readouts.csv")
    with open(folder / "readouts.csv") as stream:
        expected = list(csv.DictReader(stream))
    rows = readouts_table.table_rows(table)
    check(len(rows) == len(expected) + 1 and rows[-1]["label"] == "Total", f"{len(rows)} rows for {len(expected)} lesions")
    for row, want in zip(rows, expected):
        check(set(want) <= set(row), f"columns missing from the table: {set(want) - set(row)}")
        for key, value in want.items():
            mine = row[key]
            if isinstance(mine, float) and value != "":
                check(math.isclose(mine, float(value), rel_tol=1e-6, abs_tol=1e-6), f"{key}: {mine} != {value}")
            else:
                check(str(mine if not (isinstance(mine, float) and math.isnan(mine)) else "") == value, f"{key}: {mine!r} != {value!r}")
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    volumes = [r["volume_ml"] for r in rows[:-1]]
    check(math.isclose(sum(volumes), np.count_nonzero(truth) * voxel_ml, rel_tol=1e-9),
          f"volumes {volumes} != voxel count x spacing product")


def test_edit_updates_readouts(logic: TumorSegLogic, ws: Workspace) -> None:
    """Changing the segment's voxels (as Segment Editor does) marks the readouts stale; the update measures the edit."""
    volume, image, truth = add_case(logic)
    segmentation = logic.segment(volume, str(ws.model().path), device="cpu")
    before = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    requested = []
    logic.readoutsUpdateRequested = lambda: requested.append(True)
    mask = logic.tumorMask(segmentation)
    blob = ellipsoid(image.shape, image.affine, image.to_world(np.array(image.shape) * [0.8, 0.2, 0.5]), (4.0, 4.0, 5.0))
    check(not np.any(blob & mask) and blob.any(), "test blob must be a new, separate lesion")
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), mask | blob, volume)
    check(requested and segmentation.GetID() in logic.pendingReadouts, "an edit must schedule a readouts update")
    logic.updatePendingReadouts()
    after = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    check(len(after) == len(before) + 1, f"{len(before) - 1} lesions before, {len(after) - 1} after adding one")
    added = after[-1]["volume_ml"] - before[-1]["volume_ml"]
    expected = np.count_nonzero(blob) * float(np.prod(image.spacing)) / 1000.0
    check(math.isclose(added, expected, rel_tol=1e-9), f"total volume grew by {added} mL, expected {expected}")
    check(logic.isEdited(segmentation), "an edited segmentation must count as edited")
    lines = logic.setRecistLinesVisible(segmentation, True)
    lesions = logic.readouts[segmentation.GetID()].lesions
    check(len(lines) == 2 * len(lesions), f"{len(lines)} RECIST lines for {len(lesions)} lesions")
    check(math.isclose(lines[0].GetLineLengthWorld(), lesions[0].recist_long_mm, rel_tol=1e-9), "long-axis line length")
    check(math.isclose(lines[1].GetLineLengthWorld(), lesions[0].recist_short_mm, rel_tol=1e-9), "short-axis line length")


def test_cancel_leaves_scene_unchanged(logic: TumorSegLogic, ws: Workspace) -> None:
    """Cancel during a run: the process ends, its files go, and every node is as it was."""
    card = ws.model()
    volume, image, truth = add_case(logic)
    before = scene_state(logic.scene)
    messages = []
    run = logic.segment(volume, str(card.path), device="cpu", waitForCompletion=False,
                        progressCallback=lambda f, m: messages.append(m))
    while not messages and not run.poll():
        time.sleep(0.01)
    check(not run.finished, "the run ended before it could be cancelled")
    run.cancel()
    check(run.finished and isinstance(run.error, Cancelled), f"cancel must end the run as cancelled, got {run.error!r}")
    check(run.process.returncode is not None, "the process must have ended")
    check(not run.temp_dir.exists(), "temporary files must be removed")
    check(scene_state(logic.scene) == before, "the scene changed after a cancelled run")


def test_rerun_keeps_edited_segmentation(logic: TumorSegLogic, ws: Workspace) -> None:
    """Segment again into an edited segmentation: refused (voxels kept) unless overwrite=True."""
    card = ws.model()
    volume, image, truth = add_case(logic)
    segmentation = logic.segment(volume, str(card.path), device="cpu")
    fresh = logic.tumorMask(segmentation)
    edited = fresh.copy()
    edited[tuple(np.argwhere(fresh)[0])] = False
    mrml.set_segment_mask(segmentation, logic.tumorSegmentId(segmentation), edited, volume)
    try:
        logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation)
    except EditedSegmentationError:
        pass
    else:
        raise AssertionError("a re-run overwrote an edited segmentation without overwrite=True")
    check(np.array_equal(logic.tumorMask(segmentation), edited), "the refused re-run changed the edited voxels")
    again = logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation, overwrite=True)
    check(again is segmentation and np.array_equal(logic.tumorMask(segmentation), fresh), "overwrite=True must replace")
    check(logic.segment(volume, str(card.path), device="cpu", outputSegmentation=segmentation) is segmentation,
          "re-running into an unedited TumorSeg segmentation is allowed")


def test_roi_restricts_inference(logic: TumorSegLogic, ws: Workspace) -> None:
    """A markups ROI around one lesion: only that lesion is segmented, nothing outside the ROI's voxels."""
    volume, image, truth = add_case(logic)
    center = np.array([-6.0, 6.0, 14.0])  # first lesion of testing.lesion_volume
    roi = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetCenterWorld(*center)
    roi.SetSizeWorld(22.0, 22.0, 24.0)
    box = logic.roiIndexRange(volume, roi)
    segmentation = logic.segment(volume, str(ws.model().path), device="cpu", roi=roi)
    mask = logic.tumorMask(segmentation)
    inside = np.zeros(image.shape, dtype=bool)
    inside[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = True
    check(mask.any() and not np.any(mask & ~inside), "voxels segmented outside the ROI")
    check(len(logic.readouts[segmentation.GetID()].lesions) == 1, "only the lesion inside the ROI")


def test_modality_detection(logic: TumorSegLogic, ws: Workspace) -> None:
    """auto modality: the DICOM Modality of the series when there is one, else CT by air / PET."""
    ct, _, _ = add_case(logic, "CT")
    pet, _, _ = add_case(logic, "PET")
    check(logic.detectModality(ct) == "CT" and logic.detectModality(pet) == "PET", "intensity-based modality")
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(logic.scene)
    name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    shNode.SetItemAttribute(shNode.GetItemByDataNode(ct), name, "PT")
    check(logic.detectModality(ct) == "PET", "the DICOM Modality must win over intensities")


def test_mip_model_segments_the_mip(logic: TumorSegLogic, ws: Workspace) -> None:
    """A MIP-PET model on a 3D PET volume: a single-slice MIP volume (MIP pixel spacing) and its segmentation."""
    card = ws.model("whole-image-2d", "MIP-PET")
    volume, image, truth = add_case(logic, "PET")
    segmentation = logic.segment(volume, str(card.path), device="cpu")
    mip = segmentation.GetNodeReference(INPUT_ROLE)
    check(mip is not volume and mip.GetImageData().GetDimensions()[2] == 1, "the segmentation must be on a MIP volume")
    check(study_of(logic, mip) == study_of(logic, volume) != 0, "the MIP volume belongs to the PET volume's study")
    expected_mip = coronal_mip(image, card)
    check(np.allclose(mip.GetSpacing()[:2], expected_mip.spacing), f"MIP spacing {mip.GetSpacing()} != {expected_mip.spacing}")
    check(np.array_equal(mrml.image_from_volume(mip).array, expected_mip.array), "MIP pixels differ from the engine's MIP")
    folder = ws.folder("mip")
    write_image(folder / "pet.nii.gz", image)
    cli("segment", folder / "pet.nii.gz", "-o", folder / "mask.png", "--model", card.path, "--device", "cpu")
    expected = read_image(folder / "mask.png").array != 0
    mask = logic.tumorMask(segmentation)
    check(mask.shape == expected.shape and np.array_equal(mask, expected), "MIP mask differs from the CLI's PNG mask")
    check(mask.any(), "the tiny MIP model found no lesion")
    rows = readouts_table.table_rows(segmentation.GetNodeReference(READOUTS_ROLE))
    check("area_mm2" in rows[0], f"2D readouts must be areas in mm2: {list(rows[0])}")
    labels, count = ndimage.label(expected, np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    check(count >= 2 and sizes.min() < sizes.max(), f"the MIP mask needs lesions of two sizes: {sizes}")
    smallest = int(sizes.min()) + 1  # a MIP's smallest lesion is set in pixels (card.min_size_setting)
    filtered = logic.segment(volume, str(card.path), device="cpu", overrides={card.min_size_setting: smallest})
    kept = np.isin(labels, 1 + np.flatnonzero(sizes >= smallest))
    check(np.array_equal(logic.tumorMask(filtered), kept), "the minimum lesion size in pixels did not act on the MIP")


TESTS = [(f.__name__, f) for f in (test_modality_detection, test_readouts_match_cli, test_segment_lands_on_lesions,
                                   test_edit_updates_readouts, test_rerun_keeps_edited_segmentation,
                                   test_roi_restricts_inference, test_cancel_leaves_scene_unchanged,
                                   test_mip_model_segments_the_mip)]
