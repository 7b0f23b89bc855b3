"""A training run in stages: :mod:`.prepare` (options -> data -> model -> optimization),
:mod:`.fit` (resume, the epoch loop, the summary) and :mod:`.oneshots` (commands that look and exit).
``kernel.train`` wires them together.
"""
from .fit import FitState, epoch_seed, finish, fit, input_shape, repair_best, resume_path, resume_state
from .oneshots import ONE_SHOTS, requested
from .prepare import DRY_RUN, Prepared, backbone_frozen, effective_options, prepare, run_dir_of, seed_everything

__all__ = ["FitState", "epoch_seed", "finish", "fit", "input_shape", "repair_best", "resume_path", "resume_state", "ONE_SHOTS",
           "requested", "DRY_RUN", "Prepared", "backbone_frozen", "effective_options", "prepare", "run_dir_of",
           "seed_everything"]
