"""A training run in stages: :mod:`.prepare` (options -> data -> model -> optimization), :mod:`.resume`
(where a run stands, resuming, saving), :mod:`.fit` (the epoch loop, the summary), :mod:`.budget` (time limit,
mid-epoch saves, signals), :mod:`.seams` (its clock, save callbacks and group check), :mod:`.launch` (one process per device), :mod:`.oneshots` (commands that look and exit)
and :mod:`.lr_find` (the learning-rate range test). ``kernel.train`` wires them together.
"""
from .resume import FitState, carry_over, repair_best, resume_path, resume_state
from .fit import finish, fit, input_shape
from .oneshots import ONE_SHOTS, requested, run_one_shot
from .prepare import (DRY_RUN, Prepared, as_asked, backbone_frozen, dry_run_reductions, effective_options, prepare,
                      run_dir_of, seed_everything)

__all__ = ["FitState", "carry_over", "repair_best", "resume_path", "resume_state", "finish", "fit", "input_shape",
           "ONE_SHOTS", "requested", "run_one_shot", "DRY_RUN", "Prepared", "as_asked", "backbone_frozen",
           "dry_run_reductions", "effective_options", "prepare", "run_dir_of", "seed_everything"]
