"""Shared fixtures: small on-disk datasets written by the tests themselves (no downloads)."""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep tests off the network and out of the user's caches, and single-threaded per test
# process so the 2-core CI machine is not oversubscribed.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """240 shapes images (60 per class) at 32 px, as an ImageFolder tree plus a CSV copy."""
    from kernel.data import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes"), n=240, seed=0, size=32)


def subprocess_env(threads: int = 2, hooks: Sequence[str] = (), **extra: str) -> Dict[str, str]:
    """The environment of a ``python -m kernel...`` child: this checkout importable, ``threads`` OpenMP threads
    each, and none of the runner's Kaggle, Colab or kernel variables (a test sets those it simulates).

    ``hooks`` (``"ticks"``, ``"jump"``, ``"pause"``, ``"selftest"``) turns on those test hooks of
    ``tests/hooks/sitecustomize.py``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "COLAB_", "KERNEL_"))}
    path = [str(ROOT)] + ([str(ROOT / "tests" / "hooks")] if hooks else [])
    env.update(PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS=str(threads), **extra)
    env.update({f"KERNEL_TEST_{name.upper()}": "1" for name in hooks})
    return env


PAUSED = re.compile(r"test-hook: paused pid (\d+) at epoch (\d+), batch (\d+)")


def paused_at(line: str) -> Optional[Tuple[int, int, int]]:
    """(pid, epoch, batch) when ``line`` says a process started with the ``pause`` hook stopped after a save."""
    m = PAUSED.search(line)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def _wait_for(pid: int, what: str, done, timeout: float = 120.0) -> None:
    """Poll Linux's /proc/PID/status until ``done(status text)``; raise when it never comes (a bug, not slowness)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(Path(f"/proc/{pid}/status").read_text()):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid}: {what} never happened")


def wait_until_stopped(pid: int) -> None:
    """Wait until the process ``pid``, which said it pauses, has stopped (it writes its line just before)."""
    _wait_for(pid, "the pause", lambda status: re.search(r"^State:\s*T", status, re.M) is not None)


def wait_until_pending(pid: int, signum: int) -> None:
    """Wait until ``signum`` is pending on the stopped process ``pid``: another process has sent it."""
    _wait_for(pid, f"signal {signum}",
              lambda status: int(re.search(r"^ShdPnd:\s*([0-9a-f]+)", status, re.M)[1], 16) >> (signum - 1) & 1)


def go_on(pid: int) -> None:
    """Let a process paused by the ``pause`` hook go on. SIGCONT sent before it has stopped would be lost, and it
    would then stop for good: wait for the stop first."""
    wait_until_stopped(pid)
    os.kill(pid, signal.SIGCONT)


def small_args(tmp_path: Path, *extra: str) -> list:
    """Flags for a fast CPU run on a tiny model (timm's test_resnet: 0.4M parameters)."""
    return ["--model", "test_resnet", "--img-size", "32", "--workers", "0", "--device", "cpu",
            "--output", str(tmp_path), "--batch-size", "16", *extra]


REPORT_EPOCHS = 3


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    """One short run shared by the report and predict tests: ImageFolder train + val folders, a predict: section."""
    import yaml

    from kernel.data import write_shapes
    from kernel.train import main

    root = tmp_path_factory.mktemp("report")
    train = write_shapes(root / "tr", n=160, seed=0, size=32)
    val = write_shapes(root / "va", n=48, seed=1, size=32)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"predict": {"inputs": [str(val / "images")], "submission": True,
                                               "topk": 2, "tta": True, "out": "test_predictions.csv"}}))
    args = small_args(root / "runs", "--data", str(train / "train"), "--val-data", str(val / "train"),
                      "--epochs", str(REPORT_EPOCHS), "--aug", "none", "--lr", "0.003", "--seed", "0",
                      "--name", "x", "--config", str(cfg), "--tb-graph")
    assert main(args) == 0
    return dict(root=root, run=root / "runs" / "x", train=train, val=val)
