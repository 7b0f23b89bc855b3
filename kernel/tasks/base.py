"""The task seam: everything that depends on *what* is learned, behind one small interface.

The loop, the checkpoints and the reporter never look at a label. They ask the run's :class:`Task`
for the data, the model, the transforms, a meter that turns logits into metrics, the history
columns, the pictures of the best checkpoint and, in ``kernel.predict``, the outputs. A task is a
stateless object registered by name in :data:`kernel.tasks.TASKS`; what it learns about the data
travels in the :class:`~kernel.data.DataSplit` (classes and ``meta``) and is saved in checkpoints.

To add a task: subclass :class:`Task` in ``kernel/tasks/<name>/__init__.py``, implement every abstract
method, and register it in ``kernel/tasks/__init__.py`` (or give ``--task file.py:Class``).
"""
from __future__ import annotations

import abc
from typing import AbstractSet, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..engine.step import supervised_step, to_device
from ..options import PredictOptions

__all__ = ["Task", "Panel"]

Panel = Tuple[str, Sequence[Tuple[str, str]]]  # a curves.png panel: (title, [(history key, label), ...])


class Task(abc.ABC):
    """Base class of a task; see the module docstring. Methods take explicit arguments; a subclass that leaves an
    abstract method out cannot be instantiated, so it fails when it is registered, not after the last fold."""

    name: str = ""
    monitors: Tuple[str, ...] = ()   # validation metrics a run can monitor; the first is the default
    columns: Tuple[str, ...] = ()    # the task's own metrics.csv columns (after epoch, lr, losses)
    metric_panel: Panel = ("", ())   # the middle panel of curves.png
    default_out: str = ""            # what kernel.predict writes when --out is not given
    out_is_folder: bool = False      # --out names a folder (masks) rather than a file
    stratify_folds: bool = False     # k-fold splits keep each label's share (else they split by image)
    cv_name: str = ""                # the name of the cross-validation score in summary.json

    auto_fallback: bool = False      # --task auto picks this task when no other task claims the data
    fast_decode: bool = True         # --fast-decode auto/on may shrink JPEGs at decode (False: masks must align)
    # the flags of this task's smallest run on built-in data (tests/test_task_contract.py runs every task so)
    smoke_flags: Tuple[str, ...] = ("--data", "shapes", "--model", "test_resnet")

    def __init__(self) -> None:
        missing = [a for a in ("name", "monitors", "columns", "default_out", "cv_name") if not getattr(self, a)]
        if missing:
            raise TypeError(f"task {type(self).__name__} does not set {', '.join(missing)}")

    # -- choosing the task and checking options ------------------------------------------------
    def detect(self, opts: Any, data: str) -> bool:
        """``--task auto``: True when the data (``data``: an existing path, or ``shapes``; the rest in ``opts``:
        ``csv``, ``label_col``, ``rle_col``...) is this task's. Tasks are asked in registry order."""
        return False

    def check_options(self, opts: Any) -> None:
        """Refuse, with a ConfigError, options this task cannot take (before any data is read)."""

    def monitor_mode(self, monitor: str) -> str:
        """Whether the metric ``monitor`` improves going up ("max") or down ("min"); losses go down."""
        return "min" if monitor.endswith("loss") else "max"

    # -- batches and the step ----------------------------------------------------------------
    collate: Optional[Callable[[List[Any]], Any]] = None  # the DataLoader's collate_fn (None: torch's default)

    def move(self, batch: Any, device: torch.device, channels_last: bool = False) -> Any:
        """A collated batch on ``device`` (every tensor in it; the images channels-last when asked)."""
        return to_device(batch, device, channels_last)

    def on_device(self, batch: Any, split: Any, inputs: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> Any:
        """A moved batch made ready for the step, on the device: ``inputs`` (the run's uint8 (N, C, H, W) -> float32
        normalized images, None when the workers normalized) applied to the images, the targets finished (the
        worker-side :meth:`target` may leave them compact). Default: ``batch = (images, targets, ...)``."""
        return batch if inputs is None else (inputs(batch[0]), *batch[1:])

    def step(self, model: nn.Module, batch: Any, loss_fn: Optional[Callable]) -> Tuple[Optional[torch.Tensor], Any]:
        """One forward pass (and loss, when ``loss_fn`` is given) of ``model`` on a moved batch -> (loss, outputs).
        Run by :func:`kernel.engine.amp.forward` under the run's autocast, in training, validation and the LR
        finder; default: ``batch = (images, targets)``, outputs = ``model(images)``."""
        return supervised_step(model, batch, loss_fn)

    # -- data and model ---------------------------------------------------------------------
    @abc.abstractmethod
    def build_data(self, opts: Any) -> Any:
        """Train and validation sources for ``opts`` (paths already resolved) -> DataSplit."""
        raise NotImplementedError

    @abc.abstractmethod
    def default_loss(self, split: Any) -> str:
        """The loss spec ``--loss auto`` means for this data."""
        raise NotImplementedError

    def check(self, opts: Any, split: Any, loss: Any) -> None:
        """Refuse, with a ConfigError, option combinations that cannot work for this data."""

    @abc.abstractmethod
    def create_model(self, opts: Any, split: Any, pretrained: str) -> nn.Module:
        """A model whose forward gives this task's logits, with ``kernel_head`` set (see kernel.models)."""
        raise NotImplementedError

    @abc.abstractmethod
    def list_models(self, pattern: str) -> List[str]:
        """The ``--model`` names this task trains that match the shell-style ``pattern`` (``--list-models``)."""
        raise NotImplementedError

    @abc.abstractmethod
    def data_config(self, model: nn.Module, opts: Any) -> Dict[str, Any]:
        """Input size, mean/std, interpolation, crop for ``model`` and ``opts``."""
        raise NotImplementedError

    @abc.abstractmethod
    def transform(self, opts: Any, dcfg: Dict[str, Any], train: bool) -> Callable:
        """The training or evaluation transform: ``(image, mask) -> (tensor, mask)``."""
        raise NotImplementedError

    # -- metrics and outputs -----------------------------------------------------------------
    def target(self, split: Any) -> Any:
        """None: items are (image, the source's target); else a callable turning the augmented (H, W) int64 mask
        into the target the workers hand over (segmentation: the mask in the smallest integer type that holds it,
        finished by :meth:`on_device` after the copy)."""
        return None

    def loss_kwargs(self, split: Any) -> Dict[str, Any]:
        """Loss options the data implies (e.g. ``ignore_index``); ``--loss-kwargs`` overrides them."""
        return {}

    @abc.abstractmethod
    def meter(self, split: Any, train: bool) -> Any:
        """A fresh meter (``update(logits, targets)``, ``compute() -> dict``) for one pass."""
        raise NotImplementedError

    @abc.abstractmethod
    def row(self, train: Dict[str, Any], val: Dict[str, Any]) -> Dict[str, Any]:
        """This task's history columns for one epoch, from the train and validation metric dicts."""
        raise NotImplementedError

    def describe_labels(self, split: Any) -> str:
        """What the data's labels are, for the run's ``data:`` log line (e.g. ``4 classes``)."""
        return f"{len(split.classes)} classes{' (multi-label)' if split.multilabel else ''}"

    @abc.abstractmethod
    def describe(self, row: Dict[str, Any], part: str) -> str:
        """The task's metrics of ``part`` ("train" or "val") in the epoch log line, e.g. `` acc 97.50``."""
        raise NotImplementedError

    @abc.abstractmethod
    def write_best(self, run_dir: Any, epoch: int, val: Dict[str, Any], split: Any, val_dataset: Any,
                   dcfg: Dict[str, Any], safe: Callable[[str, Callable[[], Any], bool], None]) -> None:
        """Write the best checkpoint's tables and pictures from its validation pass (``val``).

        ``safe(name, fn, needs_matplotlib)`` runs one writer and turns its errors into warnings.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def show_aug(self, samples: Sequence[Tuple[Any, Any, Any]], split: Any) -> Tuple[List[Tuple[Any, Any]], Dict[str, Any]]:
        """What ``--show-aug``'s grid draws of augmented training samples ``(image, target, mask)``, so a person can
        check the augmentation kept image and label together: the tiles ``(image (C,H,W), mask (H,W) or None)``
        and the drawing keywords of :func:`kernel.augment.grid.save_aug_grid` (``titles``; overlays: ``colors``,
        ``names``, ``ignore_index``)."""
        raise NotImplementedError

    def export_meta(self, split: Any) -> Dict[str, Any]:
        """Facts saved with the weights (checkpoint ``meta``) that prediction needs."""
        return dict(split.meta)

    @abc.abstractmethod
    def predict(self, trained: Any, items: List[Tuple[str, str]], popts: PredictOptions, device: Any) -> Dict[str, Any]:
        """Predict ``items`` ((id, path) pairs) with a trained model; write the outputs ``popts`` asks for."""
        raise NotImplementedError

    # -- k-fold -------------------------------------------------------------------------------
    def fold_labels(self, split: Any, source: Any) -> Dict[str, Any]:
        """``make_folds``' stratification arguments for the labelled ``source``: ``labels`` (one int per sample:
        ``source.targets``, e.g. a class or a binned value) or ``multilabel`` (N, C) when ``stratify_folds``;
        none ("by image") otherwise."""
        if not self.stratify_folds:
            return {}
        if split.multilabel:
            return {"multilabel": source.label_matrix()}
        return {"labels": list(source.targets)}

    @abc.abstractmethod
    def activation(self, meta: Dict[str, Any]) -> str:
        """How outputs become what fold ensembles average: "softmax" (over dim 1) or "sigmoid" (probabilities),
        "identity" (the outputs themselves, e.g. regression values); see :class:`kernel.models.FoldEnsemble`."""
        raise NotImplementedError

    @abc.abstractmethod
    def oof(self, model: nn.Module, loader: Any, split: Any, ids: List[str], fold: int, device: Any, amp_dtype: Any,
            mask_dir: Any, leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
        """(header, rows) of ``oof.csv`` for the validation images of ``loader`` (in ``split.val`` order, named
        by ``ids``); ``mask_dir``: where predicted masks go, if the task has any. The images at the positions
        ``leave_out`` (unreadable ones, replaced by another image) get no row and no mask."""
        raise NotImplementedError

    @abc.abstractmethod
    def cv_metric(self, header: List[str], rows: List[List[Any]], split: Any) -> float:
        """The cross-validation score (``cv_name``) over every fold's OOF rows."""
        raise NotImplementedError
