"""Lesion measurements on analytic phantoms (known answers) and on pyradiomics' reference label maps."""

import csv

import numpy as np
import pytest
from conftest import shared_data

from TumorSegLib.diameters import boundary_points, farthest_pair, max_diameter, recist_axes
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image, binary_mask, superior_axis
from TumorSegLib.io import read_image, write_mask
from TumorSegLib.measure import SUV_PEAK_RADIUS_MM, label_lesions, measure_lesions
from TumorSegLib.phantoms import ellipsoid, grid_affine, rotation, world_coordinates

SHAPE = (71, 51, 25)
SPACING = (0.8, 0.8, 2.0)
RADII = (24.0, 16.0, 20.0)  # mm: 30, 20 and 10 voxels
CENTRE = (0.3, -0.5, 0.6)  # off the voxel centres
OBLIQUE_AXIS = (1.0, 0.3, 0.0)


def _grid(kind):
    """(shape, affine, grid rotation) of the test grids; "sagittal" stores S along array axis 0."""
    if kind == "anisotropic":
        return SHAPE, grid_affine(SHAPE, SPACING), np.eye(3)
    if kind == "flipped":
        return SHAPE, grid_affine(SHAPE, SPACING, flip=(True, False, True)), np.eye(3)
    if kind == "oblique":
        return SHAPE, grid_affine(SHAPE, SPACING, oblique_degrees=20.0, oblique_axis=OBLIQUE_AXIS), rotation(OBLIQUE_AXIS, 20.0)
    if kind == "sagittal":
        affine = grid_affine(SHAPE, SPACING)[:, [2, 1, 0, 3]]
        return SHAPE[::-1], affine, np.eye(3)
    raise ValueError(kind)


def _phantom(kind, spin_degrees):
    """An ellipsoid whose axes follow the grid, turned by ``spin_degrees`` within the acquisition plane."""
    shape, affine, grid_rotation = _grid(kind)
    orientation = grid_rotation @ rotation((0.0, 0.0, 1.0), spin_degrees)
    centre = grid_rotation @ np.asarray(CENTRE)
    mask = ellipsoid(shape, affine, centre, RADII, orientation)
    return Image(mask.astype(np.uint8), affine), centre, orientation


def _surface_distance(points, centre, orientation):
    """Radial distance (mm, an upper bound of the true distance) from points to the ellipsoid surface."""
    local = (np.asarray(points) - centre) @ orientation
    scale = np.linalg.norm(local / RADII, axis=-1)
    return np.linalg.norm(local, axis=-1) * np.abs(1.0 - 1.0 / scale)


@pytest.mark.parametrize("kind", ["anisotropic", "flipped", "oblique", "sagittal"])
@pytest.mark.parametrize("spin_degrees", [0.0, 30.0])
def test_ellipsoid_volume_and_diameters(kind, spin_degrees):
    mask, centre, orientation = _phantom(kind, spin_degrees)
    readouts = measure_lesions(mask)
    assert readouts.totals["lesion_count"] == 1
    lesion = readouts.lesions[0]
    analytic_ml = 4.0 / 3.0 * np.pi * np.prod(RADII) / 1000.0
    assert lesion.volume_ml == pytest.approx(analytic_ml, rel=0.02)
    assert lesion.recist_long_mm == pytest.approx(2 * RADII[0], abs=min(SPACING))
    assert lesion.recist_short_mm == pytest.approx(2 * RADII[1], abs=min(SPACING))
    assert lesion.max3d_mm == pytest.approx(2 * RADII[0], abs=max(SPACING))
    assert np.allclose(lesion.centroid_world, centre, atol=0.1)

    axis = superior_axis(mask.affine)
    assert readouts.acquisition_axis == axis == (0 if kind == "sagittal" else 2)
    segments = [(lesion.recist_long_mm, lesion.recist_long_endpoints_world),
                (lesion.recist_short_mm, lesion.recist_short_endpoints_world)]
    for length, ends in segments:
        ends = np.asarray(ends)
        assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(length, rel=1e-9)
        assert np.allclose(mask.to_index(ends)[:, axis], lesion.recist_slice, atol=1e-6)
        assert np.all(_surface_distance(ends, centre, orientation) <= min(SPACING))
    long_direction, short_direction = (np.subtract(*np.asarray(e)) for _, e in segments)
    assert abs(np.dot(long_direction, short_direction)) <= 1e-6 * lesion.recist_long_mm * lesion.recist_short_mm
    feret = np.asarray(lesion.max3d_endpoints_world)
    assert np.linalg.norm(feret[1] - feret[0]) == pytest.approx(lesion.max3d_mm, rel=1e-9)
    assert np.all(_surface_distance(feret, centre, orientation) <= max(SPACING))


def test_long_axis_turned_within_plane_is_found():
    """The long axis of an ellipse turned 30 degrees points along the ellipse's major axis.

    A digitised ellipse has several chords of the same (longest) length a few degrees apart,
    so the direction is checked to within 6 degrees (the 30-degree turn would fail it)."""
    mask, _, orientation = _phantom("oblique", 30.0)
    ends = np.asarray(measure_lesions(mask).lesions[0].recist_long_endpoints_world)
    direction = (ends[1] - ends[0]) / np.linalg.norm(ends[1] - ends[0])
    assert abs(direction @ orientation[:, 0]) > np.cos(np.deg2rad(6.0))


def test_mid_point_convention_on_runs_of_pixels():
    """A run of n voxels measures n spacings; one voxel measures one spacing each way."""
    line = np.zeros((5, 40), dtype=bool)
    line[2, 5:35] = True
    long_axis, short_axis, number = recist_axes(line, np.diag([0.5, 2.0]), None)
    assert (long_axis.length, short_axis.length, number) == (60.0, 0.5, None)
    single = np.ones((1, 1, 1), dtype=bool)
    assert max_diameter(single, np.diag([1.0, 1.0, 3.0])).length == pytest.approx(3.0)
    long_axis, short_axis, number = recist_axes(single, np.diag([1.0, 2.0, 3.0]), 2)
    assert (long_axis.length, short_axis.length, number) == (2.0, 1.0, 0)


def test_connectivity_18_in_3d_and_8_in_2d():
    corner = np.zeros((3, 3, 3), dtype=bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    assert label_lesions(corner, 3)[1] == 2
    edge = np.zeros((3, 3, 3), dtype=bool)
    edge[0, 0, 0] = edge[1, 1, 0] = True
    assert label_lesions(edge, 3)[1] == 1
    diagonal = np.eye(3, dtype=bool)
    assert label_lesions(diagonal, 2)[1] == 1
    with pytest.raises(TumorSegError, match="expected a 3D mask"):
        label_lesions(diagonal, 3)


def test_pet_statistics_and_suv_peak():
    shape, spacing = (41, 41, 31), (2.0, 2.0, 3.0)
    affine = grid_affine(shape, spacing, oblique_degrees=10.0)
    lesion = ellipsoid(shape, affine, (0, 0, 0), (20.0, 20.0, 20.0))
    suv = np.where(lesion, 5.0, 1.0).astype(np.float32)
    hottest = (22, 19, 16)
    suv[hottest] = 10.0
    image = Image(suv, affine)
    readouts = measure_lesions(lesion, image)
    assert readouts.modality == "PET" and "guessed PET" in readouts.notes[0]
    found = readouts.lesions[0]
    count = int(lesion.sum())
    assert found.suv_max == 10.0
    assert found.suv_mean == pytest.approx((5.0 * (count - 1) + 10.0) / count)
    distance = np.linalg.norm(world_coordinates(shape, affine) - image.to_world(hottest), axis=-1)
    sphere = distance <= SUV_PEAK_RADIUS_MM
    assert found.suv_peak == pytest.approx(float(suv[sphere].astype(np.float64).mean()))
    assert sphere.sum() * image.voxel_volume / 1000.0 == pytest.approx(1.0, rel=0.15)
    assert found.mtv_ml == found.volume_ml == pytest.approx(count * 12.0 / 1000.0)
    assert found.tlg == pytest.approx(found.suv_mean * found.mtv_ml)
    assert readouts.totals["tlg"] == pytest.approx(found.tlg)
    assert found.hu_mean is None and "hu_mean" not in readouts.to_dict()["lesions"][0]


def test_ct_statistics_and_modality_rule():
    shape = (20, 20, 10)
    affine = grid_affine(shape)
    lesion = np.zeros(shape, dtype=bool)
    lesion[5:10, 5:10, 3:6] = True
    hu = np.where(lesion, 40, -800).astype(np.int16)
    hu[7, 7, 4] = 100
    readouts = measure_lesions(lesion, Image(hu, affine))
    assert readouts.modality == "CT" and "guessed CT" in readouts.notes[0]
    assert readouts.lesions[0].hu_max == 100.0
    assert readouts.lesions[0].hu_mean == pytest.approx((40.0 * 74 + 100.0) / 75)
    assert readouts.lesions[0].suv_max is None
    positive_float = Image(np.abs(hu).astype(np.float32), affine)
    assert measure_lesions(lesion, positive_float).modality == "CT"  # max 800 >= 100
    assert measure_lesions(lesion, Image(hu.astype(np.float32) / 1000 + 1, affine)).modality == "PET"
    assert measure_lesions(lesion, Image(hu, affine, meta={"modality": "PET"})).modality == "PET"
    assert measure_lesions(lesion, Image(hu, affine, meta={"modality": "PET"}), "ct").modality == "CT"
    with pytest.raises(TumorSegError, match="unknown modality"):
        measure_lesions(lesion, Image(hu, affine), "MR")


def test_several_lesions_totals_and_table_rows():
    shape = (30, 30, 10)
    affine = grid_affine(shape, (1.0, 1.0, 2.0))
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:6, 2:4, 1:3] = 1
    mask[20:25, 20:21, 5] = 2  # a second label: merged into the tumour class
    mask[20:25, 21:22, 5] = 1
    readouts = measure_lesions(Image(mask, affine))
    assert [lesion.voxels for lesion in readouts.lesions] == [16, 10]
    assert readouts.totals["lesion_count"] == 2
    assert readouts.totals["volume_ml"] == pytest.approx(26 * 2.0 / 1000.0)
    assert readouts.totals["sum_longest_diameters_mm"] == pytest.approx(sum(l.recist_long_mm for l in readouts.lesions))
    assert any("2 labels" in note and "merged" in note for note in readouts.notes)
    rows = readouts.table_rows()
    assert rows[1]["bbox_i_first"] == 20 and rows[1]["bbox_k_last"] == 5 and rows[1]["recist_slice"] == 5
    assert {"centroid_r", "recist_long_p2_s", "max3d_p1_a"} <= set(rows[0])


def test_empty_mask_gives_zero_lesions():
    image = Image(np.zeros((8, 8, 8), dtype=np.float32), np.eye(4))
    readouts = measure_lesions(np.zeros((8, 8, 8), dtype=bool), image)
    assert readouts.lesions == [] and readouts.table_rows() == []
    assert readouts.totals == {"lesion_count": 0, "voxels": 0, "volume_ml": 0.0, "sum_longest_diameters_mm": 0.0,
                               "suv_max": None, "mtv_ml": 0.0, "tlg": 0.0}


def test_bad_inputs():
    affine = grid_affine((8, 8, 8))
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[2:4, 2:4, 2:4] = True
    bad = np.ones((8, 8, 8), dtype=np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(TumorSegError, match="NaN or infinite"):
        measure_lesions(mask, Image(bad, affine))
    with pytest.raises(TumorSegError, match=r"shape \(8, 8, 8\).*shape \(8, 8, 9\)"):
        measure_lesions(Image(mask.astype(np.uint8), affine), Image(np.zeros((8, 8, 9)), affine))
    with pytest.raises(TumorSegError, match="different grids"):
        measure_lesions(Image(mask.astype(np.uint8), affine), Image(np.zeros((8, 8, 8)), grid_affine((8, 8, 8), (2, 1, 1))))
    with pytest.raises(TumorSegError, match="needs an image"):
        measure_lesions(mask)
    with pytest.raises(TumorSegError, match="probability map"):
        measure_lesions(Image(mask * 0.7, affine))


def test_2d_png_mask_in_pixels(tmp_path):
    mask = np.zeros((40, 60), dtype=bool)
    mask[5, 10:40] = True  # a one-pixel line of 30 pixels
    mask[20:30, 10:40] = True  # a 10 x 30 rectangle
    path = write_mask(tmp_path / "mask.png", mask, Image(mask, np.eye(3), spacing_known=False))
    readouts = measure_lesions(read_image(path))
    line, rectangle = readouts.lesions
    assert readouts.length_unit == "px" and readouts.acquisition_axis is None
    assert (line.area_px, line.recist_long_mm, line.recist_short_mm) == (30, 30.0, 1.0)
    assert rectangle.area_px == 300
    assert rectangle.recist_long_mm == pytest.approx(np.hypot(9, 30))  # corner mid-points cut the corners
    assert rectangle.recist_short_mm == pytest.approx(10.0, abs=1.0)
    lesion = readouts.to_dict()["lesions"][0]
    assert lesion["recist_long_px"] == 30.0 and "recist_long_mm" not in lesion and "volume_ml" not in lesion
    assert readouts.totals == {"lesion_count": 2, "voxels": 330, "area_px": 330.0, "sum_longest_diameters_px": pytest.approx(30 + np.hypot(9, 30))}
    assert "no intensity statistics" in measure_lesions(read_image(path), read_image(path)).notes[0]


def test_2d_with_known_spacing_in_mm():
    mask = np.zeros((20, 20), dtype=bool)
    mask[4, 2:12] = True
    readouts = measure_lesions(Image(mask.astype(np.uint8), np.diag([0.5, 2.0, 1.0])))
    assert readouts.lesions[0].area_mm2 == 10.0 and readouts.lesions[0].recist_long_mm == 20.0
    assert readouts.totals["area_mm2"] == 10.0


def _reference_features():
    folder = shared_data("pyradiomics-tumor-labels") / "dev"
    with open(folder / "reference_shape_features.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    cases = rows[0][1:]
    return folder, {case: {row[0]: row[1 + i] for row in rows[1:]} for i, case in enumerate(cases)}


def _pyradiomics_max_2d(mask, spacing):
    """pyradiomics' Maximum2DDiameterSlice and its plane: mesh vertices grouped by equal z, including
    the planes half-way between slices (where the top and bottom faces of neighbouring slices meet)."""
    points = boundary_points(mask)
    planes = {z: farthest_pair(points[points[:, 2] == z][:, :2] * spacing[:2])[0] for z in np.unique(points[:, 2])}
    z = max(planes, key=planes.get)
    return planes[z], z


@pytest.mark.parametrize("case", ["brain1", "brain2", "breast1", "lung1"])
def test_pyradiomics_reference_volume_and_diameters(case):
    folder, reference = _reference_features()
    expected = reference[case]
    label = read_image(folder / f"{case}_label.nrrd", "mask")
    mask = binary_mask(label)
    mask = mask[tuple(slice(index.min(), index.max() + 1) for index in np.nonzero(mask))]  # diameters need no margin
    assert superior_axis(label.affine) == 2  # pyradiomics' "slice" axis is the array's last axis here
    readouts = measure_lesions(label)
    assert readouts.totals["voxels"] == int(expected["diagnostics_Mask-original_VoxelNum"])
    assert readouts.totals["volume_ml"] * 1000.0 == pytest.approx(float(expected["original_shape_VoxelVolume"]), rel=1e-9)
    linear = label.affine[:3, :3]
    assert max_diameter(mask, linear).length == pytest.approx(float(expected["original_shape_Maximum3DDiameter"]), abs=1e-6)
    reference_2d = float(expected["original_shape_Maximum2DDiameterSlice"])
    pyradiomics_2d, plane = _pyradiomics_max_2d(mask, label.spacing)
    assert pyradiomics_2d == pytest.approx(reference_2d, abs=1e-6)
    recist = recist_axes(mask, linear, 2)[0].length
    if plane == int(plane):  # the reference lies on a voxel slice: RECIST measures the same
        assert recist == pytest.approx(reference_2d, abs=1e-6)
    else:  # RECIST measures voxel slices only, never the planes between them
        assert recist < reference_2d
    if readouts.totals["lesion_count"] == 1:
        assert readouts.lesions[0].recist_long_mm == pytest.approx(recist, abs=1e-9)


def test_rounding_of_the_affine_does_not_change_the_readouts():
    """The same mask with a float32-rounded affine (as a NIfTI file stores it) measures the same."""
    mask, _, _ = _phantom("oblique", 30.0)
    rounded = Image(mask.array, mask.affine.astype(np.float32).astype(np.float64))
    exact, approx = measure_lesions(mask).lesions[0], measure_lesions(rounded).lesions[0]
    for key in ("recist_long_mm", "recist_short_mm", "max3d_mm", "recist_slice"):
        assert getattr(approx, key) == pytest.approx(getattr(exact, key), abs=1e-4)
