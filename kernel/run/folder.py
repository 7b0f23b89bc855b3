"""Which folder a training run writes to: never one that holds another run, unless asked.

A run without ``--resume`` never writes into a folder that holds another run's checkpoints: it takes the
next free name of its family ``NAME``, ``NAME-2``, ``NAME-3``, ... (as YOLO's ``exp2`` and timm's dated
folders keep runs apart) and says so; ``--overwrite`` writes into ``NAME`` as asked. The family's newest
run is its highest-numbered folder, and that is the one ``--resume auto`` continues (the one with a
``last.pt``; a k-fold run: with a ``folds.csv``). A k-fold fold run (``--fold i``) shares its k-fold run's
folder with the other folds: only a checkpoint of fold ``i`` itself makes the folder taken. In a
multi-process run rank 0 decides and every process takes its answer, so all write to one folder.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import List, Optional, Tuple

from ..engine.distributed import gather_objects, world
from ..options import Options
from .kfold import FOLDS_CSV, OOF, fold_number, run_root

__all__ = ["CHECKPOINTS", "family", "holds_run", "choose_name", "resolve_run_folder"]

log = logging.getLogger("kernel")
CHECKPOINTS = ("last.pt", "best.pt", "model.safetensors")  # a folder with one of these holds a run


def family(root: Path) -> List[Tuple[int, Path]]:
    """The existing folders of ``root``'s name family, by number: ``NAME`` is 1, ``NAME-N`` is N (N >= 2)."""
    found = [(1, root)] if root.is_dir() else []
    pattern = re.compile(re.escape(root.name) + r"-([2-9]|[1-9]\d+)")
    if root.parent.is_dir():
        found += [(int(m[1]), p) for p in root.parent.iterdir()
                  if p.is_dir() and (m := pattern.fullmatch(p.name)) is not None]
    return sorted(found)


def _member(root: Path, n: int) -> Path:
    return root if n == 1 else root.with_name(f"{root.name}-{n}")


def _has_checkpoint(folder: Path) -> bool:
    return any((folder / name).is_file() for name in CHECKPOINTS)


def holds_run(folder: Path, opts: Options) -> bool:
    """Whether writing ``opts``'s run into ``folder`` would replace another run's files.

    A plain run: the folder has checkpoints or is a k-fold run's. ``--fold i``: the folder has a plain run's
    checkpoints, or its ``fold{i}`` has checkpoints (or is finished). ``--fold all`` (which splits anew and
    clears the other folds): the folder is a k-fold run already, or has any checkpoint.
    """
    if _has_checkpoint(folder):
        return True
    if not opts.folds:
        return (folder / FOLDS_CSV).is_file()
    if opts.fold != "all":
        fold = folder / f"fold{fold_number(opts)}"
        return _has_checkpoint(fold) or (fold / OOF).is_file()
    return (folder / FOLDS_CSV).is_file() or any(_has_checkpoint(f) for f in folder.glob("fold*") if f.is_dir())


def _resumable(folder: Path, opts: Options) -> bool:
    """Whether ``--resume auto`` has something to continue in ``folder``."""
    return (folder / FOLDS_CSV).is_file() if opts.folds else (folder / "last.pt").is_file()


def choose_name(opts: Options) -> Tuple[str, Optional[str]]:
    """(the name this run writes under, a sentence saying why it is not ``--name``, or None).

    ``--resume auto``: the family's highest-numbered run it can continue; none there (a fresh start, or on
    Kaggle the previous version's output under the inputs): as without ``--resume``. ``--resume PATH``, and
    ``--overwrite`` without a run to resume: ``--name``. Otherwise the family's highest-numbered folder when it
    holds no run (a folder that ``--show-aug`` or a failed start left), else the next number.
    """
    root = run_root(opts)
    if opts.resume not in ("", "auto"):
        return opts.name, None
    members = family(root)
    if opts.resume == "auto":
        for n, folder in reversed(members):
            if _resumable(folder, opts):
                return folder.name, (None if n == 1 else f"--resume auto: continuing {folder}, the newest run "
                                                         f"named {opts.name}[-N]")
    if opts.overwrite:
        return opts.name, None
    top = members[-1][0] if members else 1
    if not holds_run(_member(root, top), opts):
        return _member(root, top).name, None if top == 1 else (
            f"this run writes to {_member(root, top)}: the newest folder named {opts.name}[-N], which holds no run")
    new = _member(root, top + 1)
    return new.name, (f"{_member(root, top)} holds another run, left as it is: this run writes to {new} "
                      f"(--overwrite writes into {root}; --resume auto continues {_member(root, top)})")


def resolve_run_folder(opts: Options) -> Options:
    """``opts`` with ``name`` set to the folder this run writes to (see :func:`choose_name`), said in the log.

    Every process of a multi-process run calls it; rank 0 looks at the folders and the others take its
    answer, so a folder one process has just created cannot make them disagree.
    """
    name, why = choose_name(opts) if world().main else (None, None)
    name, why = gather_objects((name, why))[0]
    if why:
        log.warning("%s", why)
    return opts if name == opts.name else dataclasses.replace(opts, name=name)
