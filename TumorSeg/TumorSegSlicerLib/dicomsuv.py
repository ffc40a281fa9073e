"""SUV for PET volumes in Slicer, from their DICOM header with the CLI's code (``TumorSegLib.suv``).

- A volume whose voxel value units are already SUV (the PET-DICOM extension's "{SUVbw}g/ml" and
  friends, UCUM) is read as it is.
- A volume loaded from DICOM (attribute ``DICOM.instanceUIDs``) has its files looked up in Slicer's
  DICOM database (``fileForInstance``) and its SUV factor computed from their headers: Units GML
  gives 1, Units BQML the QIBA body-weight factor.
- When the header cannot give SUV, the readouts stay in the stored units (e.g. Bq/mL) and the
  reason is given; a volume with neither (NIfTI, NRRD) is taken as SUV, as before.
MRML and ``slicer`` only: no qt.
"""

from __future__ import annotations

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
NOTE_ATTRIBUTE = "TumorSeg.SUVNote"  # on the readouts table: what the panel shows about the SUV
SUV_UNIT_CODES = {"{SUVbw}g/ml": "SUVbw", "{SUVlbm}g/ml": "SUVlbm", "{SUVbsa}cm2/ml": "SUVbsa", "{SUVibw}g/ml": "SUVibw"}


def volume_units(volumeNode) -> str | None:
    """The SUV kind of the volume's voxel value units (PET-DICOM extension), else None."""
    units = volumeNode.GetVoxelValueUnits() if hasattr(volumeNode, "GetVoxelValueUnits") else None
    return SUV_UNIT_CODES.get(units.GetCodeValue()) if units is not None else None


def suv_factor(volumeNode, database=None):
    """The ``TumorSegLib.suv.SuvFactor`` of a PET volume node, or None when it carries no DICOM information.

    ``database``: Slicer's DICOM database (``slicer.dicomDatabase`` by default).
    """
    from TumorSegLib.suv import SuvFactor, suv_factor_from_files

    kind = volume_units(volumeNode)
    if kind is not None:
        return SuvFactor(1.0, kind, notes=[f"volume already in {kind} (its voxel value units)"])
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return None
    if database is None:
        import slicer

        database = getattr(slicer, "dicomDatabase", None)
    files = [database.fileForInstance(uid) for uid in uids] if database is not None else []
    if not files or not all(files):
        return SuvFactor(None, "stored units", reason="the volume's DICOM files are not in Slicer's DICOM database")
    return suv_factor_from_files(files)


def suv_image(image, volumeNode, database=None) -> tuple:
    """(image in SUV where the header allows, note for the panel or None) for PET readouts."""
    factor = suv_factor(volumeNode, database)
    if factor is None:
        return image, None
    if factor.value is None:
        return image, f"readouts in the volume's stored units (e.g. Bq/mL), not SUV: {factor.reason}"
    if factor.value == 1.0:
        return image, None
    return image.with_array((image.array * factor.value).astype("float32"), units=factor.units), (
        f"SUV computed from the DICOM header ({factor.units}, factor {factor.value:.6g})")
