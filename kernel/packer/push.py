"""Uploading a build with the official ``kaggle`` CLI: the code dataset (create or new version), then the kernel.

The CLI is found as ``$KERNEL_KAGGLE_CLI``, ``kaggle`` on PATH or ``python -m kaggle``; credentials
are only checked for existence, never read. Every command is printed with its output (except the
status polls of :mod:`.watch`, which prints changes of state only).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from .bundle import Bundle
from .metadata import BuildError

__all__ = ["KaggleRun", "next_steps", "kaggle_cli", "have_credentials", "kaggle_runner", "pushed_version",
           "push_kernel", "push", "follow_hint"]


def _q(path: Path | str) -> str:
    text = str(path)
    return text if re.fullmatch(r"[\w./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def next_steps(bundle: Bundle, out: Path) -> List[str]:
    """The kaggle CLI commands that upload and run this build, in order."""
    msg = f"kernel {bundle.version} {bundle.sha256[:12]}"
    slug = bundle.kernel_id.split("/")[1]
    return [
        f"kaggle datasets create -p {_q(out / 'dataset')} --dir-mode zip        # first time only",
        f"kaggle datasets version -p {_q(out / 'dataset')} --dir-mode zip -m \"{msg}\"   # afterwards",
        f"kaggle kernels push -p {_q(out / bundle.folder)}",
        f"kaggle kernels status {bundle.kernel_id}",
        f"kaggle kernels output {bundle.kernel_id} -p {_q(Path('outputs') / slug)}",
    ]


def kaggle_cli() -> Optional[List[str]]:
    """The kaggle command: $KERNEL_KAGGLE_CLI, `kaggle` on PATH, or `python -m kaggle`."""
    override = os.environ.get("KERNEL_KAGGLE_CLI")
    if override:
        return [override]
    exe = shutil.which("kaggle")
    if exe:
        return [exe]
    import importlib.util  # kaggle itself is not imported: it authenticates at import

    if importlib.util.find_spec("kaggle") is not None:
        return [sys.executable, "-m", "kaggle"]
    return None


def have_credentials() -> bool:
    """Whether any credential the kaggle CLI reads is present (checks existence only, reads nothing)."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    home = Path(os.path.expanduser("~"))
    dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    dirs += [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    names = ("kaggle.json", "access_token", "access_token.txt", "credentials.json")
    return any((d / n).is_file() for d in dirs for n in names)


KaggleRun = Callable[..., subprocess.CompletedProcess]


def kaggle_runner(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> KaggleRun:
    """The kaggle CLI as a function ``kaggle(*args, check=True, echo=True) -> CompletedProcess``.

    With ``echo`` the command and its output are printed; ``check`` turns a non-zero exit (or the
    client's "push/creation/version error" lines, which exit 0) into a :class:`BuildError`.
    """
    cli = kaggle_cli()
    if cli is None:
        raise BuildError("--push: the kaggle CLI is not installed; `pip install kaggle`, or run the printed "
                         "commands yourself")
    if not have_credentials():
        raise BuildError("--push: no Kaggle credentials; create a token at https://www.kaggle.com/settings/api and "
                         "set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token), or run `kaggle auth login`")

    def kaggle(*args: str, check: bool = True, echo: bool = True) -> subprocess.CompletedProcess:
        if echo:
            print("$ kaggle " + " ".join(_q(a) for a in args), flush=True)
        proc = run([*cli, *args], capture_output=True, text=True)
        text = (proc.stdout or "") + (proc.stderr or "")
        if echo and text.strip():
            print(text.rstrip(), flush=True)
        failed = proc.returncode != 0 or re.search(r"(push|creation|version) error", text, re.I)
        if check and failed:
            raise BuildError(f"--push: `kaggle {' '.join(args)}` failed (exit {proc.returncode}); see its output "
                             f"above")
        return proc

    return kaggle


def pushed_version(text: str) -> Optional[int]:
    """The version number in ``kaggle kernels push`` output ("Kernel version 3 successfully pushed."), or None."""
    match = re.search(r"kernel version (\d+) successfully pushed", text, re.I)
    return int(match.group(1)) if match else None


def push_kernel(kaggle: KaggleRun, kernel_dir: Path) -> Optional[int]:
    """``kaggle kernels push -p kernel_dir``; the pushed version number, or None when the output lacks it."""
    proc = kaggle("kernels", "push", "-p", str(kernel_dir))
    return pushed_version((proc.stdout or "") + (proc.stderr or ""))


def push(bundle: Bundle, out: Path, message: Optional[str] = None, wait_s: float = 600.0,
         run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> Optional[int]:
    """Upload the code dataset (create or new version), wait until it is ready, push the kernel.

    Returns the pushed kernel version (None when the client's output does not name it).
    """
    kaggle = kaggle_runner(run)
    ds = str(out / "dataset")
    exists = kaggle("datasets", "status", bundle.dataset_id, check=False).returncode == 0
    if exists:
        kaggle("datasets", "version", "-p", ds, "--dir-mode", "zip", "-m",
               message or f"kernel {bundle.version} {bundle.sha256[:12]}")
    else:
        kaggle("datasets", "create", "-p", ds, "--dir-mode", "zip")
    deadline = clock() + wait_s
    while True:  # the kernel must not start before the new dataset version is unpacked
        status = kaggle("datasets", "status", bundle.dataset_id, check=False)
        if "ready" in (status.stdout or "").lower():
            break
        if "error" in (status.stdout or "").lower() or clock() > deadline:
            raise BuildError(f"--push: dataset {bundle.dataset_id} is not ready ({(status.stdout or '').strip()}); "
                             f"check it on kaggle.com, then run `kaggle kernels push -p {out / bundle.folder}`")
        sleep(10)
    return push_kernel(kaggle, out / bundle.folder)


def follow_hint(bundle: Bundle) -> str:
    """What to run to follow a pushed kernel by hand."""
    slug = bundle.kernel_id.split("/")[1]
    return (f"Pushed. Follow it with:\n  kaggle kernels status {bundle.kernel_id}\n  "
            f"kaggle kernels output {bundle.kernel_id} -p {_q(Path('outputs') / slug)}\n"
            f"  (or push with `python build.py --push --wait`)")
