"""What each segment TumorSeg writes is: its name, SNOMED CT category and type, and display colour.

One table for every consumer: the Slicer module's segments (their terminology entry, ``slicer_entry``) and the
DICOM SEG's segment descriptions. The tumour segment is always written; an organ segment (``ORGANS``) when a card
names the organ its tumour lies in (``output.within.organ``).
"""

from __future__ import annotations

from dataclasses import dataclass

Code = tuple  # (code value, coding scheme designator, code meaning)


@dataclass(frozen=True)
class Segment:
    name: str
    category: Code
    type: Code
    color: tuple  # RGB in 0..1: Slicer's recommended display colour for the type (the tumour: TumorSeg's red)


ANATOMICAL_STRUCTURE = ("123037004", "SCT", "Anatomical Structure")
TUMOR = Segment("Tumor", ("49755003", "SCT", "Morphologically Altered Structure"), ("108369006", "SCT", "Neoplasm"),
                (0.85, 0.2, 0.2))
ORGANS = {
    "Liver": Segment("Liver", ANATOMICAL_STRUCTURE, ("10200004", "SCT", "Liver"), (221 / 255, 130 / 255, 101 / 255)),
}


def slicer_entry(segment: Segment) -> str:
    """The 3D Slicer (>= 5.6) terminology entry string of ``segment`` (vtkSegment tag "TerminologyEntry")."""
    category, kind = ("^".join((code[1], code[0], code[2])) for code in (segment.category, segment.type))
    return (f"Segmentation category and type - DICOM master list~{category}~{kind}~^^"
            "~Anatomic codes - DICOM master list~^^~^^")
