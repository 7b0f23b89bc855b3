"""build.py --submit / --ledger: submit a file or a kernel version, wait for the score, keep CV beside LB.

As in test_push_wait, the REAL ``kaggle`` CLI runs (forks of one process that imported it), and only
``requests.Session.send`` is answered by a scripted server (:func:`kaggle_fake.new_competition_state`): the
submission limits, the upload URL and the upload, the created submission, the listings that move it from
PENDING to COMPLETE or ERROR. What the client sent (competition, description, file content, kernel slug and
version) is read back from the server's state. Sleeping advances a fake clock.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

import build
from kaggle_fake import (FakeClock, fake_kaggle, kaggle_log, make_project, new_competition_state,  # noqa: F401
                         new_state, read_state)
from kernel import packer

KERNEL = "alice/kernel-train"
COMP = "dogs-vs-cats"
SUBMISSION = "id,label\n1,0.9\n2,0.1\n"


def run_outputs(best: float = 0.875, lr: float = 0.01, **options) -> Dict[str, str]:
    """A finished run's output files: the submission, summary.json and config.yaml (its options)."""
    summary = {"task": "classify", "best_metric": best, "monitor": "val_acc", "best_epoch": 3, "epochs_run": 4,
               "last_epoch": 4}
    config = {"model": "resnet18", "lr": lr, "epochs": 4, "augment": {"flip": True}, **options}
    return {"submission.csv": SUBMISSION, "exp/summary.json": json.dumps(summary),
            "exp/config.yaml": yaml.safe_dump(config)}


def kernel_version(files: Dict[str, str]) -> Dict:
    return {"statuses": ["QUEUED", "RUNNING", "COMPLETE"], "files": files, "log": kaggle_log(["done"]), "failure": ""}


def scored(statuses: List[str], public: Optional[str] = None, private: Optional[str] = None,
           error: str = "") -> Dict:
    return {"statuses": statuses, "public": public, "private": private, "error": error}


def main(tmp_path, monkeypatch, *flags: str, project: Optional[Path] = None):
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    rc = build.main(list(flags), project=project or tmp_path, sleep=clock.sleep, clock=clock)
    return rc, clock


def build_flags(tmp_path) -> List[str]:
    return ["--out", str(tmp_path / "dist"), "--no-vendor", "--demo"]


def competition(state_path: Path) -> Dict:
    return read_state(state_path)["competition"]


def ledger_rows(tmp_path) -> List[Dict[str, str]]:
    import csv

    with (tmp_path / "outputs" / COMP / "ledger.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ end to end, the real client

def test_push_wait_submit_a_file_and_wait_for_the_score(tmp_path, monkeypatch, capsys, fake_kaggle):
    state = new_competition_state(COMP, [scored(["PENDING", "PENDING", "COMPLETE"], public="0.91234")],
                                  base=new_state(KERNEL, [kernel_version(run_outputs())], first_version=4))
    state_path = fake_kaggle(state)
    project = make_project(tmp_path / "project")
    rc, clock = main(tmp_path, monkeypatch, *build_flags(tmp_path), "--wait", "--submit", COMP,
                     "--submit-message", "first try", project=project)
    out = capsys.readouterr().out
    assert rc == 0, out
    comp = competition(state_path)
    (sent,) = comp["submissions"]
    assert sent["competition"] == COMP and sent["fileName"] == "submission.csv" and sent["kernel"] is None
    assert sent["content"] == SUBMISSION  # the downloaded outputs/kernel-train/v4/submission.csv, uploaded
    assert sent["description"].startswith("first try [") and sent["description"].endswith("]")
    # The limits are asked before anything is sent; the upload URL, then the submission, then the listings.
    assert comp["calls"][:3] == ["GetSubmissionLimits", "StartSubmissionUpload", "CreateSubmission"]
    assert comp["calls"].count("ListSubmissions") == 3
    lines = out.splitlines()
    assert "[  0m00s] submission 50001: pending" in lines and "[  0m30s] submission 50001: complete" in lines
    assert "Submission 50001 scored: public 0.91234 (CV val_acc 0.875)" in lines
    (row,) = ledger_rows(tmp_path)
    assert (row["ref"], row["kernel"], row["version"], row["run"]) == ("50001", KERNEL, "4", "exp")
    assert (row["cv_name"], row["cv"], row["public"], row["status"]) == ("val_acc", "0.875", "0.91234", "complete")
    assert row["message"] == sent["description"] and row["changed"] == ""
    assert (tmp_path / "outputs" / COMP / "ledger.png").stat().st_size > 0


def test_code_competition_submits_the_pushed_kernel_version(tmp_path, monkeypatch, capsys, fake_kaggle):
    state = new_competition_state(COMP, [scored(["PENDING", "COMPLETE"], public="0.5", private="0.6")],
                                  base=new_state(KERNEL, [kernel_version(run_outputs())], first_version=7))
    state_path = fake_kaggle(state)
    project = make_project(tmp_path / "project")
    rc, _ = main(tmp_path, monkeypatch, *build_flags(tmp_path), "--push", "--submit", COMP, "--code", project=project)
    out = capsys.readouterr().out
    assert rc == 0, out
    comp = competition(state_path)
    (sent,) = comp["submissions"]
    assert (sent["kernel"], sent["version"], sent["fileName"]) == (KERNEL, 7, "submission.csv")
    assert sent["description"].startswith(f"{KERNEL} v7 [")  # the default message names kernel and version
    assert "StartSubmissionUpload" not in comp["calls"] and comp["blobs"] == {}  # nothing uploaded
    assert "Submission 50001 scored: public 0.5 (CV val_acc 0.875), private 0.6" in out
    assert [r["private"] for r in ledger_rows(tmp_path)] == ["0.6"]


def test_until_done_submits_the_last_version(tmp_path, monkeypatch, capsys, fake_kaggle):
    stopped = run_outputs()
    stopped["exp/summary.json"] = json.dumps({**json.loads(stopped["exp/summary.json"]), "stopped": "time_limit"})
    state = new_competition_state(COMP, [scored(["COMPLETE"], public="0.7")], base=new_state(
        KERNEL, [kernel_version(stopped), kernel_version(run_outputs(best=0.93))], first_version=3))
    state_path = fake_kaggle(state)
    project = make_project(tmp_path / "project")
    rc, _ = main(tmp_path, monkeypatch, *build_flags(tmp_path), "--until-done", "2", "--submit", COMP, "--code",
                 project=project)
    out = capsys.readouterr().out
    assert rc == 0, out
    (sent,) = competition(state_path)["submissions"]
    assert (sent["kernel"], sent["version"]) == (KERNEL, 4)  # the re-pushed version that finished, not the first
    assert [(r["version"], r["cv"]) for r in ledger_rows(tmp_path)] == [("4", "0.93")]


def test_submit_alone_pushes_nothing_and_takes_the_latest_download(tmp_path, monkeypatch, capsys, fake_kaggle):
    for n, text in ((2, "id,label\n1,0\n"), (10, SUBMISSION)):
        (tmp_path / "outputs" / "kernel-train" / f"v{n}").mkdir(parents=True)
        (tmp_path / "outputs" / "kernel-train" / f"v{n}" / "submission.csv").write_text(text)
    state_path = fake_kaggle(new_competition_state(COMP, [scored(["COMPLETE"], public="0.5")],
                                                   base=new_state(KERNEL, [])))
    project = make_project(tmp_path / "project")
    rc, _ = main(tmp_path, monkeypatch, *build_flags(tmp_path), "--submit", COMP, project=project)
    assert rc == 0, capsys.readouterr().out
    state = read_state(state_path)
    assert state["pushes"] == [] and not any("Dataset" in r for r in state["requests"])
    (sent,) = state["competition"]["submissions"]
    assert sent["content"] == SUBMISSION and sent["description"].startswith(f"{KERNEL} v10 [")
    assert [(r["kernel"], r["version"]) for r in ledger_rows(tmp_path)] == [(KERNEL, "10")]


def test_a_scoring_error_exits_1_and_is_kept_in_the_ledger(tmp_path, monkeypatch, capsys, fake_kaggle):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "submission.csv").write_text(SUBMISSION)
    error = "Submission Scoring Error:\n2 rows, 5 expected"  # on two lines: the client indents the second
    state_path = fake_kaggle(new_competition_state(COMP, [scored(["PENDING", "ERROR"], error=error)]))
    rc, _ = main(tmp_path, monkeypatch, "--submit", COMP, "--submission-file", str(folder / "submission.csv"))
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "[  0m10s] submission 50001: error" in out
    # Kaggle's own error description, read by the real client (`kaggle competitions submission REF`, 2.2.5)
    (line,) = [line for line in out.splitlines() if line.startswith("Submission 50001 failed to score: ")]
    assert line == "Submission 50001 failed to score: Submission Scoring Error: 2 rows, 5 expected"
    (row,) = ledger_rows(tmp_path)
    assert row["status"] == "error" and row["error"] in line and row["public"] == ""
    assert competition(state_path)["submissions"][0]["content"] == SUBMISSION


@pytest.mark.parametrize("limits, expected", [
    ({"numToday": 5, "numTotal": 12, "numAllowedNow": 0}, "no submission to dogs-vs-cats is left (5 made today"),
    ({"numToday": 0, "numTotal": 0, "numAllowedNow": 0}, "join the competition and accept its rules"),
])
def test_no_submission_left_is_refused_before_anything_is_sent(tmp_path, monkeypatch, capsys, fake_kaggle,
                                                                limits, expected):
    (tmp_path / "submission.csv").write_text(SUBMISSION)
    state_path = fake_kaggle(new_competition_state(COMP, [scored(["COMPLETE"], public="1")], limits=limits))
    rc, _ = main(tmp_path, monkeypatch, "--submit", COMP, "--submission-file", str(tmp_path / "submission.csv"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and expected in err
    comp = competition(state_path)
    assert comp["calls"] == ["GetSubmissionLimits"] and comp["submissions"] == [] and comp["blobs"] == {}
    assert not (tmp_path / "outputs" / COMP / "ledger.csv").exists()


@pytest.mark.parametrize("refuse, said", [
    ("submit", "competition not accepting submissions"),  # a 404: the client prints Kaggle's message, exits 1
    ("upload", "Could not submit to competition"),  # a failed upload: the client prints this and exits 0
])
def test_a_refused_submit_is_an_error_whatever_the_exit_status(tmp_path, monkeypatch, capsys, fake_kaggle, refuse,
                                                                said):
    (tmp_path / "submission.csv").write_text(SUBMISSION)
    state = new_competition_state(COMP, [scored(["COMPLETE"], public="1")])
    state["competition"]["refuse"] = refuse
    state_path = fake_kaggle(state)
    rc, _ = main(tmp_path, monkeypatch, "--submit", COMP, "--submission-file", str(tmp_path / "submission.csv"))
    captured = capsys.readouterr()
    assert rc == 2
    assert said in captured.out  # the client's own words, echoed
    err = captured.err.strip()
    assert "\n" not in err and f"`kaggle competitions submit {COMP}` failed (" in err and said in err
    assert competition(state_path)["submissions"] == [] and not (tmp_path / "outputs" / COMP).exists()


def test_the_ledger_keeps_cv_beside_lb_and_fills_in_pending_rows(tmp_path, monkeypatch, capsys, fake_kaggle):
    for name, best, lr in (("run1", 0.875, 0.01), ("run2", 0.9, 0.003)):
        for rel, text in run_outputs(best, lr).items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
        (tmp_path / name / "exp" / "submission.csv").write_text(SUBMISSION)  # next to its summary
        (tmp_path / name / "submission.csv").unlink()
    # The second submission is still pending when the 1-minute wait ends (listings at 0, 10 and 30 s).
    state_path = fake_kaggle(new_competition_state(COMP, [scored(["COMPLETE"], public="0.86"),
                                                          scored(["PENDING"] * 3 + ["COMPLETE"], public="0.88")]))
    for name in ("run1", "run2"):
        rc, _ = main(tmp_path, monkeypatch, "--submit", COMP, "--submission-file",
                     str(tmp_path / name / "exp" / "submission.csv"), "--score-timeout", "1")
        assert rc == 0
    out = capsys.readouterr().out
    assert "Submission 50002 is still pending after 1m00s; `python build.py --ledger dogs-vs-cats`" in out
    first, second = ledger_rows(tmp_path)
    assert (first["cv"], first["public"], first["status"]) == ("0.875", "0.86", "complete")
    assert (second["cv"], second["public"], second["status"]) == ("0.9", "", "pending")
    assert second["changed"] == "lr=0.003 (was 0.01)"  # only the option that differs
    rc, _ = main(tmp_path, monkeypatch, "--ledger", COMP)
    out = capsys.readouterr().out
    assert rc == 0
    assert [(r["public"], r["status"]) for r in ledger_rows(tmp_path)] == [("0.86", "complete"), ("0.88", "complete")]
    header, *rows = out.splitlines()[:3]
    assert header.split() == ["ref", "time", "kernel", "version", "run", "cv", "public", "private", "status",
                              "changed"]
    assert rows[1].startswith("50002") and "0.9" in rows[1] and "0.88" in rows[1] and "lr=0.003 (was 0.01)" in rows[1]
    png = tmp_path / "outputs" / COMP / "ledger.png"
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (600, 450)
    assert competition(state_path)["calls"].count("ListSubmissions") == 5  # 1 + 3 waits, 1 refresh


# ------------------------------------------------------------------------------ units, no CLI

def scripted(answers: Dict[str, str], returncode: int = 0):
    """A kaggle runner answering by the command's first two words."""
    seen = []

    def kaggle(*args, check=True, echo=True):
        seen.append(args)
        return subprocess.CompletedProcess(args, returncode, answers.get(" ".join(args[:2]), ""), "")
    return kaggle, seen


def test_error_text_says_where_to_read_it_when_the_client_shows_none():
    """An older client (2.2.4 has no `competitions submission REF`: argparse refuses it) prints no description."""
    kaggle, seen = scripted({}, returncode=2)
    text = packer.error_text(kaggle, "50001", COMP)
    assert f"https://www.kaggle.com/competitions/{COMP}/submissions" in text and "2.2.5" in text
    assert seen == [("competitions", "submission", "50001")]


def test_a_submission_missing_from_the_listing_is_an_error():
    listing = ("ref,fileName,date,description,status,publicScore,privateScore\n"
               "7,submission.csv,2026-12-03 12:00:00,other [zz],SubmissionStatus.COMPLETE,0.5,None\n")
    kaggle, _ = scripted({"competitions submissions": listing})
    sent = packer.Submitted(None, "mine [ab12]", "ab12")
    with pytest.raises(packer.BuildError) as err:
        packer.wait_for_score(kaggle, COMP, sent, sleep=lambda s: None, clock=lambda: 0.0)
    assert "it was not made" in str(err.value) and "\n" not in str(err.value)
    (row,) = packer.list_submissions(kaggle, COMP)
    assert (row["status"], row["publicScore"], row["privateScore"]) == ("complete", "0.5", None)
    assert packer.find_submission([row], token="zz") is row and packer.find_submission([row], ref="8") is None


def test_changed_options_and_run_facts(tmp_path):
    assert packer.changed_options({"lr": 0.1, "m": "a"}, None) == ""
    assert packer.changed_options({"lr": 0.1, "m": "a"}, {"lr": 0.2, "m": "a", "old": 1}) == \
        "lr=0.1 (was 0.2); old=null (was 1)"
    (tmp_path / "fold0").mkdir()
    (tmp_path / "fold0" / "summary.json").write_text(json.dumps({"best_metric": 0.7, "monitor": "val_acc"}))
    (tmp_path / "summary.json").write_text(json.dumps({"cv_metric": 0.75, "cv_metric_name": "cv_acc", "folds": 2}))
    (tmp_path / "config.yaml").write_text("lr: 0.01\nschedule:\n  name: cosine\n")
    facts = packer.run_facts(tmp_path)  # a k-fold run: the CV over the out-of-fold predictions
    assert (facts["cv_name"], facts["cv"]) == ("cv_acc", 0.75)
    assert facts["options"] == {"lr": 0.01, "schedule.name": "cosine"}
    assert packer.run_facts(tmp_path / "missing")["cv"] is None
    infer = tmp_path / "v9"  # an inference kernel's output: the trained run's summary plus what it chose
    infer.mkdir()
    (infer / "summary.json").write_text(json.dumps({"best_metric": 0.8, "monitor": "val_acc", "run_dir": "runs/exp3",
                                                    "inference": {"tta": 2, "members": 5, "seconds": 12.5}}))
    assert packer.run_facts(infer) == {"run": "exp3", "cv_name": "val_acc", "cv": 0.8,
                                       "options": {"inference.tta": 2, "inference.members": 5}}


def test_submit_flags_need_submit(tmp_path, capsys):
    assert build.main(["--code"], project=tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--code go(es) with --submit COMP" in err
    assert build.main(["--submit", COMP, "--code", "--submission-file", "x.csv"], project=tmp_path) == 2
    assert "a code competition (--code, --inference) submits the kernel version" in capsys.readouterr().err
