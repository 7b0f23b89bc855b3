"""Losses by name: ``create_loss("focal", gamma=2)``, ``create_loss("dice+bce")``, ``"my.py:fn"``.

Every loss takes logits (never probabilities) and returns a scalar fp32 tensor; it works on
classification (N, C) and segmentation (N, C, H, W) shapes. Layers, lowest first:

* :mod:`.functional` - the maths, pure functions;
* :mod:`.modules`    - one thin ``nn.Module`` per loss (hyper-parameters only) and the ``LOSSES`` registry;
* :mod:`.spec`       - ``create_loss``: names, weighted combinations, user code.

To add a loss: write its maths in ``functional.py``, then a module class registered with
``@_register("name")`` in ``modules.py``; ``--loss name`` and the tests' every-entry checks pick it up.
"""
from .spec import CombinedLoss, UserLoss, create_loss
from .modules import (LOSSES, BCELoss, CrossEntropyLoss, DiceBCELoss, DiceLoss, FocalLoss, IoULoss, KLDivLoss, L1Loss,
                      Loss, MSELoss, QualityFocalLoss, SmoothL1Loss, TverskyLoss, HuberLoss)

__all__ = [
    "LOSSES", "create_loss", "Loss", "CrossEntropyLoss", "BCELoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss",
    "KLDivLoss", "FocalLoss", "DiceLoss", "IoULoss", "TverskyLoss", "DiceBCELoss", "QualityFocalLoss",
    "CombinedLoss", "UserLoss",
]
