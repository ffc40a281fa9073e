"""``python -m TumorSegLib`` is the ``tumorseg`` command (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
