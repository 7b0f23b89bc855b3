"""Where a run reads and writes: the platform (Kaggle, Colab, local), Kaggle's inputs, outputs, atomic writes.

Kaggle mounts attached inputs read-only under ``/kaggle/input`` in two layouts that
both occur today, so paths are found by searching, never by assuming one layout:

* old: ``/kaggle/input/<slug>/...``
* new: ``/kaggle/input/datasets/<owner>/<slug>/``, ``competitions/<slug>/``,
  ``notebooks/<owner>/<slug>/``, ``models/<owner>/<model>/<framework>/<variation>/<version>/``

The roots can be moved with ``KERNEL_KAGGLE_INPUT`` and ``KERNEL_KAGGLE_WORKING`` so tests
can build fake trees.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from .registry import ConfigError

__all__ = [
    "KAGGLE_INPUT", "KAGGLE_WORKING", "detect_platform", "input_root", "working_root", "mounted_roots",
    "find_in_inputs", "resolve_path", "default_output_dir", "atomic_write",
]

KAGGLE_INPUT = "/kaggle/input"      # read-only mounts of the attached datasets, models, competitions
KAGGLE_WORKING = "/kaggle/working"  # kept as the kernel's output (20 GB)

# How deep below the input root a mount's top folder can sit, per layout.
_LAYOUT_DEPTHS = {"datasets": 2, "notebooks": 2, "competitions": 1, "models": 5}


def detect_platform() -> str:
    """Return ``"kaggle"``, ``"colab"`` or ``"local"``.

    Kaggle's image is built on Colab's, so ``COLAB_RELEASE_TAG`` is set on Kaggle too:
    Kaggle must be tested first.
    """
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return "kaggle"
    if os.environ.get("COLAB_RELEASE_TAG") or os.environ.get("COLAB_GPU"):
        return "colab"
    return "local"


def input_root() -> Path:
    return Path(os.environ.get("KERNEL_KAGGLE_INPUT", KAGGLE_INPUT))


def working_root() -> Path:
    return Path(os.environ.get("KERNEL_KAGGLE_WORKING", KAGGLE_WORKING))


def mounted_roots(root: Optional[Path] = None) -> List[Path]:
    """Every mount's top folder under the input root, in both layouts, sorted."""
    root = input_root() if root is None else root
    if not root.is_dir():
        return []
    found: List[Path] = []
    for top in sorted(p for p in root.iterdir() if p.is_dir()):
        depth = _LAYOUT_DEPTHS.get(top.name)
        if depth is None:  # old layout: /kaggle/input/<slug>
            found.append(top)
            continue
        level = [top]
        for _ in range(depth):
            level = sorted(c for p in level for c in p.iterdir() if c.is_dir())
        found.extend(level)
        # A dataset whose slug happens to be "models" etc. still counts as an old-layout mount.
        if not level:
            found.append(top)
    return found


def _candidates(rel: Path, mounts: List[Path], root: Path) -> Iterator[Path]:
    for mount in mounts:
        yield mount / rel
        # A path written for the other layout ("<slug>/train" for datasets/<owner>/<slug>/train,
        # "<model>/pytorch/default/1/w.pth" for models/<owner>/<model>/...) matches by its tail.
        parts = mount.relative_to(root).parts
        for k in range(len(parts)):
            tail = parts[k:]
            if rel.parts[:len(tail)] == tail and len(rel.parts) > len(tail):
                yield mount / Path(*rel.parts[len(tail):])


def find_in_inputs(relpath: str | os.PathLike) -> Optional[Path]:
    """Find ``relpath`` under any mounted input (old or new layout); None when absent."""
    rel = Path(relpath)
    if rel.is_absolute():
        return rel if rel.exists() else None
    root = input_root()
    if (root / rel).exists():
        return root / rel
    for cand in _candidates(rel, mounted_roots(root), root):
        if cand.exists():
            return cand
    return None


def resolve_path(path: Optional[str], option: str) -> Optional[str]:
    """Return ``path`` as given when it exists; on Kaggle, search the inputs for it.

    Raises ConfigError naming the option, and on Kaggle listing what is mounted.
    """
    if not path:
        return path
    if os.path.exists(path):
        return path
    if detect_platform() == "kaggle":
        found = find_in_inputs(path)
        if found is not None:
            return str(found)
        mounts = [str(m.relative_to(input_root())) for m in mounted_roots()] or ["nothing"]
        raise ConfigError(
            f"--{option}: {path!r} not found as given nor under {input_root()} "
            f"(mounted: {', '.join(mounts)}); attach the dataset to the kernel or fix the path"
        )
    raise ConfigError(f"--{option}: {path!r} does not exist; check the path (relative to {os.getcwd()})")


def default_output_dir(name: str) -> Path:
    """``/kaggle/working/<name>`` on Kaggle (kept as output), ``./runs/<name>`` elsewhere."""
    if detect_platform() == "kaggle":
        return working_root() / name
    return Path("runs") / name


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then move the temp file over ``path`` in one step.

    A reader (or a run killed mid-write) never sees half a file: the temp file lives in the same
    folder, so ``os.replace`` is atomic, and it is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be read (and downloaded)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
