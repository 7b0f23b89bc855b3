"""The engine: devices and precision, the epoch loops, optimizers, checkpoints.

:mod:`.amp` (device, autocast dtype, GradScaler: AMP in one place), :mod:`.step` (a task's step, the device move,
``StepConfig``/``EpochResult``), :mod:`.loop` (``train_one_epoch``, ``evaluate``), :mod:`.optim` (parameter groups, optimizers by name), :mod:`.checkpoint` (the one
checkpoint schema, atomic saves, RNG states, safetensors export), :mod:`.ema` (the weights' moving
average), :mod:`.mixing` (Mixup/CutMix batches), :mod:`.distributed` (one process per device).
"""
from .amp import amp_name, autocast, forward, make_scaler, resolve_amp_dtype, resolve_device
from .checkpoint import (FORMAT, RunIdentity, RunProgress, TrainingParts, export_safetensors, load_checkpoint, load_trained, make_checkpoint,
                         prediction_checkpoint, read_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap_model, write_classes_json)
from .ema import create_ema
from .loop import Meter, TrainingDiverged, evaluate, forward_backward, optimizer_step, train_one_epoch
from .mixing import check_soft_targets, create_mixup, hard_targets
from .optim import OPTIMIZERS, create_optimizer, param_groups
from .step import EpochResult, Step, StepConfig, batch_size, supervised_step, targets_of, to_device

__all__ = ["amp_name", "autocast", "forward", "EpochResult", "Step", "StepConfig", "batch_size", "supervised_step",
           "targets_of", "to_device", "make_scaler", "resolve_amp_dtype", "resolve_device", "FORMAT",
           "RunIdentity", "RunProgress", "TrainingParts", "export_safetensors", "load_checkpoint", "load_trained", "write_classes_json", "make_checkpoint", "prediction_checkpoint",
           "read_checkpoint", "rng_state",
           "save_checkpoint", "set_rng_state", "unwrap_model", "Meter", "TrainingDiverged", "evaluate", "forward_backward", "optimizer_step", "train_one_epoch",
           "OPTIMIZERS", "create_optimizer", "param_groups", "create_ema", "create_mixup", "check_soft_targets",
           "hard_targets"]
