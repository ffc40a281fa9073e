"""``TumorSegLogic``: segment a volume in a background process, measure, and track edits (MRML only, no qt).

The tumours are ONE segment, "Tumor" (SNOMED CT Morphologically Altered Structure / Neoplasm); lesions are its
connected components, measured by ``TumorSegLib.measure`` from the segment as it is now. One segment means Segment
Editor edits never have to keep per-lesion segments in sync, and the readouts always follow the voxels. A model that
finds the organ its tumours lie in (its card's ``output.within.organ``, e.g. the liver) adds that organ, its tumours
included, as a second segment (standard terminology, ``TumorSegLib.terminology``) on whole-volume runs; the readouts'
totals then give its volume and the share of it that is tumour, from the two segments as they are now.

Safety: the fingerprint of each labelmap TumorSeg wrote is stored on the segmentation; a later
run into that segmentation refuses (``EditedSegmentationError``) when the voxels of either segment have changed or it
holds clicked lesions (``confirmationNeeded`` says why), unless ``overwrite=True``. A segmentation
holding another volume's result is never written to.
Nothing in the scene changes until a run has succeeded; an error while its result is imported (any
exception) removes what the import added and restores the output segmentation, so a cancelled or
failed run leaves the scene as it was and ends as one error (``SegmentationRun.error``/``message``).

Parent transforms: the volume is segmented and measured in its own frame (its file's geometry);
the segmentation, the MIP volume and the RECIST lines go under the volume's parent transform, and
markups (ROI, click point) are mapped from world into the volume's frame.

Clicks add up (``click``): each click is one request to a warm ``tumorseg worker`` (``workers.py``,
one per model and device, ended on its idle timeout, by ``shutdown`` and on scene close); its
lesion is added to the "Tumor" segment inside the click's own box only, so no earlier lesion or
edit elsewhere is ever erased, and ``removeLastLesion`` restores that box as it was (``clicks.py``).

The process is made by ``processFactory`` (``ProcessProtocol``): ``BackgroundProcess`` by default,
a fake in tests of the error and cancel paths; ``processFactory(command, interactive=True)`` starts a worker.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer

from TumorSegLib import boxes
from TumorSegLib.cards import find_card, list_cards, scan_cards
from TumorSegLib.errors import Cancelled, TumorSegError
from TumorSegLib.io import read_image, write_image
from TumorSegLib.mip import coronal_mip
from TumorSegLib.terminology import ORGANS, TUMOR, slicer_entry

from . import dicomsuv, mrml, readouts as readouts_table, recist
from .clicks import ClickRecord, box_on_grid
from .process import BackgroundProcess, ProcessFactory, segment_command, worker_command
from .workers import Workers

SEGMENT_NAME = TUMOR.name
FINGERPRINT_ATTRIBUTE = "TumorSeg.Fingerprint"
SEGMENT_ATTRIBUTE = "TumorSeg.SegmentID"
ORGAN_ATTRIBUTE = "TumorSeg.Organ"  # the organ's name (a key of terminology.ORGANS); its segment may be renamed
ORGAN_SEGMENT_ATTRIBUTE = "TumorSeg.OrganSegmentID"
ORGAN_FINGERPRINT_ATTRIBUTE = "TumorSeg.OrganFingerprint"
MODALITY_ATTRIBUTE = "TumorSeg.Modality"
MODEL_ATTRIBUTE = "TumorSeg.Model"
RECIST_ATTRIBUTE = "TumorSeg.ShowRecist"
CLICKS_ATTRIBUTE = "TumorSeg.ClickedLesions"  # how many clicked lesions the segment holds (kept with the scene)
INPUT_ROLE = "TumorSegInput"
SOURCE_ROLE = "TumorSegSource"  # a MIP volume -> the PET volume it was computed from
READOUTS_ROLE = "TumorSegReadouts"
CLICK_OUTPUT = "box.nrrd"  # the worker's mask of the click's box (NRRD: its geometry in double precision)
ORGAN_OUTPUT = "organ.nii.gz"
WORKER_IDLE_TIMEOUT_S = 600.0


class EditedSegmentationError(TumorSegError):
    """The output segmentation was edited (or not made by TumorSeg) and ``overwrite`` was not given."""


def _card_modality(card) -> str:
    return "PET" if card.modality == "MIP-PET" else card.modality


class SegmentationRun:
    """A started ``tumorseg segment`` process and what to do with its result.

    ``poll()`` (main thread) forwards progress and, once the process has ended, imports the
    result into the scene; ``cancel()`` stops it and removes its files, leaving the scene untouched.
    """

    def __init__(self, logic, process, temp_dir, input_volume, card, output_segmentation, overwrite, progress,
                 mip_view=False, click=False, point=None):
        self.logic = logic
        self.click = click  # a click that adds its lesion (``TumorSegLogic.click``), not a run that replaces the segment
        self.point = point  # the click's (point list node ID, control point ID), when it was a markups point
        self.mip_view = mip_view
        self.overwrite = overwrite
        self.process = process
        self.temp_dir = temp_dir
        self.input_volume = input_volume
        self.card = card
        self.output_segmentation = output_segmentation
        self.progress = progress
        self.segmentation = None
        self.error = None
        self.finished = False

    def poll(self) -> bool:
        """Forward new progress; import the result when the process has ended. True when finished.

        Never raises: any error (the process's, the import's, a progress callback's) ends the run with
        ``error`` set, its files removed and the scene as it was.
        """
        if self.finished:
            return True
        try:
            ended = self.process.returncode is not None
            for event in self.process.poll():
                if event[0] == "progress" and self.progress:
                    self.progress(event[1], event[2])
            if ended:
                self._finish()
        except Exception as error:  # noqa: BLE001 - one error for the user, whatever failed
            self._fail(error)
        return self.finished

    def _finish(self) -> None:
        if self.process.cancelled or self.process.returncode == 130:
            raise Cancelled("segmentation cancelled; the scene is unchanged")
        if self.process.returncode != 0 or not self.process.done:
            raise TumorSegError(self.process.error_message())
        if self.progress:
            self.progress(1.0, f"done: {self.process.done.get('lesions', '?')} lesion(s)")
        self.segmentation = (self.logic._importClick if self.click else self.logic._importResult)(self)
        self._end()

    def _fail(self, error: Exception) -> None:
        if not isinstance(error, TumorSegError):
            logging.getLogger(__name__).error("TumorSeg run failed", exc_info=error)
        self.error = error
        self.segmentation = None
        if not self.process.cancelled and self.process.returncode is None:
            self.process.cancel()
        self._end()

    def _end(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.finished = True

    @property
    def notes(self) -> list:
        """The backend's notes on the result (what its post-processing removed, what each click found), once it
        has succeeded."""
        return list((self.process.done or {}).get("notes", [])) if self.segmentation is not None else []

    @property
    def message(self) -> str:
        """The run's error as one message for the user ("" when it succeeded or is still running)."""
        if self.error is None:
            return ""
        if isinstance(self.error, TumorSegError):
            return str(self.error)
        return f"unexpected error ({type(self.error).__name__}: {self.error}); details are in the Python console"

    def cancel(self) -> None:
        """Stop the process tree; returns at once. ``poll()`` ends the run (as ``Cancelled``) once the process has ended."""
        if not self.finished:
            self.process.cancel()
            self.poll()

    def wait(self):
        """Block until the run ends; the segmentation node, or the run's error raised."""
        while not self.poll():
            time.sleep(0.05)
        if self.error:
            raise self.error
        return self.segmentation


class TumorSegLogic:
    """Everything the panel does, scriptable: ``segment``, ``computeReadouts``, RECIST lines, edit tracking."""

    def __init__(self, scene=None, processFactory: ProcessFactory = BackgroundProcess):
        self._scene = scene
        self.processFactory = processFactory
        self.tempRoot = None  # where each run's temporary folder goes (None: the system's temporary folder)
        self.pendingReadouts = set()
        self.readoutsUpdateRequested = None  # called (no arguments) when readouts become stale
        self.readouts = {}  # segmentation node ID -> TumorSegLib.measure.Readouts
        self._observations = {}  # segmentation node ID -> [(vtkSegmentation, tag)]
        self._writing = False
        self.workers = Workers()
        self.workerIdleTimeout = WORKER_IDLE_TIMEOUT_S
        self.clickHistory = {}  # segmentation node ID -> [ClickRecord], the last click last
        self._clickInput = None  # (key, path) of the volume file the workers read
        self._clickFolder = None
        self._sceneObservation = None  # (scene, tag) of the EndCloseEvent observer, while workers may run

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ---- choices ----------------------------------------------------------------------------
    @staticmethod
    def models(modality=None, modelsDir=None) -> list:
        """Model cards (user folders included) for ``modality`` ("PET" also lists MIP-PET models); a card that another
        takes its organ from (``inference.organ_from``) comes after the others, so it is not the first choice."""
        cards = list_cards(modelsDir)
        parts = {c.inference.organ_from for c in cards}
        return sorted((c for c in cards if modality in (None, "auto") or _card_modality(c) == modality),
                      key=lambda c: c.name in parts)

    @staticmethod
    def brokenModels(modelsDir=None) -> dict:
        """{card file: why it is not a valid card} for the folders ``models`` lists; the other models stay usable."""
        return scan_cards(modelsDir)[1]

    @staticmethod
    def needsRegion(card) -> bool:
        """Whether the model was trained on regions around one lesion (its card gives ``inference.min_roi_mm``):
        it wants a click point or an ROI, not a whole volume."""
        return card is not None and card.inference.min_roi_mm is not None

    def detectModality(self, volumeNode) -> str:
        """"PET" or "CT" by the backend's modality rule (``TumorSegLib.modality``): the DICOM Modality
        the volume was loaded with, else CT when it holds air in HU; anything else is taken as PET
        (a PET card's input check then says when it is not in SUV).
        """
        from TumorSegLib.modality import from_dicom, guess

        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
        item = shNode.GetItemByDataNode(volumeNode) if shNode else 0
        modality = (shNode.GetItemAttribute(item, name) if item else "") or volumeNode.GetAttribute(name) or ""
        return from_dicom(modality) or ("CT" if guess(slicer.util.arrayFromVolume(volumeNode)) == "CT" else "PET")

    # ---- segmentation ------------------------------------------------------------------------
    def segment(self, inputVolume, modelName, device="auto", roi=None, outputSegmentation=None,
                progressCallback=None, waitForCompletion=True, point=None, overrides=None, overwrite=False,
                modelsDir=None, mipView=False):
        """Segment ``inputVolume`` with model ``modelName`` in a background ``tumorseg segment`` process.

        roi: a markups ROI node restricting inference; point: a markups point list (first point)
        or an RAS triple for click-to-segment; overrides: {"overlap", "threshold", "min_lesion_ml" (3D masks) or
        "min_lesion_px" (int; a MIP's 2D mask)}; mipView: a MIP-PET model's 2D mask on a one-slice MIP volume
        instead of the default, its lesions traced into the 3D PET volume (``TumorSegLib.mip3d``).
        Returns the segmentation node, or with ``waitForCompletion=False`` a ``SegmentationRun``
        whose ``poll()`` the caller calls from the main thread.
        """
        if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode"):
            raise TumorSegError("select a scalar input volume")
        if roi is not None and point is not None:
            raise TumorSegError("give either a region (ROI) or a click point, not both")
        card = find_card(modelName, modelsDir)
        if outputSegmentation is not None:
            self.checkOutput(outputSegmentation, inputVolume, overwrite)
        temp_dir = Path(tempfile.mkdtemp(prefix="TumorSeg-", dir=self.tempRoot))
        try:
            input_path = temp_dir / "input.nii"
            self._writeInput(inputVolume, card, input_path)
            organ = bool(card.organ) and roi is None and point is None
            command = segment_command(
                input_path, temp_dir / self._outputName(card, mipView), card.path or card.name, device,
                roi=self.roiIndexRange(inputVolume, roi) if roi is not None else None,
                point=self.pointPosition(point, inputVolume) if point is not None else None,
                models_dir=modelsDir, overrides=overrides, organ_path=temp_dir / ORGAN_OUTPUT if organ else None)
            process = self.processFactory(command)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        run = SegmentationRun(self, process, temp_dir, inputVolume, card, outputSegmentation, overwrite,
                             progressCallback, mipView)
        return run.wait() if waitForCompletion else run

    @staticmethod
    def _writeInput(volumeNode, card, path) -> None:
        """The volume as the model's input file: a PET volume stored in Bq/mL is converted to SUV from its
        DICOM header first (``dicomsuv``, the CLI's rule); every other volume is written as it is."""
        if card.modality in ("PET", "MIP-PET"):
            image = mrml.image_from_volume(volumeNode)
            converted, _ = dicomsuv.suv_image(image, volumeNode)
            if converted is not image:
                write_image(path, converted)
                return
        mrml.write_volume(volumeNode, path)

    @staticmethod
    def _outputName(card, mipView) -> str:
        """The mask file the process writes: a PNG for the MIP view's 2D mask, else a volume on the input's grid."""
        return "output.png" if card.modality == "MIP-PET" and mipView else "output.nii.gz"

    @staticmethod
    def roiIndexRange(volumeNode, roiNode) -> list:
        """The voxels whose centres lie in the ROI's bounding box, as half-open [i0, i1, j0, j1, k0, k1].

        The ROI's corners are taken in world coordinates and mapped into the volume's own frame.
        """
        center, size = np.zeros(3), np.zeros(3)
        roiNode.GetCenterWorld(center)
        roiNode.GetSizeWorld(size)
        axes = [np.zeros(3) for _ in range(3)]
        roiNode.GetXAxisWorld(axes[0])
        roiNode.GetYAxisWorld(axes[1])
        roiNode.GetZAxisWorld(axes[2])
        signs = np.array(np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")).reshape(3, -1).T
        corners = center + (signs * size) @ np.array(axes)
        index = mrml.ras_to_ijk(volumeNode, mrml.world_to_local(volumeNode, corners))
        dims = np.array(volumeNode.GetImageData().GetDimensions())
        low = np.clip(np.floor(index.min(axis=0) + 0.5), 0, dims - 1).astype(int)
        high = np.clip(np.ceil(index.max(axis=0) - 0.5), 0, dims - 1).astype(int)
        if np.any(high < low):
            raise TumorSegError("the ROI does not overlap the input volume")
        return [int(v) for pair in zip(low, high + 1) for v in pair]

    @staticmethod
    def pointPosition(point, volumeNode=None, index=0) -> list:
        """A markups point list's point ``index`` (-1: the last), or a world (R, A, S) triple, in ``volumeNode``'s
        own frame."""
        if hasattr(point, "GetNthControlPointPositionWorld"):
            count = point.GetNumberOfControlPoints()
            if not -count <= index < count:
                raise TumorSegError(f"point list {point.GetName()!r} has no point {index}" if count else
                                    f"point list {point.GetName()!r} has no points")
            position = np.zeros(3)
            point.GetNthControlPointPositionWorld(index % count, position)
        else:
            position = np.array([float(v) for v in point])
        return (mrml.world_to_local(volumeNode, position) if volumeNode is not None else position).tolist()

    # ---- clicks that add up ----------------------------------------------------------------
    @staticmethod
    def canClick(card, volumeNode=None) -> bool:
        """Whether clicks with this model add up (``click``): a 3D mask whose clicks have boxes on the volume's grid.

        A MIP-PET model (and a single-slice MIP volume) segments with the click point through ``segment`` instead.
        """
        if card is None or card.modality == "MIP-PET" or card.mode == "whole-image-2d":
            return False
        return volumeNode is None or mrml.affine_2d(volumeNode) is None

    def click(self, inputVolume, modelName, point, outputSegmentation=None, device="auto", pointIndex=-1,
              progressCallback=None, waitForCompletion=True, overrides=None, modelsDir=None):
        """Add the lesion at one click to the "Tumor" segment, through the model's warm worker.

        point: a markups point list (its point ``pointIndex``, -1: the last) or a world (R, A, S) triple.
        Only voxels inside the click's box change, and only by being added: earlier lesions and edits stay.
        A click that adds voxels is kept in ``clickHistory`` (``removeLastLesion`` takes it back). A click on
        background changes nothing (``SegmentationRun.notes`` says so). The readouts are marked stale, as after an
        edit (``updatePendingReadouts``). Returns the segmentation node (a new one when ``outputSegmentation`` is
        None), or with ``waitForCompletion=False`` a ``SegmentationRun``.
        """
        if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode"):
            raise TumorSegError("select a scalar input volume")
        card = find_card(modelName, modelsDir)
        if not self.canClick(card, inputVolume):
            raise TumorSegError(f"clicks with model {card.name!r} do not add up (it segments a 2D MIP): segment with "
                                "the click point instead")
        if outputSegmentation is not None:
            self.checkOutput(outputSegmentation, inputVolume, overwrite=True)  # adding erases nothing: no edit check
            shown = outputSegmentation.GetNodeReference(INPUT_ROLE)
            if shown is not None and mrml.affine_2d(shown) is not None:
                raise TumorSegError(f"segmentation {outputSegmentation.GetName()!r} holds a 2D MIP result; click into "
                                    "a new segmentation")
        position = self.pointPosition(point, inputVolume, pointIndex)
        marker = None
        if hasattr(point, "GetNthControlPointID"):
            marker = (point.GetID(), point.GetNthControlPointID(pointIndex % point.GetNumberOfControlPoints()))
        input_path = self._clickInputFile(inputVolume, card)
        temp_dir = Path(tempfile.mkdtemp(prefix="TumorSeg-click-", dir=self.tempRoot))
        try:
            request = {"command": "segment", "input": str(input_path), "output": str(temp_dir / CLICK_OUTPUT),
                       "points": [position], "clicks_only": True, "overrides": overrides or {}}
            command = worker_command(str(card.path or card.name), device, self.workerIdleTimeout, modelsDir)
            process = self.workers.submit(tuple(command[4:]), lambda: self.processFactory(command, interactive=True),
                                          self.workerIdleTimeout, request)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        self._observeSceneClose()
        run = SegmentationRun(self, process, temp_dir, inputVolume, card, outputSegmentation, False, progressCallback,
                              click=True, point=marker)
        return run.wait() if waitForCompletion else run

    def _clickInputFile(self, volumeNode, card) -> Path:
        """The volume as the workers' input file, written once while the volume is unchanged (the worker then
        keeps it in memory between clicks)."""
        key = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), mrml.ijk_to_ras(volumeNode).tobytes(),
               card.modality in ("PET", "MIP-PET"))
        if self._clickInput is not None and self._clickInput[0] == key and self._clickInput[1].is_file():
            return self._clickInput[1]
        if self._clickFolder is None or not self._clickFolder.is_dir():
            self._clickFolder = Path(tempfile.mkdtemp(prefix="TumorSeg-clicks-", dir=self.tempRoot))
        if self._clickInput is not None:
            self._clickInput[1].unlink(missing_ok=True)
        path = self._clickFolder / f"input-{volumeNode.GetID()}-{key[1]}.nii"
        self._writeInput(volumeNode, card, path)
        self._clickInput = (key, path)
        return path

    def _importClick(self, run):
        """Add the click's lesion inside its box (main thread); record the box's voxels before and after."""
        mask_image = read_image(run.temp_dir / CLICK_OUTPUT, "click result")
        volume = run.input_volume
        box = box_on_grid(mask_image, mrml.ijk_to_ras(volume), mrml.grid_shape(volume))
        lesion = mask_image.array != 0
        segmentation = run.output_segmentation
        if segmentation is not None:
            if segmentation.GetScene() is not self.scene:
                raise TumorSegError(f"the output segmentation {segmentation.GetName()!r} was removed during the run")
            self.checkOutput(segmentation, volume, overwrite=True)
        record = None
        with self._undoOnError(segmentation):
            segmentation = segmentation or self._newSegmentation(volume)
            self._adopt(segmentation, volume)
            segment_id = self.tumorSegmentId(segmentation)
            before = mrml.segment_box(segmentation, segment_id, box, volume)
            if np.any(lesion & ~before):
                mrml.add_to_segment_box(segmentation, segment_id, box, lesion, volume)
                record = ClickRecord(box, before, before | lesion, run.point)
                segmentation.SetAttribute(CLICKS_ATTRIBUTE, str(self.clickedLesions(segmentation) + 1))
            segmentation.SetAttribute(MODALITY_ATTRIBUTE, _card_modality(run.card))
            segmentation.SetAttribute(MODEL_ATTRIBUTE, run.card.name)
        if record is not None:
            self.clickHistory.setdefault(segmentation.GetID(), []).append(record)
        self.observeSegmentation(segmentation)
        self.scheduleReadoutsUpdate(segmentation.GetID())
        return segmentation

    @staticmethod
    def clickedLesions(segmentationNode) -> int:
        """How many clicked lesions the segmentation holds (clicks that added voxels, less those removed)."""
        return int(segmentationNode.GetAttribute(CLICKS_ATTRIBUTE) or 0)

    def removeLastLesion(self, segmentationNode, overwrite=False) -> None:
        """Take back the last click of this session: its box becomes exactly what it was before the click.

        Refuses (``EditedSegmentationError``) when the box's voxels were edited since the click, unless
        ``overwrite`` (those edits would go too). The click's markups point is removed with it.
        """
        records = self.clickHistory.get(segmentationNode.GetID()) if segmentationNode is not None else None
        if not records:
            raise TumorSegError("no clicked lesion to remove (only clicks made since the scene was opened can be)")
        record = records[-1]
        volume = self.inputVolume(segmentationNode)
        segment_id = self.tumorSegmentId(segmentationNode)
        if not overwrite and not np.array_equal(mrml.segment_box(segmentationNode, segment_id, record.box, volume),
                                                record.after):
            raise EditedSegmentationError(
                "the voxels around the last clicked lesion were edited after the click; removing the lesion restores "
                "them as they were before it and loses those edits (pass overwrite=True to do so)")
        mrml.set_segment_box(segmentationNode, segment_id, record.box, record.before, volume)
        records.pop()
        segmentationNode.SetAttribute(CLICKS_ATTRIBUTE, str(max(self.clickedLesions(segmentationNode) - 1, 0)))
        pointList = self.scene.GetNodeByID(record.point[0]) if record.point else None
        index = self.controlPointIndex(pointList, record.point[1]) if pointList is not None else -1
        if index >= 0:
            pointList.RemoveNthControlPoint(index)
        self.scheduleReadoutsUpdate(segmentationNode.GetID())

    @staticmethod
    def controlPointIndex(pointList, controlPointId: str) -> int:
        """The index of the control point with this ID in the markups point list, -1 when it is not there."""
        ids = [pointList.GetNthControlPointID(i) for i in range(pointList.GetNumberOfControlPoints())]
        return ids.index(controlPointId) if controlPointId in ids else -1

    def shutdown(self) -> None:
        """End the warm workers and remove their input files (module cleanup, scene close)."""
        self.workers.stop()
        if self._clickFolder is not None:
            shutil.rmtree(self._clickFolder, ignore_errors=True)
        self._clickFolder = self._clickInput = None
        if self._sceneObservation is not None:
            scene, tag = self._sceneObservation
            scene.RemoveObserver(tag)
            self._sceneObservation = None

    def _observeSceneClose(self) -> None:
        if self._sceneObservation is None:
            scene = self.scene
            self._sceneObservation = (scene, scene.AddObserver(scene.EndCloseEvent, lambda *_: self._onSceneClosed()))

    def _onSceneClosed(self) -> None:
        self.clickHistory.clear()
        self.shutdown()

    def _importResult(self, run):
        """Put the run's mask into the output segmentation (main thread), after checking its grid.

        Any error after the scene was first touched undoes the import (``_undoOnError``).
        """
        mask_image = read_image(run.temp_dir / self._outputName(run.card, run.mip_view), "segmentation result")
        volume = run.input_volume
        target = mrml.image_from_volume(volume)
        if mask_image.ndim == 2 and target.ndim == 3:
            target = coronal_mip(target, run.card)
            mask_image = target.with_array(mask_image.array) if mask_image.shape == target.shape else mask_image
        mask_image.require_same_grid(target, "segmentation result", "input image")
        organ = self._organResult(run, target)
        segmentation = run.output_segmentation
        if segmentation is not None:  # it may have been edited, or removed, during the run
            if segmentation.GetScene() is not self.scene:
                raise TumorSegError(f"the output segmentation {segmentation.GetName()!r} was removed during the run")
            self.checkOutput(segmentation, volume, run.overwrite)
        with self._undoOnError(segmentation):
            if target.ndim == 2 and mrml.affine_2d(volume) is None:
                volume = self._mipVolume(volume, target, segmentation)
            segmentation = segmentation or self._newSegmentation(volume)
            self._writeTumor(segmentation, volume, mask_image.array != 0)
            self._writeOrgan(segmentation, volume, organ)
            segmentation.SetAttribute(MODALITY_ATTRIBUTE, _card_modality(run.card) if target.ndim == 3 else "")
            segmentation.SetAttribute(MODEL_ATTRIBUTE, run.card.name)
            self.computeReadouts(segmentation, volume)
        self.clickHistory.pop(segmentation.GetID(), None)  # the clicked lesions were replaced
        self.observeSegmentation(segmentation)
        return segmentation

    @contextlib.contextmanager
    def _undoOnError(self, segmentationNode=None):
        """On any exception: remove the nodes added inside, restore ``segmentationNode`` and its table, re-raise."""
        scene = self.scene
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        items = mrml.subject_hierarchy_items(scene)
        saved = mrml.SavedSegmentation(segmentationNode, (INPUT_ROLE, READOUTS_ROLE)) if segmentationNode is not None else None
        self._writing = True
        try:
            yield
        except BaseException:
            added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for node in reversed([n for n in added if n.GetID() not in before]):
                scene.RemoveNode(node)
            shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
            for item in reversed([i for i in mrml.subject_hierarchy_items(scene) if i not in items]):
                shNode.RemoveItem(item, False, False)  # items whose data node went, or folders
            if saved is not None:
                saved.restore()
            raise
        finally:
            self._writing = False

    def _mipVolume(self, volumeNode, mip, segmentationNode=None):
        """The MIP the model segmented, as a single-slice volume beside the PET volume (under its transform).

        The output segmentation's MIP volume is reused when it shows this same MIP.
        """
        current = segmentationNode.GetNodeReference(INPUT_ROLE) if segmentationNode is not None else None
        if current is not None and current.GetNodeReference(SOURCE_ROLE) is volumeNode:
            shown = mrml.image_from_volume(current)
            if shown.shape == mip.shape and np.allclose(shown.affine, mip.affine) and np.array_equal(shown.array, mip.array):
                return current
        node = mrml.add_volume_from_image(self.scene, mip, self.scene.GenerateUniqueName(f"{volumeNode.GetName()} MIP"))
        node.SetNodeReferenceID(SOURCE_ROLE, volumeNode.GetID())
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        self._placeBeside(node, volumeNode)
        return node

    def _placeBeside(self, node, reference) -> None:
        """Put ``node`` in the same subject hierarchy folder (study) as ``reference``."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        referenceItem = shNode.GetItemByDataNode(reference)
        parent = shNode.GetItemParent(referenceItem) if referenceItem else 0
        if not parent:
            return
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parent)
        else:  # Slicer's subject hierarchy plugins create items; without them (headless) create it here
            shNode.CreateItem(parent, node)

    def _newSegmentation(self, volumeNode):
        """An empty segmentation on the volume's geometry, beside it in the subject hierarchy."""
        name = self.scene.GenerateUniqueName(f"{volumeNode.GetName()} tumor")
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentation.SetNodeReferenceID(INPUT_ROLE, volumeNode.GetID())
        self._placeBeside(segmentation, volumeNode)
        return segmentation

    def tumorSegmentId(self, segmentationNode) -> str:
        """The ID of the segmentation's "Tumor" segment, created (with its terminology) if missing."""
        return _segmentId(segmentationNode, SEGMENT_ATTRIBUTE, TUMOR)

    @staticmethod
    def organSegmentId(segmentationNode) -> str:
        """The ID of the segmentation's organ segment (``ORGAN_ATTRIBUTE``), "" when it has none."""
        segment_id = segmentationNode.GetAttribute(ORGAN_SEGMENT_ATTRIBUTE)
        return segment_id if segment_id and segmentationNode.GetSegmentation().GetSegment(segment_id) else ""

    @staticmethod
    def _organResult(run, target):
        """(organ name, bool mask on ``target``'s grid) of the organ mask the run wrote, or None when it wrote none."""
        path = run.temp_dir / ORGAN_OUTPUT
        if not path.is_file():
            return None
        organ = read_image(path, "organ mask")
        organ.require_same_grid(target, "organ mask", "input image")
        return run.card.organ, organ.array != 0

    @staticmethod
    def _adopt(segmentationNode, volumeNode) -> None:
        """Make ``volumeNode`` the segmentation's input and geometry (``checkOutput`` has made sure it holds no other
        volume's result)."""
        if segmentationNode.GetNodeReference(INPUT_ROLE) is not volumeNode:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentationNode.SetNodeReferenceID(INPUT_ROLE, volumeNode.GetID())

    def _writeTumor(self, segmentationNode, volumeNode, mask) -> None:
        """Replace the segment by the mask; it holds no clicked lesion afterwards."""
        self._adopt(segmentationNode, volumeNode)
        mrml.set_segment_mask(segmentationNode, self.tumorSegmentId(segmentationNode), mask, volumeNode)
        segmentationNode.SetAttribute(FINGERPRINT_ATTRIBUTE, mrml.fingerprint(mask))
        segmentationNode.RemoveAttribute(CLICKS_ATTRIBUTE)

    def _writeOrgan(self, segmentationNode, volumeNode, organ) -> None:
        """Replace the organ segment by ``organ`` = (name, mask) (its terminology from ``ORGANS``), or remove it when
        the run gave no organ (a segmentation holds one run's result; ``checkOutput`` has refused an edited one)."""
        segment_id = self.organSegmentId(segmentationNode)
        if organ is None:
            if segment_id:
                segmentationNode.GetSegmentation().RemoveSegment(segment_id)
            for name in (ORGAN_ATTRIBUTE, ORGAN_SEGMENT_ATTRIBUTE, ORGAN_FINGERPRINT_ATTRIBUTE):
                segmentationNode.RemoveAttribute(name)
            return
        name, mask = organ
        if segment_id and segmentationNode.GetAttribute(ORGAN_ATTRIBUTE) != name:  # another organ's segment
            segmentationNode.GetSegmentation().RemoveSegment(segment_id)
        segment_id = _segmentId(segmentationNode, ORGAN_SEGMENT_ATTRIBUTE, ORGANS[name])
        mrml.set_segment_mask(segmentationNode, segment_id, mask, volumeNode)
        segmentationNode.SetAttribute(ORGAN_ATTRIBUTE, name)
        segmentationNode.SetAttribute(ORGAN_FINGERPRINT_ATTRIBUTE, mrml.fingerprint(mask))

    # ---- edit tracking --------------------------------------------------------------------
    def tumorMask(self, segmentationNode, volumeNode=None, box=None) -> np.ndarray:
        """The tumour voxels now (bool, i, j, k on the volume grid, or only its ``box`` of a 3D volume): the TumorSeg
        segment, else all segments but the organ's (``_tumorSegmentIds``)."""
        volumeNode = volumeNode or self.inputVolume(segmentationNode)
        mask = np.zeros(mrml.grid_shape(volumeNode) if box is None else [hi - lo for lo, hi in box], dtype=bool)
        for sid in self._tumorSegmentIds(segmentationNode):
            mask |= (mrml.segment_mask(segmentationNode, sid, volumeNode) if box is None
                     else mrml.segment_box(segmentationNode, sid, box, volumeNode))
        return mask

    def tumorBounds(self, segmentationNode, volumeNode):
        """The smallest box of the 3D volume's grid holding every tumour voxel (``tumorMask``), None when none."""
        found = [mrml.segment_bounds(segmentationNode, sid, volumeNode) for sid in self._tumorSegmentIds(segmentationNode)]
        found = [box for box in found if box is not None]
        if not found:
            return None
        return tuple((min(box[a][0] for box in found), max(box[a][1] for box in found)) for a in range(3))

    def _tumorSegmentIds(self, segmentationNode) -> list:
        """The TumorSeg tumour segment, else every segment but TumorSeg's organ segment."""
        segmentation = segmentationNode.GetSegmentation()
        segment_id = segmentationNode.GetAttribute(SEGMENT_ATTRIBUTE)
        if segment_id and segmentation.GetSegment(segment_id):
            return [segment_id]
        return [sid for sid in segmentation.GetSegmentIDs() if sid != self.organSegmentId(segmentationNode)]

    def inputVolume(self, segmentationNode):
        volume = segmentationNode.GetNodeReference(INPUT_ROLE)
        if volume is None:
            raise TumorSegError(f"segmentation {segmentationNode.GetName()!r} has no TumorSeg input volume; pass one")
        return volume

    def isEdited(self, segmentationNode) -> bool:
        """True when the segmentation holds content TumorSeg did not write (edited, or made elsewhere)."""
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            return False
        written = segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE)
        if not written or segmentationNode.GetNodeReference(INPUT_ROLE) is None:
            return True
        organ_id = self.organSegmentId(segmentationNode)
        if organ_id and mrml.fingerprint(mrml.segment_mask(segmentationNode, organ_id, self.inputVolume(
                segmentationNode))) != segmentationNode.GetAttribute(ORGAN_FINGERPRINT_ATTRIBUTE):
            return True
        return mrml.fingerprint(self.tumorMask(segmentationNode)) != written

    def resultVolume(self, segmentationNode):
        """The volume whose result the segmentation holds (a MIP's PET volume), or None for an empty one."""
        volume = segmentationNode.GetNodeReference(INPUT_ROLE)
        if volume is None:
            return None
        return volume.GetNodeReference(SOURCE_ROLE) or volume

    def checkOutput(self, segmentationNode, inputVolume, overwrite=False) -> None:
        """Refuse an output segmentation holding another volume's result (always) or edits (unless ``overwrite``)."""
        owner = self.resultVolume(segmentationNode)
        if owner is not None and owner is not inputVolume:
            raise TumorSegError(
                f"segmentation {segmentationNode.GetName()!r} holds the result of volume {owner.GetName()!r}; "
                f"segment {inputVolume.GetName()!r} into a new segmentation")
        self.checkOverwrite(segmentationNode, overwrite)

    def checkOverwrite(self, segmentationNode, overwrite=False) -> None:
        """Refuse to replace clicked lesions or edits (``confirmationNeeded``) unless ``overwrite`` is True."""
        reason = "" if overwrite else self.confirmationNeeded(segmentationNode)
        if reason:
            raise EditedSegmentationError(
                f"{reason}; segment into a new segmentation, or pass overwrite=True to replace them")

    def confirmationNeeded(self, segmentationNode) -> str:
        """Why replacing the segmentation's content needs the user's confirmation ("" when it does not): it holds
        clicked lesions, or voxels TumorSeg did not write (edited, or made elsewhere)."""
        name = segmentationNode.GetName()
        clicked = self.clickedLesions(segmentationNode)
        if clicked:
            return f"segmentation {name!r} holds {clicked} clicked lesion(s)"
        if self.isEdited(segmentationNode):
            return f"segmentation {name!r} was edited after TumorSeg wrote it (or was not made by TumorSeg)"
        return ""

    # ---- readouts ---------------------------------------------------------------------------
    def computeReadouts(self, segmentationNode, volumeNode=None):
        """Measure the segmentation as it is now; returns the readouts table node (created once, then updated)."""
        from TumorSegLib.measure import measure_lesions

        volumeNode = volumeNode or self.inputVolume(segmentationNode)
        is_3d = mrml.affine_2d(volumeNode) is None
        modality = segmentationNode.GetAttribute(MODALITY_ATTRIBUTE)
        if modality is None:
            modality = self.detectModality(volumeNode) if is_3d else ""
        box = self._measuredBox(segmentationNode, volumeNode, modality) if is_3d and modality else None
        image = mrml.image_from_volume(volumeNode, box)
        mask = self.tumorMask(segmentationNode, volumeNode, box)
        suv_note = None
        if modality == "PET" and is_3d:
            image, suv_note = dicomsuv.suv_image(image, volumeNode)
        result = measure_lesions(mask, image, modality or None)
        if box is not None:
            result.offset_indices([lo for lo, _ in box])
        result.totals.update(self._organTotals(segmentationNode, volumeNode, image))
        result.notes.extend([suv_note] if suv_note else [])
        self.readouts[segmentationNode.GetID()] = result
        table = segmentationNode.GetNodeReference(READOUTS_ROLE)
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentationNode.GetName()} readouts")
            segmentationNode.SetNodeReferenceID(READOUTS_ROLE, table.GetID())
            self._placeBeside(table, segmentationNode)
        readouts_table.update_table(table, result)
        table.SetAttribute(dicomsuv.NOTE_ATTRIBUTE, suv_note or "")
        if segmentationNode.GetAttribute(RECIST_ATTRIBUTE) == "true":
            recist.show_lines(segmentationNode, volumeNode, result)
        return table

    def _organTotals(self, segmentationNode, volumeNode, grid) -> dict:
        """The organ segment's readouts as it is now (``TumorSegLib.measure.organ_totals``; read in its own bounding
        box), {} without one. ``grid``: an image with the volume's spacing."""
        from TumorSegLib.measure import organ_totals

        organ_id = self.organSegmentId(segmentationNode)
        if not organ_id:
            return {}
        name = segmentationNode.GetAttribute(ORGAN_ATTRIBUTE)
        box = mrml.segment_bounds(segmentationNode, organ_id, volumeNode)
        if box is None:  # emptied by an edit
            return organ_totals(name, 0, 0, grid)
        organ = mrml.segment_box(segmentationNode, organ_id, box, volumeNode)
        inside = organ & self.tumorMask(segmentationNode, volumeNode, box)
        return organ_totals(name, int(np.count_nonzero(organ)), int(np.count_nonzero(inside)), grid)

    def _measuredBox(self, segmentationNode, volumeNode, modality: str) -> tuple:
        """What a 3D volume's readouts read: the box of the tumour voxels, grown by the SUVpeak sphere for PET (the
        same figures as on the whole volume, at a cost that follows the lesions, not the volume)."""
        from TumorSegLib.measure import SUV_PEAK_RADIUS_MM

        bounds = self.tumorBounds(segmentationNode, volumeNode) or ((0, 1),) * 3
        reach = np.ceil(SUV_PEAK_RADIUS_MM / np.asarray(volumeNode.GetSpacing())).astype(int) if modality == "PET" \
            else np.zeros(3, dtype=int)
        return boxes.clip(tuple((lo - r, hi + r) for (lo, hi), r in zip(bounds, reach)),
                         volumeNode.GetImageData().GetDimensions())

    def setRecistLinesVisible(self, segmentationNode, visible: bool) -> list:
        """Show (create or refresh) or remove the RECIST long/short-axis lines of every lesion."""
        segmentationNode.SetAttribute(RECIST_ATTRIBUTE, "true" if visible else "false")
        if not visible:
            recist.remove_lines(segmentationNode)
            return []
        if segmentationNode.GetID() not in self.readouts:
            self.computeReadouts(segmentationNode)
        return recist.show_lines(segmentationNode, self.inputVolume(segmentationNode),
                                 self.readouts[segmentationNode.GetID()])

    def exportReadouts(self, segmentationNode, path) -> None:
        table = segmentationNode.GetNodeReference(READOUTS_ROLE) or self.computeReadouts(segmentationNode)
        readouts_table.write_csv(table, path)

    # ---- keeping readouts current while the user edits ------------------------------------
    def observeSegmentation(self, segmentationNode) -> None:
        """Mark the readouts stale whenever a segment's voxels change (Segment Editor, scripts)."""
        node_id = segmentationNode.GetID()
        self.stopObserving(node_id)
        segmentation = segmentationNode.GetSegmentation()
        events = (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.RepresentationModified,
                  slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved)
        self._observations[node_id] = [
            (segmentation, segmentation.AddObserver(event, lambda caller, event, nid=node_id: self.scheduleReadoutsUpdate(nid)))
            for event in events]

    def stopObserving(self, nodeId=None) -> None:
        for key in [nodeId] if nodeId else list(self._observations):
            for segmentation, tag in self._observations.pop(key, []):
                segmentation.RemoveObserver(tag)

    def scheduleReadoutsUpdate(self, segmentationNodeId: str) -> None:
        """Bookkeeping for the debounced update: remember the node, tell the widget (it owns the timer)."""
        if self._writing:
            return
        self.pendingReadouts.add(segmentationNodeId)
        if self.readoutsUpdateRequested:
            self.readoutsUpdateRequested()

    def updatePendingReadouts(self) -> list:
        """Recompute the readouts of every segmentation edited since the last call; returns their tables."""
        tables = []
        while self.pendingReadouts:
            node = self.scene.GetNodeByID(self.pendingReadouts.pop())
            if node is not None and node.GetNodeReference(INPUT_ROLE) is not None:
                tables.append(self.computeReadouts(node))
        return tables


def _segmentId(segmentationNode, attribute: str, segment) -> str:
    """The ID of the segment whose ID the node's ``attribute`` holds, created as ``segment`` (a
    ``TumorSegLib.terminology.Segment``: name, colour, terminology) if missing."""
    segmentation = segmentationNode.GetSegmentation()
    segment_id = segmentationNode.GetAttribute(attribute)
    if segment_id and segmentation.GetSegment(segment_id):
        return segment_id
    segment_id = segmentation.AddEmptySegment("", segment.name, list(segment.color))
    created = segmentation.GetSegment(segment_id)
    created.SetTag(created.GetTerminologyEntryTagName(), slicer_entry(segment))
    segmentationNode.SetAttribute(attribute, segment_id)
    return segment_id
