"""Shared fixtures: small on-disk datasets written by the tests themselves (no downloads)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

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
    from kernel.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes"), n=240, seed=0, size=32)


def small_args(tmp_path: Path, *extra: str) -> list:
    """Flags for a fast CPU run on a tiny model."""
    return ["--model", "resnet10t", "--img-size", "32", "--workers", "0", "--device", "cpu",
            "--output", str(tmp_path), "--batch-size", "16", *extra]
