"""Volumes and segments as ``TumorSegLib`` images and numpy masks, voxel for voxel.

Arrays here are in file voxel order (i, j, k), like ``TumorSegLib.image.Image``; Slicer's
``arrayFromVolume`` is (k, j, i), hence the transposes. Labelmaps are read and written through
``vtkOrientedImageData`` on the volume's own grid, so no helper nodes are left in the scene.
A single-slice volume made from a 2D image (a MIP) carries the 2D image's 3x3 affine in an
attribute and is read back as that 2D image.

Parent transforms: everything here works in the volume's own frame (its IJK-to-RAS, what its file
holds). A segmentation under the same parent transform stores labelmaps in that same frame; world
positions (markups) are mapped into the volume's frame through the transform (``world_to_local``).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from TumorSegLib import boxes
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image

AFFINE_2D_ATTRIBUTE = "TumorSeg.Affine2D"


def ijk_to_ras(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_from_volume(volumeNode, box=None) -> Image:
    """The volume's voxels (a copy) and geometry; the 2D image back for a single-slice MIP volume.

    box: only the voxels of this box of a 3D volume (half-open, i j k), with its exact geometry.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise TumorSegError("the input volume has no image data")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise TumorSegError(f"volume {volumeNode.GetName()!r} is not a scalar (single-component) volume")
    array = slicer.util.arrayFromVolume(volumeNode)  # a view, (k, j, i)
    affine = affine_2d(volumeNode)
    if affine is not None:
        return Image(np.ascontiguousarray(np.array(array).transpose(2, 1, 0)[:, :, 0]), affine)
    affine = ijk_to_ras(volumeNode)
    if box is not None:
        array = array[tuple(slice(lo, hi) for lo, hi in reversed(box))]
        affine[:3, 3] = (affine @ [*(lo for lo, _ in box), 1.0])[:3]
    return Image(np.ascontiguousarray(np.array(array).transpose(2, 1, 0)), affine)


# A 2D image's (row, col) mm plane shown as a coronal slice in radiological view:
# rows run to the patient's inferior, columns to the patient's left (as in the MIP PNGs).
PLANE_TO_RAS = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])


def plane_to_ras(points) -> np.ndarray:
    """RAS of 2D image world points (..., 2) on the coronal plane A = 0."""
    points = np.asarray(points, dtype=np.float64)
    return np.concatenate([points, np.zeros(points.shape[:-1] + (1,))], axis=-1) @ PLANE_TO_RAS.T


def ijk_to_ras_for(image: Image) -> np.ndarray:
    """The IJK-to-RAS of the volume that shows ``image``: a 2D image becomes one coronal slice."""
    if image.ndim == 3:
        return image.affine
    plane = np.eye(4)
    plane[:2, :2] = image.affine[:2, :2]
    plane[:2, 3] = image.affine[:2, 2]
    return np.block([[PLANE_TO_RAS, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]) @ plane


def add_volume_from_image(scene, image: Image, name: str):
    """A new scalar volume node holding ``image`` (2D images as a single-slice volume)."""
    array = image.array if image.ndim == 3 else image.array[:, :, np.newaxis]
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_for(image)))
    if image.ndim == 2:
        node.SetAttribute(AFFINE_2D_ATTRIBUTE, json.dumps(image.affine.tolist()))
    node.CreateDefaultDisplayNodes()
    return node


def box_extent(box) -> list:
    """A half-open voxel box ((lo, hi) per axis) as a VTK extent [i0, i1, j0, j1, k0, k1] (inclusive)."""
    return [v for lo, hi in box for v in (int(lo), int(hi) - 1)]


def _oriented_geometry(volumeNode, box=None) -> "slicer.vtkOrientedImageData":
    """An empty oriented image with the volume's IJK-to-RAS over its extent, or ``box`` of it (no voxel copy)."""
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(volumeNode.GetImageData().GetExtent() if box is None else box_extent(box))
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    geometry.SetImageToWorldMatrix(matrix)
    return geometry


def _oriented_from_mask(volumeNode, mask: np.ndarray, box=None) -> "slicer.vtkOrientedImageData":
    image = _oriented_geometry(volumeNode, box)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    mask = _as_volume_mask(volumeNode, mask) if box is None else mask
    flat = np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)).ravel()
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = flat
    image.Modified()
    return image


def _as_volume_mask(volumeNode, mask: np.ndarray) -> np.ndarray:
    dims = volumeNode.GetImageData().GetDimensions()
    if mask.ndim == 2:
        mask = mask[:, :, np.newaxis]
    if tuple(mask.shape) != tuple(dims):
        raise TumorSegError(f"mask shape {mask.shape} does not match volume {volumeNode.GetName()!r} of {dims}")
    return mask


def set_segment_mask(segmentationNode, segmentId: str, mask: np.ndarray, volumeNode) -> None:
    """Replace the segment's voxels by ``mask`` (i, j, k on the volume grid; 2D for MIP volumes)."""
    _modify_segment(segmentationNode, segmentId, _oriented_from_mask(volumeNode, np.asarray(mask) != 0), volumeNode,
                    ("MODE_REPLACE",))


def add_to_segment_box(segmentationNode, segmentId: str, box, mask: np.ndarray, volumeNode) -> None:
    """Add ``mask`` (the shape of ``box``, a box of the volume's 3D grid) to the segment; nothing is erased."""
    _modify_segment(segmentationNode, segmentId, _oriented_from_mask(volumeNode, np.asarray(mask) != 0, box),
                    volumeNode, ("MODE_MERGE_MAX",))


def set_segment_box(segmentationNode, segmentId: str, box, mask: np.ndarray, volumeNode) -> None:
    """Make the segment equal ``mask`` inside ``box`` (of the volume's 3D grid); voxels outside it are not touched."""
    _modify_segment(segmentationNode, segmentId, _oriented_from_mask(volumeNode, np.asarray(mask) != 0, box),
                    volumeNode, ("MODE_MERGE_MIN", "MODE_MERGE_MAX"))


def _modify_segment(segmentationNode, segmentId: str, image, volumeNode, modes) -> None:
    """Apply ``image`` (on the volume's grid, its own extent) to the segment with each merge mode in turn.

    The merge modes act inside the image's extent only: MAX adds its voxels, MIN clears the others.
    """
    to_segmentation = linear_between(volumeNode, segmentationNode)
    if to_segmentation is None:
        raise TumorSegError(f"segmentation {segmentationNode.GetName()!r} is under a non-linear transform that "
                            f"volume {volumeNode.GetName()!r} is not under; segment into a new segmentation")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(to_segmentation @ slicer.util.arrayFromVTKMatrix(matrix)))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for mode in modes:
        if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, getattr(logic, mode),
                                                image.GetExtent()):
            raise TumorSegError(f"could not write segment {segmentId!r} of {segmentationNode.GetName()!r}")


def _frame_transform(source, target) -> "vtk.vtkGeneralTransform":
    """The transform from ``source``'s own frame to ``target``'s (nodes under parent transforms, or None: world)."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        source.GetParentTransformNode() if source is not None else None,
        target.GetParentTransformNode() if target is not None else None, transform)
    return transform


def linear_between(source, target):
    """The 4x4 matrix from ``source``'s frame to ``target``'s (identity under the same transform), None if non-linear."""
    if source.GetParentTransformNode() is target.GetParentTransformNode():
        return np.eye(4)
    linear = vtk.vtkTransform()
    if not slicer.vtkMRMLTransformNode.IsGeneralTransformLinear(_frame_transform(source, target), linear):
        return None
    return slicer.util.arrayFromVTKMatrix(linear.GetMatrix())


def world_to_local(node, points) -> np.ndarray:
    """Positions (..., 3) in world RAS mapped into ``node``'s own frame (through its parent transforms)."""
    points = np.asarray(points, dtype=np.float64)
    if node.GetParentTransformNode() is None:
        return points
    transform = _frame_transform(None, node)
    flat = [transform.TransformPoint(*map(float, p)) for p in points.reshape(-1, 3)]
    return np.array(flat, dtype=np.float64).reshape(points.shape)


def grid_shape(volumeNode) -> tuple:
    """The shape of the volume's voxel array (i, j, k), or (i, j) for a MIP volume."""
    dims = tuple(volumeNode.GetImageData().GetDimensions())
    return dims[:2] if volumeNode.GetAttribute(AFFINE_2D_ATTRIBUTE) else dims


def affine_2d(volumeNode):
    """The 3x3 (row, col) -> mm affine of a MIP volume, or None for a 3D volume."""
    text = volumeNode.GetAttribute(AFFINE_2D_ATTRIBUTE)
    return np.array(json.loads(text)) if text else None


def segment_mask(segmentationNode, segmentId: str, volumeNode) -> np.ndarray:
    """The segment as a bool array (i, j, k) on the volume's grid (2D for a MIP volume).

    The labelmap is read in the segmentation's own frame and resampled onto the volume's grid in the
    volume's frame (through the transform between them when their parent transforms differ).
    """
    mask = segment_box(segmentationNode, segmentId, None, volumeNode)
    return mask[:, :, 0] if volumeNode.GetAttribute(AFFINE_2D_ATTRIBUTE) else mask


def segment_box(segmentationNode, segmentId: str, box, volumeNode) -> np.ndarray:
    """The segment inside ``box`` of the volume's 3D grid (None: the whole grid) as a bool array of its shape."""
    geometry = _oriented_geometry(volumeNode, box)
    extent = geometry.GetExtent()
    mask = np.zeros([extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3)], dtype=bool)
    resampled = _segment_on_grid(segmentationNode, segmentId, volumeNode, geometry)
    if resampled is not None:
        _paste(mask, resampled, extent)
    return mask


def segment_bounds(segmentationNode, segmentId: str, volumeNode):
    """The smallest box of the volume's 3D grid holding every voxel of the segment, None when it is empty.

    Found on the labelmap as it is stored (k, j, i), without making a full-grid copy.
    """
    resampled = _segment_on_grid(segmentationNode, segmentId, volumeNode, _oriented_geometry(volumeNode))
    if resampled is None:
        return None
    own = resampled.GetExtent()
    shape = [own[2 * a + 1] - own[2 * a] + 1 for a in range(3)]
    found = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape[::-1]) != 0
    box = []
    for axis, others in ((2, (0, 1)), (1, (0, 2)), (0, (1, 2))):  # i, j, k of the (k, j, i) array
        hits = np.flatnonzero(found.any(axis=others))
        if hits.size == 0:
            return None
        low = own[2 * (2 - axis)]
        box.append((int(low + hits[0]), int(low + hits[-1] + 1)))
    return boxes.clip(box, volumeNode.GetImageData().GetDimensions())


def _segment_on_grid(segmentationNode, segmentId: str, volumeNode, geometry):
    """The segment's labelmap resampled onto ``geometry`` (the volume's grid, in the volume's frame), None if empty.

    The labelmap is read in the segmentation's own frame (through the transform between their frames when
    the parent transforms differ); the result may reach beyond ``geometry``'s extent.
    """
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, labelmap, False)
    if labelmap.GetPointData().GetScalars() is None or labelmap.IsEmpty():
        return None
    resampled = slicer.vtkOrientedImageData()
    same_frame = segmentationNode.GetParentTransformNode() is volumeNode.GetParentTransformNode()
    transform = None if same_frame else _frame_transform(segmentationNode, volumeNode)
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, geometry, resampled, False, False, transform)
    return resampled if resampled.GetPointData().GetScalars() is not None else None


def _paste(mask: np.ndarray, image, extent) -> None:
    """Set ``mask`` (i, j, k over ``extent``) where ``image`` (any extent on the same grid) is non-zero."""
    own = image.GetExtent()
    low = [max(own[2 * a], extent[2 * a]) for a in range(3)]
    high = [min(own[2 * a + 1], extent[2 * a + 1]) for a in range(3)]
    if any(h < lo for lo, h in zip(low, high)) or image.GetPointData().GetScalars() is None:
        return
    shape = [own[2 * a + 1] - own[2 * a] + 1 for a in range(3)]
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape[::-1]).transpose(2, 1, 0)
    source = tuple(slice(lo - own[2 * a], h - own[2 * a] + 1) for a, (lo, h) in enumerate(zip(low, high)))
    target = tuple(slice(lo - extent[2 * a], h - extent[2 * a] + 1) for a, (lo, h) in enumerate(zip(low, high)))
    mask[target] |= values[source] != 0


def subject_hierarchy_items(scene) -> list:
    """Every subject hierarchy item ID of the scene, parents before children."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), items, True)
    return [items.GetId(i) for i in range(items.GetNumberOfIds())]


class SavedSegmentation:
    """A segmentation node's segments, attributes, the given node references and their tables' rows, to restore."""

    def __init__(self, node, roles):
        self.node = node
        self.segmentation = slicer.vtkSegmentation()
        self.segmentation.DeepCopy(node.GetSegmentation())
        self.attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames()}
        self.references = {role: node.GetNodeReferenceID(role) for role in roles}
        self.tables = []
        for role in roles:
            table = node.GetNodeReference(role)
            if table is not None and table.IsA("vtkMRMLTableNode") and table.GetTable() is not None:
                rows = vtk.vtkTable()
                rows.DeepCopy(table.GetTable())
                self.tables.append((table, rows))

    def restore(self) -> None:
        node = self.node
        node.GetSegmentation().DeepCopy(self.segmentation)
        for name in node.GetAttributeNames():
            if name not in self.attributes:
                node.RemoveAttribute(name)
        for name, value in self.attributes.items():
            node.SetAttribute(name, value)
        for role, node_id in self.references.items():
            node.SetNodeReferenceID(role, node_id)
        for table, rows in self.tables:
            if table.GetScene() is not None:
                table.GetTable().DeepCopy(rows)
                table.Modified()


def fingerprint(mask: np.ndarray) -> str:
    """A hash of the mask's shape and voxels: tells whether a segment was edited since TumorSeg wrote it."""
    mask = np.ascontiguousarray(np.asarray(mask, dtype=bool))
    digest = hashlib.sha256(repr(mask.shape).encode())
    digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()


def write_volume(volumeNode, path) -> None:
    """Write the volume (its voxels and IJK-to-RAS) to ``path`` (.nii.gz or .nrrd) with a storage node."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.UseCompressionOff()
    if not storage.WriteData(volumeNode):
        raise TumorSegError(f"could not write volume {volumeNode.GetName()!r} to {path}")


def ras_to_ijk(volumeNode, points) -> np.ndarray:
    """Continuous IJK index of point(s) (..., 3) given in the volume's own frame (its IJK-to-RAS)."""
    inverse = np.linalg.inv(ijk_to_ras(volumeNode))
    points = np.asarray(points, dtype=np.float64)
    return points @ inverse[:3, :3].T + inverse[:3, 3]
