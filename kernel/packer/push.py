"""Uploading a build with the official ``kaggle`` CLI: the code dataset (create or new version), then the kernel.

The CLI is found as ``$KERNEL_KAGGLE_CLI``, ``kaggle`` on PATH or ``python -m kaggle``; credentials
are only checked for existence, never read. Every command is printed with its output.
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

__all__ = ["next_steps", "kaggle_cli", "have_credentials", "push"]


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
        f"kaggle kernels push -p {_q(out / 'kernel')}",
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


def push(bundle: Bundle, out: Path, message: Optional[str] = None, wait_s: float = 600.0,
         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """Upload the code dataset (create or new version), wait until it is ready, push the kernel."""
    cli = kaggle_cli()
    if cli is None:
        raise BuildError("--push: the kaggle CLI is not installed; `pip install kaggle`, or run the printed "
                         "commands yourself")
    if not have_credentials():
        raise BuildError("--push: no Kaggle credentials; create a token at https://www.kaggle.com/settings/api and "
                         "set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token), or run `kaggle auth login`")

    def kaggle(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        print("$ kaggle " + " ".join(_q(a) for a in args), flush=True)
        proc = run([*cli, *args], capture_output=True, text=True)
        text = (proc.stdout or "") + (proc.stderr or "")
        if text.strip():
            print(text.rstrip(), flush=True)
        failed = proc.returncode != 0 or re.search(r"(push|creation|version) error", text, re.I)
        if check and failed:
            raise BuildError(f"--push: `kaggle {' '.join(args)}` failed (exit {proc.returncode}); see its output "
                             f"above")
        return proc

    ds = str(out / "dataset")
    exists = kaggle("datasets", "status", bundle.dataset_id, check=False).returncode == 0
    if exists:
        kaggle("datasets", "version", "-p", ds, "--dir-mode", "zip", "-m",
               message or f"kernel {bundle.version} {bundle.sha256[:12]}")
    else:
        kaggle("datasets", "create", "-p", ds, "--dir-mode", "zip")
    deadline = time.monotonic() + wait_s
    while True:  # the kernel must not start before the new dataset version is unpacked
        status = kaggle("datasets", "status", bundle.dataset_id, check=False)
        if "ready" in (status.stdout or "").lower():
            break
        if "error" in (status.stdout or "").lower() or time.monotonic() > deadline:
            raise BuildError(f"--push: dataset {bundle.dataset_id} is not ready ({(status.stdout or '').strip()}); "
                             f"check it on kaggle.com, then run `kaggle kernels push -p {out / 'kernel'}`")
        time.sleep(10)
    kaggle("kernels", "push", "-p", str(out / "kernel"))
    print(f"Pushed. Follow it with:\n  kaggle kernels status {bundle.kernel_id}\n  "
          f"kaggle kernels output {bundle.kernel_id} -p {_q(Path('outputs') / bundle.kernel_id.split('/')[1])}")
    return 0
