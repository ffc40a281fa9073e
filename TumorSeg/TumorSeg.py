"""TumorSeg: tumour segmentation and lesion measurement for PET and CT in 3D Slicer.

Thin Slicer entry points only: the panel lives in ``TumorSegSlicerLib/panel.py`` (qt), the
logic in ``TumorSegSlicerLib/logic.py`` (MRML only, tested headless), the model and the
measurements in the ``TumorSegLib`` backend.
"""

import sys
from pathlib import Path

import qt
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)


def _extensionRoot() -> Path:
    """The folder holding TumorSegLib/ and Resources/: the module folder once installed, the repository in a checkout."""
    here = Path(__file__).resolve().parent
    return next((root for root in (here, here.parent) if (root / "TumorSegLib").is_dir()), here)


ROOT = _extensionRoot()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from TumorSegSlicerLib import logic as _logic  # noqa: E402  (needs ROOT on sys.path)


class TumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "TumorSeg"
        parent.categories = ["Segmentation"]
        parent.dependencies = []
        parent.contributors = ["TumorSeg contributors"]
        parent.helpText = """
Segments tumours in PET (SUV) and CT (HU) volumes with a MONAI Attention U-Net described by a model card,
then measures every lesion: volume (mL), RECIST longest diameter and short axis (mm), 3D diameter,
SUVmax/SUVmean/SUVpeak/TLG (PET) or mean HU (CT). Edit the "Tumor" segment with Segment Editor: the
readouts follow. The liver model adds a "Liver" segment; the totals give its volume and the tumour's share of it. Inference runs in a background process (Segment turns into Cancel). With a click point
list, each point placed adds the lesion under it (Remove last clicked lesion takes it back). Needs 3D Slicer 5.6
or later. See the
<a href="https://github.com/tumorseg/TumorSeg">documentation</a>.
"""
        parent.acknowledgementText = """
Please cite when you use TumorSeg:
O. Oktay et al., Attention U-Net: Learning Where to Look for the Pancreas, MIDL 2018, arXiv:1804.03999;
M. J. Cardoso et al., MONAI: An open-source framework for deep learning in healthcare, arXiv:2211.02701 (2022);
A. Fedorov et al., 3D Slicer as an Image Computing Platform for the Quantitative Imaging Network,
Magn Reson Imaging 30(9):1323-41 (2012);
E. A. Eisenhauer et al., New response evaluation criteria in solid tumours: revised RECIST guideline (version 1.1),
Eur J Cancer 45(2):228-47 (2009);
R. L. Wahl et al., From RECIST to PERCIST, J Nucl Med 50 Suppl 1:122S-50S (2009).
Model cards name the data each model was trained on; cite those data sets too.
"""
        parent.icon = qt.QIcon(str(ROOT / "Resources" / "Icons" / "TumorSeg.png"))


class TumorSegWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from TumorSegSlicerLib.panel import TumorSegPanel

        uiWidget = slicer.util.loadUI(str(ROOT / "Resources" / "UI" / "TumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TumorSegLogic()  # slicer.util.getModuleLogic('TumorSeg') returns it
        self.panel = TumorSegPanel(self.ui, self.logic)

    def enter(self):
        self.panel.enter()

    def cleanup(self):
        self.panel.cleanup()


class TumorSegLogic(_logic.TumorSegLogic, ScriptedLoadableModuleLogic):
    """Scripting API: ``TumorSegLogic().segment(volume, "model-name")`` returns the segmentation node;
    ``computeReadouts(segmentation, volume)`` the readouts table node. See ``TumorSegSlicerLib.logic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        _logic.TumorSegLogic.__init__(self)


class TumorSegTest(ScriptedLoadableModuleTest):
    """Runs the self-test bodies that pytest also runs (TumorSegSlicerLib/selftest.py) on the CPU."""

    def runTest(self):
        from TumorSegSlicerLib import selftest

        for name, body in selftest.TESTS:
            slicer.mrmlScene.Clear(0)
            self.delayDisplay(f"TumorSeg self-test: {name}")
            body(TumorSegLogic(), selftest.workspace())
            slicer.app.processEvents()
        self.delayDisplay("TumorSeg self-test passed")
