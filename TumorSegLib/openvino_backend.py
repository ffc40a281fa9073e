"""OpenVINO inference on the CPU (the optional extra ``pip install tumorseg[openvino]``).

``OpenVinoNetwork(network, spatial_dims, in_channels)`` wraps a PyTorch network prepared for
inference (``networks.for_inference``, BatchNorms folded) into a callable with the same contract
as the module for the engine's ``inferers.Predictor``: ``(batch, dtype) -> logits`` as a float32
torch tensor. The network is converted once per weights to OpenVINO IR with dynamic batch and
spatial sizes and kept on disk (``cache_dir()``), named by the SHA-256 of its weights and the
OpenVINO version, so new weights or a new OpenVINO convert again. Each input shape and precision
is compiled once per process (OpenVINO keeps the compiled blobs in the same folder, keyed by model,
shape and settings). ``dtype`` None runs f32; ``torch.bfloat16`` sets OpenVINO's bf16 inference
precision hint, the same rule as PyTorch's bf16 autocast (card ``inference.precision``).

The cache folder is ``$TUMORSEG_CACHE``, else ``$XDG_CACHE_HOME/tumorseg``, else
``~/.cache/tumorseg`` (never a model folder, which the user may not own).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cards import Backend
from .errors import TumorSegError

BACKENDS = Backend.values()


def installed() -> bool:
    """True when the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


def cache_dir() -> Path:
    """Where converted and compiled models are kept (created on first use)."""
    root = os.environ.get("TUMORSEG_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tumorseg"
    return Path(root) / "openvino"


def weights_sha256(network: torch.nn.Module) -> str:
    """SHA-256 over the network's parameters and buffers (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def resolve_backend(backend: str, device: torch.device) -> str:
    """"torch" or "openvino" for ``backend`` on ``device`` ("auto": OpenVINO on a CPU when installed)."""
    if backend not in BACKENDS:
        raise TumorSegError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "openvino":
        if device.type != "cpu":
            raise TumorSegError(f"backend 'openvino' runs on the CPU only, not on {device.type} (use --backend torch)")
        if not installed():
            raise TumorSegError("backend 'openvino' asked for but OpenVINO is not installed "
                                "(pip install 'tumorseg[openvino]', or use --backend torch)")
        return "openvino"
    if backend == "auto" and device.type == "cpu" and installed():
        return "openvino"
    return "torch"


class OpenVinoNetwork:
    """``(batch, dtype) -> logits``: the network run by OpenVINO on the CPU (see the module docstring)."""

    runs_dtype = True  # inferers.Predictor passes the precision instead of entering autocast

    def __init__(self, network: torch.nn.Module, spatial_dims: int, in_channels: int = 1, threads: int | None = None):
        import openvino as ov

        self.core = ov.Core()
        self.folder = cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.core.set_property({"CACHE_DIR": str(self.folder / "compiled")})
        version = re.sub(r"[^A-Za-z0-9.]+", "_", ov.__version__)  # e.g. 2026.4.1-22982-e213a147257-releases/2026/4
        self.key = f"{weights_sha256(network)}-ov{version}-{spatial_dims}d"
        self.path = self.folder / f"{self.key}.xml"
        self.converted = False  # whether this instance converted the network (False: read from the cache)
        if not self.path.is_file():
            self._convert(network, spatial_dims, in_channels)
        self.model = self.core.read_model(str(self.path))
        self.threads = int(threads or torch.get_num_threads())
        self.compiled = {}

    def _convert(self, network: torch.nn.Module, spatial_dims: int, in_channels: int) -> None:
        import openvino as ov

        example = torch.zeros((1, in_channels, *([32] * spatial_dims)))
        try:
            with torch.inference_mode(False), torch.no_grad():
                model = ov.convert_model(network.to(memory_format=torch.contiguous_format), example_input=example,
                                         input=[ov.PartialShape([-1, in_channels] + [-1] * spatial_dims)])
        except Exception as error:  # converter errors come in many types
            raise TumorSegError(f"OpenVINO cannot convert this network: {error}") from error
        partial = self.path.with_suffix(f".{os.getpid()}.xml")  # written beside, then renamed: no half-written cache
        ov.save_model(model, str(partial), compress_to_fp16=False)
        partial.with_suffix(".bin").replace(self.path.with_suffix(".bin"))
        partial.replace(self.path)
        self.converted = True

    def compiled_for(self, shape: tuple, dtype: torch.dtype | None) -> Any:
        """The model compiled for one input ``shape`` and precision (``dtype`` None: f32)."""
        precision = "bf16" if dtype == torch.bfloat16 else "f32"
        key = (tuple(shape), precision)
        if key not in self.compiled:
            model = self.model.clone()
            model.reshape({model.input(0): list(shape)})
            self.compiled[key] = self.core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads})
        return self.compiled[key]

    def __call__(self, batch: torch.Tensor, dtype=None) -> torch.Tensor:
        if dtype not in (None, torch.float32, torch.bfloat16):
            raise TumorSegError(f"OpenVINO runs f32 or bf16, not {dtype}")
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        result = self.compiled_for(array.shape, dtype)(array)
        return torch.from_numpy(np.array(result[0], dtype=np.float32))

    def kernels(self) -> list:
        """The distinct kernel types OpenVINO chose for the convolutions of the models compiled so far
        (for example ``brgconv_avx512_amx_bf16`` or ``jit_avx2_FP32``): which ISA actually ran."""
        found = set()
        for compiled in self.compiled.values():
            for op in compiled.get_runtime_model().get_ops():
                info = {key: str(getattr(value, "value", value)) for key, value in op.get_rt_info().items()}
                if info.get("layerType") == "Convolution":
                    found.add(info.get("primitiveType", "?"))
        return sorted(found)
