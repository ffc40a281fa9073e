"""The lesion filter's network (``postprocessing.lesion_filter.network``): a small CNN that scores each predicted
lesion from its surroundings and its hand features.

Its input per lesion is ``lesion_filter.lesion_patches`` (``PATCH_CHANNELS`` over a square around the lesion) and
the lesion's standardised ``lesion_filter.FEATURES``, joined after the convolutions' global average. A score is the
mean of the sigmoid over the patch and its left-right mirror image (MIPs are nearly symmetric; training flips too).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import TumorSegError
from .lesion_filter import PATCH_CHANNELS
from .networks import load_error_reason

IN_CHANNELS = len(PATCH_CHANNELS)


class LesionNet(torch.nn.Module):
    """Convolution, batch norm, ReLU and 2x2 max pooling per entry of ``channels``; then the global average joined
    with ``features`` hand features, a hidden layer of ``channels[-1]`` units and one logit."""

    def __init__(self, channels: list, features: int):
        super().__init__()
        layers, width = [], IN_CHANNELS
        for out in channels:
            layers += [torch.nn.Conv2d(width, out, 3, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU(),
                       torch.nn.MaxPool2d(2)]
            width = out
        self.conv = torch.nn.Sequential(*layers)
        self.head = torch.nn.Sequential(torch.nn.Linear(width + features, width), torch.nn.ReLU(),
                                        torch.nn.Linear(width, 1))

    def forward(self, patches: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(patches).mean(dim=(2, 3)), features], 1))[:, 0]


def load_lesion_net(path, spec: dict) -> LesionNet:
    """The network of a lesion filter ``spec`` with the weights at ``path`` (tensors only), in eval mode on the CPU."""
    network = LesionNet(spec["network"]["channels"], len(spec["features"]))
    try:
        network.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    except Exception as error:
        raise TumorSegError(f"cannot load the lesion filter's network {path}: {load_error_reason(error)}") from None
    return network.eval()


def lesion_net_scores(network: LesionNet, patches: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] of lesions given as (count, channels, size, size) patches and (count, n) standardised
    features."""
    with torch.no_grad():
        x, f = torch.from_numpy(np.ascontiguousarray(patches, np.float32)), torch.from_numpy(features.astype(np.float32))
        both = torch.sigmoid(network(x, f)) + torch.sigmoid(network(torch.flip(x, dims=[3]), f))
    return (both / 2).double().numpy()
