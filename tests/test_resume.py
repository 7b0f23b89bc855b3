"""Never lose a session: kills at any moment, the worker count, the time limit, SIGTERM and chained Kaggle versions
all end with the weights of an uninterrupted run (bit for bit, on CPU)."""
from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import pytest
import torch

from kernel.config import parse_options
from kernel.data import write_shapes
from kernel.run import effective_options
from kernel.run.resume import resume_path
from kernel.tasks.segment.shapes_seg import write_shapes_seg

from conftest import go_on, paused_at, subprocess_env

ENV = subprocess_env()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("resume"), n=240, seed=0, size=32) / "train"


def _cmd(data: Path, out: Path, name: str, workers: str = "0", epochs: int = 3, *extra: str) -> list:
    return [sys.executable, "-m", "kernel.train", "--data", str(data), "--model", "test_resnet", "--img-size", "32",
            "--epochs", str(epochs), "--batch-size", "16", "--workers", workers, "--device", "cpu", "--aug", "light",
            "--warmup-steps", "5", "--output", str(out), "--name", name, "--no-tensorboard", "--no-plots",
            *extra]


def _same_weights(a: Path, b: Path) -> None:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert x["epoch"] == y["epoch"] and x["model"].keys() == y["model"].keys()
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), k
    assert [r["train_loss"] for r in x["history"]] == [r["train_loss"] for r in y["history"]]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    subprocess.run(_cmd(data, out, "full"), env=ENV, check=True, capture_output=True, timeout=600)
    return out / "full" / "last.pt"


# Where a save lands and where a kill, a signal or the end of the time comes are chosen by the test, never by this
# machine's speed (tests/hooks/sitecustomize.py): the budget's clock ticks one second per read, so --save-every 3
# saves every few updates, and each process pauses after each save until the test kills it or lets it go on.
HOOKED = subprocess_env(hooks=("ticks", "pause"))
SAVE_OFTEN = ("--save-every", "3")


def _signal_inside_epoch_2(cmd: list, signum: int, hooks: Tuple[str, ...] = ("ticks", "pause"), group: bool = False,
                           **env: str) -> Tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd`` (saving every few updates); paused after its first save inside epoch 2, after batch ``b``, it is
    sent ``signum`` (pending until it goes on); with ``group``, every process of its process group is (its DataLoader
    workers too, which are not paused), as ``timeout``, SLURM or a container's stop do. Returns the finished run (its
    stderr) and ``b``."""
    proc = subprocess.Popen([*cmd, *SAVE_OFTEN], env=subprocess_env(hooks=hooks, **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen, signalled = [], 0
    for line in proc.stderr:
        seen.append(line)
        at = paused_at(line)
        if at is not None:
            if at[1] == 2 and at[2] > 0 and not signalled:
                if group:
                    os.killpg(proc.pid, signum)
                else:
                    proc.send_signal(signum)
                signalled = at[2]
            go_on(at[0])
    return subprocess.CompletedProcess(cmd, proc.wait(timeout=600), None, "".join(seen)), signalled


def _out_of_time_inside_epoch_2(cmd: list, **env: str) -> Tuple[subprocess.CompletedProcess, int]:
    """``cmd``'s clock jumps 12 hours ahead inside epoch 2, after batch ``b`` (SIGUSR1 and the jump hook), as if
    the rest of a Kaggle session had passed in one step. What follows is the real stop (remaining < needed) after
    the next update. Returns the finished run and ``b``."""
    return _signal_inside_epoch_2(cmd, signal.SIGUSR1, ("ticks", "jump", "pause"), **env)


# The kinds of moment at which _kill_at_random_moments kills its runs, in turn.
MOMENTS = ("right after a save", "between epochs", "a while after a save")


def _kill_at_random_moments(cmds: list, seed: int) -> list:
    """Run each of ``cmds`` (resuming, saving every few updates) in turn, each SIGKILLed at a seeded random
    moment of the next kind in ``MOMENTS``: while paused right after its 1st, 2nd or 3rd save (inside an epoch or
    at its end); while paused after its first epoch's end; or a random delay after its 1st to 3rd save, wherever
    the run has got to by then. Returns where each kill left ``last.pt``: (epoch, batch)."""
    rng, where = random.Random(seed), []
    for i, cmd in enumerate(cmds):
        moment, wanted, delay = MOMENTS[i % len(MOMENTS)], rng.randint(1, 3), rng.uniform(0.0, 0.4)
        proc = subprocess.Popen([*cmd, *SAVE_OFTEN], env=HOOKED, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        saves = 0
        for line in proc.stderr:
            at = paused_at(line)
            if at is None:
                continue
            saves += 1
            if moment == "right after a save" and saves == wanted or moment == "between epochs" and at[2] == 0:
                break  # killed while paused
            go_on(at[0])
            if moment == "a while after a save" and saves == wanted:
                time.sleep(delay)  # killed in the middle of whatever came next (or paused at the next save)
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(Path(cmd[cmd.index("--output") + 1]) / cmd[cmd.index("--name") + 1] / "last.pt",
                          weights_only=True)
        where.append((ckpt["position"]["epoch"], ckpt["position"]["batch"]))
    return where


def test_five_kills_anywhere_end_bit_identical(data, uninterrupted, tmp_path):
    """Killed five times (inside epochs and between them), resumed each time with 0 or 2 workers in turn
    (persistent workers on): the same weights and losses as the uninterrupted run, which used 0 workers, so
    neither the worker count nor a change of it between resumes matters."""
    def cmd(workers: str) -> list:
        return _cmd(data, tmp_path, "cut", workers, 3, "--resume", "auto")

    where = _kill_at_random_moments([cmd(w) for w in ("2", "0", "2", "0", "2")], seed=0)
    moments = [MOMENTS[i % len(MOMENTS)] for i in range(5)]
    assert all(batch == 0 for (_, batch), m in zip(where, moments) if m == "between epochs"), where
    assert any(batch > 0 for (_, batch), m in zip(where, moments) if m == "right after a save"), where
    done = subprocess.run(cmd("2"), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr
    _same_weights(uninterrupted, tmp_path / "cut" / "last.pt")


def test_segmentation_killed_at_a_random_moment_resumes_bit_identical(tmp_path):
    """The same promise for --task segment (found from the masks): a U-Net on shapes masks, --deterministic,
    killed and resumed, ends with the weights and losses of the uninterrupted run."""
    data = write_shapes_seg(tmp_path / "seg", n=96, seed=0, size=32)

    def cmd(name: str, *extra: str) -> list:
        argv = _cmd(data, tmp_path, name, "0", 2, "--deterministic", "--warmup-steps", "2", *extra)
        argv[argv.index("test_resnet")] = "tu-test_resnet"  # smp U-Net on timm's tiny test encoder
        return argv

    full = subprocess.run(cmd("full"), env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0 and "task segment" in full.stderr, full.stderr[-3000:]
    cut = cmd("cut", "--resume", "auto")
    where = _kill_at_random_moments([cut], seed=3)
    assert where != [(2, 0)], "the kill came after the last epoch: nothing was left to resume"
    done = subprocess.run(cut, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "resumed from" in done.stderr, (where, done.stderr[-3000:])
    _same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")


def test_unreadable_images_keep_a_killed_run_with_workers_bit_identical(tmp_path):
    """2 % of the training images cut short: the run goes on past them (limit 5 %), and killed once and resumed
    with 2 workers it ends with the weights of an uninterrupted run with 0 workers (replacements are seeded)."""
    data = write_shapes(tmp_path / "d", n=120, seed=0, size=32) / "train"
    images = sorted(data.rglob("*.png"))
    for path in images[5::len(images) // 2][:2]:  # 2 of the ~96 training images
        path.write_bytes(path.read_bytes()[:60])
    full = subprocess.run(_cmd(data, tmp_path, "full", "0", 2, "--bad-images-limit", "0.05"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    assert len((tmp_path / "full" / "bad_images.txt").read_text().splitlines()) == 2
    cut = _cmd(data, tmp_path, "cut", "2", 2, "--bad-images-limit", "0.05", "--resume", "auto")
    where = _kill_at_random_moments([cut], seed=1)
    assert where != [(2, 0)], "the kill came after the last epoch: nothing was left to resume"
    done = subprocess.run(cut, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "resumed from" in done.stderr, done.stderr[-3000:]
    _same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")


def test_time_limit_stops_cleanly_and_the_resumed_run_is_exact(data, uninterrupted, tmp_path):
    (tmp_path / "cfg.yaml").write_text(f"predict:\n  inputs: [{data / 'circle'}]\n  workers: 0\n")
    stop, jumped = _out_of_time_inside_epoch_2(_cmd(data, tmp_path, "tl", "0", 3, "--config",
                                                    str(tmp_path / "cfg.yaml"), "--time-limit", "1h"))
    assert stop.returncode == 0, stop.stderr[-3000:]
    summary = json.loads((tmp_path / "tl" / "summary.json").read_text())
    assert summary["stopped"] == "time_limit" and summary["epochs_run"] == 1, summary
    position = torch.load(tmp_path / "tl" / "last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"]) == (2, jumped + 1)  # saved after the update that followed
    assert "continue with --resume auto" in stop.stderr
    assert len((tmp_path / "tl" / "predictions.csv").read_text().splitlines()) == 61  # predict: ran, with best.pt
    resumed = subprocess.run(_cmd(data, tmp_path, "tl", "0", 3, "--resume", "auto"), env=ENV, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0 and f"at epoch 2, batch {jumped + 1}" in resumed.stderr, resumed.stderr[-3000:]
    _same_weights(uninterrupted, tmp_path / "tl" / "last.pt")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigterm_to_the_process_group_saves_within_a_step_and_exits_143(data, uninterrupted, tmp_path, workers):
    """SIGTERM to the run's whole process group inside epoch 2, as `timeout` sends it (while the run is paused after
    a save there, after batch b; with 2 workers they get it at once): the workers leave it to the main process,
    which finishes the next step, saves last.pt after batch b + 1, says so once and exits 143 without a traceback;
    resumed, it ends bit-identical."""
    stop, signalled = _signal_inside_epoch_2(_cmd(data, tmp_path, "term", workers), signal.SIGTERM, group=True)
    assert stop.returncode == 143 and signalled, stop.stderr[-2000:]
    assert stop.stderr.count("SIGTERM received") == 1 and "Traceback" not in stop.stderr, stop.stderr[-2000:]
    assert f"saved last.pt inside epoch 2 after batch {signalled + 1}" in stop.stderr
    position = torch.load(tmp_path / "term" / "last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"]) == (2, signalled + 1)
    resumed = subprocess.run(_cmd(data, tmp_path, "term", workers, 3, "--resume", "auto"), env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"at epoch 2, batch {signalled + 1}" in resumed.stderr
    _same_weights(uninterrupted, tmp_path / "term" / "last.pt")


def test_ctrl_c_to_the_process_group_with_workers_is_said_once_and_saves(data, tmp_path):
    """Ctrl-C reaches every process of the terminal's group: with 2 workers the main process alone says so (once,
    not once per process) and saves inside the epoch, then exits 130."""
    stop, signalled = _signal_inside_epoch_2(_cmd(data, tmp_path, "int", "2"), signal.SIGINT, group=True)
    assert stop.returncode == 130 and signalled, stop.stderr[-2000:]
    assert stop.stderr.count("SIGINT received") == 1 and "Traceback" not in stop.stderr, stop.stderr[-2000:]
    position = torch.load(tmp_path / "int" / "last.pt", weights_only=True)["position"]
    assert (position["epoch"], position["batch"]) == (2, signalled + 1)


@pytest.fixture(scope="module")
def kaggle_version_1(data, uninterrupted, tmp_path_factory) -> Path:
    """Version 1 of a Kaggle kernel: stopped by its time limit; its /kaggle/working is what version 2 mounts."""
    root = tmp_path_factory.mktemp("v1")
    (root / "input").mkdir()
    cmd = _cmd(data, root, "run", "0", 4, "--resume", "auto")  # the time limit: Kaggle's (auto)
    del cmd[cmd.index("--output"):cmd.index("--output") + 2]  # on Kaggle: /kaggle/working/<name>
    cmd.remove("--no-plots")  # curves.png is to cover every version
    out, _ = _out_of_time_inside_epoch_2(cmd, KAGGLE_KERNEL_RUN_TYPE="Batch", KERNEL_KAGGLE_INPUT=str(root / "input"),
                                         KERNEL_KAGGLE_WORKING=str(root / "working"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((root / "working" / "run" / "summary.json").read_text())["stopped"] == "time_limit"
    return root / "working" / "run"


def test_chained_kaggle_versions_resume_and_cover_every_epoch(data, kaggle_version_1, tmp_path):
    """Version 2 mounts version 1's output (the new layout, notebooks/<owner>/<slug>; the old one is found the same
    way: the next test), resumes from its last.pt and writes every epoch's outputs; version 3 has nothing to do."""
    inputs, working = tmp_path / "input", tmp_path / "working"
    mount = inputs / "notebooks" / "alice" / "kernel-train"
    shutil.copytree(kaggle_version_1, mount / "run")  # the previous version's output, mounted read-only
    env = dict(ENV, KAGGLE_KERNEL_RUN_TYPE="Batch", KERNEL_KAGGLE_INPUT=str(inputs), KERNEL_KAGGLE_WORKING=str(working))
    cmd = _cmd(data, tmp_path, "run", "0", 4, "--resume", "auto")
    del cmd[cmd.index("--output"):cmd.index("--output") + 2]
    cmd.remove("--no-plots")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {mount / 'run' / 'last.pt'}" in out.stderr
    rows = list(csv.DictReader(open(working / "run" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # version 1's epochs too
    assert (working / "run" / "best.pt").is_file() and (working / "run" / "curves.png").is_file()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # a third version
    assert again.returncode == 0 and "training already complete" in again.stderr


@pytest.mark.parametrize("mount", ["notebooks/alice/kernel-train", "kernel-train"])  # the new layout, the old one
def test_resume_auto_finds_the_previous_versions_last_pt_in_either_layout(tmp_path, monkeypatch, mount):
    inputs, working = tmp_path / "input", tmp_path / "working"
    (inputs / mount / "run").mkdir(parents=True)
    (inputs / mount / "run" / "last.pt").write_bytes(b"version 1")
    (inputs / "datasets" / "alice" / "shapes" / "run").mkdir(parents=True)  # another mount, without a last.pt
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("KERNEL_KAGGLE_INPUT", str(inputs))
    monkeypatch.setenv("KERNEL_KAGGLE_WORKING", str(working))
    opts = effective_options(parse_options(["--resume", "auto", "--name", "run"]))
    assert resume_path(opts, working / "run") == inputs / mount / "run" / "last.pt"
    (working / "run").mkdir(parents=True)
    (working / "run" / "last.pt").write_bytes(b"this version's")  # this version's own last.pt comes first
    assert resume_path(opts, working / "run") == working / "run" / "last.pt"
