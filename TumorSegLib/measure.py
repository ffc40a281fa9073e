"""Lesion readouts from a mask: size, position, RECIST axes, 3D diameter, PET and CT statistics.

- Lesions are connected components: 18-connectivity in 3D (faces and edges touch, corners do
  not; as autoPET counts lesions), 8-connectivity in 2D (sides and corners).
- Volume = voxel count x voxel volume (as 3D Slicer's Segment Statistics and pyradiomics'
  VoxelVolume); 2D images give an area in mm2, or in pixels when the spacing is unknown (then
  every length is in pixels too, see ``Readouts.length_unit``).
- RECIST long axis: the longest in-plane diameter in the acquisition plane (the voxel plane
  whose normal is closest to the patient's superior axis), maximum over slices; short axis: the
  widest extent perpendicular to it in the same slice. Diameters follow the mid-point
  convention of ``diameters.py`` (pyradiomics' Maximum2DDiameterSlice / Maximum3DDiameter).
- PET (SUV image): SUVmax, SUVmean, SUVpeak (mean SUV of all image voxels whose centres lie in
  a 1 mL sphere, radius 6.2 mm, centred on the hottest lesion voxel), MTV (lesion volume, mL),
  TLG = SUVmean x MTV. CT: mean and max HU.
- Modality when not given: the image's ``meta["modality"]``; else a 3D floating-point image with
  no negative value and maximum below 100 is PET (SUV), any other 3D image CT. 2D images get
  no intensity statistics unless the modality is given (a MIP PNG holds neither SUV nor HU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from .diameters import max_diameter, recist_axes
from .errors import TumorSegError
from .image import Image, binary_mask, superior_axis
from .modality import CT_MIN_BELOW, SUV_P99_MAX, guess

MODALITIES = ("PET", "CT")
SUV_PEAK_RADIUS_MM = (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0) * 10.0  # a 1 mL sphere
_PET_FIELDS = ("suv_max", "suv_mean", "suv_peak", "mtv_ml", "tlg")
_CT_FIELDS = ("hu_mean", "hu_max")
SIZE_KEYS = ("volume_ml", "area_mm2", "area_px")
_LENGTH_FIELDS = ("recist_long_mm", "recist_short_mm", "max3d_mm")


@dataclass
class Lesion:
    """One connected lesion. Lengths are in mm (pixels when ``Readouts.length_unit`` is "px");
    ``bbox`` holds inclusive [first, last] voxel indices per array axis."""

    label: int
    voxels: int
    volume_ml: float | None
    area_mm2: float | None
    area_px: float | None
    centroid_world: list
    bbox: list
    recist_long_mm: float
    recist_short_mm: float
    recist_slice: int | None
    recist_long_endpoints_world: list
    recist_short_endpoints_world: list
    max3d_mm: float | None
    max3d_endpoints_world: list | None
    suv_max: float | None = None
    suv_mean: float | None = None
    suv_peak: float | None = None
    mtv_ml: float | None = None
    tlg: float | None = None
    hu_mean: float | None = None
    hu_max: float | None = None


@dataclass
class Readouts:
    """Measurements of every lesion of a mask, with totals and notes on how they were read."""

    lesions: list
    totals: dict
    ndim: int
    modality: str | None
    length_unit: str
    acquisition_axis: int | None
    notes: list = field(default_factory=list)

    def offset_indices(self, corner) -> None:
        """Measured on a crop whose first voxel is ``corner`` of a larger grid: give the voxel indices (``bbox``,
        ``recist_slice``) on that grid. World positions and sizes do not change."""
        for lesion in self.lesions:
            lesion.bbox = [[int(a + o), int(b + o)] for (a, b), o in zip(lesion.bbox, corner)]
            if lesion.recist_slice is not None:
                lesion.recist_slice = int(lesion.recist_slice + corner[self.acquisition_axis])

    def _omitted(self) -> set:
        """Fields that do not apply to this kind of image (left out of dicts and tables)."""
        size = size_key(self.ndim, self.length_unit)
        omitted = {name for name in SIZE_KEYS if name != size}
        if self.ndim == 2:
            omitted |= {"recist_slice", "max3d_mm", "max3d_endpoints_world", "suv_peak", "mtv_ml", "tlg"}
        if self.modality != "PET":
            omitted |= set(_PET_FIELDS)
        if self.modality != "CT":
            omitted |= set(_CT_FIELDS)
        return omitted

    def _rename(self, name: str) -> str:
        return name[:-3] + "_px" if self.length_unit == "px" and name in _LENGTH_FIELDS else name

    def lesion_dicts(self) -> list:
        omitted = self._omitted()
        return [{self._rename(k): v for k, v in asdict(lesion).items() if k not in omitted} for lesion in self.lesions]

    def to_dict(self) -> dict:
        """JSON-ready readouts."""
        return {
            "modality": self.modality,
            "length_unit": self.length_unit,
            "acquisition_axis": self.acquisition_axis,
            "notes": list(self.notes),
            "lesions": self.lesion_dicts(),
            "totals": dict(self.totals),
        }

    def table_rows(self) -> list:
        """One flat dict per lesion (coordinates split into columns) for CSV files and tables."""
        world_names = ("r", "a", "s") if self.ndim == 3 else ("row_mm", "col_mm")
        index_names = ("i", "j", "k") if self.ndim == 3 else ("row", "col")
        rows = []
        for lesion in self.lesion_dicts():
            row = {}
            for key, value in lesion.items():
                if key == "centroid_world":
                    row.update({f"centroid_{n}": v for n, v in zip(world_names, value)})
                elif key == "bbox":
                    for n, (first, last) in zip(index_names, value):
                        row.update({f"bbox_{n}_first": first, f"bbox_{n}_last": last})
                elif key.endswith("_endpoints_world"):
                    stem = key[: -len("_endpoints_world")]
                    for end, point in enumerate(value or [], start=1):
                        row.update({f"{stem}_p{end}_{n}": v for n, v in zip(world_names, point)})
                else:
                    row[key] = value
            rows.append(row)
        return rows


def size_key(ndim: int, length_unit: str) -> str:
    """Name of the size readout: "volume_ml" (3D), "area_mm2" or "area_px" (2D)."""
    if ndim == 3:
        return "volume_ml"
    return "area_px" if length_unit == "px" else "area_mm2"


def image_size_key(image: Image) -> str:
    return size_key(image.ndim, "mm" if image.spacing_known else "px")


def size_of(voxels: int, image: Image) -> float:
    """Size of ``voxels`` voxels of ``image``'s grid in the unit of ``image_size_key``."""
    size = voxels * image.voxel_volume
    return size / 1000.0 if image.ndim == 3 else size


def organ_totals(name: str, organ_voxels: int, tumour_voxels_inside: int, grid: Image) -> dict:
    """The readouts of an organ segment (``terminology.ORGANS``): its size in the unit of ``image_size_key`` and the
    percentage of its voxels that are tumour (None for an empty organ)."""
    organ = name.lower()
    share = 100.0 * tumour_voxels_inside / organ_voxels if organ_voxels else None
    return {f"{organ}_{image_size_key(grid)}": size_of(organ_voxels, grid), f"tumour_percent_of_{organ}": share}


def label_lesions(mask: np.ndarray, ndim: int | None = None) -> tuple[np.ndarray, int]:
    """Connected lesions of a bool mask: (int32 labels 1..n, n). 18-connectivity in 3D, 8 in 2D."""
    ndim = mask.ndim if ndim is None else ndim
    if mask.ndim != ndim:
        raise TumorSegError(f"expected a {ndim}D mask, got shape {mask.shape}")
    structure = ndimage.generate_binary_structure(ndim, 2)
    labels, count = ndimage.label(mask, structure=structure, output=np.int32)
    return labels, int(count)


def measure_lesions(mask: Image | np.ndarray, image: Image | None = None, modality: str | None = None) -> Readouts:
    """Measure every lesion of ``mask`` (an Image, or a bool array on ``image``'s grid).

    ``image`` (optional) adds PET or CT statistics; ``modality`` ("PET"/"CT") says how to read it.
    """
    notes = []
    if isinstance(mask, Image):
        if image is not None:
            mask.require_same_grid(image)
        grid = mask
        lesion_mask = binary_mask(mask)
        notes += merged_labels_notes(mask)
    else:
        if image is None:
            raise TumorSegError("a bare mask array needs an image for its geometry")
        lesion_mask = np.asarray(mask)
        if lesion_mask.shape != image.shape:
            raise TumorSegError(f"mask shape {lesion_mask.shape} does not match the image shape {image.shape}")
        lesion_mask = lesion_mask.astype(bool, copy=False)
        grid = image
    if image is not None:
        image.require_finite("image")
    modality = resolve_modality(image, modality, notes)
    length_unit = "mm" if grid.spacing_known else "px"
    axis = superior_axis(grid.affine) if grid.ndim == 3 else None
    labels, count = label_lesions(lesion_mask)
    peak_offsets = _sphere_offsets(grid.affine, SUV_PEAK_RADIUS_MM) if modality == "PET" and grid.ndim == 3 else None
    lesions = []
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        crop = labels[box] == number
        lesion = _measure_one(crop, box, number, grid, axis)
        if modality is not None:
            _intensity_stats(lesion, crop, box, image, modality, peak_offsets)
        lesions.append(lesion)
    return Readouts(lesions, _totals(lesions, grid, modality, count), grid.ndim, modality, length_unit, axis, notes)


def merged_labels_notes(mask: Image, what: str = "mask") -> list:
    """A note (in a list, empty when not needed) that a mask's several labels are read as one tumour class."""
    values = np.unique(mask.array[mask.array != 0])
    if len(values) < 2:
        return []
    shown = ", ".join(str(v.item()) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    return [f"{what} has {len(values)} labels ({shown}): every non-zero voxel is tumour, labels merged"]


def resolve_modality(image: Image | None, modality: str | None, notes: list) -> str | None:
    """PET, CT or None (no image, or a 2D image of unknown kind); explains a guess in ``notes``."""
    if image is None:
        return None
    chosen = modality or image.meta.get("modality")
    if chosen:
        chosen = str(chosen).upper()
        if chosen not in MODALITIES:
            raise TumorSegError(f"unknown modality {chosen!r}: use PET or CT")
        if chosen == "PET" and image.array.dtype in (np.uint8, np.int8):
            raise TumorSegError("PET readouts need a PET image in SUV; this image has 8-bit grey levels (a MIP PNG "
                                "or a screenshot), which are not SUV: measure it without --modality PET")
        return chosen
    if image.ndim == 2:
        notes.append("2D image of unknown modality: no intensity statistics (give the modality to get them)")
        return None
    if guess(image.array) == "PET":
        notes.append(f"modality guessed PET (floating-point values, none below {CT_MIN_BELOW:g}, 99th percentile at "
                     f"most {SUV_P99_MAX:g}: read as SUV)")
        return "PET"
    notes.append("modality guessed CT (values read as HU)")
    return "CT"


def _measure_one(crop: np.ndarray, box: tuple, number: int, grid: Image, axis: int | None) -> Lesion:
    offset = np.array([s.start for s in box], dtype=np.float64)
    linear = grid.affine[: grid.ndim, : grid.ndim]
    voxels = int(np.count_nonzero(crop))
    size = size_of(voxels, grid)
    key = image_size_key(grid)
    long_axis, short_axis, slice_number = recist_axes(crop, linear, axis)
    feret = max_diameter(crop, linear) if grid.ndim == 3 else None

    def world(ends):  # crop indices -> world mm
        return grid.to_world(ends + offset).tolist()

    return Lesion(
        label=number,
        voxels=voxels,
        volume_ml=size if key == "volume_ml" else None,
        area_mm2=size if key == "area_mm2" else None,
        area_px=size if key == "area_px" else None,
        centroid_world=grid.to_world(np.argwhere(crop).mean(axis=0) + offset).tolist(),
        bbox=[[s.start, s.stop - 1] for s in box],
        recist_long_mm=long_axis.length,
        recist_short_mm=short_axis.length,
        recist_slice=None if slice_number is None else slice_number + box[axis].start,
        recist_long_endpoints_world=world(long_axis.ends),
        recist_short_endpoints_world=world(short_axis.ends),
        max3d_mm=None if feret is None else feret.length,
        max3d_endpoints_world=None if feret is None else world(feret.ends),
    )


def _intensity_stats(lesion: Lesion, crop: np.ndarray, box: tuple, image: Image, modality: str,
                     peak_offsets: np.ndarray | None) -> None:
    values = image.array[box][crop].astype(np.float64)
    if modality == "CT":
        lesion.hu_mean, lesion.hu_max = float(values.mean()), float(values.max())
        return
    lesion.suv_max, lesion.suv_mean = float(values.max()), float(values.mean())
    if image.ndim == 3:
        hottest = np.argwhere(crop)[int(np.argmax(values))] + [s.start for s in box]
        lesion.suv_peak = _sphere_mean(image.array, hottest, peak_offsets)
        lesion.mtv_ml = lesion.volume_ml
        lesion.tlg = lesion.suv_mean * lesion.mtv_ml


def _sphere_offsets(affine: np.ndarray, radius_mm: float) -> np.ndarray:
    """Integer voxel offsets (n, 3) whose centres lie within ``radius_mm`` of a voxel centre."""
    linear = affine[:3, :3]
    reach = np.ceil(radius_mm * np.linalg.norm(np.linalg.inv(linear), axis=1)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[np.linalg.norm(grid @ linear.T, axis=1) <= radius_mm]


def _sphere_mean(array: np.ndarray, centre: np.ndarray, offsets: np.ndarray) -> float:
    """Mean of ``array`` over ``centre + offsets`` (voxels outside the image left out)."""
    index = centre + offsets
    inside = np.all((index >= 0) & (index < array.shape), axis=1)
    return float(array[tuple(index[inside].T)].astype(np.float64).mean())


def _totals(lesions: list, grid: Image, modality: str | None, count: int) -> dict:
    key = image_size_key(grid)
    length = "mm" if grid.spacing_known else "px"
    totals = {
        "lesion_count": count,
        "voxels": sum(lesion.voxels for lesion in lesions),
        key: size_of(sum(lesion.voxels for lesion in lesions), grid),
        f"sum_longest_diameters_{length}": float(sum(lesion.recist_long_mm for lesion in lesions)),
    }
    if modality == "PET":
        totals["suv_max"] = max((lesion.suv_max for lesion in lesions), default=None)
        if grid.ndim == 3:
            totals["mtv_ml"] = totals["volume_ml"]
            totals["tlg"] = float(sum(lesion.tlg for lesion in lesions))
    elif modality == "CT":
        totals["hu_max"] = max((lesion.hu_max for lesion in lesions), default=None)
    return totals
