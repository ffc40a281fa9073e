"""The Slicer module's logic against real MRML (slicer-core wheel), headless.

A fixture builds the small "application" Slicer would provide (``slicer_app``: scene, application
logic, colours, Volumes / Segmentations / SubjectHierarchy logics, ``slicer.mrmlScene`` and a
``slicer.modules`` stand-in for logic lookup); MRML itself is real. The test bodies are the
module's self-test (TumorSeg/TumorSegSlicerLib/selftest.py), so CI runs what Slicer runs.
"""

import sys
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "TumorSeg"))

import slicer_app  # noqa: E402
from TumorSegSlicerLib import selftest  # noqa: E402


@pytest.fixture
def logic():
    with slicer_app.module_logic() as tumorseg:
        yield tumorseg


@pytest.fixture(scope="session")
def workspace(request, tmp_path_factory):
    """Files and tiny models; the models are cached between sessions in pytest's cache folder when there is one."""
    cache = getattr(request.config, "cache", None)
    return selftest.workspace(cache.mkdir("tumorseg-slicer") if cache else tmp_path_factory.mktemp("tumorseg-slicer"))


@pytest.mark.parametrize("name, body", selftest.TESTS, ids=[name for name, _ in selftest.TESTS])
def test_self_test(name, body, logic, workspace):
    body(logic, workspace)
