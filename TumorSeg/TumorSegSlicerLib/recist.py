"""RECIST lines: one markups line for each lesion's longest diameter and one for its short axis.

End points come from the readouts (``recist_long_endpoints_world`` / ``recist_short_endpoints_world``),
given in the measured image's world space: RAS for a 3D volume, the 2D plane of a MIP volume. The lines are
referenced by the segmentation (role ``TumorSegRecistLine``) and locked against dragging.
"""

from __future__ import annotations

import numpy as np

from .mrml import affine_2d, plane_to_ras

LINE_ROLE = "TumorSegRecistLine"


def world_to_ras(volumeNode, points) -> np.ndarray:
    """RAS positions of points in the measured image's world space (3D: unchanged; MIP: its plane)."""
    return plane_to_ras(points) if affine_2d(volumeNode) is not None else np.asarray(points, dtype=np.float64)


def remove_lines(segmentationNode) -> None:
    scene = segmentationNode.GetScene()
    nodes = [segmentationNode.GetNthNodeReference(LINE_ROLE, i)
             for i in range(segmentationNode.GetNumberOfNodeReferences(LINE_ROLE))]
    segmentationNode.RemoveNodeReferenceIDs(LINE_ROLE)
    for node in nodes:
        if node is not None and scene is not None:
            scene.RemoveNode(node)


def show_lines(segmentationNode, volumeNode, readouts) -> list:
    """Replace the segmentation's RECIST lines by those of ``readouts``; returns the line nodes."""
    remove_lines(segmentationNode)
    scene = segmentationNode.GetScene()
    lines = []
    for lesion in readouts.lesions:
        for kind, endpoints in (("long", lesion.recist_long_endpoints_world),
                                ("short", lesion.recist_short_endpoints_world)):
            if endpoints is None:
                continue
            line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"Lesion {lesion.label} RECIST {kind}")
            line.CreateDefaultDisplayNodes()
            for point in world_to_ras(volumeNode, endpoints):
                line.AddControlPointWorld(*[float(v) for v in point])
            line.SetLocked(True)
            line.SetAttribute("TumorSeg.Lesion", str(lesion.label))
            segmentationNode.AddNodeReferenceID(LINE_ROLE, line.GetID())
            lines.append(line)
    return lines
