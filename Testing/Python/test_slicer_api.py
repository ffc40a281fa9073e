"""The module uses no Slicer API newer than its stated minimum version (3D Slicer 5.6).

Every CamelCase method the module's code calls (TumorSeg/**/*.py) must be in ``SLICER_5_6_API``
(name -> the Slicer/VTK class that declares it) or in ``OTHER_API`` (Python, Qt, extensions). The list
was checked against Slicer's sources of the 5.6 era: the segment terminology is a tag
(``vtkSegment::SetTag(GetTerminologyEntryTagName(), ...)``; ``SetTerminology``/``GetTerminology`` came
in 5.10), the ROI's world getters, ``RemoveAllControlPoints`` and ``AddControlPoint(double[3])`` are in
the Markups of 5.x; the rest is MRML/VTK API older than 5.0. A name added to the code must be checked
and added here. With slicer-core installed, each entry is also checked to exist on its class.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "TumorSeg"
MINIMUM_VERSION = "5.6"

NEWER_THAN_MINIMUM = {"SetTerminology": "5.10", "GetTerminology": "5.10", "HasTerminology": "5.10"}

SLICER_5_6_API = {
    "AddColumn": "vtkMRMLTableNode",
    "AddControlPoint": "vtkMRMLMarkupsNode",
    "AddEmptySegment": "vtkSegmentation",
    "AddNewNodeByClass": "vtkMRMLScene",
    "AddNode": "vtkMRMLScene",
    "AddNodeReferenceID": "vtkMRMLNode",
    "AddObserver": "vtkObject",
    "AllocateScalars": "vtkImageData",
    "Clear": "vtkMRMLScene",
    "CreateDefaultDisplayNodes": "vtkMRMLDisplayableNode",
    "CreateFolderItem": "vtkMRMLSubjectHierarchyNode",
    "CreateItem": "vtkMRMLSubjectHierarchyNode",
    "CreateStudyItem": "vtkMRMLSubjectHierarchyNode",
    "CreateSubjectItem": "vtkMRMLSubjectHierarchyNode",
    "DeepCopy": "vtkSegmentation",
    "EndModify": "vtkMRMLNode",
    "ExportAllSegmentsToLabelmapNode": "vtkSlicerSegmentationsModuleLogic",
    "GenerateUniqueName": "vtkMRMLScene",
    "GetAttribute": "vtkMRMLNode",
    "GetAttributeNames": "vtkMRMLNode",
    "GetCenterWorld": "vtkMRMLMarkupsROINode",
    "GetClassName": "vtkObjectBase",
    "GetColumn": "vtkTable",
    "GetColumnName": "vtkMRMLTableNode",
    "GetDICOMSeriesModalityAttributeName": "vtkMRMLSubjectHierarchyConstants",
    "GetDimensions": "vtkImageData",
    "GetExtent": "vtkImageData",
    "GetID": "vtkMRMLNode",
    "GetIJKToRASMatrix": "vtkMRMLVolumeNode",
    "GetImageData": "vtkMRMLVolumeNode",
    "GetImageToWorldMatrix": "vtkOrientedImageData",
    "GetItemAttribute": "vtkMRMLSubjectHierarchyNode",
    "GetItemByDataNode": "vtkMRMLSubjectHierarchyNode",
    "GetItemChildWithName": "vtkMRMLSubjectHierarchyNode",
    "GetItemChildren": "vtkMRMLSubjectHierarchyNode",
    "GetItemName": "vtkMRMLSubjectHierarchyNode",
    "GetId": "vtkIdList",
    "GetNumberOfIds": "vtkIdList",
    "GetItemParent": "vtkMRMLSubjectHierarchyNode",
    "GetLineLengthWorld": "vtkMRMLMarkupsLineNode",
    "GetMTime": "vtkObject",
    "GetMatrix": "vtkTransform",
    "GetName": "vtkMRMLNode",
    "GetNodeByID": "vtkMRMLScene",
    "GetNodeReference": "vtkMRMLNode",
    "GetNodeReferenceID": "vtkMRMLNode",
    "GetNthControlPointID": "vtkMRMLMarkupsNode",
    "GetNthControlPointPositionWorld": "vtkMRMLMarkupsNode",
    "GetNthNode": "vtkMRMLScene",
    "GetNthNodeReference": "vtkMRMLNode",
    "GetNumberOfColumns": "vtkMRMLTableNode",
    "GetNumberOfControlPoints": "vtkMRMLMarkupsNode",
    "GetNumberOfNodeReferences": "vtkMRMLNode",
    "GetNumberOfNodes": "vtkMRMLScene",
    "GetNumberOfRows": "vtkMRMLTableNode",
    "GetNumberOfScalarComponents": "vtkImageData",
    "GetNumberOfSegments": "vtkSegmentation",
    "GetParentTransformNode": "vtkMRMLTransformableNode",
    "GetPointData": "vtkDataSet",
    "GetScalars": "vtkDataSetAttributes",
    "GetScene": "vtkMRMLNode",
    "GetSceneItemID": "vtkMRMLSubjectHierarchyNode",
    "GetSegment": "vtkSegmentation",
    "GetSegmentBinaryLabelmapRepresentation": "vtkSlicerSegmentationsModuleLogic",
    "GetSegmentIDs": "vtkSegmentation",
    "GetSegmentation": "vtkMRMLSegmentationNode",
    "GetSingletonNode": "vtkMRMLScene",
    "GetSizeWorld": "vtkMRMLMarkupsROINode",
    "GetSpacing": "vtkMRMLVolumeNode",
    "GetSubjectHierarchyNode": "vtkMRMLScene",
    "GetTable": "vtkMRMLTableNode",
    "GetTag": "vtkSegment",
    "GetTerminologyEntryTagName": "vtkSegment",
    "GetVoxelValueUnits": "vtkMRMLScalarVolumeNode",  # with vtkCodedEntry, since Slicer 4.10 (2018)
    "GetCodeValue": "vtkCodedEntry",
    "GetTransformBetweenNodes": "vtkMRMLTransformNode",
    "GetTransformNodeID": "vtkMRMLTransformableNode",
    "GetValue": "vtkTable",
    "GetXAxisWorld": "vtkMRMLMarkupsROINode",
    "GetYAxisWorld": "vtkMRMLMarkupsROINode",
    "GetZAxisWorld": "vtkMRMLMarkupsROINode",
    "IsA": "vtkMRMLNode",
    "IsEmpty": "vtkOrientedImageData",
    "IsGeneralTransformLinear": "vtkMRMLTransformNode",
    "Modified": "vtkMRMLNode",
    "ReadData": "vtkMRMLStorageNode",
    "RemoveAllControlPoints": "vtkMRMLMarkupsNode",
    "RemoveAttribute": "vtkMRMLNode",
    "RemoveItem": "vtkMRMLSubjectHierarchyNode",
    "RemoveNode": "vtkMRMLScene",
    "RemoveNthControlPoint": "vtkMRMLMarkupsNode",
    "RemoveNodeReferenceIDs": "vtkMRMLNode",
    "RemoveObserver": "vtkObject",
    "RemoveSegment": "vtkSegmentation",
    "ResampleOrientedImageToReferenceOrientedImage": "vtkOrientedImageDataResample",
    "SetAndObserveStorageNodeID": "vtkMRMLStorableNode",
    "SetAndObserveTable": "vtkMRMLTableNode",
    "SetAndObserveTransformNodeID": "vtkMRMLTransformableNode",
    "SetAttribute": "vtkMRMLNode",
    "SetBinaryLabelmapToSegment": "vtkSlicerSegmentationsModuleLogic",
    "SetCenter": "vtkMRMLMarkupsROINode",
    "SetCenterWorld": "vtkMRMLMarkupsROINode",
    "SetExtent": "vtkImageData",
    "SetFileName": "vtkMRMLStorageNode",
    "SetIJKToRASMatrix": "vtkMRMLVolumeNode",
    "SetImageToWorldMatrix": "vtkOrientedImageData",
    "SetItemAttribute": "vtkMRMLSubjectHierarchyNode",
    "SetItemParent": "vtkMRMLSubjectHierarchyNode",
    "SetLocked": "vtkMRMLMarkupsNode",
    "SetMatrixTransformToParent": "vtkMRMLTransformNode",
    "SetModuleName": "vtkMRMLScriptedModuleNode",
    "SetName": "vtkMRMLNode",
    "SetNodeReferenceID": "vtkMRMLNode",
    "SetNumberOfRows": "vtkTable",
    "SetParameter": "vtkMRMLScriptedModuleNode",
    "SetReferenceImageGeometryParameterFromVolumeNode": "vtkMRMLSegmentationNode",
    "SetSingletonTag": "vtkMRMLNode",
    "SetSize": "vtkMRMLMarkupsROINode",
    "SetSizeWorld": "vtkMRMLMarkupsROINode",
    "SetTag": "vtkSegment",
    "SetUseColumnTitleAsColumnHeader": "vtkMRMLTableNode",
    "SetValue": "vtkTable",
    "StartModify": "vtkMRMLNode",
    "TransformPoint": "vtkAbstractTransform",
    "UseCompressionOff": "vtkMRMLStorageNode",
    "WriteData": "vtkMRMLStorageNode",
}

OTHER_API = {  # not Slicer's C++ API: Python's standard library, Qt, the PyTorch extension
    "DictReader": "csv", "DictWriter": "csv", "Lock": "threading", "Popen": "subprocess", "Queue": "queue", "Thread": "threading", "Timer": "threading",
    "OpenProcess": "ctypes.windll.kernel32", "GetExitCodeProcess": "ctypes.windll.kernel32",
    "CloseHandle": "ctypes.windll.kernel32", "QIcon": "qt", "QTimer": "qt", "QMessageBox": "qt",
    "QSettings": "qt", "PyTorchUtilsLogic": "PyTorchUtils (extension)",
}

SLICER_UTIL_5_6 = {  # slicer.util functions of Slicer 5.6
    "arrayFromVTKMatrix", "arrayFromVolume", "childWidgetVariables", "confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay", "loadUI",
    "pip_install", "setSliceViewerLayers", "updateVolumeFromArray", "vtkMatrixFromArray", "warningDisplay",
    "tryWithErrorDisplay", "VTKObservationMixin", "settingsValue", "getNodesByClass",
}


def module_sources():
    return sorted(p for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)


def called_methods() -> dict:
    """{CamelCase method name: first file calling it}, classes defined in the module itself left out."""
    calls, defined = {}, set()
    for path in module_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and re.match(r"[A-Z]", node.func.attr):
                calls.setdefault(node.func.attr, path.relative_to(ROOT))
    return {name: path for name, path in calls.items() if name not in defined}


def util_functions() -> set:
    used = set()
    for path in module_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "util"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "slicer"):
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "slicer.util":
                used |= {alias.name for alias in node.names}
    return used


def test_no_api_newer_than_the_minimum_version():
    calls = called_methods()
    newer = {name: f"{calls[name]} (Slicer {NEWER_THAN_MINIMUM[name]})" for name in calls if name in NEWER_THAN_MINIMUM}
    assert not newer, f"APIs newer than Slicer {MINIMUM_VERSION}: {newer}"
    unknown = {name: str(path) for name, path in calls.items() if name not in SLICER_5_6_API and name not in OTHER_API}
    assert not unknown, f"check these against Slicer {MINIMUM_VERSION}'s sources and add them to the list: {unknown}"


def test_slicer_util_functions_exist_in_the_minimum_version():
    assert util_functions() <= SLICER_UTIL_5_6, sorted(util_functions() - SLICER_UTIL_5_6)


def test_the_minimum_version_is_stated_everywhere():
    readme = (ROOT / "README.md").read_text()
    assert f"3D Slicer {MINIMUM_VERSION} or later" in readme
    assert f'set(TUMORSEG_MINIMUM_SLICER_VERSION "{MINIMUM_VERSION}")' in (ROOT / "CMakeLists.txt").read_text()


def test_listed_api_exists_on_its_class():
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core")
    import vtk

    missing = [f"{owner}.{name}" for name, owner in SLICER_5_6_API.items()
               if not hasattr(getattr(slicer, owner, None) or getattr(vtk, owner), name)]
    assert not missing, missing
