"""pyproject.toml: `pip install -e .` gives kernel-train, kernel-predict and kernel-build, working from any folder."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT

COMMANDS = {"kernel-train": "kernel.train:main", "kernel-predict": "kernel.predict:main",
            "kernel-build": "kernel.packer.command:main"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_entry_points_and_dependencies_come_from_the_project():
    """Each command names a function that exists; the dependencies are requirements.txt's, read from it."""
    meta = _pyproject()
    assert meta["project"]["scripts"] == COMMANDS
    for target in COMMANDS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    assert set(meta["project"]["dynamic"]) == {"version", "dependencies"}
    dynamic = meta["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    assert dynamic["version"] == {"attr": "kernel.__version__"}
    lines = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert all(not ln.startswith("-") for ln in lines), "setuptools reads requirement lines only: no -r/-c/--index"


def _env() -> dict:
    """The caller's environment without PYTHONPATH (nor Kaggle's, Colab's or the bundle's variables)."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith(("KAGGLE_", "COLAB_", "KERNEL_"))}


def test_editable_install_runs_the_commands_from_any_folder(tmp_path):
    """A copy of the checkout installed with `pip install -e` (offline: no dependencies, no build isolation) into
    a virtual environment that sees this machine's packages; the commands then run from an unrelated folder."""
    src = tmp_path / "checkout"
    shutil.copytree(ROOT / "kernel", src / "kernel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "requirements.txt", "README.md", "build.py", "kernel-metadata.json",
                 "dataset-metadata.json"):
        shutil.copy2(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=120)
    bin_dir = venv / "bin"
    env = _env()
    proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "-e", str(src)], env={**env, "PIP_NO_INPUT": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run(bin_dir / "python", "-c", "import kernel; print(kernel.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()) == src / "kernel" / "__init__.py", where
    for command, needle in (("kernel-train", "--dry-run"), ("kernel-predict", "--checkpoint"),
                            ("kernel-build", "--owner")):
        proc = run(bin_dir / command, "--help")
        assert proc.returncode == 0 and needle in proc.stdout, (command, proc.stderr)
    missing = run(bin_dir / "kernel-predict", "--checkpoint", "nowhere", "data/test")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr

    # kernel-build packs the installed checkout (its templates), with --config and --out from the current folder
    (elsewhere / "run.yaml").write_text("data: my-images/train\nepochs: 1\n")
    proc = run(bin_dir / "kernel-build", "--config", "run.yaml", "--owner", "test-user", "--out", "dist")
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "dist" / "kernel" / "train.py").is_file()
    assert (elsewhere / "dist" / "dataset" / "kernel" / "__init__.py").is_file()
