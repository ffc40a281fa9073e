"""Networks named by a model card, and their weights.

``network.name`` is a class in ``monai.networks.nets`` (``AttentionUnet`` by default) and
``network.args`` its keyword arguments. Weights are a ``state_dict`` saved with ``torch.save``
or a TorchScript module; both are checked against the card's SHA-256 before loading. A card
whose ``weights.ensemble`` lists more files runs them all on each input and averages their logits
(``Ensemble``).

For inference, ``for_inference`` makes an eval-mode copy with each BatchNorm folded into the
convolution before it (the same function, one memory pass less per layer) in the channels-last
memory layout; what each gains is measured by ``Testing/benchmarks/bench_inference.py`` (the
README's performance section).
"""

from __future__ import annotations

import pickle

import torch

from .cards import ModelCard, WeightsFormat, verified_weights
from .errors import TumorSegError, brief


def build_network(card: ModelCard) -> torch.nn.Module:
    """A fresh, untrained network as the card describes it."""
    from monai.networks import nets

    name = card.network.name
    cls = getattr(nets, name, None)
    if cls is None or not isinstance(cls, type):
        raise TumorSegError(f"model {card.name!r}: unknown MONAI network {name!r}")
    try:
        return cls(**card.network.kwargs)
    except TypeError as error:
        raise TumorSegError(f"model {card.name!r}: bad arguments for {name}: {error}") from error


class Ensemble(torch.nn.Module):
    """Networks of one architecture run on the same input, their logits averaged (``weights.ensemble``)."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(batch) for member in self.members]).mean(0)


def load_network(card: ModelCard, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The card's network with its verified weights (an ``Ensemble`` for several), in eval mode on ``device``."""
    members = [_load_weights(card, path) for path in verified_weights(card)]
    network = members[0] if len(members) == 1 else Ensemble(members)
    return network.to(device).eval()


def _load_weights(card: ModelCard, path) -> torch.nn.Module:
    try:
        if card.weights.format == WeightsFormat.TORCHSCRIPT:
            return torch.jit.load(str(path), map_location="cpu")
        network = build_network(card)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        return network
    except TumorSegError:
        raise
    except Exception as error:
        raise TumorSegError(f"cannot load weights {path} for model {card.name!r}: {load_error_reason(error)}") from None


def load_error_reason(error: BaseException) -> str:
    """Why ``torch.load`` refused a file, in one line, without PyTorch's advice to bypass the safety check."""
    if isinstance(error, pickle.UnpicklingError) or "weights only load failed" in str(error).lower():
        return "the file holds Python objects other than tensors and plain data; it was refused because loading it could run code"
    return brief(error)


CONVOLUTIONS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def fold_batch_norm(network: torch.nn.Module) -> tuple:
    """``(network, folded)``: an eval-mode copy with every BatchNorm that directly follows a
    (transposed) convolution folded into it, and how many were folded.

    The copy is a ``torch.fx.GraphModule``. A network with nothing to fold, or one fx cannot trace
    (TorchScript, control flow on tensor values), is returned as it is with 0. The input network is
    not modified.
    """
    import collections
    import copy

    import torch.fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if isinstance(network, torch.jit.ScriptModule):
        return network, 0
    try:
        traced = torch.fx.symbolic_trace(copy.deepcopy(network).eval())
    except Exception:  # fx cannot trace every network; folding is an optimisation only
        return network, 0
    modules = dict(traced.named_modules())
    calls = collections.Counter(n.target for n in traced.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], BATCH_NORMS):
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1
                and calls[source.target] == 1):  # a convolution called once, feeding only this norm
            continue
        conv, norm = modules[source.target], modules[node.target]
        if not isinstance(conv, CONVOLUTIONS + TRANSPOSED) or not norm.track_running_stats:
            continue
        fused = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, TRANSPOSED))
        parent, _, name = source.target.rpartition(".")
        setattr(traced.get_submodule(parent) if parent else traced, name, fused)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:  # nothing gained: keep the original module rather than its trace
        return network, 0
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced.eval(), folded


def for_inference(network: torch.nn.Module, spatial_dims: int) -> tuple:
    """``(network, memory_format)``: an eval-mode copy of ``network`` with its BatchNorms folded,
    in the channels-last layout that its inputs should also take. ``network`` is not modified."""
    import copy

    folded, count = fold_batch_norm(network)
    if not count:
        folded = copy.deepcopy(network).eval()
    memory_format = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    return folded.to(memory_format=memory_format), memory_format
