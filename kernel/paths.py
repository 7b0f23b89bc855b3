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

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

from .errors import ConfigError

__all__ = [
    "KAGGLE_INPUT", "KAGGLE_WORKING", "detect_platform", "input_root", "working_root", "scratch_root", "mounted_roots",
    "find_in_inputs", "resolve_path", "default_output_dir", "atomic_write", "DiskFullError", "remove_leftovers",
    "load_tensors",
]

KAGGLE_INPUT = "/kaggle/input"      # read-only mounts of the attached datasets, models, competitions
KAGGLE_WORKING = "/kaggle/working"  # kept as the kernel's output (20 GB)
TMP_SUFFIX = ".tmp"  # atomic_write's temp files: .<name>.<random>.tmp beside the target

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


def scratch_root() -> Path:
    """Scratch space that is not kept: ``/kaggle/temp`` on Kaggle (``KERNEL_KAGGLE_TEMP`` moves it), else the
    system's temporary folder. Large intermediate files go here, never into the kept output."""
    if os.environ.get("KERNEL_KAGGLE_TEMP"):
        return Path(os.environ["KERNEL_KAGGLE_TEMP"])
    return Path("/kaggle/temp") if detect_platform() == "kaggle" else Path(tempfile.gettempdir())


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
            if rel.parts[:len(tail)] == tail:  # the whole mount too: a model's "<model>/pytorch/default/1"
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


def resolve_path(path: Optional[str], option: str, *, flag: bool = True) -> Optional[str]:
    """Return ``path`` as given when it exists; on Kaggle, search the inputs for it.

    Raises ConfigError naming the option (``--option``; as given with ``flag=False``, for what is not a flag:
    a positional argument, a config key), and on Kaggle listing what is mounted.
    """
    if not path:
        return path
    if os.path.exists(path):
        return path
    where = f"--{option}" if flag else option
    if detect_platform() == "kaggle":
        found = find_in_inputs(path)
        if found is not None:
            return str(found)
        mounts = [str(m.relative_to(input_root())) for m in mounted_roots()] or ["nothing"]
        raise ConfigError(
            f"{where}: {path!r} not found as given nor under {input_root()} "
            f"(mounted: {', '.join(mounts)}); attach the dataset to the kernel or fix the path"
        )
    raise ConfigError(f"{where}: {path!r} does not exist; check the path (relative to {os.getcwd()})")


def default_output_dir(name: str) -> Path:
    """``/kaggle/working/<name>`` on Kaggle (kept as output), ``./runs/<name>`` elsewhere."""
    if detect_platform() == "kaggle":
        return working_root() / name
    return Path("runs") / name


class DiskFullError(ConfigError):
    """No space left while writing an output: the previous file is intact (the write was atomic)."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], size_hint: int = 0) -> None:
    """Call ``write(tmp_path)``, then move the temp file over ``path`` in one step.

    A reader (or a run killed mid-write) never sees half a file: the temp file lives in the same
    folder, so ``os.replace`` is atomic, and it is removed when ``write`` fails. A full disk (or
    quota: Kaggle keeps 20 GB of output) becomes a :class:`DiskFullError` saying where and how much
    space the file needs (``size_hint`` bytes when the caller knows, else what was written so far).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be read (and downloaded)
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            need = max(size_hint, written)
            raise DiskFullError(f"no space left on the device writing {path} (it needs about {need / 2**20:.0f} MB; "
                                f"{free / 2**20:.0f} MB free); free space (Kaggle keeps at most 20 GB in "
                                f"/kaggle/working) and resume with --resume auto: the previous {path.name} is "
                                "intact") from None
        raise


def remove_leftovers(folder: str | os.PathLike) -> int:
    """Delete the temp files of writes that a kill interrupted (``.<name>.<random>.tmp``); returns bytes freed.

    They would otherwise stay in the run folder, and on Kaggle end up in the kernel's output.
    """
    freed = 0
    for f in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if f.is_file():
            freed += f.stat().st_size
            f.unlink()
    return freed


def load_tensors(path: str | os.PathLike, option: str) -> Any:
    """Load a weights or checkpoint file safely: ``torch.load(weights_only=True)``, or safetensors.

    Every way a file can be wrong is one line naming ``--option`` and the file, in words a user can
    act on: missing, truncated or not a PyTorch file, a pickle of Python objects (refused: loading it
    could run code), a corrupt safetensors file.
    """
    import torch

    path = str(path)
    where = f"--{option}: {path!r}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where} not found; check the path")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # SafetensorError: a cut or foreign file
            raise ConfigError(f"cannot read {where}: not a valid safetensors file ({' '.join(str(e).split())[:80]});"
                              " was it copied completely?") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "GLOBAL" in text:  # "Unsupported global: GLOBAL x" or "unsupported GLOBAL x whose module is blocked"
            raise ConfigError(f"refused: {where} holds Python objects, not only tensors; loading it could run "
                              "code. Re-save it as a state_dict (torch.save(model.state_dict(), ...)) or safetensors"
                              ) from None
        raise ConfigError(f"cannot read {where}: truncated or not a PyTorch file ({type(e).__name__}); was it "
                          "copied completely?") from None
