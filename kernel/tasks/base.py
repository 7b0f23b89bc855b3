"""The task seam: everything that depends on *what* is learned, behind one small interface.

The loop, the checkpoints and the reporter never look at a label. They ask the run's :class:`Task`
for the data, the model, the transforms, a meter that turns logits into metrics, the history
columns, the pictures of the best checkpoint and, in ``kernel.predict``, the outputs. A task is a
stateless object registered by name in :data:`kernel.tasks.TASKS`; what it learns about the data
travels in the :class:`~kernel.data.DataSplit` (classes and ``meta``) and is saved in checkpoints.

To add a task: subclass :class:`Task` in ``kernel/tasks/<name>/__init__.py``, fill in every method
that raises NotImplementedError, and register it in ``kernel/tasks/__init__.py``.
"""
from __future__ import annotations

from typing import AbstractSet, Any, Callable, Dict, List, Sequence, Tuple

from torch import nn

__all__ = ["Task", "Panel"]

Panel = Tuple[str, Sequence[Tuple[str, str]]]  # a curves.png panel: (title, [(history key, label), ...])


class Task:
    """Base class of a task; see the module docstring. Methods take explicit arguments."""

    name: str = ""
    monitors: Tuple[str, ...] = ()   # validation metrics a run can monitor; the first is the default
    columns: Tuple[str, ...] = ()    # the task's own metrics.csv columns (after epoch, lr, losses)
    metric_panel: Panel = ("", ())   # the middle panel of curves.png
    default_out: str = ""            # what kernel.predict writes when --out is not given
    out_is_folder: bool = False      # --out names a folder (masks) rather than a file
    stratify_folds: bool = False     # k-fold splits keep each label's share (else they split by image)
    cv_name: str = ""                # the name of the cross-validation score in summary.json

    # -- data and model ---------------------------------------------------------------------
    def build_data(self, opts: Any) -> Any:
        """Train and validation sources for ``opts`` (paths already resolved) -> DataSplit."""
        raise NotImplementedError

    def default_loss(self, split: Any) -> str:
        """The loss spec ``--loss auto`` means for this data."""
        raise NotImplementedError

    def check(self, opts: Any, split: Any, loss: Any) -> None:
        """Refuse, with a ConfigError, option combinations that cannot work for this data."""

    def create_model(self, opts: Any, split: Any, pretrained: str) -> nn.Module:
        """A model whose forward gives this task's logits, with ``kernel_head`` set (see kernel.models)."""
        raise NotImplementedError

    def list_models(self, pattern: str) -> List[str]:
        """The ``--model`` names this task trains that match the shell-style ``pattern`` (``--list-models``)."""
        raise NotImplementedError

    def data_config(self, model: nn.Module, opts: Any) -> Dict[str, Any]:
        """Input size, mean/std, interpolation, crop for ``model`` and ``opts``."""
        raise NotImplementedError

    def transform(self, opts: Any, dcfg: Dict[str, Any], train: bool) -> Callable:
        """The training or evaluation transform: ``(image, mask) -> (tensor, mask)``."""
        raise NotImplementedError

    # -- metrics and outputs -----------------------------------------------------------------
    def target(self, split: Any) -> Any:
        """None: items are (image, the source's target); else a callable turning the augmented mask into
        the target (segmentation)."""
        return None

    def loss_kwargs(self, split: Any) -> Dict[str, Any]:
        """Loss options the data implies (e.g. ``ignore_index``); ``--loss-kwargs`` overrides them."""
        return {}

    def meter(self, split: Any, train: bool) -> Any:
        """A fresh meter (``update(logits, targets)``, ``compute() -> dict``) for one pass."""
        raise NotImplementedError

    def row(self, train: Dict[str, Any], val: Dict[str, Any]) -> Dict[str, Any]:
        """This task's history columns for one epoch, from the train and validation metric dicts."""
        raise NotImplementedError

    def describe(self, row: Dict[str, Any], part: str) -> str:
        """The task's metrics of ``part`` ("train" or "val") in the epoch log line, e.g. `` acc 97.50``."""
        raise NotImplementedError

    def write_best(self, run_dir: Any, epoch: int, val: Dict[str, Any], split: Any, val_dataset: Any,
                   dcfg: Dict[str, Any], safe: Callable[[str, Callable[[], Any], bool], None]) -> None:
        """Write the best checkpoint's tables and pictures from its validation pass (``val``).

        ``safe(name, fn, needs_matplotlib)`` runs one writer and turns its errors into warnings.
        """
        raise NotImplementedError

    def show_aug(self, samples: Sequence[Tuple[Any, Any, Any]], split: Any) -> Tuple[List[Tuple[Any, Any]], Dict[str, Any]]:
        """What ``--show-aug``'s grid draws of augmented training samples ``(image, target, mask)``, so a person can
        check the augmentation kept image and label together: the tiles ``(image (C,H,W), mask (H,W) or None)``
        and the drawing keywords of :func:`kernel.augment.grid.save_aug_grid` (``titles``; overlays: ``colors``,
        ``names``, ``ignore_index``)."""
        raise NotImplementedError

    def export_meta(self, split: Any) -> Dict[str, Any]:
        """Facts saved with the weights (checkpoint ``meta``) that prediction needs."""
        return dict(split.meta)

    def predict(self, trained: Any, items: List[Tuple[str, str]], popts: Dict[str, Any], device: Any) -> Dict[str, Any]:
        """Predict ``items`` ((id, path) pairs) with a trained model; write the outputs ``popts`` asks for."""
        raise NotImplementedError

    # -- k-fold -------------------------------------------------------------------------------
    def activation(self, meta: Dict[str, Any]) -> str:
        """How logits become probabilities: "softmax" (over dim 1) or "sigmoid" (fold ensembles average those)."""
        raise NotImplementedError

    def oof(self, model: nn.Module, loader: Any, split: Any, ids: List[str], fold: int, device: Any, amp_dtype: Any,
            mask_dir: Any, leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
        """(header, rows) of ``oof.csv`` for the validation images of ``loader`` (in ``split.val`` order, named
        by ``ids``); ``mask_dir``: where predicted masks go, if the task has any. The images at the positions
        ``leave_out`` (unreadable ones, replaced by another image) get no row and no mask."""
        raise NotImplementedError

    def cv_metric(self, header: List[str], rows: List[List[Any]], split: Any) -> float:
        """The cross-validation score (``cv_name``) over every fold's OOF rows."""
        raise NotImplementedError
