"""The image gate's network (``postprocessing.image_gate.network``): a small CNN that scores whether a whole image
holds any tumour, from ``image_gate.gate_input``. A score is the mean of the sigmoid over the image and its left-right
mirror image (MIPs are nearly symmetric; training flips too).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import TumorSegError
from .image_gate import GATE_CHANNELS
from .networks import load_error_reason


class GateNet(torch.nn.Module):
    """Convolution, batch norm and ReLU per entry of ``channels``, 2x2 max pooling between them; the global maximum
    and mean of the last, dropout and one logit."""

    def __init__(self, channels: list, dropout: float = 0.3):
        super().__init__()
        layers, width = [], len(GATE_CHANNELS)
        for out in channels:
            layers += [torch.nn.Conv2d(width, out, 3, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU(),
                       torch.nn.MaxPool2d(2)]
            width = out
        self.conv = torch.nn.Sequential(*layers[:-1])
        self.head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(2 * width, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images)
        return self.head(torch.cat([features.amax(dim=(2, 3)), features.mean(dim=(2, 3))], 1))[:, 0]


def load_gate_net(path, spec: dict) -> GateNet:
    """The network of an image gate ``spec`` with the weights at ``path`` (tensors only), in eval mode on the CPU."""
    network = GateNet(spec["network"]["channels"])
    try:
        network.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    except Exception as error:
        raise TumorSegError(f"cannot load the image gate's network {path}: {load_error_reason(error)}") from None
    return network.eval()


def gate_scores(network: GateNet, inputs: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] of images given as (count, channels, rows, cols) ``gate_input``s: the mean of the sigmoid
    over each image and its mirror image."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
        both = torch.sigmoid(network(x)) + torch.sigmoid(network(torch.flip(x, dims=[3])))
    return (both / 2).double().numpy()
