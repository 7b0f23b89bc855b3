"""A run never replaces another: the next free name (NAME-2, ...), --overwrite, --resume auto's pick of the newest
run, k-fold fold runs sharing their folder, several processes agreeing on one folder; a resume refused when the
checkpoint was written under other data-shaping options; config.yaml records what was asked."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml

from kernel.config import options_to_dict, parse_options
from kernel.data import write_shapes
from kernel.run import effective_options
from kernel.train import main

from conftest import ROOT, small_args, subprocess_env

QUIET = ("--no-plots", "--no-tensorboard")


def _files(folder: Path) -> Dict[str, str]:
    """Every file below ``folder`` (relative path -> sha256): what must stay as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(run: Path) -> int:
    return len((run / "metrics.csv").read_text().splitlines()) - 1


def _saved(path: Path, key: str):
    return torch.load(path, weights_only=True)[key]


def _error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_same_command_twice_leaves_both_runs_intact(tmp_path):
    """The second run takes exp-2 and says so; exp stays byte for byte; --overwrite writes into exp as asked."""
    args = small_args(tmp_path, "--dry-run", "--epochs", "1", *QUIET)
    assert main(args) == 0
    first = _files(tmp_path / "exp")
    assert {"last.pt", "best.pt", "metrics.csv", "config.yaml"} <= set(first)
    assert main(args) == 0
    assert _files(tmp_path / "exp") == first
    second = tmp_path / "exp-2"
    assert {"last.pt", "best.pt", "model.safetensors", "metrics.csv", "summary.json"} <= set(_files(second))
    log = (second / "train.log").read_text()
    assert f"{tmp_path / 'exp'} holds another run, left as it is: this run writes to {second}" in log
    assert main(args + ["--overwrite"]) == 0  # asked for: into exp, no exp-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "exp-2"]
    assert (tmp_path / "exp" / "train.log").read_text().count("task classify") == 2


def test_the_demo_twice_gives_exp_then_exp_2(tmp_path):
    """The README's demo command (here on the tiny model), twice, from the command line."""
    cmd = [sys.executable, "-m", "kernel.train", "--dry-run", *small_args(tmp_path, *QUIET)]
    outs = [subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert [o.returncode for o in outs] == [0, 0], outs[1].stderr[-2000:]
    assert f"outputs in {(tmp_path / 'exp').resolve()}" in outs[0].stderr
    assert f"outputs in {(tmp_path / 'exp-2').resolve()}" in outs[1].stderr
    assert _saved(tmp_path / "exp" / "last.pt", "epoch") == _saved(tmp_path / "exp-2" / "last.pt", "epoch") == 2


def test_resume_auto_continues_the_newest_run_and_may_change_the_epochs(tmp_path):
    """With exp and exp-2, --resume auto continues exp-2 (the highest number with a last.pt); a longer --epochs
    is a difference a resume may make. exp is left alone."""
    args = small_args(tmp_path, "--dry-run", "--epochs", "1", *QUIET)
    assert main(args) == 0 and main(args) == 0
    first = _files(tmp_path / "exp")
    assert main(small_args(tmp_path, "--dry-run", "--epochs", "2", "--resume", "auto", *QUIET)) == 0
    assert _files(tmp_path / "exp") == first and _rows(tmp_path / "exp") == 1
    assert _rows(tmp_path / "exp-2") == 2 and _saved(tmp_path / "exp-2" / "last.pt", "epoch") == 2
    log = (tmp_path / "exp-2" / "train.log").read_text()
    assert f"resumed from {tmp_path / 'exp-2' / 'last.pt'} at epoch 2" in log
    assert not (tmp_path / "exp-3").exists()


@pytest.mark.parametrize("dry, change, named", [
    (False, [], "--dry-run (this run: no --dry-run)"),  # the demo's checkpoint continued as a full run
    (True, ["--img-size", "40"], "--img-size 32 (this run: --img-size 40)"),
])
def test_resume_refuses_a_checkpoint_of_other_data_shaping_options(tmp_path, capsys, dry, change, named):
    """One line naming the difference; the run folder stays byte for byte (nothing trained, nothing written)."""
    args = small_args(tmp_path, "--epochs", "1", *QUIET)
    assert main(args + ["--dry-run"]) == 0
    before = _files(tmp_path / "exp")
    again = args + (["--dry-run"] if dry else []) + change
    capsys.readouterr()
    assert main(again + ["--resume", "auto", "--epochs", "2"]) == 2
    line = _error_line(capsys)
    assert named in line and "--resume" in line and "exp/last.pt" in line, line
    assert _files(tmp_path / "exp") == before


def test_fold_runs_share_their_kfold_folder_until_a_fold_is_trained_twice(tmp_path):
    """--fold 0 then --fold 1 go into one k-fold folder; --fold 0 again takes cv-2, leaving cv as it was."""
    data = write_shapes(tmp_path / "d", n=48, seed=0, size=32) / "train"
    out = tmp_path / "runs"

    def fold(i: int) -> int:
        return main(small_args(out, "--data", str(data), "--folds", "2", "--fold", str(i), "--name", "cv",
                               "--epochs", "1", *QUIET))

    assert fold(0) == 0 and fold(1) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cv"]
    assert (out / "cv" / "fold0" / "last.pt").is_file() and (out / "cv" / "fold1" / "last.pt").is_file()
    kept = _files(out / "cv")
    assert fold(0) == 0
    assert _files(out / "cv") == kept
    assert (out / "cv-2" / "fold0" / "last.pt").is_file() and (out / "cv-2" / "folds.csv").is_file()


def test_two_processes_agree_on_the_next_free_folder(tmp_path):
    """--devices 2 into a folder that holds a run: both processes write to exp-2 (rank 0 decides)."""
    assert main(small_args(tmp_path, "--dry-run", "--epochs", "1", *QUIET)) == 0
    first = _files(tmp_path / "exp")
    cmd = [sys.executable, "-m", "kernel.train", *small_args(tmp_path, "--dry-run", "--epochs", "1", "--devices", "2",
                                                            *QUIET)]
    out = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(threads=1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _files(tmp_path / "exp") == first
    assert _saved(tmp_path / "exp-2" / "last.pt", "world_size") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "exp-2"]


def test_config_yaml_records_what_was_asked_and_the_dry_run_is_logged_once(tmp_path):
    """--config run.yaml with batch_size 16 and dry_run true: config.yaml says 16 (not the dry run's 8), and
    passed back it asks for the same run (with --resume auto: the run it wrote, already complete)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"batch_size": 16, "dry_run": True, "epochs": 1}))
    args = [a for a in small_args(tmp_path / "runs", *QUIET) if a not in ("--batch-size", "16")]
    assert main(args + ["--config", str(cfg)]) == 0
    run = tmp_path / "runs" / "exp"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["batch_size"] == 16 and saved["dry_run"] is True and saved["epochs"] == 1
    asked = options_to_dict(effective_options(parse_options(args + ["--config", str(cfg)])))
    back = options_to_dict(effective_options(parse_options(["--config", str(run / "config.yaml")])))
    assert {k: v for k, v in back.items() if k != "config"} == {k: v for k, v in asked.items() if k != "config"}
    log = (run / "train.log").read_text()
    assert log.count("--dry-run: epochs 1 -> 1, batch size 16 -> 8") == 1
    assert main(["--config", str(run / "config.yaml"), "--resume", "auto"]) == 0
    assert "training already complete" in (run / "train.log").read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp"]
