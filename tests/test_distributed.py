"""Several processes on CPU with gloo: the same maths and numbers as one process, exact resume, no hangs,
torchrun across two simulated machines, unfreezing under DDP."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

from kernel.data import write_shapes
from kernel.train import main

from conftest import go_on, paused_at, subprocess_env, wait_until_pending, wait_until_stopped

ENV = subprocess_env(threads=1)
# where saves land and where kills and signals come, chosen by the test (tests/hooks/sitecustomize.py)
HOOKED = subprocess_env(threads=1, hooks=("ticks", "pause"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("ddp"), n=160, seed=0, size=32) / "train"


def _cmd(data: Path, out: Path, name: str, *extra: str, model: str = "test_vit", epochs: int = 2) -> list:
    return [sys.executable, "-m", "kernel.train", "--data", str(data), "--model", model, "--img-size", "32",
            "--epochs", str(epochs), "--workers", "0", "--device", "cpu", "--aug", "light", "--output", str(out),
            "--name", name, "--no-tensorboard", "--no-plots", "--lr", "0.002", *extra]


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=kw.pop("env", ENV), capture_output=True, text=True, timeout=kw.pop("timeout", 600))
    return out


# SGD, not Adam: Adam divides each step by the gradient's running scale, so the float rounding of a sum taken in
# another order (the all-reduce) grows into visible differences on near-zero gradients; SGD keeps it at rounding.
SAME_MATHS = ("--opt", "sgd", "--lr", "0.05")


@pytest.fixture(scope="module")
def two_procs(data, tmp_path_factory) -> Path:
    """2 processes x batch 8 (test_vit: no BatchNorm)."""
    out = tmp_path_factory.mktemp("two")
    r = _run(_cmd(data, out, "p2", "--devices", "2", "--batch-size", "8", *SAME_MATHS))
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "p2"


def test_two_processes_equal_one_process_with_twice_the_batch(data, two_procs, tmp_path):
    r = _run(_cmd(data, tmp_path, "p1", "--devices", "1", "--batch-size", "16", *SAME_MATHS))
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(two_procs / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "p1" / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1 and len(a["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in a["model"])  # the unwrapped model
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6, rtol=1e-5), k
    log = (two_procs / "train.log").read_text()
    assert "process group of 2 (gloo); global batch 16" in log


def test_validation_numbers_equal_a_single_process_evaluation(two_procs):
    """The 2-process run's last validation equals one process evaluating its final weights on the whole set."""
    from kernel.config import parse_options
    from kernel.engine import StepConfig, evaluate
    from kernel.run import effective_options, prepare

    saved = dict(torch.load(two_procs / "last.pt", weights_only=True)["options"], devices=1)
    (two_procs.parent / "again.yaml").write_text(json.dumps({k: v for k, v in saved.items() if k != "predict"}))
    p = prepare(effective_options(parse_options(["--config", str(two_procs.parent / "again.yaml")])))
    p.model.load_state_dict(torch.load(two_procs / "last.pt", weights_only=True)["model"])
    va = evaluate(p.model, p.val_loader, StepConfig(p.loss_fn, p.device), meter=p.task.meter(p.split, train=False)).summary()
    last = torch.load(two_procs / "last.pt", weights_only=True)["history"][-1]
    assert va["loss"] == pytest.approx(last["val_loss"], rel=1e-6) and va["acc1"] == pytest.approx(last["val_acc"])


def _paused_together(proc: subprocess.Popen, n: int = 2, seen: Optional[list] = None):
    """The saves after which all ``n`` processes of ``proc``'s run (started with the ``pause`` test hook) have
    paused, as (pids, epoch, batch); the caller lets them go on (SIGCONT) or ends the run there. ``seen`` collects
    the lines of stderr read."""
    waiting: dict = {}
    for line in proc.stderr:
        if seen is not None:
            seen.append(line)
        at = paused_at(line)
        if at is not None:
            waiting.setdefault(at[1:], []).append(at[0])
            if len(waiting[at[1:]]) == n:
                yield (waiting.pop(at[1:]), *at[1:])


def _saved_inside_epoch_2_then_resumes_exactly(cmd: list, run: Path, signalled: int, two_procs: Path) -> None:
    """Both processes saved after batch ``signalled + 1`` of epoch 2; ``cmd`` resumes there and ends with the
    uninterrupted run's weights."""
    position = torch.load(run / "last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"], len(position["partial"])) == (2, signalled + 1, 2), position
    r = _run(cmd)
    assert r.returncode == 0 and f"at epoch 2, batch {signalled + 1}" in r.stderr, r.stderr[-3000:]
    a = torch.load(two_procs / "last.pt", weights_only=True)
    b = torch.load(run / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_two_processes_killed_then_stopped_by_sigterm_resume_exactly(data, two_procs, tmp_path):
    """Killed (every process, SIGKILL) after epoch 1 and resumed; then a SIGTERM sent to the launching process
    alone (a container's stop) reaches both processes, which save together inside epoch 2 (each one's partial
    sums and RNG) and exit 143; resumed again, the run ends with the uninterrupted run's weights."""
    cmd = _cmd(data, tmp_path, "cut", "--devices", "2", "--batch-size", "8", *SAME_MATHS, "--resume", "auto")
    proc = subprocess.Popen(cmd, env=HOOKED, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _, epoch, batch = next(_paused_together(proc))
    assert (epoch, batch) == (1, 0)  # epoch 1 saved, every process paused: kill them all
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["position"]["epoch"] == 1
    # resumed, saving every few updates (the ticking clock): paused after a save inside epoch 2, after batch b,
    # the launcher gets SIGTERM; once both processes hold it, they go on, finish batch b + 1 and stop there
    proc = subprocess.Popen(cmd + ["--save-every", "3"], env=HOOKED, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    signalled = 0
    for pids, epoch, batch in _paused_together(proc):
        if batch > 0 and not signalled:
            for pid in pids:
                wait_until_stopped(pid)
            proc.send_signal(signal.SIGTERM)
            for pid in pids:
                wait_until_pending(pid, signal.SIGTERM)  # passed on by the launcher
            signalled = batch
        for pid in pids:
            go_on(pid)
    assert proc.wait(timeout=300) == 143 and signalled
    _saved_inside_epoch_2_then_resumes_exactly(cmd, tmp_path / "cut", signalled, two_procs)


def test_sigterm_to_the_process_group_of_two_processes_with_workers_saves_and_resumes_exactly(data, two_procs,
                                                                                               tmp_path):
    """SIGTERM to the whole process group inside epoch 2, as `timeout` or SLURM send it: the launcher, both
    processes and their 2 DataLoader workers each get it at once (and the launcher passes it on). The workers leave
    it to their process; the processes save together after the next step, the stop is said once, and the run exits
    143 without a traceback, each process by itself; resumed, it ends with the uninterrupted run's weights."""
    cmd = _cmd(data, tmp_path, "grp", "--devices", "2", "--batch-size", "8", *SAME_MATHS, "--workers", "2",
               "--resume", "auto")
    proc = subprocess.Popen(cmd + ["--save-every", "3"], env=HOOKED, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: list = []
    signalled = 0
    for pids, epoch, batch in _paused_together(proc, seen=seen):
        if epoch == 2 and batch > 0 and not signalled:
            os.killpg(proc.pid, signal.SIGTERM)
            signalled = batch
        for pid in pids:
            go_on(pid)
    stderr = "".join(seen)
    assert proc.wait(timeout=300) == 143 and signalled, stderr[-3000:]
    assert stderr.count("SIGTERM received") == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "Terminating process" not in stderr, stderr[-3000:]  # each process left by itself, none was ended
    _saved_inside_epoch_2_then_resumes_exactly(cmd, tmp_path / "grp", signalled, two_procs)


def test_one_shot_commands_refuse_to_run_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["--find-lr", "--data", "shapes", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error: --find-lr runs in one process: start it without torchrun" in err and "Traceback" not in err


FAILING_LOSS = '''
import torch.distributed as dist
import torch.nn.functional as F
from kernel.errors import ConfigError


def fail_on_rank1(logits, target):
    if dist.is_initialized() and dist.get_rank() == 1:
        raise ConfigError("rank 1 refuses this batch")
    return F.cross_entropy(logits, target)
'''


def test_an_error_in_one_rank_ends_every_rank_in_one_line(data, tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_LOSS)
    r = _run(_cmd(data, tmp_path, "fail", "--devices", "2", "--batch-size", "8", "--loss",
                  f"{tmp_path / 'failing.py'}:fail_on_rank1"), timeout=120)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and errors == ["error: rank 1 refuses this batch"], r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_a_failed_self_test_falls_back_to_one_device(data, tmp_path):
    r = _run(_cmd(data, tmp_path, "fb", "--devices", "2", "--batch-size", "8", epochs=1),
             env=subprocess_env(threads=1, hooks=("selftest",)))
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "self-test" in warnings[0] and "continuing on one device" in warnings[0]
    assert json.loads((tmp_path / "fb" / "summary.json").read_text())["devices"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_across_two_simulated_machines(data, tmp_path):
    port = str(_free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank",
         str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
         *_cmd(data, tmp_path, "tr", "--batch-size", "8", epochs=1)[1:]], env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    run = tmp_path / "tr"
    assert torch.load(run / "last.pt", weights_only=True)["world_size"] == 2
    assert (run / "train.log").read_text().count("process group of 2") == 1  # one set of outputs, from rank 0


def test_unfreezing_under_ddp_trains_the_backbone(data, tmp_path):
    r = _run(_cmd(data, tmp_path, "uf", "--devices", "2", "--batch-size", "8", "--freeze", "backbone",
                  "--unfreeze-at", "2", "--model", "test_resnet"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "uf" / "train.log").read_text()
    assert "epoch 2: backbone unfrozen" in log
    hist = torch.load(tmp_path / "uf" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(42)
    from kernel.models import create_model

    init = create_model("test_resnet", 4).state_dict()
    assert not torch.equal(hist["layer1.0.conv1.weight"], init["layer1.0.conv1.weight"])  # trained in epoch 2


def test_segmentation_validation_of_two_processes_equals_one_process_evaluation(tmp_path):
    """--task segment on 2 processes: the last validation's loss and mIoU, reduced over the ranks' exact pixel
    counts, equal one process evaluating the final weights on the whole validation set. The loss is plain cross
    entropy here: a Dice term is a ratio over each batch, so its mean depends on how the images are batched."""
    from kernel.config import parse_options
    from kernel.engine import StepConfig, evaluate
    from kernel.run import effective_options, prepare
    from kernel.tasks.segment.shapes_seg import write_shapes_seg

    data = write_shapes_seg(tmp_path / "seg", n=60, seed=0, size=32)  # 12 validation images: 6 per rank
    r = _run(_cmd(data, tmp_path, "seg", "--devices", "2", "--batch-size", "4", "--loss", "ce",
                  model="tu-test_resnet", epochs=1))
    assert r.returncode == 0 and "task segment" in r.stderr, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "seg" / "last.pt", weights_only=True)
    (tmp_path / "again.yaml").write_text(json.dumps({k: v for k, v in dict(ckpt["options"], devices=1).items()
                                                     if k != "predict"}))
    p = prepare(effective_options(parse_options(["--config", str(tmp_path / "again.yaml")])))
    p.model.load_state_dict(ckpt["model"])
    va = evaluate(p.model, p.val_loader, StepConfig(p.loss_fn, p.device), meter=p.task.meter(p.split, train=False)).summary()
    last = ckpt["history"][-1]
    assert va["loss"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert va["miou"] == pytest.approx(last["val_miou"], rel=1e-6)
