"""Networks named by a model card, and their weights.

``network.name`` is a class in ``monai.networks.nets`` (``AttentionUnet`` by default) and
``network.args`` its keyword arguments. Weights are a ``state_dict`` saved with ``torch.save``
or a TorchScript module; both are checked against the card's SHA-256 before loading.
"""

from __future__ import annotations

import torch

from .cards import ModelCard, verified_weights
from .errors import TumorSegError


def build_network(card: ModelCard) -> torch.nn.Module:
    """A fresh, untrained network as the card describes it."""
    from monai.networks import nets

    name = card.network.get("name", "AttentionUnet")
    cls = getattr(nets, name, None)
    if cls is None or not isinstance(cls, type):
        raise TumorSegError(f"model {card.name!r}: unknown MONAI network {name!r}")
    try:
        return cls(**card.network.get("args", {}))
    except TypeError as error:
        raise TumorSegError(f"model {card.name!r}: bad arguments for {name}: {error}") from error


def load_network(card: ModelCard, device="cpu") -> torch.nn.Module:
    """The card's network with its verified weights, in eval mode on ``device``."""
    path = verified_weights(card)
    try:
        if card.weights.get("format", "state_dict") == "torchscript":
            network = torch.jit.load(str(path), map_location="cpu")
        else:
            network = build_network(card)
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            network.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except TumorSegError:
        raise
    except Exception as error:
        raise TumorSegError(f"cannot load weights {path} for model {card.name!r}: {error}") from error
    return network.to(device).eval()
