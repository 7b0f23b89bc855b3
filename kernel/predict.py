"""Predict with a trained run: ``python -m kernel.predict --checkpoint RUN/best.pt INPUT [INPUT ...]``.

INPUTs are image files, folders (searched recursively, sorted) or a CSV of image ids (with
``--image-dir``/``--image-col``, as in training). The model and its evaluation preprocessing are
rebuilt from the options saved with the checkpoint, so predictions match the validation numbers of
training. What is written depends on the run's task (classify: ``predictions.csv`` with the top-k
labels and, with ``--submission``, a Kaggle ``submission.csv`` whose columns and row order come from
``--id-col``/``--target-col`` or a ``--sample-submission`` file). Options: :class:`kernel.options.PredictOptions`.

Outputs go where ``--out``/``--submission-file`` say (an existing file is replaced, with a warning), else into
``RUN/predict/`` beside the checkpoint, or the next free ``RUN/predict-2/``...: an earlier prediction is never
replaced unasked.

A ``predict:`` mapping in the training config (same keys, underscores) runs this with ``best.pt``
when training ends; relative outputs then go into the run folder.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python kernel/predict.py`: run as kernel.predict
    import os as _os
    import sys as _sys

    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    from kernel.cli import run_file

    run_file(__file__)

import dataclasses
import itertools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .cli import one_line, parser_from_dataclass
from .data import DataSplit, collect_inputs, transform_draft
from .engine import load_trained, resolve_device
from .models import FoldEnsemble
from .config import check_predict_ranges, check_predict_spec, field_choices
from .options import Options, PredictOptions
from .paths import resolve_path
from .errors import ConfigError
from .registry import did_you_mean, is_user_spec
from .report import close_logging, setup_logging
from .tasks import Task, get_task

__all__ = ["Trained", "trained_folds", "load_for_prediction", "predict", "predict_after_training", "resolve_predict_section",
           "build_parser", "main"]

log = logging.getLogger("kernel")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PredictOptions)}
_FROM_TRAINING = ("batch_size", "device", "amp", "workers")  # a predict: section's missing keys


@dataclass
class Trained:
    """A trained model in eval mode plus what predicting with it needs."""

    model: nn.Module
    task: Task
    classes: List[str]
    meta: Dict[str, Any]
    options: Dict[str, Any]
    transform: Callable
    in_chans: int
    draft: Any = None  # --fast-decode of the training run: what a JPEG decoded at reduced scale keeps (None: off)


def _in_folder(path: Path) -> Optional[Path]:
    return next((path / n for n in ("best.pt", "model.safetensors") if (path / n).is_file()), None)


def _fold_folders(path: Path) -> Dict[int, Path]:
    """fold number -> RUN/fold{i} for the folds of a k-fold run folder that have a best.pt or model.safetensors."""
    found = {}
    for child in path.glob("fold*"):
        if child.is_dir() and child.name[4:].isdigit() and _in_folder(child) is not None:
            found[int(child.name[4:])] = child
    return dict(sorted(found.items()))


def trained_folds(checkpoint: str) -> List[int]:
    """The fold numbers of a k-fold run folder that have a trained model, in order; [] for any other checkpoint."""
    path = Path(resolve_path(checkpoint, "checkpoint"))
    return list(_fold_folders(path)) if path.is_dir() and _in_folder(path) is None else []


def _checkpoint_files(checkpoint: str, folds: str = "") -> List[Path]:
    """The weight files ``--checkpoint`` names: a file, a run folder's best.pt, or a k-fold run folder's folds
    (``folds``: "0,2" picks some)."""
    path = Path(resolve_path(checkpoint, "checkpoint"))
    by_fold = _fold_folders(path) if path.is_dir() and _in_folder(path) is None else {}
    if folds and not by_fold:
        raise ConfigError(f"--folds {folds}: {str(path)!r} is not a k-fold run folder (no fold0/, fold1/, ...); "
                          "drop --folds or give the k-fold run's folder")
    if by_fold:
        wanted = sorted(by_fold)
        if folds:
            try:
                wanted = sorted({int(f) for f in str(folds).split(",") if f.strip()})
            except ValueError:
                raise ConfigError(f"--folds {folds!r}: give fold numbers separated by commas, e.g. 0,2") from None
            missing = [f for f in wanted if f not in by_fold]
            if missing or not wanted:
                raise ConfigError(f"--folds {folds}: fold {missing[0] if missing else ''} has no trained model in "
                                  f"{str(path)!r}; trained folds: {', '.join(map(str, by_fold))}")
        return [_in_folder(by_fold[f]) for f in wanted]
    if path.is_dir():
        found = _in_folder(path)
        if found is None:
            raise ConfigError(f"--checkpoint: {str(path)!r} has no best.pt or model.safetensors (nor fold folders)")
        return [found]
    return [path]


def _load_one(path: Path) -> Tuple[nn.Module, Task, DataSplit, Options, Dict[str, Any]]:
    t = load_trained(path)
    if t.get("has_config") is False:
        log.warning("no config.yaml beside %s: using the model's default preprocessing", path)
    task = get_task(t["options"].get("task") if is_user_spec(t["options"].get("task")) else t["task"])
    known = {f.name for f in dataclasses.fields(Options)}
    opts = Options(**{k: v for k, v in t["options"].items() if k in known and v is not None})
    split = DataSplit(None, None, list(t["classes"]), bool(t["meta"].get("multilabel")), dict(t["meta"]))
    model = task.create_model(opts, split, "none")
    try:
        model.load_state_dict(t["model"])
    except RuntimeError as e:
        raise ConfigError(f"--checkpoint: weights do not fit model {opts.model!r} with {len(split.classes)} classes "
                          f"({str(e).splitlines()[0]})") from None
    return model, task, split, opts, task.data_config(model, opts)


def load_for_prediction(checkpoint: str, device: torch.device, folds: str = "") -> Trained:
    """Rebuild the trained model and its evaluation transform from a checkpoint file or run folder; a k-fold
    run folder gives the ensemble of its folds (``folds``: "0,2" picks some), averaging probabilities."""
    paths = _checkpoint_files(checkpoint, folds)
    models = []
    for path in paths:
        model, task, split, opts, dcfg = _load_one(path)
        first = models[0] if models else (task, split, dcfg)
        if (task.name, split.classes, dcfg["img_size"]) != (first[0].name, first[1].classes, first[2]["img_size"]):
            raise ConfigError(f"--checkpoint: {path} is a {task.name} model of {len(split.classes)} classes at "
                              f"{dcfg['img_size']} px, unlike {paths[0]}; ensemble folds of one run")
        models.append((task, split, dcfg, model))
    task, split, dcfg = models[0][:3]
    model = models[0][3] if len(models) == 1 else FoldEnsemble([m[3] for m in models], task.activation(split.meta))
    log.info("checkpoint %s: %s %s, %d classes, input %s px", paths[0] if len(paths) == 1 else
             f"ensemble of {len(paths)} folds ({', '.join(p.parent.name for p in paths)})", task.name, opts.model,
             len(split.classes), dcfg["img_size"])
    transform = task.transform(opts, dcfg, train=False)
    # a run of an older bundle saved no fast_decode: "auto" here, which decodes exactly as it did
    return Trained(model.to(device).eval(), task, split.classes, split.meta, dataclasses.asdict(opts), transform,
                   opts.in_chans, transform_draft(transform, opts.fast_decode))


def _submission_path(popts: PredictOptions, folder: Path, task: Task) -> Optional[str]:
    """Where the submission goes: ``submission_file``, a file named by ``submission``, or ``submission.csv``
    beside ``out`` (a file) or in it (a folder of masks)."""
    sub = popts.submission
    if popts.submission_file:
        return str(folder / popts.submission_file)
    if isinstance(sub, str) and sub:
        return str(folder / sub)
    if sub is True or popts.sample_submission:
        out = Path(popts.out)
        return str((out if task.out_is_folder else out.parent) / "submission.csv")
    return None


def predict(checkpoint: str, inputs: Sequence[str], **options: Any) -> Dict[str, Any]:
    """Predict ``inputs`` with a trained run: the Python face of ``python -m kernel.predict``.

    ``options`` are :class:`~kernel.options.PredictOptions` fields (``out``, ``topk``, ``tta``,
    ``submission``...); the rest take their defaults. Returns what was written.
    """
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(f"predict: unknown option {unknown[0]!r}{did_you_mean(unknown[0], list(_DEFAULTS))}")
    return _predict(PredictOptions(**{**_DEFAULTS, **options, "checkpoint": checkpoint, "inputs": list(inputs)}))


def _fresh_folder(checkpoint: str) -> Path:
    """Where a prediction without ``--out`` goes: ``RUN/predict`` beside the checkpoint (its run folder), or
    ``predict`` in the current folder when the run folder is read-only (a Kaggle input). When that folder already
    holds files, the next free ``predict-2``, ``predict-3``...: a prediction never replaces an earlier one
    unless its paths are given."""
    path = Path(resolve_path(checkpoint, "checkpoint"))
    run = path if path.is_dir() else path.parent
    base = run if os.access(run, os.W_OK) else Path(".")
    for n in itertools.count(1):
        folder = base / ("predict" if n == 1 else f"predict-{n}")
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            break
    if n > 1:
        log.info("%s holds an earlier prediction: this one goes to %s", base / "predict", folder)
    return folder


def _say_if_replaced(path: Optional[str], folder: bool) -> None:
    """Given paths may be replaced; the log says when something is there already."""
    if not path or not os.path.exists(path):
        return
    if folder and os.path.isdir(path):
        count = sum(1 for _ in os.scandir(path))
        if count:
            log.warning("%s already holds %d files: those of the same names are replaced", path, count)
    elif not folder:
        log.warning("%s exists: it is replaced", path)


def _outputs(popts: PredictOptions, task: Task) -> Dict[str, Any]:
    """``out`` and ``submission``: as given (relative to the current folder), else in a fresh RUN/predict."""
    out = popts.out or str(_fresh_folder(popts.checkpoint) / task.default_out)
    sub = _submission_path(dataclasses.replace(popts, out=out), Path("."), task)
    _say_if_replaced(out, task.out_is_folder)
    _say_if_replaced(sub, False)
    return {"out": out, "submission": sub}


def _predict(popts: PredictOptions) -> Dict[str, Any]:
    """Predict with ``popts``; the task gets them with ``out`` and ``submission`` resolved to paths (the
    submission's, or None) and ``threshold`` to the training run's when unset."""
    check_predict_ranges(dataclasses.asdict(popts))
    device = resolve_device(popts.device)
    trained = load_for_prediction(popts.checkpoint, device, popts.folds)
    items = collect_inputs(popts.inputs, image_dir=popts.image_dir, image_col=popts.image_col)
    popts = dataclasses.replace(popts, **_outputs(popts, trained.task))
    if popts.threshold is None:  # the training run's
        popts = dataclasses.replace(popts, threshold=trained.options["threshold"])
    return trained.task.predict(trained, items, popts, device)


def resolve_predict_section(spec: Any) -> Dict[str, Any]:
    """A config's ``predict:`` section, checked, with its input paths found (on Kaggle too)."""
    given = check_predict_spec(spec)
    given["inputs"] = [resolve_path(i, "predict inputs", flag=False) for i in given["inputs"]]
    for name in ("image_dir", "sample_submission"):
        if given.get(name):
            given[name] = resolve_path(given[name], f"predict {name}", flag=False)  # config keys, not flags
    return given


def predict_after_training(given: Dict[str, Any], checkpoint: str | os.PathLike, opts: Options) -> Dict[str, Any]:
    """Run a ``predict:`` section with ``checkpoint`` (RUN/best.pt, or a k-fold RUN folder: the folds'
    ensemble); outputs go to its run folder; missing keys take the training run's values."""
    checkpoint = Path(checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    popts = PredictOptions(**{**_DEFAULTS, **{k: getattr(opts, k) for k in _FROM_TRAINING}, **given,
                              "checkpoint": str(checkpoint)})
    task = get_task(opts.task)
    popts = dataclasses.replace(popts, out=str(run_dir / (popts.out or task.default_out)))
    sub = _submission_path(popts, run_dir, task)
    return _predict(dataclasses.replace(popts, submission=sub or False, submission_file=""))


def build_parser() -> Any:
    """The ``kernel.predict`` parser, generated from :class:`PredictOptions`."""
    return parser_from_dataclass(PredictOptions, "python -m kernel.predict",
                                 "Predict images with a trained kernel.train run.", ("general",), field_choices)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: 0 on success, 2 on a user error (one line, no traceback)."""
    setup_logging()
    try:
        given = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
        _predict(PredictOptions(**{**_DEFAULTS, **given}))
        return 0
    except ConfigError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        close_logging()


if __name__ == "__main__":
    sys.exit(main())
