"""The TumorSeg panel (qt): wires Resources/UI/TumorSeg.ui to ``TumorSegLogic``.

Only this file and TumorSeg.py import qt; everything it does to the scene goes through the logic.
A run polls its background process from a QTimer, so the UI never freezes; readouts are
recomputed on a single-shot QTimer after the user stops editing (the logic keeps the bookkeeping).
Each point placed in the click point list is a click (``logic.click``), queued while one runs.
Every error reaches the user as one message (``showErrors``); nothing is re-raised into Qt.
"""

import contextlib
import logging
import re

import qt
import slicer
from slicer.util import VTKObservationMixin

from TumorSegLib.cards import LEARNT_SETTINGS
from TumorSegLib.errors import Cancelled, TumorSegError

from . import dependencies
from .logic import INPUT_ROLE, READOUTS_ROLE, RECIST_ATTRIBUTE, EditedSegmentationError

POLL_MS = 100
READOUTS_DEBOUNCE_MS = 400
DETAIL_COLUMNS = re.compile(r"^(centroid_|bbox_)|_p[12]_")
OVERRIDES = (("overlap", "overlapSpinBox"), ("threshold", "thresholdSpinBox"))
MIN_SIZE_UNITS = {"min_lesion_ml": " mL", "min_lesion_px": " px"}  # card.min_size_setting -> spin box suffix
MODELS_FOLDER_SETTING = "TumorSeg/ModelsFolder"


@contextlib.contextmanager
def showErrors(title):
    """Show any exception raised inside as one error dialog (details in the Python console); never re-raise."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - a Qt slot must not raise; the user gets one message
        if not isinstance(error, TumorSegError):
            logging.getLogger(__name__).error(title, exc_info=error)
        slicer.util.errorDisplay(f"{title}\n{error}")


class TumorSegPanel(VTKObservationMixin):
    def __init__(self, ui, logic):
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic
        self.run = None
        self.pendingClicks = []  # control point IDs of the observed point list placed while a run was going
        self.observedPoints = None
        self.cards = []
        self.advancedModel = None  # the model whose defaults the Advanced settings were last reset to
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.readoutsTimer = qt.QTimer()
        self.readoutsTimer.setSingleShot(True)
        self.readoutsTimer.setInterval(READOUTS_DEBOUNCE_MS)
        self.readoutsTimer.connect("timeout()", self.onReadoutsTimer)
        logic.readoutsUpdateRequested = self.readoutsTimer.start

        ui.modelsFolderPathLineEdit.currentPath = slicer.util.settingsValue(MODELS_FOLDER_SETTING, "")
        for placeWidget in (ui.roiPlaceWidget, ui.pointPlaceWidget):
            placeWidget.setMRMLScene(slicer.mrmlScene)
        ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        ui.modalityComboBox.connect("currentIndexChanged(int)", lambda _: self.updateModels())
        ui.modelComboBox.connect("currentIndexChanged(int)", lambda _: self.onModelChanged())
        ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderChanged)
        ui.roiSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionChanged)
        ui.pointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRegionChanged)
        ui.outputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        ui.resetAdvancedButton.connect("clicked()", lambda: self.onModelChanged(reset=True))
        ui.segmentButton.connect("clicked()", self.onSegmentButton)
        ui.removeLesionButton.connect("clicked()", self.onRemoveLesion)
        ui.installButton.connect("clicked()", self.onInstall)
        ui.showRecistCheckBox.connect("toggled(bool)", self.onShowRecist)
        ui.exportButton.connect("clicked()", self.onExport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *_: self.onSceneClosed())
        self.updateDependencies()
        self.onInputChanged(ui.inputSelector.currentNode())
        self.onRegionChanged()

    # ---- choices ----------------------------------------------------------------------
    def enter(self):
        self.updateModels()

    def cleanup(self):
        if self.run:
            self.run.cancel()
        self.pollTimer.stop()
        self.readoutsTimer.stop()
        self.logic.stopObserving()
        self.logic.shutdown()
        self.removeObservers()

    def updateDependencies(self):
        """Which backend packages are missing (found without importing them: torch loads at the first run)."""
        missing = dependencies.missing_packages()
        self.ui.dependenciesLabel.text = dependencies.describe_missing(missing)
        self.ui.dependenciesLabel.visible = self.ui.installButton.visible = bool(missing)
        self.ui.deviceLabel.text = "torch not installed" if "torch" in missing else "GPU check at the first run"
        self.updateButtons()

    def onInstall(self):
        with showErrors("Failed to install TumorSeg's dependencies."):
            dependencies.install(dependencies.missing_packages())
        self.updateDependencies()

    def modelsFolder(self):
        return self.ui.modelsFolderPathLineEdit.currentPath or None

    def onModelsFolderChanged(self, path):
        qt.QSettings().setValue(MODELS_FOLDER_SETTING, path)
        self.updateModels()

    def modality(self):
        chosen = self.ui.modalityComboBox.currentText
        volume = self.ui.inputSelector.currentNode()
        if chosen != "auto" or volume is None:
            return chosen if chosen != "auto" else None
        return self.logic.detectModality(volume)

    def onInputChanged(self, volume):
        modality = self.modality() if volume else None
        self.ui.modalityLabel.text = f"Detected: {modality}" if volume and self.ui.modalityComboBox.currentText == "auto" else ""
        output = self.ui.outputSelector.currentNode()
        if output is not None and self.logic.resultVolume(output) not in (None, volume):
            self.ui.outputSelector.setCurrentNode(None)  # a new input gets a new segmentation
        self.updateModels()

    def updateModels(self):
        current = self.ui.modelComboBox.currentData
        self.cards = []
        with showErrors("Could not list the models."):
            self.cards = self.logic.models(self.modality(), self.modelsFolder())
            broken = self.logic.brokenModels(self.modelsFolder())
            if broken:
                self.ui.statusLabel.text = "Model cards that could not be read (not listed): " + "; ".join(
                    f"{path.name}: {error}" for path, error in broken.items())
        blocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for card in self.cards:
            self.ui.modelComboBox.addItem(card.title or card.name, card.name)
        index = self.ui.modelComboBox.findData(current)
        self.ui.modelComboBox.currentIndex = index if index >= 0 else 0
        self.ui.modelComboBox.blockSignals(blocked)
        self.onModelChanged()

    def card(self):
        name = self.ui.modelComboBox.currentData
        return next((c for c in self.cards if c.name == name), None)

    def onModelChanged(self, reset=False):
        """Describe the model; reset the Advanced settings to its defaults only when the model changed (or on Reset)."""
        card = self.card()
        self.ui.modelDescriptionLabel.text = f"{card.description} ({card.modality}, {card.mode})" if card else \
            "No model for this modality: choose a model folder below (or set TUMORSEG_MODELS)."
        self.ui.mipViewCheckBox.visible = card is not None and card.modality == "MIP-PET"
        self.ui.learntFiltersCheckBox.visible = card is not None and any(
            getattr(card.postprocessing, step) for step in LEARNT_SETTINGS)
        if card and (reset or card.name != self.advancedModel):
            self.advancedModel = card.name
            self.ui.overlapSpinBox.value = card.inference.overlap
            self.ui.thresholdSpinBox.value = card.threshold
            self.ui.minLesionSpinBox.suffix = MIN_SIZE_UNITS[card.min_size_setting]
            self.ui.minLesionSpinBox.decimals = 0 if card.min_size_setting == "min_lesion_px" else 2
            self.ui.minLesionSpinBox.value = float(getattr(card.postprocessing, card.min_size_setting))
            self.ui.learntFiltersCheckBox.checked = True
        self.onRegionChanged()

    def onRegionChanged(self, *_):
        self.ui.roiPlaceWidget.setCurrentNode(self.ui.roiSelector.currentNode())
        self.ui.pointPlaceWidget.setCurrentNode(self.ui.pointSelector.currentNode())
        self.observePoints(self.ui.pointSelector.currentNode())
        card = self.card()
        if self.run is None and card and self.logic.needsRegion(card) and not self.region():
            self.ui.statusLabel.text = "This model segments around a lesion: place a click point or an ROI on it."
        self.updateButtons()

    def region(self):
        return self.ui.roiSelector.currentNode() or self.ui.pointSelector.currentNode()

    def overrides(self):
        """The settings the user changed from the card's: overlap, threshold, the smallest lesion kept, the learnt
        false-positive steps switched off."""
        card = self.card()
        size = card.min_size_setting
        defaults = {"overlap": card.inference.overlap, "threshold": card.threshold,
                    size: float(getattr(card.postprocessing, size))}
        values = {key: getattr(self.ui, widget).value for key, widget in OVERRIDES}
        values[size] = self.ui.minLesionSpinBox.value
        changed = {key: value for key, value in values.items() if abs(value - defaults[key]) > 1e-9}
        if size == "min_lesion_px" and size in changed:
            changed[size] = int(round(changed[size]))
        if self.ui.learntFiltersCheckBox.visible and not self.ui.learntFiltersCheckBox.checked:
            changed.update(dict.fromkeys(LEARNT_SETTINGS, False))
        return changed

    def observePoints(self, points):
        """Each point placed in ``points`` becomes a click (for models whose clicks add up)."""
        if points is self.observedPoints:
            return
        if self.observedPoints is not None:
            self.removeObserver(self.observedPoints, self.observedPoints.PointPositionDefinedEvent, self.onPointPlaced)
        self.observedPoints = points
        self.pendingClicks = []
        if points is not None:
            self.addObserver(points, points.PointPositionDefinedEvent, self.onPointPlaced)

    def clicksAddUp(self) -> bool:
        """Whether a point list is chosen and the model's clicks add up (else Segment uses its first point)."""
        volume = self.ui.inputSelector.currentNode()
        return bool(self.ui.pointSelector.currentNode() and volume and self.logic.canClick(self.card(), volume))

    def onPointPlaced(self, points, event):
        if not self.clicksAddUp() or points.GetNumberOfControlPoints() == 0:
            return
        self.pendingClicks.append(points.GetNthControlPointID(points.GetNumberOfControlPoints() - 1))
        if self.run is None:
            self.startNextClick()

    def startNextClick(self):
        """Click the oldest queued point that still exists."""
        points = self.observedPoints
        while self.pendingClicks and points is not None:
            index = self.logic.controlPointIndex(points, self.pendingClicks.pop(0))
            if index >= 0:
                self.startClick(index)
                return

    def startClick(self, index):
        volume, card = self.ui.inputSelector.currentNode(), self.card()
        with showErrors("TumorSeg could not add the lesion."):
            self.ui.progressBar.value = 0
            self.run = self.logic.click(
                volume, card.name, self.observedPoints, self.ui.outputSelector.currentNode(),
                self.ui.deviceComboBox.currentText, pointIndex=index, progressCallback=self.onProgress,
                waitForCompletion=False, overrides=self.overrides(), modelsDir=self.modelsFolder())
            self.ui.statusLabel.text = "Segmenting the clicked lesion..."
            self.pollTimer.start()
        self.updateButtons()

    def onRemoveLesion(self):
        segmentation = self.ui.outputSelector.currentNode()
        with showErrors("Could not remove the lesion."):
            try:
                self.logic.removeLastLesion(segmentation)
            except EditedSegmentationError as error:
                if slicer.util.confirmOkCancelDisplay(f"{error}.\nRemove the lesion anyway?"):
                    self.logic.removeLastLesion(segmentation, overwrite=True)
        self.updateButtons()

    def updateButtons(self):
        running = self.run is not None
        cancelling = running and self.run.process.cancelled
        output = self.ui.outputSelector.currentNode()
        self.ui.removeLesionButton.enabled = not running and output is not None and bool(
            self.logic.clickHistory.get(output.GetID()))
        self.ui.segmentButton.text = "Cancelling..." if cancelling else "Cancel" if running else \
            "Add lesion at the last point" if self.clicksAddUp() else "Segment"
        ready = bool(self.ui.inputSelector.currentNode() and self.card() and not dependencies.missing_packages())
        self.ui.segmentButton.enabled = (running and not cancelling) or (not running and ready)
        for name in ("inputsCollapsibleButton", "advancedCollapsibleButton"):
            getattr(self.ui, name).enabled = not running

    # ---- running ----------------------------------------------------------------------
    def onSegmentButton(self):
        if self.run:
            self.pendingClicks = []
            self.run.cancel()  # returns at once; onPoll ends the run when the process tree has gone
            self.updateButtons()
            return
        if self.clicksAddUp():
            if self.observedPoints.GetNumberOfControlPoints():
                self.startClick(self.observedPoints.GetNumberOfControlPoints() - 1)
            else:
                self.ui.statusLabel.text = "Place a point on the lesion: each point placed adds its lesion."
            return
        volume, card = self.ui.inputSelector.currentNode(), self.card()
        if self.logic.needsRegion(card) and not self.region() and not slicer.util.confirmYesNoDisplay(
                f"'{card.title or card.name}' was trained on regions around one lesion; on a whole volume it finds "
                "many false lesions. Segment the whole volume anyway?"):
            return
        output = self.chooseOutput(volume)
        if output is False:
            return
        with showErrors("TumorSeg could not start."):
            self.ui.progressBar.value = 0
            self.ui.deviceLabel.text = dependencies.device_description()[1]
            self.run = self.logic.segment(
                volume, card.name, self.ui.deviceComboBox.currentText, roi=self.ui.roiSelector.currentNode(),
                point=self.ui.pointSelector.currentNode(), outputSegmentation=output, progressCallback=self.onProgress,
                waitForCompletion=False, overrides=self.overrides(), overwrite=output is not None,
                modelsDir=self.modelsFolder(), mipView=self.ui.mipViewCheckBox.checked)
            self.ui.statusLabel.text = "Starting..."
            self.pollTimer.start()
        self.updateButtons()

    def chooseOutput(self, volume):
        """The segmentation to write into (None: a new one), or False when the user cancels.

        A segmentation that already holds a result is replaced only when the user says so (the logic says why
        it needs confirmation: clicked lesions, edits).
        """
        output = self.ui.outputSelector.currentNode()
        if output is None or output.GetSegmentation().GetNumberOfSegments() == 0:
            return output
        if self.logic.resultVolume(output) not in (None, volume):
            return None  # another volume's result: never written to
        reason = self.logic.confirmationNeeded(output) or f"segmentation '{output.GetName()}' already holds a result"
        box = qt.QMessageBox(qt.QMessageBox.Question, "TumorSeg",
                             f"{reason[0].upper()}{reason[1:]}. Replace it all, or put the new result into a new "
                             "segmentation?")
        replace = box.addButton("Replace", qt.QMessageBox.DestructiveRole)
        new = box.addButton("New segmentation", qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(new)
        box.exec_()
        return output if box.clickedButton() == replace else None if box.clickedButton() == new else False

    def onProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(1000 * fraction))
        self.ui.statusLabel.text = message

    def onPoll(self):
        run = self.run
        if not run.poll():  # never raises: any error ends the run with run.error set
            return
        self.pollTimer.stop()
        self.run = None
        self.updateButtons()
        if run.error is not None:
            self.pendingClicks = []
        if isinstance(run.error, Cancelled):
            self.ui.statusLabel.text = "Cancelled: nothing was changed."
            self.ui.progressBar.value = 0
        elif isinstance(run.error, EditedSegmentationError):
            self.ui.statusLabel.text = run.message
            slicer.util.warningDisplay(run.message)
        elif run.error:
            self.ui.statusLabel.text = "Failed: " + run.message.splitlines()[0]
            slicer.util.errorDisplay(f"Segmentation failed; nothing was changed.\n{run.message}")
        else:
            self.ui.outputSelector.setCurrentNode(run.segmentation)
            self.updateButtons()
            if run.click:
                self.ui.statusLabel.text = "; ".join(run.notes) or "Lesion added."
            else:
                with showErrors("Could not show the result."):
                    self.showResult(run.segmentation)
                if run.notes:  # what the model's post-processing did, e.g. an image its gate emptied
                    self.ui.statusLabel.text = "; ".join(run.notes)
            self.startNextClick()

    def showResult(self, segmentation):
        table = segmentation.GetNodeReference(READOUTS_ROLE)
        self.ui.readoutsTableView.setMRMLTableNode(table)
        for column in range(table.GetNumberOfColumns() if table else 0):  # coordinates stay in the table and CSV
            self.ui.readoutsTableView.setColumnHidden(column, bool(DETAIL_COLUMNS.search(table.GetColumnName(column))))
        blocked = self.ui.showRecistCheckBox.blockSignals(True)
        self.ui.showRecistCheckBox.checked = segmentation.GetAttribute(RECIST_ATTRIBUTE) == "true"
        self.ui.showRecistCheckBox.blockSignals(blocked)
        slicer.util.setSliceViewerLayers(background=segmentation.GetNodeReference(INPUT_ROLE), fit=True)

    # ---- results ------------------------------------------------------------------------
    def onOutputChanged(self, segmentation):
        if segmentation is not None and segmentation.GetNodeReference(INPUT_ROLE) is not None:
            self.logic.observeSegmentation(segmentation)
            with showErrors("Could not measure the segmentation."):
                self.logic.computeReadouts(segmentation)
                self.showResult(segmentation)
        else:
            self.ui.readoutsTableView.setMRMLTableNode(None)
        self.updateButtons()

    def onReadoutsTimer(self):
        with showErrors("Could not update the readouts."):
            self.logic.updatePendingReadouts()

    def onShowRecist(self, checked):
        segmentation = self.ui.outputSelector.currentNode()
        if segmentation is not None:
            with showErrors("Could not show the RECIST lines."):
                self.logic.setRecistLinesVisible(segmentation, checked)

    def onExport(self):
        segmentation = self.ui.outputSelector.currentNode()
        if segmentation is None:
            return
        path = qt.QFileDialog.getSaveFileName(None, "Export readouts", f"{segmentation.GetName()}.csv", "CSV (*.csv)")
        if path:
            with showErrors("Could not export the readouts."):
                self.logic.exportReadouts(segmentation, path)

    def onSceneClosed(self):
        self.pendingClicks = []
        if self.run:
            self.run.cancel()
        self.logic.stopObserving()
        self.logic.pendingReadouts.clear()
        self.logic.readouts.clear()
