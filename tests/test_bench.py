"""The GPU scripts of bench/ run on a CPU as smoke tests of their code paths, not figures. They are run by hand
only where a GPU is lent, which is rare, so they must not rot in between: bench/gpu.py had broken on
train_one_epoch's StepConfig, unnoticed, until the first session with a GPU."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, subprocess_env

CONFIGS = ("fp32", "fp16", "bf16", "channels_last", "compile")


def _run(*args: str) -> None:
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_gpu_py_tiny_goes_through_every_config_on_a_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    _run("bench/gpu.py", "--device", "cpu", "--tiny", "--json", str(out))
    result = json.loads(out.read_text())
    rows = {(r["model"], r["config"]): r for r in result["rows"]}
    assert set(rows) == {(m, c) for m in ("test_resnet", "unet/tu-test_resnet") for c in CONFIGS}
    timed = [r for r in rows.values() if not r["note"]]
    assert len(timed) == 8 and all(r["img_per_s"] > 0 for r in timed)  # compile is skipped on a CPU, saying so
    assert result["loop_vs_plain"]["ratio"] > 0


def test_gpu_py_fed_feeds_the_model_from_the_real_loader_on_a_cpu(tmp_path):
    out = tmp_path / "fed.json"
    _run("bench/gpu.py", "--fed", "--device", "cpu", "--images", "16", "--batch", "8", "--model", "test_resnet",
         "--cores", "2", "--sizes", "500x375", "--json", str(out))
    row = json.loads(out.read_text())["results"]["500x375"]
    assert row["batches"] == 2
    assert all(row[k] > 0 for k in ("GPU only", "ours, uncached", "ours, cached", "plain"))


def test_uint8_parity_is_exact_on_a_cpu(tmp_path):
    out = tmp_path / "parity.json"
    _run("bench/uint8_parity.py", "--device", "cpu", "--tasks", "classify", "--json", str(out))
    row = json.loads(out.read_text())["rows"]["classify"]
    assert row["batch max |diff|"] == 0 and row["targets equal"]
    assert row["weights max |diff|"] == 0 and row["rerun weights max |diff|"] == 0 and row["predictions max |diff|"] == 0
