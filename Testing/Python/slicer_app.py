"""The small "application" Slicer provides around its scene, built headless on the slicer-core wheel.

A scene, the application logic, the colour logic with its default colour nodes, the Volumes /
Segmentations / SubjectHierarchy logics registered with it, and ``slicer.mrmlScene`` plus a
``slicer.modules`` stand-in for logic lookup (see /work/shared/SLICER_HEADLESS.md). MRML is real.
Used by the Slicer logic tests and the Slicer click benchmark.
"""

import types
from contextlib import contextmanager

import slicer


def start():
    """A new scene with its module logics, set as ``slicer.mrmlScene``; returns the scene."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    logics = {"Colors": colors}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic), ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)):
        module_logic = cls()
        module_logic.SetMRMLApplicationLogic(app)
        module_logic.SetMRMLScene(scene)
        logics[name] = module_logic
    for name, module_logic in logics.items():
        app.SetModuleLogic(name, module_logic)
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{name.lower(): types.SimpleNamespace(logic=lambda l=l: l)
                                              for name, l in logics.items()})
    scene.TumorSegModuleLogics = (app, logics)  # kept alive with the scene
    return scene


def stop(scene) -> None:
    """Undo ``start``: remove ``slicer.mrmlScene`` and ``slicer.modules``, clear the scene."""
    del slicer.mrmlScene, slicer.modules
    scene.Clear(1)


@contextmanager
def module_logic():
    """The module's logic on a fresh application scene; shut down (worker, observers) and cleared after."""
    from TumorSegSlicerLib.logic import TumorSegLogic

    scene = start()
    logic = TumorSegLogic()
    try:
        yield logic
    finally:
        logic.stopObserving()
        logic.shutdown()
        stop(scene)
