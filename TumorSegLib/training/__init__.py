"""Training of the networks that model cards describe (``tumorseg train``).

- ``config``: the training config file (``<name>.train.json``, kept next to the card);
- ``data``: cases, patient-level split, weighted distributed sampling, data manifest hash;
- ``transforms``: MONAI dictionary transforms (card preprocessing, balanced crops, augmentation);
- ``context``: the context augmentation (a case in a synthetic study, windows at random offsets);
- ``losses``: DiceFocal, DiceCE, BCE, soft Dice;
- ``distributed``: torchrun / DistributedDataParallel set-up (NCCL on GPUs, gloo on CPUs);
- ``loop``: train, validate with the inference engine, checkpoint, resume, early stop, logs;
- ``export``: weights plus a complete model card, and publishing them.
"""
