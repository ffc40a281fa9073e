"""The TumorSeg panel (qt): wires Resources/UI/TumorSeg.ui to ``TumorSegLogic``.

Only this file and TumorSeg.py import qt; everything it does to the scene goes through the logic.
A run polls its background process from a QTimer, so the UI never freezes; readouts are
recomputed on a single-shot QTimer after the user stops editing (the logic keeps the bookkeeping).
"""

import re

import qt
import slicer
from slicer.util import VTKObservationMixin

from TumorSegLib.errors import Cancelled, TumorSegError

from . import dependencies
from .logic import INPUT_ROLE, READOUTS_ROLE, RECIST_ATTRIBUTE, EditedSegmentationError

POLL_MS = 100
READOUTS_DEBOUNCE_MS = 400
DETAIL_COLUMNS = re.compile(r"^(centroid_|bbox_)|_p[12]_")
OVERRIDES = (("overlap", "overlapSpinBox"), ("threshold", "thresholdSpinBox"))
MIN_SIZE_UNITS = {"min_lesion_ml": " mL", "min_lesion_px": " px"}  # card.min_size_setting -> spin box suffix


class TumorSegPanel(VTKObservationMixin):
    def __init__(self, ui, logic):
        VTKObservationMixin.__init__(self)
        self.ui = ui
        self.logic = logic
        self.run = None
        self.cards = []
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.readoutsTimer = qt.QTimer()
        self.readoutsTimer.setSingleShot(True)
        self.readoutsTimer.setInterval(READOUTS_DEBOUNCE_MS)
        self.readoutsTimer.connect("timeout()", self.onReadoutsTimer)
        logic.readoutsUpdateRequested = self.readoutsTimer.start

        ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        ui.modalityComboBox.connect("currentIndexChanged(int)", lambda _: self.updateModels())
        ui.modelComboBox.connect("currentIndexChanged(int)", lambda _: self.onModelChanged())
        ui.outputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        ui.resetAdvancedButton.connect("clicked()", self.onModelChanged)
        ui.segmentButton.connect("clicked()", self.onSegmentButton)
        ui.installButton.connect("clicked()", self.onInstall)
        ui.showRecistCheckBox.connect("toggled(bool)", self.onShowRecist)
        ui.exportButton.connect("clicked()", self.onExport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *_: self.onSceneClosed())
        self.updateDependencies()
        self.onInputChanged(ui.inputSelector.currentNode())

    # ---- choices ----------------------------------------------------------------------
    def enter(self):
        self.updateModels()

    def cleanup(self):
        if self.run:
            self.run.cancel()
        self.pollTimer.stop()
        self.readoutsTimer.stop()
        self.logic.stopObserving()
        self.removeObservers()

    def updateDependencies(self):
        missing = dependencies.missing_packages()
        self.ui.dependenciesLabel.text = dependencies.describe_missing(missing)
        self.ui.dependenciesLabel.visible = self.ui.installButton.visible = bool(missing)
        devices, description = dependencies.device_description()
        self.ui.deviceLabel.text = description
        self.updateButtons()

    def onInstall(self):
        with slicer.util.tryWithErrorDisplay("Failed to install TumorSeg's dependencies.", waitCursor=True):
            dependencies.install(dependencies.missing_packages())
        self.updateDependencies()

    def modality(self):
        chosen = self.ui.modalityComboBox.currentText
        volume = self.ui.inputSelector.currentNode()
        if chosen != "auto" or volume is None:
            return chosen if chosen != "auto" else None
        return self.logic.detectModality(volume)

    def onInputChanged(self, volume):
        modality = self.modality() if volume else None
        self.ui.modalityLabel.text = f"Detected: {modality}" if volume and self.ui.modalityComboBox.currentText == "auto" else ""
        self.updateModels()

    def updateModels(self):
        current = self.ui.modelComboBox.currentData
        try:
            self.cards = self.logic.models(self.modality())
        except TumorSegError as error:
            self.cards = []
            self.ui.statusLabel.text = str(error)
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

    def onModelChanged(self):
        card = self.card()
        self.ui.modelDescriptionLabel.text = f"{card.description} ({card.modality}, {card.mode})" if card else \
            "No model for this modality: add a model card folder to TUMORSEG_MODELS."
        if card:
            self.ui.overlapSpinBox.value = float(card.inference.get("overlap", 0.25))
            self.ui.thresholdSpinBox.value = card.threshold
            self.ui.minLesionSpinBox.suffix = MIN_SIZE_UNITS[card.min_size_setting]
            self.ui.minLesionSpinBox.decimals = 0 if card.min_size_setting == "min_lesion_px" else 2
            self.ui.minLesionSpinBox.value = float(card.postprocessing.get(card.min_size_setting, 0.0))
        self.updateButtons()

    def overrides(self):
        """The settings the user changed from the card's: overlap, threshold, the smallest lesion kept."""
        card = self.card()
        size = card.min_size_setting
        defaults = {"overlap": float(card.inference.get("overlap", 0.25)), "threshold": card.threshold,
                    size: float(card.postprocessing.get(size, 0.0))}
        values = {key: getattr(self.ui, widget).value for key, widget in OVERRIDES}
        values[size] = self.ui.minLesionSpinBox.value
        changed = {key: value for key, value in values.items() if abs(value - defaults[key]) > 1e-9}
        if size == "min_lesion_px" and size in changed:
            changed[size] = int(round(changed[size]))
        return changed

    def updateButtons(self):
        running = self.run is not None
        self.ui.segmentButton.text = "Cancel" if running else "Segment"
        ready = bool(self.ui.inputSelector.currentNode() and self.card() and not dependencies.missing_packages())
        self.ui.segmentButton.enabled = running or ready
        for name in ("inputsCollapsibleButton", "advancedCollapsibleButton"):
            getattr(self.ui, name).enabled = not running

    # ---- running ----------------------------------------------------------------------
    def onSegmentButton(self):
        if self.run:
            self.run.cancel()
            return
        output = self.ui.outputSelector.currentNode()
        overwrite = False
        if output is not None and self.logic.isEdited(output):
            if not slicer.util.confirmYesNoDisplay(
                    f"'{output.GetName()}' was edited after TumorSeg made it (or was not made by TumorSeg).\n"
                    "Replace it with the new result? (No: choose 'Create new segmentation' to keep it.)"):
                return
            overwrite = True
        with slicer.util.tryWithErrorDisplay("TumorSeg could not start.", waitCursor=True):
            self.ui.progressBar.value = 0
            self.run = self.logic.segment(
                self.ui.inputSelector.currentNode(), self.card().name, self.ui.deviceComboBox.currentText,
                roi=self.ui.roiSelector.currentNode(), point=self.ui.pointSelector.currentNode(),
                outputSegmentation=output, progressCallback=self.onProgress, waitForCompletion=False,
                overrides=self.overrides(), overwrite=overwrite)
            self.ui.statusLabel.text = "Starting..."
            self.pollTimer.start()
        self.updateButtons()

    def onProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(1000 * fraction))
        self.ui.statusLabel.text = message

    def onPoll(self):
        run = self.run
        try:
            if not run.poll():
                return
        except TumorSegError as error:  # errors while importing the result
            run.error = run.error or error
        self.pollTimer.stop()
        self.run = None
        self.updateButtons()
        if isinstance(run.error, Cancelled):
            self.ui.statusLabel.text = "Cancelled: nothing was changed."
            self.ui.progressBar.value = 0
        elif isinstance(run.error, EditedSegmentationError):
            self.ui.statusLabel.text = str(run.error)
            slicer.util.warningDisplay(str(run.error))
        elif run.error:
            self.ui.statusLabel.text = "Failed: " + str(run.error).splitlines()[0]
            slicer.util.errorDisplay(f"Segmentation failed:\n{run.error}")
        else:
            self.ui.outputSelector.setCurrentNode(run.segmentation)
            self.showResult(run.segmentation)

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
            with slicer.util.tryWithErrorDisplay("Could not measure the segmentation."):
                self.logic.computeReadouts(segmentation)
            self.showResult(segmentation)
        else:
            self.ui.readoutsTableView.setMRMLTableNode(None)

    def onReadoutsTimer(self):
        with slicer.util.tryWithErrorDisplay("Could not update the readouts."):
            self.logic.updatePendingReadouts()

    def onShowRecist(self, checked):
        segmentation = self.ui.outputSelector.currentNode()
        if segmentation is not None:
            with slicer.util.tryWithErrorDisplay("Could not show the RECIST lines."):
                self.logic.setRecistLinesVisible(segmentation, checked)

    def onExport(self):
        segmentation = self.ui.outputSelector.currentNode()
        if segmentation is None:
            return
        path = qt.QFileDialog.getSaveFileName(None, "Export readouts", f"{segmentation.GetName()}.csv", "CSV (*.csv)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not export the readouts."):
                self.logic.exportReadouts(segmentation, path)

    def onSceneClosed(self):
        if self.run:
            self.run.cancel()
        self.logic.stopObserving()
        self.logic.pendingReadouts.clear()
        self.logic.readouts.clear()
