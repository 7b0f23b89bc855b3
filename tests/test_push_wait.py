"""build.py --push --wait / --until-done: follow a pushed kernel, download its outputs, push again after a time limit.

The end-to-end tests run the REAL ``kaggle`` CLI, one process per call (``$KERNEL_KAGGLE_CLI`` is a
wrapper from ``kaggle_fake``, served by forks of a process that imported the client once), with only
``requests.Session.send`` answered by a scripted server: status sequences, output files with
download URLs, the session log. Sleeping advances a fake clock, so hours of polling take no time.
The unit tests feed the poller text in the client's own format.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

import build
from kaggle_fake import FakeClock, fake_kaggle, kaggle_log, make_project, new_state, read_state  # noqa: F401 (a fixture)
from kernel import packer

KERNEL = "alice/kernel-train"


def summary(**extra) -> str:
    return json.dumps({"task": "classify", "best_metric": 0.875, "monitor": "val_acc", "best_epoch": 3,
                       "epochs_run": 4, "last_epoch": 4, **extra})


def version(statuses: List[str], files: Optional[Dict[str, str]] = None, log: Optional[List[str]] = None,
            failure: str = "") -> Dict:
    return {"statuses": statuses, "files": files or {}, "log": kaggle_log(log or ["started"]), "failure": failure}


def build_push_wait(tmp_path, monkeypatch, start, state: Dict, *flags: str):
    """`python build.py --out dist --no-vendor --demo FLAGS` in tmp_path against the fake server."""
    state_path = start(state)
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    rc = build.main(["--out", str(tmp_path / "dist"), "--no-vendor", "--demo", *flags], project=project,
                    sleep=clock.sleep, clock=clock)
    return rc, state_path, clock


def calls(state_path: Path, endpoint: str) -> int:
    return sum(r.endswith("/" + endpoint) for r in read_state(state_path)["requests"])


def files_under(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ end to end, the real client

def test_wait_follows_the_run_and_downloads_its_outputs(tmp_path, monkeypatch, capsys, fake_kaggle):
    outputs = {"exp/summary.json": summary(), "exp/metrics.csv": "epoch,val_acc\n1,0.5\n", "exp/best.pt": "weights"}
    state = new_state(KERNEL, [version(["QUEUED", "QUEUED", "RUNNING", "COMPLETE"], outputs, ["epoch 1", "done"])],
                      first_version=7)
    rc, state_path, clock = build_push_wait(tmp_path, monkeypatch, fake_kaggle, state, "--push", "--wait")
    out = capsys.readouterr().out
    assert rc == 0, out
    got = files_under(tmp_path / "outputs" / "kernel-train" / "v7")  # the version the push answered
    assert got == {**{k: v.encode() for k, v in outputs.items()},
                   "kernel-train.log": kaggle_log(["epoch 1", "done"]).encode()}
    # Polls at 0, 10, 30 and 40 s: 10 s doubling, back to 10 s when the state changes; each change once.
    assert clock.sleeps == [10, 20, 10] and calls(state_path, "GetKernelSessionStatus") == 4
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("[")] == ["[  0m00s] queued", "[  0m30s] running",
                                                                "[  0m40s] complete"]
    assert "Run exp: best val_acc 0.875 at epoch 3; 4 epochs run (last epoch 4)" in lines
    assert any(line.startswith("Downloaded 4 file(s)") and "exp/summary.json, exp/best.pt, exp/metrics.csv, "
               "kernel-train.log" in line for line in lines)
    (pushed,) = read_state(state_path)["pushes"]
    assert pushed["text"] == (tmp_path / "dist" / "kernel" / "train.py").read_text(encoding="utf-8")


def test_cancelled_run_exits_1_and_an_unnumbered_push_takes_the_next_free_folder(tmp_path, monkeypatch, capsys,
                                                                                   fake_kaggle):
    for taken in ("v1", "v3"):
        (tmp_path / "outputs" / "kernel-train" / taken).mkdir(parents=True)
    state = new_state(KERNEL, [version(["QUEUED", "CANCEL_ACKNOWLEDGED"], log=["stopped by the user"])],
                      first_version=None)  # the client then prints "Kernel version successfully pushed."
    rc, _, _ = build_push_wait(tmp_path, monkeypatch, fake_kaggle, state, "--wait")  # --wait implies --push
    out = capsys.readouterr().out
    assert rc == 1
    assert "Kernel version successfully pushed." in out and "outputs go to outputs/kernel-train/v4" in out
    assert (tmp_path / "outputs/kernel-train/v4/kernel-train.log").is_file()
    assert "[  0m10s] cancelled" in out and "stopped by the user" in out


def test_until_done_pushes_again_after_a_time_limit_stop(tmp_path, monkeypatch, capsys, fake_kaggle):
    first = {"exp/summary.json": summary(stopped="time_limit", epoch=6, step=600)}
    second = {"exp/summary.json": summary(best_metric=0.9375, best_epoch=9, epochs_run=5, last_epoch=10)}
    state = new_state(KERNEL, [version(["QUEUED", "RUNNING", "COMPLETE"], first),
                               version(["QUEUED", "COMPLETE"], second), version(["COMPLETE"], {"never": "pushed"})],
                      first_version=3)
    rc, state_path, _ = build_push_wait(tmp_path, monkeypatch, fake_kaggle, state, "--until-done", "3")
    out = capsys.readouterr().out
    assert rc == 0, out
    pushes = read_state(state_path)["pushes"]
    train_py = (tmp_path / "dist" / "kernel" / "train.py").read_text(encoding="utf-8")
    assert [p["version"] for p in pushes] == [3, 4] and all(p["text"] == train_py for p in pushes)
    assert calls(state_path, "CreateDataset") == 1 and calls(state_path, "CreateDatasetVersion") == 0
    root = tmp_path / "outputs" / "kernel-train"
    assert sorted(p.name for p in root.iterdir()) == ["v3", "v4"]
    assert json.loads((root / "v3/exp/summary.json").read_text())["stopped"] == "time_limit"
    assert json.loads((root / "v4/exp/summary.json").read_text())["best_metric"] == 0.9375
    assert "stopped: time_limit at epoch 6, step 600" in out
    assert "pushing the same build again (run 2 of at most 3)" in out
    assert "best val_acc 0.9375 at epoch 9" in out


# ------------------------------------------------ following an already pushed kernel (fewer CLI calls)

def test_failed_run_exits_1_with_the_log_tail(tmp_path, monkeypatch, capsys, fake_kaggle):
    log = [f"line {i}" for i in range(40)] + ["Traceback (most recent call last):", "RuntimeError: CUDA error"]
    state = new_state(KERNEL, [version(["RUNNING", "ERROR"], {"exp/metrics.csv": "epoch\n1\n"}, log,
                                       failure="Process exited with code 1")], pushed=1)
    fake_kaggle(state)
    clock = FakeClock()
    rc = packer.follow(packer.kaggle_runner(), KERNEL, tmp_path / "dist/kernel", 2, outputs=tmp_path / "outputs",
                       sleep=clock.sleep, clock=clock)
    out = capsys.readouterr().out
    assert rc == 1
    assert "[  0m10s] error: Process exited with code 1" in out
    tail = out.split("Last 30 line(s) of ")[1].splitlines()[1:]
    assert [t.strip() for t in tail[:30]] == (log[-30:])  # the text of the JSON records, not the JSON
    assert (tmp_path / "outputs/kernel-train/v2/exp/metrics.csv").read_text() == "epoch\n1\n"


def test_until_done_stops_after_a_failure(tmp_path, monkeypatch, capsys, fake_kaggle):
    state = new_state(KERNEL, [version(["RUNNING", "COMPLETE"], {"exp/summary.json": summary(stopped="time_limit")}),
                               version(["RUNNING", "ERROR"], log=["killed"]), version(["COMPLETE"])],
                      first_version=5, pushed=1)
    state_path = fake_kaggle(state)
    (tmp_path / "dist/kernel").mkdir(parents=True)
    (tmp_path / "dist/kernel/train.py").write_text("print('hi')\n")
    (tmp_path / "dist/kernel/kernel-metadata.json").write_text(json.dumps(
        {"id": KERNEL, "title": "kernel-train", "code_file": "train.py", "language": "python",
         "kernel_type": "script"}))
    clock = FakeClock()
    rc = packer.follow(packer.kaggle_runner(), KERNEL, tmp_path / "dist/kernel", 5, outputs=tmp_path / "outputs",
                       max_versions=3, sleep=clock.sleep, clock=clock)
    out = capsys.readouterr().out
    assert rc == 1 and "killed" in out
    assert [p["version"] for p in read_state(state_path)["pushes"]][1:] == [6]  # one re-push, no third version
    assert sorted(p.name for p in (tmp_path / "outputs/kernel-train").iterdir()) == ["v5", "v6"]


# ------------------------------------------------------------------------------ units, no CLI

def client_says(kernel: str, name: str, failure: str = "") -> str:
    """What kaggle 2.2's kernels_status_cli prints, formatted as it does."""
    text = '%s has status "%s"\n' % (kernel, KernelWorkerStatus[name])
    return text + ('Failure message: "%s"\n' % failure if failure else "")


@pytest.mark.parametrize("name, state", [("QUEUED", "queued"), ("RUNNING", "running"), ("COMPLETE", "complete"),
                                         ("ERROR", "error"), ("CANCEL_REQUESTED", "cancelled"),
                                         ("CANCEL_ACKNOWLEDGED", "cancelled"), ("NEW_SCRIPT", "new_script")])
def test_parse_status_reads_the_client_output(name, state):
    assert packer.parse_status(client_says(KERNEL, name), KERNEL) == (state, "")
    # A slug holding status words does not confuse it.
    assert packer.parse_status(client_says("bob/error-complete", name), "bob/error-complete")[0] == state


def test_parse_status_other_forms():
    assert packer.parse_status(client_says(KERNEL, "ERROR", "OOM"), KERNEL) == ("error", "OOM")
    assert packer.parse_status('alice/kernel-train has status "cancelAcknowledged"', KERNEL) == ("cancelled", "")
    assert packer.parse_status("complete", KERNEL) == ("complete", "")
    assert packer.parse_status("404 Client Error: None for url: https://api.kaggle.com/v1/k.S/GetKernelSessionStatus",
                               KERNEL)[0] == "error"  # unquoted text is searched whole (callers check exit codes)
    assert packer.parse_status("something else", KERNEL) == (None, "")


def scripted(names: List[str], returncode: int = 0):
    """A kaggle runner answering status calls from ``names`` (the last repeated)."""
    seen = []

    def kaggle(*args, check=True, echo=True):
        seen.append(args)
        name = names[min(len(seen), len(names)) - 1]
        return subprocess.CompletedProcess(args, returncode, client_says(KERNEL, name) if returncode == 0 else "",
                                           "" if returncode == 0 else "503 Server Error")
    return kaggle, seen


def test_backoff_doubles_to_the_cap_and_prints_changes_once(capsys):
    kaggle, seen = scripted(["RUNNING"] * 7 + ["COMPLETE"])
    clock = FakeClock()
    assert packer.wait_for_kernel(kaggle, KERNEL, sleep=clock.sleep, clock=clock) == ("complete", "")
    assert clock.sleeps == [10, 20, 40, 80, 120, 120, 120] and len(seen) == 8
    assert capsys.readouterr().out.splitlines() == ["[  0m00s] running", "[  8m30s] complete"]


def test_a_finished_state_before_the_new_version_starts_is_not_trusted(capsys):
    kaggle, _ = scripted(["COMPLETE", "COMPLETE", "RUNNING", "ERROR"])
    clock = FakeClock()
    assert packer.wait_for_kernel(kaggle, KERNEL, sleep=clock.sleep, clock=clock)[0] == "error"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[  0m00s] complete (the previous version's") and lines[1:] == [
        "[  0m30s] running", "[  0m40s] error"]
    kaggle, seen = scripted(["COMPLETE"])  # never seen running: trusted after stale_s (60 s)
    clock = FakeClock()
    assert packer.wait_for_kernel(kaggle, KERNEL, sleep=clock.sleep, clock=clock)[0] == "complete"
    assert clock.now == 70 and len(seen) == 4


def test_status_failures_give_up_in_one_line():
    kaggle, seen = scripted(["RUNNING"], returncode=1)
    clock = FakeClock()
    with pytest.raises(packer.BuildError) as err:
        packer.wait_for_kernel(kaggle, KERNEL, sleep=clock.sleep, clock=clock, max_failures=3)
    assert len(seen) == 3 and "\n" not in str(err.value)
    assert "`kaggle kernels status alice/kernel-train` failed 3 times in a row (503 Server Error)" in str(err.value)


def test_log_lines_reads_json_records_and_plain_text(tmp_path):
    path = tmp_path / "k.log"
    path.write_text(kaggle_log(["a", "b"]))
    assert packer.log_lines(path) == ["a", "b"]
    path.write_text(json.dumps([{"stream_name": "stderr", "time": 1, "data": "x\ny"},
                                {"stream_name": "stdout", "time": 2, "data": "z\n"}]))
    assert packer.log_lines(path) == ["x", "yz"]  # records are joined as the stream was written
    path.write_text("plain\ntext [1]\n")
    assert packer.log_lines(path) == ["plain", "text [1]"]


def test_small_pieces(tmp_path):
    assert [packer.elapsed_text(s) for s in (0, 190, 3723)] == ["  0m00s", "  3m10s", "1h02m03s"]
    assert packer.pushed_version("Kernel version 12 successfully pushed.  Please check progress at x") == 12
    assert packer.pushed_version("Kernel version successfully pushed.  Please check progress at x") is None
    for name in ("v2", "v10", "vx", "notes"):
        (tmp_path / name).mkdir()
    assert packer.version_folder(tmp_path, None) == tmp_path / "v11"
    assert packer.version_folder(tmp_path, 4) == tmp_path / "v4"
    assert packer.version_folder(tmp_path / "missing", None) == tmp_path / "missing" / "v1"
    assert packer.summary_line({"monitor": "val_loss", "best_metric": None, "epochs_run": 0, "last_epoch": 0}) \
        == "no best val_loss; 0 epochs run (last epoch 0)"


def test_until_done_needs_a_positive_count(tmp_path, capsys):
    assert build.main(["--out", str(tmp_path / "dist"), "--until-done", "0"], project=tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--until-done" in err and "'0' is not a whole number of versions of at least 1" in err
