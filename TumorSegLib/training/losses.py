"""Segmentation losses named in the training config, matched to the card's output activation.

``dicefocal`` (MONAI DiceFocalLoss; the seed model used lambda_dice 1, lambda_focal 10),
``dicece``, ``bce`` (binary cross-entropy; cross-entropy for a 2-channel softmax output) and
``dice`` (soft Dice). Targets are the 0/1 tumour mask with one channel, or with a sigmoid output
one 0/1 mask per output channel (multi-label, e.g. tumour and liver). MONAI's DiceCELoss applies a
softmax cross-entropy to any multi-channel input, even with ``sigmoid=True``; that is wrong for
overlapping labels (tumour inside liver), so a sigmoid ``dicece`` is built here from soft Dice and
per-channel binary cross-entropy (for one channel exactly what MONAI computes).
"""

from __future__ import annotations

import torch


def build_loss(spec: dict, activation: str = "sigmoid") -> torch.nn.Module:
    """``loss(logits, target) -> scalar`` for ``spec = {"name": ..., other MONAI arguments}``."""
    from monai import losses

    options = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    softmax = activation == "softmax"
    kinds = {"softmax": True, "to_onehot_y": True} if softmax else {"sigmoid": True}
    if name == "dicefocal":
        return losses.DiceFocalLoss(**kinds, **options)
    if name == "dicece" and softmax:
        return losses.DiceCELoss(**kinds, **options)
    if name == "dicece":
        return _sigmoid_dice_ce(losses.DiceLoss, options)
    if name == "dice":
        return losses.DiceLoss(**kinds, **options)
    if softmax:
        cross_entropy = torch.nn.CrossEntropyLoss(**options)
        return lambda logits, target: cross_entropy(logits, target[:, 0].long())
    return torch.nn.BCEWithLogitsLoss(**options)


def _sigmoid_dice_ce(dice_class, options: dict):
    """``lambda_dice * soft Dice + lambda_ce * binary cross-entropy`` on every sigmoid output channel."""
    lambda_dice, lambda_ce = float(options.pop("lambda_dice", 1.0)), float(options.pop("lambda_ce", 1.0))
    dice = dice_class(sigmoid=True, **options)
    cross_entropy = torch.nn.BCEWithLogitsLoss()
    return lambda logits, target: lambda_dice * dice(logits, target) + lambda_ce * cross_entropy(logits, target.float())
