"""Overlay PNGs: the mask in red and, when given, an organ outlined in blue beneath it."""

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage

from TumorSegLib.overlay import BLUE, RED, overlay_png
from TumorSegLib.testing import lesion_png, lesion_volume


def colours(path) -> tuple:
    rgb = np.asarray(PILImage.open(path).convert("RGB")).reshape(-1, 3)
    return bool((rgb == RED.astype(np.uint8)).all(1).any()), bool((rgb == BLUE).all(1).any())


def test_an_organ_is_outlined_in_blue_around_the_red_lesion(tmp_path):
    image, lesion = lesion_volume("CT")
    organ = ndimage.binary_dilation(lesion, iterations=4)
    assert colours(overlay_png(tmp_path / "without.png", image, lesion)) == (True, False)
    assert colours(overlay_png(tmp_path / "with.png", image, lesion, organ=organ)) == (True, True)
    picture, spots = lesion_png()
    assert colours(overlay_png(tmp_path / "2d.png", picture, spots, organ=ndimage.binary_dilation(spots, iterations=3))) \
        == (True, True)
