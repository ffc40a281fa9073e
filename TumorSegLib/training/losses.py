"""Segmentation losses named in the training config, matched to the card's output activation.

``dicefocal`` (MONAI DiceFocalLoss; the seed model used lambda_dice 1, lambda_focal 10),
``dicece``, ``bce`` (binary cross-entropy; cross-entropy for a 2-channel softmax output) and
``dice`` (soft Dice). Targets are the 0/1 tumour mask with one channel.
"""

from __future__ import annotations

import torch


def build_loss(spec: dict, activation: str = "sigmoid"):
    """``loss(logits, target) -> scalar`` for ``spec = {"name": ..., other MONAI arguments}``."""
    from monai import losses

    options = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    softmax = activation == "softmax"
    kinds = {"softmax": True, "to_onehot_y": True} if softmax else {"sigmoid": True}
    if name == "dicefocal":
        return losses.DiceFocalLoss(**kinds, **options)
    if name == "dicece":
        return losses.DiceCELoss(**kinds, **options)
    if name == "dice":
        return losses.DiceLoss(**kinds, **options)
    if softmax:
        cross_entropy = torch.nn.CrossEntropyLoss(**options)
        return lambda logits, target: cross_entropy(logits, target[:, 0].long())
    return torch.nn.BCEWithLogitsLoss(**options)
