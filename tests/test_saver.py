"""End-of-epoch files written on a thread (kernel/run/saver.py, --async-save): the same files as the synchronous
path, written from a copy taken at the epoch's end, their callbacks and errors on the main thread."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
import torch

from kernel.data import write_shapes
from kernel.run.saver import BackgroundSaver, cpu_copy

from conftest import small_args, subprocess_env


def test_cpu_copy_is_a_copy_of_every_tensor_and_keeps_the_rest():
    live = {"model": {"w": torch.ones(3)}, "state": [torch.zeros(2), (torch.arange(2), 5)], "epoch": 1, "x": None}
    copy = cpu_copy(live)
    live["model"]["w"].add_(1)
    live["state"][0].add_(1)
    live["state"][1][0].add_(1)
    assert torch.equal(copy["model"]["w"], torch.ones(3)) and torch.equal(copy["state"][0], torch.zeros(2))
    assert torch.equal(copy["state"][1][0], torch.arange(2)) and isinstance(copy["state"][1], tuple)
    assert copy["state"][1][1] == 5 and copy["epoch"] == 1 and copy["x"] is None


def test_writes_run_on_a_thread_in_order_and_their_callbacks_on_the_callers():
    saver, main, seen = BackgroundSaver(), threading.get_ident(), []
    release = threading.Event()

    def write(n):
        def run():
            if n == 1:
                release.wait(60)  # the first write is still in flight when the second comes
            seen.append(("write", n, threading.get_ident() != main))
        return run

    saver.submit(write(1), lambda: seen.append(("done", 1, threading.get_ident() == main)))
    saver.poll()  # not finished: nothing to do yet
    assert seen == []
    release.set()
    saver.submit(write(2), lambda: seen.append(("done", 2, threading.get_ident() == main)))  # waits for the first
    saver.wait()
    assert seen == [("write", 1, True), ("done", 1, True), ("write", 2, True), ("done", 2, True)]


def test_a_failed_write_is_raised_on_the_callers_thread_or_logged_when_another_error_is_at_hand(caplog):
    def fail():
        raise OSError("No space left on device")

    saver, done = BackgroundSaver(), []
    saver.submit(fail, lambda: done.append(1))
    with pytest.raises(OSError, match="No space left"):
        saver.wait()
    saver.submit(fail, lambda: done.append(2))
    with caplog.at_level(logging.ERROR, logger="kernel"):
        saver.wait(quiet=True)
    assert done == [] and "the end-of-epoch save failed too: OSError: No space left on device" in caplog.text
    saver.wait()  # nothing in flight any more


def test_disabled_it_writes_at_once_in_the_caller():
    saver, seen = BackgroundSaver(enabled=False), []
    saver.submit(lambda: seen.append(threading.get_ident()), lambda: seen.append("done"))
    assert seen == [threading.get_ident(), "done"]


COPY_AT_EACH_SAVE = """
import shutil, sys
from pathlib import Path
from kernel.run.seams import install
from kernel.train import main

run = Path(sys.argv[1])
install(on_saved=lambda e, b: shutil.copyfile(run / "last.pt", run.parent / f"{run.name}-epoch{e}.pt") if b == 0 else None)
raise SystemExit(main(sys.argv[2:]))
"""


def test_the_files_and_the_saved_callbacks_are_those_of_the_synchronous_path(tmp_path):
    """Each end-of-epoch callback finds that epoch's last.pt on disk, with the same weights either way."""
    data = write_shapes(tmp_path / "data", n=48, size=32) / "train"
    for mode in ("async-save", "no-async-save"):
        args = small_args(tmp_path, "--data", str(data), "--epochs", "2", "--no-plots", "--no-tensorboard",
                          "--val-split", "0.25", "--name", mode, f"--{mode}")
        r = subprocess.run([sys.executable, "-c", COPY_AT_EACH_SAVE, str(tmp_path / mode), *args],
                           env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]

    def weights(path):
        return torch.load(path, weights_only=True)["model"]

    for epoch in (1, 2):
        a, b = weights(tmp_path / f"async-save-epoch{epoch}.pt"), weights(tmp_path / f"no-async-save-epoch{epoch}.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), epoch
        assert torch.load(tmp_path / f"async-save-epoch{epoch}.pt", weights_only=True)["epoch"] == epoch
    one, two = weights(tmp_path / "async-save-epoch1.pt"), weights(tmp_path / "async-save-epoch2.pt")
    assert not all(torch.equal(one[k], two[k]) for k in one)  # epoch 2 trained on
    for name in ("last.pt", "best.pt"):
        a, b = weights(tmp_path / "async-save" / name), weights(tmp_path / "no-async-save" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "async-save" / "metrics.csv").read_text().count("\n") == 3
