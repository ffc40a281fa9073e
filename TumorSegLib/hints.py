"""Type aliases used in the public signatures of TumorSegLib."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]  # a file or folder path
Box = Tuple[Tuple[int, int], ...]  # half-open voxel box, (lo, hi) per axis like Python slices
Shape = Sequence[int]  # voxels per axis
Point = Sequence[float]  # world mm (RAS for 3D; row, col mm on a 2D image)
Overrides = Optional[Mapping[str, Any]]  # the user's settings over a card's (``cards.settings_for``)
