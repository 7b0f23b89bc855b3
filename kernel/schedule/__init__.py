"""LR schedules by name: every ``torch.optim.lr_scheduler`` class, the notes' step decay, warmup, a preview.

:mod:`.scheduler` (``create_scheduler`` -> ``LRSchedule``, which decides who steps when; ``preview_lr``),
:mod:`.builders` (one builder per name with its defaults and kwarg checks: the ``SCHEDULERS``
registry), :mod:`.expr` (the whitelist formula evaluator behind ``lambda``). To add a scheduler,
write a builder decorated with ``@_reg("name", [kwargs])`` in ``builders.py``.
"""
from .builders import SCHEDULERS, step_decay_factor
from .expr import compile_lr_expr, eval_lr_expr
from .scheduler import LRSchedule, create_scheduler, format_lr_table, preview_lr, warmup_factor

__all__ = ["SCHEDULERS", "LRSchedule", "create_scheduler", "preview_lr", "format_lr_table", "warmup_factor",
           "step_decay_factor", "compile_lr_expr", "eval_lr_expr"]
