"""End to end: the demo, learning on real files, exact resume after SIGKILL, one-line errors."""
import csv
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel.data import write_shapes
from kernel.run import seed_everything
from kernel.train import main

from conftest import ROOT, small_args, subprocess_env

ENV = subprocess_env()


def _metrics(run_dir: Path):
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_demo_dry_run_writes_every_output(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kernel.train", "--dry-run", "--output", str(tmp_path)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "exp"
    for name in ("last.pt", "best.pt", "model.safetensors", "metrics.csv", "summary.json", "config.yaml",
                 "train.log", "classes.json"):
        assert (run / name).is_file(), name
    assert f"outputs in {run.resolve()}" in out.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert {"best_metric", "best_epoch", "monitor", "epochs_run", "device", "amp_dtype", "wall_time"} <= set(summary)
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "lr", "train_loss", "val_loss", "val_acc", "epoch_time", "img_per_s"} <= set(header)
    ckpt = torch.load(run / "last.pt", weights_only=True)  # tensors and builtins only
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


def test_script_form_runs(tmp_path):
    out = subprocess.run([sys.executable, "kernel/train.py", "--list-models", "tv:resnet1*"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "tv:resnet18" in out.stdout


@pytest.fixture(scope="module")
def shapes480(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("s480"), n=480, seed=0, size=32)


LEARN = ["--epochs", "16", "--batch-size", "32", "--lr", "0.003", "--aug", "none", "--seed", "0", "--no-plots",
         "--no-tensorboard"]


@pytest.mark.parametrize("outcome", ["done", "error"])
def test_a_run_leaves_no_loader_worker_behind(tmp_path, outcome):
    """A run's persistent workers end with it, also when it fails: left for the garbage collector, a process
    that trains again (k-fold, a notebook) would wait 5 s for each at its next run (kernel.data.loader)."""
    data = write_shapes(tmp_path / "data", n=24, size=32) / "train"
    extra = []
    if outcome == "error":  # a worker meets an unreadable file: the run stops inside its first epoch
        next(data.rglob("*.png")).write_bytes(b"not an image")
        extra = ["--bad-images", "error"]
    before = set(multiprocessing.active_children())
    args = small_args(tmp_path, "--data", str(data), "--epochs", "1", "--no-plots", "--no-tensorboard",
                      "--val-split", "0.25", *extra)
    args[args.index("--workers") + 1] = "2"
    assert main(args) == (0 if outcome == "done" else 2)
    assert set(multiprocessing.active_children()) <= before


def test_learns_shapes_from_png_imagefolder(tmp_path, shapes480):
    assert main(small_args(tmp_path, "--data", str(shapes480 / "train"), "--name", "folder", *LEARN)) == 0
    summary = json.loads((tmp_path / "folder" / "summary.json").read_text())
    assert summary["best_metric"] >= 0.90, summary


def test_learns_shapes_from_csv(tmp_path, shapes480):
    args = ["--data", str(shapes480), "--csv", "train.csv", "--image-dir", "images", "--name", "csv", *LEARN]
    assert main(small_args(tmp_path, *args)) == 0
    summary = json.loads((tmp_path / "csv" / "summary.json").read_text())
    assert summary["best_metric"] >= 0.90, summary


def test_unfreeze_at_epoch(tmp_path, shapes480):
    args = small_args(tmp_path, "--data", str(shapes480 / "train"), "--epochs", "2", "--freeze", "backbone",
                      "--unfreeze-at", "2", "--name", "freeze", "--aug", "none")
    assert main(args) == 0
    log = (tmp_path / "freeze" / "train.log").read_text()
    assert "0.00M trainable" in log and "epoch 2: backbone unfrozen" in log
    assert main(args[:-4] + ["--unfreeze-at", "0", "--name", "frozen", "--aug", "none"]) == 0
    # With the backbone frozen throughout, its weights never move; the head's do.
    from kernel.models import create_model
    torch.manual_seed(42)
    init = create_model("test_resnet", 4).state_dict()
    final = torch.load(tmp_path / "frozen" / "last.pt", weights_only=True)["model"]
    assert torch.equal(final["layer1.0.conv1.weight"], init["layer1.0.conv1.weight"])
    assert not torch.equal(final["fc.weight"], init["fc.weight"])


@pytest.mark.parametrize("argv, words", [
    (["--model", "resnet18x"], ["--model", "did you mean 'resnet18'"]),
    (["--data", "no/such/dir"], ["--data", "no/such/dir"]),
    (["--epochs", "ten"], ["--epochs", "invalid int value"]),
    (["--sched", "cosinee"], ["--sched", "cosine"]),
    (["--loss", "dicee"], ["loss", "dice"]),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, argv, words):
    out = subprocess.run([sys.executable, "-m", "kernel.train", "--dry-run", "--output", str(tmp_path), *argv],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in lines[0]


@pytest.mark.parametrize("flags", [
    ["--amp"],                                        # bf16 autocast on CPU
    ["--amp", "--amp-dtype", "fp16"],                 # fp16 autocast + CPU GradScaler
    ["--channels-last", "--accum-steps", "2", "--clip-grad", "1.0"],
    ["--opt", "sgd", "--backbone-lr-mult", "0.1", "--sched", "onecycle"],
])
def test_training_switches_dry_run(tmp_path, flags):
    assert main(small_args(tmp_path, "--dry-run", "--data", "shapes", "--name", "sw", *flags)) == 0
    summary = json.loads((tmp_path / "sw" / "summary.json").read_text())
    expected = "float16" if "fp16" in flags else "bfloat16" if "--amp" in flags else "fp32"
    assert summary["amp_dtype"] == expected
    rows = _metrics(tmp_path / "sw")
    assert len(rows) == 2 and all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # not NaN


def test_progress_lines_without_a_tty(caplog):
    import logging

    from kernel.report import Progress

    caplog.set_level(logging.INFO, logger="kernel")
    p = Progress("epoch 1/1", every=2, tty=False)
    for i in range(1, 6):
        p(i, 5, lambda: {"loss": 0.5})
    lines = [r.getMessage() for r in caplog.records]
    assert [l.split()[2] for l in lines] == ["2/5", "4/5", "5/5"] and all("loss 0.5" in l for l in lines)


def test_seed_everything_sets_deterministic_kernels_both_ways():
    """A later run in the same process (a notebook, these tests) does not inherit --deterministic."""
    try:
        seed_everything(0, True)
        assert torch.are_deterministic_algorithms_enabled()
        # an operation without a deterministic CUDA kernel (segmentation's nll_loss2d) warns, not raises
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        seed_everything(0, False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_metrics_are_fractions_everywhere_and_preview_lr_numbers_epochs_as_training(tmp_path, capsys):
    """One convention (issue 20, item 16): every metric is a fraction in [0, 1] in metrics.csv, summary.json and
    the log lines, for every task; --preview-lr numbers epochs from 1 as the log and metrics.csv do, so its
    rows line up with a real run's LR column."""
    from kernel.tasks import get_task

    args = ["--dry-run", "--sched", "cosine", "--no-plots", "--no-tensorboard", "--seed", "0"]
    assert main(small_args(tmp_path, *args, "--name", "run")) == 0
    rows = _metrics(tmp_path / "run")
    accs = [float(r[k]) for r in rows for k in ("train_acc", "val_acc")]
    assert all(0.0 <= a <= 1.0 for a in accs) and max(accs) > 0, accs  # 4 classes: some image is right
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_metric"] == pytest.approx(float(rows[summary["best_epoch"] - 1]["val_acc"]), abs=1e-12)
    log = (tmp_path / "run" / "train.log").read_text()
    for r in rows:  # the log prints the same fractions as the file
        assert (f"epoch {r['epoch']}/2 " in log and f"acc {float(r['train_acc']):.4f}  val loss" in log
                and f"acc {float(r['val_acc']):.4f}" in log), (r, log)
    for task, row in (("classify", {"val_acc": 0.5}), ("segment", {"val_miou": 0.5, "val_dice": 0.5})):
        assert get_task(task).describe(row, "val").split()[1] == "0.5000", task  # the same format in every task

    capsys.readouterr()
    assert main(small_args(tmp_path, *args, "--preview-lr", "--name", "preview")) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(t[0]) for t in table] == [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(t[1]) for t in table] == pytest.approx([float(r["lr"]) for r in rows], rel=1e-3)  # LR at the start
