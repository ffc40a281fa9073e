"""Inference-time network rewriting: BatchNorm folded into the convolutions gives the same outputs."""

import pytest
import torch
from monai.networks.nets import AttentionUnet

from TumorSegLib.networks import fold_batch_norm


def with_statistics(network: torch.nn.Module) -> torch.nn.Module:
    """The network in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for tensor, (low, high) in ((module.running_mean, (-0.5, 0.5)), (module.running_var, (0.5, 2.0)),
                                        (module.weight.data, (0.5, 1.5)), (module.bias.data, (-0.2, 0.2))):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    return network.eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_folding_keeps_the_outputs_and_removes_every_batch_norm(dims):
    network = with_statistics(AttentionUnet(spatial_dims=dims, in_channels=1, out_channels=1,
                                                    channels=(4, 8, 16), strides=(2, 2)))
    norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules())
    folded, count = fold_batch_norm(network)
    assert count == norms > 0
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.randn(2, 1, *([32] * dims))
    with torch.inference_mode():
        reference, result = network(x), folded(x)
    assert torch.allclose(result, reference, atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules()) == norms  # untouched


def test_a_shared_convolution_or_an_untraceable_network_is_left_alone():
    class Shared(torch.nn.Module):  # one convolution called twice: folding the first norm would change the second call
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.BatchNorm2d(1)

        def forward(self, x):
            return self.norm(self.conv(x)) + self.conv(x)

    class Branching(torch.nn.Module):  # control flow on a tensor value: fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.BatchNorm2d(1)

        def forward(self, x):
            return self.norm(self.conv(x)) if x.sum() > 0 else x

    shared = with_statistics(Shared())
    folded, count = fold_batch_norm(shared)
    x = torch.randn(1, 1, 8, 8)
    assert count == 0 and torch.allclose(folded(x), shared(x))
    branching = Branching().eval()
    assert fold_batch_norm(branching) == (branching, 0)

