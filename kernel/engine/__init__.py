"""The engine: devices and precision, the epoch loops, optimizers, checkpoints.

:mod:`.amp` (device, autocast dtype, GradScaler: AMP in one place), :mod:`.loop` (``train_one_epoch``,
``evaluate``), :mod:`.optim` (parameter groups, optimizers by name), :mod:`.checkpoint` (the one
checkpoint schema, atomic saves, RNG states, safetensors export), :mod:`.ema` (the weights' moving
average), :mod:`.mixing` (Mixup/CutMix batches), :mod:`.distributed` (one process per device).
"""
from .amp import amp_name, autocast, make_scaler, resolve_amp_dtype, resolve_device
from .checkpoint import (FORMAT, export_safetensors, load_checkpoint, load_trained, make_checkpoint,
                         prediction_checkpoint, read_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap_model, write_classes_json)
from .ema import create_ema
from .loop import Meter, TrainingDiverged, evaluate, train_one_epoch
from .mixing import check_soft_targets, create_mixup, hard_targets
from .optim import OPTIMIZERS, create_optimizer, param_groups

__all__ = ["amp_name", "autocast", "make_scaler", "resolve_amp_dtype", "resolve_device", "FORMAT",
           "export_safetensors", "load_checkpoint", "load_trained", "write_classes_json", "make_checkpoint", "prediction_checkpoint",
           "read_checkpoint", "rng_state",
           "save_checkpoint", "set_rng_state", "unwrap_model", "Meter", "TrainingDiverged", "evaluate", "train_one_epoch",
           "OPTIMIZERS", "create_optimizer", "param_groups", "create_ema", "create_mixup", "check_soft_targets",
           "hard_targets"]
