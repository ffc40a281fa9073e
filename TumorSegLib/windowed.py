"""Windowed 8-bit CT pictures (JPEG slices) turned back into HU as a card's ``preprocessing.picture`` says.

Some CT data sets ship axial slices as display pictures: one HU window per colour channel, scaled
to 0..255, in a fixed display orientation and without pixel spacing (the LiTS JPEGs: R = W150/L30).
A card that was trained on such pictures names them::

    "picture": {"channel": 0, "window": [-45, 105], "spacing": [0.8, 0.8]}

``channel`` is the colour channel to read, ``window`` the HU range 0..255 stands for, ``spacing``
the pixel size (mm) assumed for pictures, which carry none. The picture becomes a 2D image in HU
(values outside the window are lost: the picture clipped them), so the engine and training apply
the card's ordinary HU preprocessing to pictures and CT volumes alike.
"""

from __future__ import annotations

import numpy as np

from .cards import ModelCard
from .errors import TumorSegError
from .hints import PathLike
from .image import Image
from .io import JPEG_SUFFIXES, read_image


def is_picture(path: PathLike) -> bool:
    """Whether ``path`` names a JPEG picture."""
    return str(path).lower().endswith(JPEG_SUFFIXES)


def picture_to_hu(image: Image, card: ModelCard) -> Image:
    """A 0..255 picture as HU on a grid of the card's assumed pixel spacing (``meta["picture"]`` set)."""
    spec = card.preprocessing.picture
    if spec is None:
        raise TumorSegError(f"model {card.name!r} does not take windowed pictures (no preprocessing.picture)")
    if image.ndim != 2:
        raise TumorSegError(f"a windowed picture must be 2D, got shape {image.shape}")
    low, high = (float(v) for v in spec.window)
    values = np.asarray(image.array, dtype=np.float32)
    if values.min() < 0 or values.max() > 255:
        raise TumorSegError(f"a windowed picture needs values 0..255, got {values.min():g}..{values.max():g}")
    hu = np.float32(low) + values * np.float32((high - low) / 255.0)
    spacing = spec.spacing
    affine = np.diag([*(float(s) for s in spacing), 1.0]) if spacing else np.eye(3)
    return Image(hu, affine, spacing_known=bool(spacing), meta={**image.meta, "picture": spec.to_dict()})


def read_input(path: PathLike, card: ModelCard, what: str = "input image") -> Image:
    """Read ``path`` for ``card``: a JPEG through its ``picture`` channel and window, anything else as is."""
    if not is_picture(path):
        return read_image(path, what)
    spec = card.preprocessing.picture
    if spec is None:
        raise TumorSegError(f"{what} {path} is a JPEG, but model {card.name!r} does not take windowed pictures")
    return picture_to_hu(read_image(path, what, channel=spec.channel), card)


def picture_notes(image: Image) -> list:
    """What a user must know about the readouts of a picture (none for other images)."""
    spec = image.meta.get("picture")
    if not spec:
        return []
    low, high = spec["window"]
    size = "x".join(f"{s:g}" for s in spec["spacing"]) + " mm pixels" if spec.get("spacing") else "no pixel spacing"
    return [f"the input is a windowed picture: HU outside {low:g}..{high:g} were clipped by it, and its areas assume "
            f"{size} (the file has no spacing)"]


def require_read_for(image: Image, card: ModelCard) -> None:
    """Refuse a picture for a card that reads none, or that reads another channel or window: the HU it holds are
    not those the card was trained on (a cascade or average of cards that read pictures differently)."""
    spec = image.meta.get("picture")
    wanted = card.preprocessing.picture
    if not spec:
        return
    if wanted is None:
        raise TumorSegError(f"model {card.name!r} does not take windowed pictures, but runs on one here (with a "
                            "model that does): cards that run together on a picture must all read pictures")
    if spec["channel"] != wanted.channel or list(spec["window"]) != list(wanted.window):
        raise TumorSegError(
            f"model {card.name!r} reads pictures through channel {wanted.channel}, window {list(wanted.window)}, but "
            f"this picture was read through channel {spec['channel']}, window {list(spec['window'])}: cards that run "
            "together on a picture must read the same channel and window (CT volumes in HU are not affected)")


def saturation_note(image: Image, median: float, organ: str) -> str | None:
    """A note when an organ whose median is ``median`` lies at the top of the picture's window (within 1 % of it):
    the picture clipped the organ and anything as bright, such as an enhanced liver and its tumour. None for an
    organ below the top, or an image that is no picture."""
    spec = image.meta.get("picture")
    if not spec:
        return None
    low, high = spec["window"]
    if median < high - 0.01 * (high - low):
        return None
    return (f"the picture's window ends at {high:g} HU and the {organ} lies at its top: a tumour as bright as the "
            f"{organ} cannot be seen in this picture")


def default_picture_card(extra_dir: PathLike | None = None) -> ModelCard:
    """The one model with weights present that takes windowed pictures (for a JPEG input without --model); a card
    that another of them takes its organ from (``inference.organ_from``) is a part of that one, not a choice."""
    from .cards import USABLE, list_cards, weights_status

    cards = [c for c in list_cards(extra_dir) if c.preprocessing.picture is not None and weights_status(c) in USABLE]
    parts = {c.inference.organ_from for c in cards}
    cards = [c for c in cards if c.name not in parts]
    if len(cards) != 1:
        names = ", ".join(c.name for c in cards) or "none"
        raise TumorSegError(f"a JPEG input needs a model that takes windowed pictures; found {names}: choose one with --model")
    return cards[0]
