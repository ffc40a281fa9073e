"""``TumorSegLogic``: segment a volume in a background process, measure, and track edits (MRML only, no qt).

The segmentation holds ONE segment, "Tumor" (SNOMED CT Morphologically Altered Structure /
Neoplasm); lesions are its connected components, measured by ``TumorSegLib.measure`` from the
segment as it is now. One segment means Segment Editor edits never have to keep per-lesion
segments in sync, and the readouts always follow the voxels.

Safety: the fingerprint of the labelmap TumorSeg wrote is stored on the segmentation; a later
run into that segmentation refuses (``EditedSegmentationError``) when the voxels have changed,
unless ``overwrite=True``. A segmentation holding another volume's result is never written to.
Nothing in the scene changes until a run has succeeded; an error while its result is imported (any
exception) removes what the import added and restores the output segmentation, so a cancelled or
failed run leaves the scene as it was and ends as one error (``SegmentationRun.error``/``message``).

Parent transforms: the volume is segmented and measured in its own frame (its file's geometry);
the segmentation, the MIP volume and the RECIST lines go under the volume's parent transform, and
markups (ROI, click point) are mapped from world into the volume's frame.

The process is made by ``processFactory`` (``ProcessProtocol``): ``BackgroundProcess`` by default,
a fake in tests of the error and cancel paths.
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

from TumorSegLib.cards import find_card, list_cards, scan_cards
from TumorSegLib.errors import Cancelled, TumorSegError
from TumorSegLib.io import read_image, write_image
from TumorSegLib.mip import coronal_mip

from . import dicomsuv, mrml, readouts as readouts_table, recist
from .process import BackgroundProcess, ProcessFactory, segment_command

SEGMENT_NAME = "Tumor"
# The 3D Slicer >= 5.6 terminology entry string (vtkSegment tag "TerminologyEntry").
TUMOR_TERMINOLOGY = ("Segmentation category and type - DICOM master list"
                     "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
                     "~Anatomic codes - DICOM master list~^^~^^")
TUMOR_COLOR = (0.85, 0.2, 0.2)
FINGERPRINT_ATTRIBUTE = "TumorSeg.Fingerprint"
SEGMENT_ATTRIBUTE = "TumorSeg.SegmentID"
MODALITY_ATTRIBUTE = "TumorSeg.Modality"
MODEL_ATTRIBUTE = "TumorSeg.Model"
RECIST_ATTRIBUTE = "TumorSeg.ShowRecist"
INPUT_ROLE = "TumorSegInput"
SOURCE_ROLE = "TumorSegSource"  # a MIP volume -> the PET volume it was computed from
READOUTS_ROLE = "TumorSegReadouts"
MODALITIES = ("PET", "CT")
CT_AIR_HU = -200.0


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
                 mip_view=False):
        self.logic = logic
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
        self.segmentation = self.logic._importResult(self)
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

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ---- choices ----------------------------------------------------------------------------
    @staticmethod
    def models(modality=None, modelsDir=None) -> list:
        """Model cards (user folders included) for ``modality`` ("PET" also lists MIP-PET models)."""
        cards = list_cards(modelsDir)
        return [c for c in cards if modality in (None, "auto") or _card_modality(c) == modality]

    @staticmethod
    def brokenModels(modelsDir=None) -> dict:
        """{card file: why it is not a valid card} for the folders ``models`` lists; the other models stay usable."""
        return scan_cards(modelsDir)[1]

    @staticmethod
    def needsRegion(card) -> bool:
        """Whether the model was trained on regions around one lesion (its card gives ``inference.min_roi_mm``):
        it wants a click point or an ROI, not a whole volume."""
        return card is not None and "min_roi_mm" in card.inference

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
            command = segment_command(
                input_path, temp_dir / self._outputName(card, mipView), card.path or card.name, device,
                roi=self.roiIndexRange(inputVolume, roi) if roi is not None else None,
                point=self.pointPosition(point, inputVolume) if point is not None else None,
                models_dir=modelsDir, overrides=overrides)
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
    def pointPosition(point, volumeNode=None) -> list:
        """A markups point list's first point, or a world (R, A, S) triple, in ``volumeNode``'s own frame."""
        if hasattr(point, "GetNthControlPointPositionWorld"):
            if point.GetNumberOfControlPoints() < 1:
                raise TumorSegError(f"point list {point.GetName()!r} has no points")
            position = np.zeros(3)
            point.GetNthControlPointPositionWorld(0, position)
        else:
            position = np.array([float(v) for v in point])
        return (mrml.world_to_local(volumeNode, position) if volumeNode is not None else position).tolist()

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
            segmentation.SetAttribute(MODALITY_ATTRIBUTE, _card_modality(run.card) if target.ndim == 3 else "")
            segmentation.SetAttribute(MODEL_ATTRIBUTE, run.card.name)
            self.computeReadouts(segmentation, volume)
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
        segmentation = segmentationNode.GetSegmentation()
        segment_id = segmentationNode.GetAttribute(SEGMENT_ATTRIBUTE)
        if segment_id and segmentation.GetSegment(segment_id):
            return segment_id
        segment_id = segmentation.AddEmptySegment("", SEGMENT_NAME, list(TUMOR_COLOR))
        segment = segmentation.GetSegment(segment_id)
        segment.SetTag(segment.GetTerminologyEntryTagName(), TUMOR_TERMINOLOGY)
        segmentationNode.SetAttribute(SEGMENT_ATTRIBUTE, segment_id)
        return segment_id

    def _writeTumor(self, segmentationNode, volumeNode, mask) -> None:
        """Write the mask (``checkOutput`` has made sure the segmentation holds no other volume's result)."""
        if segmentationNode.GetNodeReference(INPUT_ROLE) is not volumeNode:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            segmentationNode.SetNodeReferenceID(INPUT_ROLE, volumeNode.GetID())
        mrml.set_segment_mask(segmentationNode, self.tumorSegmentId(segmentationNode), mask, volumeNode)
        segmentationNode.SetAttribute(FINGERPRINT_ATTRIBUTE, mrml.fingerprint(mask))

    # ---- edit tracking --------------------------------------------------------------------
    def tumorMask(self, segmentationNode, volumeNode=None) -> np.ndarray:
        """The tumour voxels now (bool, i, j, k on the volume grid): the TumorSeg segment, else all segments."""
        volumeNode = volumeNode or self.inputVolume(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        segment_id = segmentationNode.GetAttribute(SEGMENT_ATTRIBUTE)
        ids = [segment_id] if segment_id and segmentation.GetSegment(segment_id) else list(segmentation.GetSegmentIDs())
        mask = np.zeros(mrml.grid_shape(volumeNode), dtype=bool)
        for sid in ids:
            mask |= mrml.segment_mask(segmentationNode, sid, volumeNode)
        return mask

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
        """Refuse to overwrite an edited segmentation unless ``overwrite`` is True."""
        if not overwrite and self.isEdited(segmentationNode):
            raise EditedSegmentationError(
                f"segmentation {segmentationNode.GetName()!r} was edited after TumorSeg wrote it (or was not made by "
                "TumorSeg); segment into a new segmentation, or pass overwrite=True to replace the edits")

    # ---- readouts ---------------------------------------------------------------------------
    def computeReadouts(self, segmentationNode, volumeNode=None):
        """Measure the segmentation as it is now; returns the readouts table node (created once, then updated)."""
        from TumorSegLib.measure import measure_lesions

        volumeNode = volumeNode or self.inputVolume(segmentationNode)
        image = mrml.image_from_volume(volumeNode)
        mask = self.tumorMask(segmentationNode, volumeNode)
        modality = segmentationNode.GetAttribute(MODALITY_ATTRIBUTE)
        if modality is None:
            modality = self.detectModality(volumeNode) if image.ndim == 3 else ""
        suv_note = None
        if modality == "PET" and image.ndim == 3:
            image, suv_note = dicomsuv.suv_image(image, volumeNode)
        result = measure_lesions(mask, image, modality or None)
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
