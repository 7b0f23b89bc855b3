"""Bad files and faults never cost a run: one line each (no traceback), the existing run untouched.

Every bad input is built here: truncated PNG and JPEG, zero-byte and text-as-JPEG images, truncated and
random-bytes checkpoints, a pickle with a code payload, a cut safetensors file, weights of another
architecture, a checkpoint of another model, an empty config, a one-class ImageFolder.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from kernel.data import write_shapes
from kernel.predict import main as predict_main
from kernel.train import main

from conftest import small_args


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    """The error line of stderr: besides the run's progress log (timestamped INFO/WARNING lines), exactly
    one line, starting with ``error:``, and no traceback anywhere."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", ln)]
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("error: "), err
    return lines[0]


class _Evil:
    def __reduce__(self):  # what a malicious pickle does: run code when loaded
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished one-epoch run (the run folder the failing commands must leave alone) and its data."""
    root = tmp_path_factory.mktemp("faults")
    data = write_shapes(root / "data", n=48, seed=0, size=32)
    assert main(small_args(root / "runs", "--data", str(data / "train"), "--epochs", "1", "--name", "exp",
                           "--no-tensorboard", "--aug", "none")) == 0
    return root, data


def _bad_files(folder: Path) -> dict:
    """Every kind of broken weights file, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    torch.save({"w": torch.zeros(64, 64)}, good)
    files = {"truncated.pt": good.getvalue()[: len(good.getvalue()) // 2], "random.pt": os.urandom(4096),
             "empty.pt": b""}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    torch.save({"model": _Evil()}, folder / "payload.pt")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(64, 64)}, folder / "whole.safetensors")
    blob = (folder / "whole.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(blob[: len(blob) - 100])
    return {"truncated.pt": "truncated or not a PyTorch file", "random.pt": "truncated or not a PyTorch file",
            "empty.pt": "truncated or not a PyTorch file", "payload.pt": "holds Python objects",
            "cut.safetensors": "not a valid safetensors file"}


@pytest.mark.parametrize("option", ["--resume", "--pretrained"])
def test_broken_weight_files_are_one_line_and_touch_nothing(base, tmp_path, capsys, option):
    root, data = base
    before = _snapshot(root / "runs" / "exp")
    for name, words in _bad_files(tmp_path / "bad").items():
        path = tmp_path / "bad" / name
        assert main(small_args(root / "runs", "--data", str(data / "train"), "--name", "exp", option, str(path))) == 2
        line = _one_line(capsys)
        assert name in line and words in line and option in line, line
        assert _snapshot(root / "runs" / "exp") == before, name


def test_broken_checkpoint_for_predict(base, tmp_path, capsys):
    root, data = base
    for name, words in _bad_files(tmp_path / "bad").items():
        assert predict_main(["--checkpoint", str(tmp_path / "bad" / name), str(data / "images"), "--device",
                             "cpu", "--workers", "0", "--out", str(tmp_path / "p.csv")]) == 2
        line = _one_line(capsys)
        assert name in line and words in line, line
    assert not (tmp_path / "p.csv").exists()


def test_weights_of_another_architecture(base, tmp_path, capsys):
    root, data = base
    from kernel.models import create_model

    torch.save(create_model("test_vit", 10).state_dict(), tmp_path / "vit.pth")
    before = _snapshot(root / "runs" / "exp")
    assert main(small_args(root / "runs", "--data", str(data / "train"), "--name", "exp",
                           "--pretrained", str(tmp_path / "vit.pth"))) == 2
    line = _one_line(capsys)
    assert "vit.pth" in line and "tensors fit" in line and "test_resnet" in line, line
    assert _snapshot(root / "runs" / "exp") == before


def test_resume_from_a_checkpoint_of_another_model(base, capsys):
    root, data = base
    before = _snapshot(root / "runs" / "exp")
    args = small_args(root / "runs", "--data", str(data / "train"), "--name", "exp", "--resume", "auto")
    args[args.index("test_resnet")] = "test_efficientnet"
    assert main(args) == 2
    line = _one_line(capsys)
    assert "was trained as classify test_resnet on 4 classes; this run is classify test_efficientnet on 4 classes" in line, line
    assert "last.pt" in line
    assert _snapshot(root / "runs" / "exp") == before


@pytest.mark.parametrize("option", ["--time-limit", "--save-every"])
def test_a_duration_typo_on_resume_leaves_the_run_untouched(base, capsys, option):
    root, data = base
    before = _snapshot(root / "runs" / "exp")
    assert main(small_args(root / "runs", "--data", str(data / "train"), "--name", "exp", "--resume", "auto",
                           option, "2hours")) == 2
    assert f"{option} '2hours': give a duration such as 11h30m" in _one_line(capsys)
    assert _snapshot(root / "runs" / "exp") == before


def test_empty_config_and_one_class_imagefolder(base, tmp_path, capsys):
    root, data = base
    before = _snapshot(root / "runs" / "exp")
    (tmp_path / "run.yaml").write_text("")
    (tmp_path / "good.yaml").write_text("epochs: 2\n")
    assert main(small_args(root / "runs", "--name", "exp", "--config", str(tmp_path / "run.yaml"))) == 2
    line = _one_line(capsys)
    assert "run.yaml" in line and "is empty" in line and "did you mean 'good.yaml'" in line, line
    # --data pointed at a class folder: images, no class folders; its parent is the real root
    assert main(small_args(root / "runs", "--name", "exp", "--data", str(data / "train" / "circle"))) == 2
    line = _one_line(capsys)
    assert "has no class folders (it holds images" in line and f"did you mean --data {str(data / 'train')!r}" in line
    # an ImageFolder root with a single class
    one = tmp_path / "one" / "cats"
    shutil.copytree(data / "train" / "circle", one)
    assert main(small_args(root / "runs", "--name", "exp", "--data", str(one.parent))) == 2
    line = _one_line(capsys)
    assert "has a single class folder ('cats')" in line and "needs two or more" in line, line
    assert _snapshot(root / "runs" / "exp") == before


def test_one_column_csv_says_it_has_no_label_column(base, tmp_path, capsys):
    root, data = base
    (data / "ids.csv").write_text("id\n00000\n00001\n")
    assert main(small_args(tmp_path, "--data", str(data), "--csv", "ids.csv", "--image-dir", "images")) == 2
    assert "no label column" in _one_line(capsys)


def _break_images(folder: Path, names) -> list:
    """Replace the given images of an ImageFolder with broken files of every kind."""
    kinds = ["truncated_png", "zero", "text_jpg", "truncated_jpg"]
    bad = []
    files = sorted(folder.rglob("*.png"))
    for k, i in enumerate(names):
        path, kind = files[i], kinds[k % len(kinds)]
        if kind == "truncated_png":
            blob = path.read_bytes()
            path.write_bytes(blob[: len(blob) // 2])
        elif kind == "zero":
            path.write_bytes(b"")
        else:
            img = Image.open(path).convert("RGB")
            path.unlink()
            path = path.with_suffix(".jpg")
            if kind == "text_jpg":
                path.write_text("not an image at all")
            else:
                buf = io.BytesIO()
                img.save(buf, format="JPEG")
                path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
        bad.append(str(path))
    return bad


def test_bad_images_error_mode_names_the_file(tmp_path, capsys):
    data = write_shapes(tmp_path / "d", n=24, seed=0, size=32)
    bad = _break_images(data / "train", [5])
    assert main(small_args(tmp_path, "--data", str(data / "train"), "--epochs", "1", "--bad-images", "error",
                           "--name", "e", "--no-tensorboard", "--val-split", "0.25")) == 2
    line = _one_line(capsys)
    assert bad[0] in line and "--bad-images skip" in line, line
    assert "cannot read" in (tmp_path / "e" / "train.log").read_text()  # the one line is in the log too


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, capsys):
    data = write_shapes(tmp_path / "d", n=100, seed=0, size=32)
    bad = _break_images(data / "train", [3, 17, 40, 77])  # 4 of 100: over 1 %, under 5 %
    args = small_args(tmp_path, "--data", str(data / "train"), "--epochs", "2", "--name", "s", "--no-tensorboard",
                      "--bad-images-limit", "0.05")
    assert main(args) == 0
    listed = [ln.split("\t")[0] for ln in (tmp_path / "s" / "bad_images.txt").read_text().splitlines()]
    assert sorted(listed) == sorted(bad)
    log = (tmp_path / "s" / "train.log").read_text()
    assert "epoch 2: 4 unreadable images replaced so far" in log
    assert sum(f"unreadable image {b}" in log for b in bad) == 4  # each named once, however many epochs
    # With the default 1 % limit and a floor under 4 files the same data stops, in one line.
    assert main(args[:-2] + ["--name", "s2", "--bad-images-floor", "2"]) == 2
    line = _one_line(capsys)
    # the guard stops at the third file it meets (more than 2 and than 1 %), before the epoch ends
    assert re.search(r"\b[34] of 100 images are unreadable", line) and "--bad-images-limit 0.01" in line, line
    assert "--bad-images-floor 2" in line and "--check-data" in line, line


def _small_split(tmp_path: Path) -> tuple:
    """25 images: an ImageFolder of 20 for training and one of 5 for validation (--val-data); the runs use
    batches of 10, so every training image is read in every epoch."""
    train = write_shapes(tmp_path / "tr", n=20, seed=0, size=32) / "train"
    val = write_shapes(tmp_path / "va", n=5, seed=1, size=32) / "train"
    return train, val


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("where", ["train", "val"])
def test_one_unreadable_image_of_25_trains_to_the_end(tmp_path, where, workers):
    """1 bad file in 25 is 4 %, and 20 % of a 5-image validation split: under the floor of files, so the run
    replaces it, names it and lists it, wherever it falls and however many workers read it."""
    train, val = _small_split(tmp_path)
    bad = _break_images(train if where == "train" else val, [2])
    args = small_args(tmp_path, "--data", str(train), "--val-data", str(val), "--epochs", "2", "--name", "one",
                      "--no-tensorboard", "--no-plots", "--aug", "none", "--workers", workers, "--batch-size", "10")
    assert main(args) == 0
    run = tmp_path / "one"
    assert [ln.split("\t")[0] for ln in (run / "bad_images.txt").read_text().splitlines()] == bad
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2
    log = (run / "train.log").read_text()
    assert f"epoch 2: 1 unreadable image replaced so far ({bad[0]}; listed in" in log, log


@pytest.mark.parametrize("workers", ["0", "2"])
def test_more_bad_images_than_floor_and_fraction_stop_in_one_line_naming_them(tmp_path, capsys, workers):
    """6 bad files of 25: more than the floor (5) and the fraction (1 %): one line naming the first files."""
    train, val = _small_split(tmp_path)
    bad = _break_images(train, [1, 4, 7, 10]) + _break_images(val, [0, 3])
    args = small_args(tmp_path, "--data", str(train), "--val-data", str(val), "--epochs", "1", "--name", "six",
                      "--no-tensorboard", "--no-plots", "--aug", "none", "--workers", workers, "--batch-size", "10")
    assert main(args) == 2
    line = _one_line(capsys)
    assert "6 of 25 images are unreadable" in line and "--bad-images-floor 5" in line, line
    assert sum(b in line for b in bad) == 3 and "and 3 more" in line, line
    # Five are within the floor: the same data with one file fewer broken trains.
    Path(bad[-1]).unlink()
    args[args.index("six")] = "five"
    assert main(args) == 0


def test_too_many_bad_is_one_rule_of_a_floor_and_a_fraction():
    from kernel.data import too_many_bad

    assert not too_many_bad(1, 12, 0.01, 5) and not too_many_bad(5, 25, 0.01, 5)
    assert too_many_bad(6, 25, 0.01, 5) and not too_many_bad(6, 1000, 0.01, 5)  # 6 of 1000 is under 1 %
    assert too_many_bad(11, 1000, 0.01, 5) and too_many_bad(1, 12, 0.01, 0)


def test_check_data_reports_bad_files_and_exits_non_zero(tmp_path, capsys):
    data = write_shapes(tmp_path / "d", n=40, seed=0, size=32)
    assert main(small_args(tmp_path, "--data", str(data / "train"), "--check-data", "--name", "c")) == 0
    assert "all 40 images are readable" in capsys.readouterr().out
    bad = _break_images(data / "train", [1, 2])
    assert main(small_args(tmp_path, "--data", str(data / "train"), "--check-data", "--name", "c",
                           "--workers", "2")) == 1
    out, err = capsys.readouterr()
    assert "2 of 40 images are unreadable" in out and all(b in out for b in bad), out
    assert "within --bad-images-floor 5 files or --bad-images-limit 0.01 of the images: a training run would go on" \
        in out, out
    listed = [ln.split("\t")[0] for ln in (tmp_path / "c" / "bad_images.txt").read_text().splitlines()]
    assert sorted(listed) == sorted(bad)
    # counted as a run counts them: over a floor of 1 file and 1 % of the 40 images, a run would stop; the
    # files are named (by this process: 0 workers), and not as "replaced", since nothing is trained
    assert main(small_args(tmp_path, "--data", str(data / "train"), "--check-data", "--name", "c",
                           "--bad-images-floor", "1")) == 1
    out, err = capsys.readouterr()
    assert "a training run would stop" in out and all(f"unreadable image {b}" in err for b in bad), err
    assert "replace" not in out + err, out + err


NAN_LOSS = '''
import torch.nn.functional as F
calls = {"n": 0}


def nan_later(logits, target):  # fine for the first epoch (3 batches), NaN from then on
    calls["n"] += 1
    loss = F.cross_entropy(logits, target)
    return loss * float("nan") if calls["n"] > 3 else loss
'''


def test_nan_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    (tmp_path / "nanloss.py").write_text(NAN_LOSS)
    data = write_shapes(tmp_path / "d", n=60, seed=0, size=32)
    assert main(small_args(tmp_path, "--data", str(data / "train"), "--epochs", "3", "--name", "n",
                           "--loss", f"{tmp_path / 'nanloss.py'}:nan_later", "--no-tensorboard")) == 2
    line = _one_line(capsys)
    assert "epoch 2" in line and "loss is nan" in line and "--lr" in line and "--clip-grad" in line, line
    last = torch.load(tmp_path / "n" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_disk_full_keeps_the_old_checkpoint(tmp_path, capsys, monkeypatch):
    data = write_shapes(tmp_path / "d", n=48, seed=0, size=32)
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += os.path.basename(str(f)).startswith(".last.pt.")  # last.pt's saves (best.pt has its own)
        if calls["n"] == 2:  # the second epoch's last.pt: the disk is full
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert main(small_args(tmp_path, "--data", str(data / "train"), "--epochs", "2", "--name", "f",
                           "--no-tensorboard")) == 2
    line = _one_line(capsys)
    assert "no space left" in line and "last.pt" in line and "MB" in line, line
    assert torch.load(tmp_path / "f" / "last.pt", weights_only=True)["epoch"] == 1
    assert not list((tmp_path / "f").glob(".*.tmp"))


def test_leftovers_removed_and_best_files_repaired_on_resume(tmp_path):
    data = write_shapes(tmp_path / "d", n=48, seed=0, size=32)
    args = small_args(tmp_path, "--data", str(data / "train"), "--name", "r", "--no-tensorboard")
    assert main(args + ["--epochs", "1"]) == 0
    run = tmp_path / "r"
    shutil.copyfile(run / "last.pt", tmp_path / "epoch1.pt")
    assert main(args + ["--epochs", "2", "--resume", "auto"]) == 0
    # Simulate a kill between writing last.pt (best epoch 2) and copying it to best.pt.
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["best_epoch"], ckpt["best_metric"] = 2, 100.0
    torch.save(ckpt, run / "last.pt")
    shutil.copyfile(tmp_path / "epoch1.pt", run / "best.pt")
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"x" * 1000)  # a save the kill interrupted
    assert main(args + ["--epochs", "2", "--resume", "auto"]) == 0
    assert not list(run.glob(".*.tmp"))
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 2
    from safetensors.torch import load_file
    exported = load_file(run / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in ckpt["model"].items())


def test_a_bug_shows_its_traceback_and_logs_it(tmp_path, capsys):
    """A bug (here in the user's loss, run inside the training step) keeps its traceback, on screen and in the log."""
    (tmp_path / "buggy.py").write_text("def loss(logits, target):\n    raise RuntimeError('synthetic bug')\n")
    assert main(small_args(tmp_path, "--dry-run", "--name", "b", "--no-tensorboard",
                           "--loss", f"{tmp_path / 'buggy.py'}:loss")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "synthetic bug" in err
    log = (tmp_path / "b" / "train.log").read_text()
    assert "Traceback" in log and "RuntimeError: synthetic bug" in log
