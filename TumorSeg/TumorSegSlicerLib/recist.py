"""RECIST lines: one markups line for each lesion's longest diameter and one for its short axis.

End points come from the readouts (``recist_long_endpoints_world`` / ``recist_short_endpoints_world``),
given in the measured image's world space: the volume's own frame for a 3D volume, the 2D plane of a
MIP volume. The lines sit under the volume's parent transform (so they move with it), in a subject
hierarchy folder under the segmentation, are referenced by the segmentation (role
``TumorSegRecistLine``), locked against dragging, and updated in place when the readouts change.
"""

from __future__ import annotations

import numpy as np
import slicer

from .mrml import affine_2d, plane_to_ras

LINE_ROLE = "TumorSegRecistLine"
FOLDER_NAME = "RECIST lines"


def world_to_ras(volumeNode, points) -> np.ndarray:
    """Positions in the volume's frame of points in the measured image's world space (3D: unchanged; MIP: its plane)."""
    return plane_to_ras(points) if affine_2d(volumeNode) is not None else np.asarray(points, dtype=np.float64)


def _lines(segmentationNode) -> list:
    return [segmentationNode.GetNthNodeReference(LINE_ROLE, i)
            for i in range(segmentationNode.GetNumberOfNodeReferences(LINE_ROLE))]


def remove_lines(segmentationNode) -> None:
    scene = segmentationNode.GetScene()
    nodes = _lines(segmentationNode)
    segmentationNode.RemoveNodeReferenceIDs(LINE_ROLE)
    for node in nodes:
        if node is not None and scene is not None:
            scene.RemoveNode(node)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = _folder(shNode, segmentationNode, create=False)
    if folder:
        shNode.RemoveItem(folder)


def _folder(shNode, segmentationNode, create=True) -> int:
    """The subject hierarchy folder for the lines, under the segmentation's item (0 when there is none)."""
    parent = shNode.GetItemByDataNode(segmentationNode) if shNode else 0
    if not parent:
        return 0
    folder = shNode.GetItemChildWithName(parent, FOLDER_NAME)
    return folder or (shNode.CreateFolderItem(parent, FOLDER_NAME) if create else 0)


def show_lines(segmentationNode, volumeNode, readouts) -> list:
    """Make the segmentation's RECIST lines those of ``readouts`` (existing line nodes are reused); returns them."""
    scene = segmentationNode.GetScene()
    wanted = [(lesion.label, kind, endpoints) for lesion in readouts.lesions
              for kind, endpoints in (("long", lesion.recist_long_endpoints_world),
                                      ("short", lesion.recist_short_endpoints_world)) if endpoints is not None]
    existing = [node for node in _lines(segmentationNode) if node is not None]
    for node in existing[len(wanted):]:
        scene.RemoveNode(node)
    segmentationNode.RemoveNodeReferenceIDs(LINE_ROLE)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = _folder(shNode, segmentationNode)
    lines = []
    for index, (label, kind, endpoints) in enumerate(wanted):
        line = existing[index] if index < len(existing) else _new_line(scene, shNode, folder)
        wasModifying = line.StartModify()
        line.SetName(f"Lesion {label} RECIST {kind}")
        line.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        line.SetLocked(False)
        line.RemoveAllControlPoints()
        for point in world_to_ras(volumeNode, endpoints):
            line.AddControlPoint([float(v) for v in point])
        line.SetLocked(True)
        line.SetAttribute("TumorSeg.Lesion", str(label))
        line.EndModify(wasModifying)
        segmentationNode.AddNodeReferenceID(LINE_ROLE, line.GetID())
        lines.append(line)
    return lines


def _new_line(scene, shNode, folder):
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode")
    line.CreateDefaultDisplayNodes()
    if folder:
        item = shNode.GetItemByDataNode(line)
        if item:
            shNode.SetItemParent(item, folder)
        else:  # headless: no subject hierarchy plugins to create the item
            shNode.CreateItem(folder, line)
    return line
