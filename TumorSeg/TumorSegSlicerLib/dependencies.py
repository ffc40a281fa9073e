"""The backend's Python packages inside Slicer: checked without importing them, installed on request.

torch comes from the PyTorch Utils extension (it picks the build matching the GPU driver);
the rest through ``slicer.util.pip_install`` with the ranges below. Nothing is installed at import.
"""

from __future__ import annotations

import importlib.util

REQUIREMENTS = {
    "monai": "monai>=1.3,<2",
    "nibabel": "nibabel>=5.0",
    "scipy": "scipy>=1.10",
    "nrrd": "pynrrd>=1.0",
    "tqdm": "tqdm>=4.60",
}
TORCH_REQUIREMENT = ">=2.1"


def missing_packages() -> list:
    """Import names of the backend packages that are not installed (torch first)."""
    names = ["torch", *REQUIREMENTS]
    return [name for name in names if importlib.util.find_spec(name) is None]


def describe_missing(missing) -> str:
    return "" if not missing else ("TumorSeg needs Python packages that are not installed: " + ", ".join(missing)
                                   + ". Click 'Install dependencies' (torch comes through the PyTorch Utils extension).")


def install(missing, torch_installer=None) -> None:
    """Install the missing packages: torch via PyTorch Utils, the others with pinned ranges."""
    import slicer

    if "torch" in missing:
        if torch_installer is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError as error:
                raise RuntimeError("torch is missing: install the 'PyTorch' extension from the Extensions Manager, "
                                   "restart Slicer, then click 'Install dependencies' again") from error
            torch_installer = PyTorchUtils.PyTorchUtilsLogic()
        if torch_installer.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise RuntimeError("torch was not installed")
    others = [REQUIREMENTS[name] for name in missing if name in REQUIREMENTS]
    if others:
        slicer.util.pip_install(others)


def device_description() -> tuple:
    """(available devices, a line describing them); torch is imported only when installed."""
    if importlib.util.find_spec("torch") is None:
        return ["cpu"], "torch not installed"
    import torch

    if torch.cuda.is_available():
        return ["cuda", "cpu"], f"GPU: {torch.cuda.get_device_name(0)}"
    return ["cpu"], "no GPU found: CPU only"
