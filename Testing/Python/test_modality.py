"""One modality rule (``TumorSegLib.modality``) for the engine's input checks, the readouts and the Slicer module."""

from __future__ import annotations

import numpy as np
import pytest

from TumorSegLib import modality
from TumorSegLib.cards import card_from_dict
from TumorSegLib.engine import check_input
from TumorSegLib.errors import TumorSegError
from TumorSegLib.image import Image
from TumorSegLib.measure import resolve_modality
from TumorSegLib.testing import lesion_volume, tiny_card_dict

CT_CARD = card_from_dict(tiny_card_dict("ct", "sliding-window-3d", "CT"))
PET_CARD = card_from_dict(tiny_card_dict("pet", "sliding-window-3d", "PET"))


def volumes() -> dict:
    ct, _ = lesion_volume("CT")
    pet, _ = lesion_volume("PET")
    return {
        "CT with air": (ct, "CT"),
        "PET in SUV": (pet, "PET"),
        "PET in Bq/mL": (pet.with_array(pet.array * 1000.0), None),
        "CT without air (int16 soft tissue)": (ct.with_array(np.clip(ct.array, 0, 300).astype(np.int16)), None),
    }


def test_dicom_modality_comes_first():
    assert [modality.from_dicom(m) for m in ("PT", "pet", " CT ", "MR", "", None)] == ["PET", "PET", "CT", None, None, None]


@pytest.mark.parametrize("name", list(volumes()))
def test_engine_readouts_and_guess_follow_one_rule(name):
    image, expected = volumes()[name]
    assert modality.guess(image.array) == expected
    notes = []
    untagged = Image(image.array, image.affine)  # no modality in its header
    assert resolve_modality(untagged, None, notes) == (expected or "CT")  # readouts: HU unless SUV
    ct_ok = _accepts(CT_CARD, image)
    assert ct_ok == (expected == "CT")
    if expected == "PET":
        assert _accepts(PET_CARD, image)
    if expected == "CT" or np.issubdtype(image.array.dtype, np.floating) and expected is None:
        assert not _accepts(PET_CARD, image)


def _accepts(card, image) -> bool:
    try:
        check_input(image, card)
    except TumorSegError:
        return False
    return True
