"""Shared fixtures: small on-disk datasets written by the tests themselves (no downloads)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict

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


def subprocess_env(threads: int = 2, **extra: str) -> Dict[str, str]:
    """The environment of a ``python -m kernel...`` child: this checkout importable, ``threads`` OpenMP threads
    each, and none of the runner's Kaggle, Colab or kernel variables (a test sets those it simulates)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "COLAB_", "KERNEL_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), **extra)
    return env


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
                      "--name", "x", "--config", str(cfg))
    assert main(args) == 0
    return dict(root=root, run=root / "runs" / "x", train=train, val=val)
