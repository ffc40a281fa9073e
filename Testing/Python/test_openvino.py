"""OpenVINO backend: backend choice and fallback, the on-disk cache keyed by the weights, and the
OpenVINO path giving the PyTorch fp32 mask (skipped when OpenVINO is not installed)."""

import numpy as np
import pytest
import torch

from TumorSegLib import openvino_backend
from TumorSegLib.engine import Segmenter
from TumorSegLib.errors import TumorSegError
from TumorSegLib.metrics import dice
from TumorSegLib.networks import build_network
from TumorSegLib.openvino_backend import cache_dir, resolve_backend, weights_sha256
from TumorSegLib.testing import lesion_png, lesion_volume, tiny_model

NEEDS_OPENVINO = pytest.mark.skipif(not openvino_backend.installed(),
                                    reason="OpenVINO is not installed (pip install 'tumorseg[openvino]')")
FP32 = {"precision": "fp32"}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ct3d(tmp_path_factory):
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny-models", "sliding-window-3d", "CT")


@pytest.fixture(scope="module")
def mip2d(tmp_path_factory):
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny-models", "whole-image-2d", "MIP-PET")


def test_backend_choice():
    assert resolve_backend("torch", CPU) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"  # PyTorch stays for CUDA
    assert resolve_backend("auto", CPU) == ("openvino" if openvino_backend.installed() else "torch")
    with pytest.raises(TumorSegError, match="CPU only"):
        resolve_backend("openvino", torch.device("cuda"))
    with pytest.raises(TumorSegError, match="backend must be one of"):
        resolve_backend("onnx", CPU)


def test_without_openvino_auto_falls_back_to_torch_and_openvino_is_refused(monkeypatch, ct3d):
    monkeypatch.setattr(openvino_backend, "installed", lambda: False)
    segmenter = Segmenter(ct3d, "cpu")
    assert segmenter.backend == "torch" and isinstance(segmenter.network, torch.nn.Module)
    with pytest.raises(TumorSegError, match="OpenVINO is not installed"):
        Segmenter(ct3d, "cpu", backend="openvino")


def test_auto_falls_back_to_torch_when_conversion_fails(monkeypatch, ct3d):
    def refuse(*args, **kwargs):
        raise TumorSegError("OpenVINO cannot convert this network: test")

    monkeypatch.setattr(openvino_backend, "installed", lambda: True)
    monkeypatch.setattr(openvino_backend, "OpenVinoNetwork", refuse)
    segmenter = Segmenter(ct3d, "cpu")
    assert segmenter.backend == "torch"
    image = lesion_volume("CT")[0]
    assert any("OpenVINO not used" in note for note in segmenter.predict(image).notes)
    with pytest.raises(TumorSegError, match="cannot convert"):
        Segmenter(ct3d, "cpu", backend="openvino")


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" / "openvino"
    monkeypatch.delenv("TUMORSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "tumorseg" / "openvino"


def test_weights_digest_changes_with_any_weight(ct3d):
    network = build_network(ct3d)
    before = weights_sha256(network)
    assert weights_sha256(network.to(memory_format=torch.channels_last_3d)) == before  # layout is not content
    with torch.no_grad():
        next(network.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(network) != before


@NEEDS_OPENVINO
def test_cache_is_reused_and_invalidated_when_the_weights_change(ct3d, monkeypatch, tmp_path):
    monkeypatch.setenv("TUMORSEG_CACHE", str(tmp_path))
    network = build_network(ct3d).eval()
    first = openvino_backend.OpenVinoNetwork(network, 3)
    again = openvino_backend.OpenVinoNetwork(network, 3)
    assert first.converted and not again.converted and again.path == first.path
    with torch.no_grad():
        next(network.parameters()).view(-1)[0] += 0.5
    changed = openvino_backend.OpenVinoNetwork(network, 3)
    assert changed.converted and changed.path != first.path
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.inference_mode():
        expected = network(x)
    assert torch.allclose(changed(x), expected, atol=1e-3)  # the cache holds the new weights, not the old
    assert not torch.allclose(first(x), expected, atol=1e-3)
    assert len(list(cache_dir().glob("*.xml"))) == 2


@NEEDS_OPENVINO
@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_openvino_fp32_gives_the_pytorch_fp32_mask(kind, ct3d, mip2d):
    card, image = (ct3d, lesion_volume("CT")[0]) if kind == "3d" else (mip2d, lesion_png()[0])
    torch_run = Segmenter(card, "cpu", backend="torch").predict(image, overrides=FP32)
    segmenter = Segmenter(card, "cpu", backend="openvino")
    assert segmenter.backend == "openvino"
    ours = segmenter.predict(image, overrides=FP32)
    assert torch_run.mask.any() and torch_run.mask.mean() < 0.5  # a real mask, not empty or everything
    assert np.abs(ours.probability - torch_run.probability).max() < 1e-3
    assert dice(ours.mask, torch_run.mask) >= 0.99


@NEEDS_OPENVINO
def test_openvino_slices_and_roi_match_pytorch(tmp_path):
    card = tiny_model(tmp_path, "slice-2d", "CT")
    image = lesion_volume("CT")[0]
    roi = (4, 30, 2, 30, 3, 15)
    expected = Segmenter(card, "cpu", backend="torch").predict(image, roi=roi, overrides=FP32)
    ours = Segmenter(card, "cpu", backend="openvino").predict(image, roi=roi, overrides=FP32)
    assert np.abs(ours.probability - expected.probability).max() < 1e-3
    assert dice(ours.mask, expected.mask) >= 0.99
