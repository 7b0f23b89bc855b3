"""The task contract, checked for every registered task: a new task gets all of it by registering.

Each task trains on its own built-in data (``Task.smoke_flags``): a two-batch fit through the engine with the
task's own step; its meter's sums added over two simulated processes equal one process's; its history row has
exactly its ``columns`` and every monitor; a run killed inside epoch 2 and resumed ends bit-identical to one that
was not; its OOF rows cover the validation images; prediction and a submission are written.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from kernel.config import parse_options
from kernel.engine import evaluate, train_one_epoch
from kernel.predict import main as predict_main
from kernel.run import effective_options, prepare
from kernel.run.fit import step_config
from kernel.tasks import TASKS, get_task

from conftest import go_on, paused_at, subprocess_env

TASK_NAMES = TASKS.names()
HOOKED = subprocess_env(hooks=("ticks", "pause"))


def _flags(name: str, out: Path, run: str, *extra: str) -> list:
    return ["--task", name, *get_task(name).smoke_flags, "--img-size", "32", "--workers", "0", "--device", "cpu",
            "--batch-size", "8", "--dry-run", "--output", str(out), "--name", run, "--no-tensorboard", "--no-plots",
            *extra]


def _prepared(name: str, tmp_path: Path):
    return prepare(effective_options(parse_options(_flags(name, tmp_path, "p"))))


def test_every_task_is_checked_here():
    assert set(TASK_NAMES) >= {"classify", "segment", "regress"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_two_batch_fit_row_columns_and_monitors(name, tmp_path):
    p, task = _prepared(name, tmp_path), get_task(name)
    cfg = step_config(p, train=True)
    cfg.max_batches = 2
    p.model.train()
    tr = train_one_epoch(p.model, p.train_loader, p.optimizer, cfg, meter=task.meter(p.split, train=True))
    assert tr.updates == 2 and tr.images == 16 and torch.isfinite(torch.tensor(tr.loss))
    va = evaluate(p.model, p.val_loader, step_config(p, train=False), meter=task.meter(p.split, train=False))
    row = task.row(tr.summary(), va.summary())
    assert set(row) == set(task.columns)
    assert set(task.monitors) <= {*row, "val_loss"}  # the loop adds the losses
    assert all(task.monitor_mode(m) in ("min", "max") for m in task.monitors)
    assert task.monitor_mode("val_loss") == "min"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_meter_sums_over_two_processes_equal_one(name, tmp_path):
    """Process r of a run sees batches r, r + 2, ...; its meter's state summed with the other's (what sync's
    all-reduce does) must give the one-process numbers."""
    p, task = _prepared(name, tmp_path), get_task(name)
    p.model.eval()
    batches = []
    with torch.no_grad():
        for images, targets in p.val_loader:
            batches.append((p.model(images).float(), targets))
    one, parts = task.meter(p.split, train=True), [task.meter(p.split, train=True) for _ in range(2)]
    for i, (outputs, targets) in enumerate(batches):
        one.update(outputs, targets)
        parts[i % 2].update(outputs, targets)
    states = [m.state() for m in parts]
    summed = task.meter(p.split, train=True)
    summed.load_state({k: states[0][k] + states[1][k] for k in states[0]})
    want, got = one.compute(), summed.compute()
    assert want.keys() == got.keys()
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9, nan_ok=True), k


@pytest.mark.parametrize("name", TASK_NAMES)
def test_killed_inside_epoch_2_and_resumed_is_bit_identical(name, tmp_path):
    base = [sys.executable, "-m", "kernel.train", "--epochs", "2", "--seed", "3"]
    subprocess.run([*base, *_flags(name, tmp_path, "full")], env=subprocess_env(), check=True,
                   capture_output=True, timeout=600)
    cut = [*base, *_flags(name, tmp_path, "cut", "--resume", "auto", "--save-every", "3")]
    proc = subprocess.Popen(cut, env=HOOKED, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    where = None
    for line in proc.stderr:
        at = paused_at(line)
        if at is None:
            continue
        if at[1] == 2 and at[2] > 0:
            where = at
            break
        go_on(at[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert where is not None, "no save inside epoch 2"
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (last["position"]["epoch"], last["position"]["batch"]) == (2, where[2])
    r = subprocess.run(cut, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and f"at epoch 2, batch {where[2]}" in r.stderr, r.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.parametrize("name", TASK_NAMES)
def test_oof_rows_prediction_and_submission(name, tmp_path):
    from kernel.data import build_loader

    p, task = _prepared(name, tmp_path), get_task(name)
    loader = p.feed(build_loader(p.val_loader.dataset, batch_size=8, workers=0, device=p.device, persistent=False,
                                 collate_fn=task.collate))
    ids = [f"img{i}" for i in range(len(p.split.val))]
    header, rows = task.oof(p.model, loader, p.split, ids, 0, p.device, None, tmp_path / "oof_masks",
                            leave_out={1})
    assert "path" in header and "fold" in header
    assert [r[header.index("path")] for r in rows] == [i for n, i in enumerate(ids) if n != 1]
    assert isinstance(task.cv_metric(header, rows, p.split), float)

    from kernel.train import main
    assert main(_flags(name, tmp_path, "run")) == 0
    test = tmp_path / "test"
    test.mkdir()
    for i, (w, h) in enumerate([(40, 36), (32, 48)]):
        Image.new("RGB", (w, h), (40 * i, 120, 200)).save(test / f"t{i}.png")
    assert predict_main(["--checkpoint", str(tmp_path / "run"), str(test), "--submission"]) == 0
    outputs = sorted(q.name for q in (tmp_path / "run" / "predict").rglob("*") if q.is_file())
    assert any(o.startswith("submission") for o in outputs) and len(outputs) >= 2, outputs


USER_TASK = '''"""A user's own task, in a file of their project: classification whose step doubles the logits."""
from kernel.tasks import Task
from kernel.tasks.classify import ClassifyTask

CALLS = []


class Doubled(ClassifyTask):
    name = "doubled"

    def step(self, model, batch, loss_fn):
        CALLS.append(len(batch[0]))
        outputs = 2 * model(batch[0])
        return (None if loss_fn is None else loss_fn(outputs, batch[1])), outputs


class Unfinished(Task):
    name = "unfinished"
'''


def test_a_users_task_file_trains_predicts_and_an_unfinished_one_is_refused(tmp_path, capsys):
    import sys as _sys

    from kernel.train import main
    (tmp_path / "my_task.py").write_text(USER_TASK)
    spec = f"{tmp_path / 'my_task.py'}:Doubled"
    flags = ["--task", spec, "--data", "shapes", "--model", "test_resnet", "--img-size", "32", "--workers", "0",
             "--device", "cpu", "--batch-size", "8", "--dry-run", "--output", str(tmp_path), "--name", "mine",
             "--no-tensorboard", "--no-plots"]
    assert main(flags) == 0
    assert "task doubled" in capsys.readouterr().err
    calls = _sys.modules["kernel_user_my_task"].CALLS
    assert len(calls) >= 2 * 3 + 2 * 2  # 2 dry-run epochs of 3 training and 2 validation batches, all its step's
    test = tmp_path / "test"
    test.mkdir()
    Image.new("RGB", (40, 36), (40, 120, 200)).save(test / "t0.png")
    assert predict_main(["--checkpoint", str(tmp_path / "mine"), str(test)]) == 0  # the task comes back from the file
    assert (tmp_path / "mine" / "predict" / "predictions.csv").is_file()
    flags[1] = f"{tmp_path / 'my_task.py'}:Unfinished"
    assert main(flags) == 2
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "abstract method" in line[0] and "build_data" in line[0] and "Traceback" not in err
