"""K-fold cross-validation end to end: the folds, out-of-fold predictions, the CV score, fold ensembles, and a
``--fold all`` run killed inside a fold that resumes bit for bit without retraining the finished folds."""
from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from kernel.config import parse_options
from kernel.data import write_shapes
from kernel.models import FoldEnsemble, mean_probabilities
from kernel.models.ensemble import ACTIVATIONS
from kernel.predict import load_for_prediction, main as predict_main
from kernel.run import effective_options
from kernel.run.kfold import FoldPlan, carry_over_root, clear_other_folds, fold_finished
from kernel.run.prepare import prepare_data
from kernel.tasks import get_task
from kernel.tasks.classify import predict_probs
from kernel.train import main

from conftest import go_on, paused_at, subprocess_env

ENV = subprocess_env()
HOOKED = subprocess_env(hooks=("ticks", "pause"))  # tests/hooks/sitecustomize.py
CLASSES = ["circle", "cross", "square", "triangle"]  # ImageFolder order (sorted folder names)


def _error(stderr: str) -> str:
    """The one line a user error prints (log lines aside), or a failure when there is more (a traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _args(data: Path, out: Path, name: str, *extra: str) -> list:
    return ["--data", str(data), "--model", "test_resnet", "--img-size", "32", "--epochs", "2", "--batch-size", "16",
            "--workers", "0", "--device", "cpu", "--aug", "light", "--output", str(out), "--name", name,
            "--no-tensorboard", "--no-plots", *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("kfold"), n=96, seed=0, size=32)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """One 3-fold run with EMA, shared by the OOF and ensemble tests."""
    out = tmp_path_factory.mktemp("runs")
    assert main(_args(data / "train", out, "cv", "--folds", "3", "--ema", "0.9", "--lr", "0.003")) == 0
    return out / "cv"


def _read(path: Path) -> list:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _opts(data: Path, tmp_path: Path, *extra: str):
    return effective_options(parse_options(_args(data, tmp_path, "plan", *extra)))


# ------------------------------------------------------------------------------------------------ folds


def test_folds_are_stratified_seeded_and_cover_every_image_once(data, tmp_path):
    opts = _opts(data / "train", tmp_path, "--folds", "3", "--fold", "1")
    split = prepare_data(opts, get_task("classify"))
    plan = split.folds
    assert len(plan.ids) == len(set(plan.ids)) == 96 and sorted(np.unique(plan.assignment)) == [0, 1, 2]
    labels = np.asarray(split.full.targets)
    for f in range(3):  # each class's share of a fold is within one image of its share of the data
        in_fold = plan.assignment == f
        for c in range(4):
            expected = in_fold.sum() * (labels == c).mean()
            assert abs((labels[in_fold] == c).sum() - expected) <= 1, (f, c)
    assert sorted(split.val.indices) == np.flatnonzero(plan.assignment == 1).tolist()
    assert not set(split.train.indices) & set(split.val.indices)
    again = prepare_data(opts, get_task("classify")).folds
    other = prepare_data(_opts(data / "train", tmp_path, "--folds", "3", "--seed", "7"), get_task("classify")).folds
    assert np.array_equal(again.assignment, plan.assignment) and not np.array_equal(other.assignment, plan.assignment)


def test_group_col_keeps_each_group_in_one_fold(data, tmp_path):
    rows = _read(data / "train.csv")
    with open(tmp_path / "groups.csv", "w", newline="") as fh:  # 32 patients of 3 images each
        w = csv.writer(fh)
        w.writerow(["id", "label", "patient"])
        w.writerows([r["id"], r["label"], f"p{i // 3}"] for i, r in enumerate(rows))
    opts = _opts(data, tmp_path, "--csv", str(tmp_path / "groups.csv"), "--image-dir", "images", "--folds", "4",
                 "--group-col", "patient")
    plan = prepare_data(opts, get_task("classify")).folds
    assert plan.ids == [r["id"] for r in rows]  # CSV ids name the images
    folds_of = {}
    for i, f in enumerate(plan.assignment):
        folds_of.setdefault(f"p{i // 3}", set()).add(int(f))
    assert all(len(f) == 1 for f in folds_of.values()) and len(set(plan.assignment)) == 4


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "--folds 1: use 2 or more folds"),
    (["--folds", "3", "--fold", "3"], "--fold '3': give a fold number 0..2 or all"),
    (["--group-col", "patient"], "--group-col splits folds: give --folds K too"),
    (["--folds", "3", "--group-col", "patient"], "--group-col patient: groups are a CSV column"),
    (["--folds", "3", "--resume", "x/last.pt"], "with --fold all: each fold resumes from its own last.pt"),
])
def test_fold_options_fail_in_one_line(data, tmp_path, capsys, extra, message):
    assert main(_args(data / "train", tmp_path, "bad", *extra)) == 2
    err = _error(capsys.readouterr().err)
    assert message in err, err
    assert not (tmp_path / "bad").exists()  # a failed command writes nothing


# ------------------------------------------------------------------------------------------------ OOF


def test_oof_covers_every_image_once_and_matches_each_folds_best_pt(run, data):
    folds = {r["image"]: int(r["fold"]) for r in _read(run / "folds.csv")}
    oof = _read(run / "oof.csv")
    assert sorted(r["path"] for r in oof) == sorted(folds) and len(oof) == 96  # every training image, once
    assert all(int(r["fold"]) == folds[r["path"]] for r in oof)
    summary = json.loads((run / "summary.json").read_text())
    labels, preds = [r["label"] for r in oof], [r["pred"] for r in oof]
    assert summary["cv_metric_name"] == "cv_acc" and len(summary["fold_metrics"]) == 3
    assert summary["cv_metric"] == pytest.approx(accuracy_score(labels, preds), abs=1e-9)  # a fraction, as sklearn's
    probs = np.array([[float(r[c]) for c in CLASSES] for r in oof])
    assert [CLASSES[i] for i in probs.argmax(1)] == preds
    assert (run / "cv.png").stat().st_size > 0
    for f in range(3):  # each row's probabilities are that fold's best.pt predicting the image
        rows = [r for r in oof if int(r["fold"]) == f]
        trained = load_for_prediction(str(run / f"fold{f}"), torch.device("cpu"))
        got = predict_probs(trained.model, trained.transform, [str(data / "train" / r["path"]) for r in rows],
                            in_chans=3, multilabel=False, device=torch.device("cpu"), batch_size=8, workers=0,
                            amp=False, tta=False)
        want = torch.tensor([[float(r[c]) for c in CLASSES] for r in rows])
        assert torch.allclose(got, want, atol=1e-6, rtol=0), f


def test_a_dry_run_says_its_oof_table_covers_only_its_subset(data, tmp_path, capsys):
    """--dry-run validates a few batches of each fold: oof.csv is partial, and the log says so for each fold."""
    assert main(_args(data / "train", tmp_path, "dry", "--folds", "2", "--dry-run")) == 0
    rows = _read(tmp_path / "dry" / "oof.csv")
    assert 0 < len(rows) < 96
    err = capsys.readouterr().err
    for f in range(2):
        n = sum(int(r["fold"]) == f for r in rows)
        assert f"--dry-run: oof.csv holds only the dry run's {n} validation images of fold {f}" in err, err[-2000:]


def test_ema_weights_are_what_best_pt_predicts_with_and_what_is_exported(run):
    from safetensors.torch import load_file

    ckpt = torch.load(run / "fold0" / "best.pt", weights_only=True)
    assert ckpt["ema"] is not None
    exported = load_file(str(run / "fold0" / "model.safetensors"))
    assert all(torch.equal(exported[k], v) for k, v in ckpt["ema"].items())
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"] if ckpt["model"][k].is_floating_point())
    assert "EMA of the weights (decay 0.9)" in (run / "fold0" / "train.log").read_text()


# ------------------------------------------------------------------------------------------------ ensembles


@pytest.mark.parametrize("folds, tta", [("", False), ("0,2", True)])
def test_ensemble_is_the_mean_of_the_folds_probabilities(run, data, folds, tta):
    paths = sorted(str(p) for p in (data / "images").glob("*.png"))[:20]
    kw = dict(in_chans=3, multilabel=False, device=torch.device("cpu"), batch_size=8, workers=0, amp=False, tta=tta)
    ens = load_for_prediction(str(run), torch.device("cpu"), folds)
    members = [0, 2] if folds else [0, 1, 2]
    assert isinstance(ens.model, FoldEnsemble) and len(ens.model.members) == len(members)
    single = [predict_probs(load_for_prediction(str(run / f"fold{f}"), torch.device("cpu")).model, ens.transform,
                            paths, **kw) for f in members]
    got = predict_probs(ens.model, ens.transform, paths, **kw)
    assert torch.allclose(got, torch.stack(single).mean(0), atol=1e-6, rtol=0)


def test_predict_cli_on_a_kfold_run(run, data, tmp_path):
    out = tmp_path / "p.csv"
    assert predict_main(["--checkpoint", str(run), "--folds", "1,2", str(data / "images"), "--out", str(out),
                         "--workers", "0"]) == 0
    assert len(_read(out)) == 96
    assert predict_main(["--checkpoint", str(run), "--folds", "4", str(data / "images")]) == 2


def test_killed_after_the_last_fold_before_the_cv_score_resumes_to_it_without_training(run, data, tmp_path):
    """Every fold has its oof.csv (finished) but the run was killed before the CV summary: --resume auto
    trains nothing again and writes the CV score the uninterrupted run wrote."""
    shutil.copytree(run, tmp_path / "cv")
    for name in ("summary.json", "oof.csv", "cv.png"):
        (tmp_path / "cv" / name).unlink()
    curves = [(run / f"fold{i}" / "metrics.csv").read_text() for i in range(3)]
    assert main(_args(data / "train", tmp_path, "cv", "--folds", "3", "--ema", "0.9", "--lr", "0.003",
                      "--resume", "auto")) == 0
    expected, got = (json.loads((r / "summary.json").read_text()) for r in (run, tmp_path / "cv"))
    assert (got["cv_metric"], got["fold_metrics"]) == (expected["cv_metric"], expected["fold_metrics"])
    assert (tmp_path / "cv" / "oof.csv").read_text() == (run / "oof.csv").read_text()
    assert [(tmp_path / "cv" / f"fold{i}" / "metrics.csv").read_text() for i in range(3)] == curves


def test_a_fresh_run_clears_every_other_folds_folder(tmp_path):
    """Folds of an earlier run with more folds (fold4, fold12) go too: the ensemble would take them."""
    for name in ("fold0", "fold1", "fold4", "fold12", "folder", "fold_notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "summary.json").write_text("{}")
    clear_other_folds(tmp_path, FoldPlan(3, 0, ["a", "b", "c"], np.array([0, 1, 2]), "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0", "fold_notes", "folder"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fold_ensemble_logits_give_back_the_mean_probability(activation):
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, 5, 5, generator=g) * 8 for _ in range(3)]  # large logits: probabilities near 0 and 1
    mean = mean_probabilities(logits, activation)
    act = {"softmax": lambda z: z.softmax(1), "sigmoid": torch.sigmoid, "identity": lambda z: z}[activation]
    by_hand = torch.stack([act(z.double()) for z in logits]).mean(0)
    assert torch.allclose(mean, by_hand, atol=1e-12)

    class Fixed(torch.nn.Module):  # each member returns its own logits whatever the input
        def __init__(self, z):
            super().__init__()
            self.z = z

        def forward(self, x):
            return self.z

    out = FoldEnsemble([Fixed(z) for z in logits], activation)(torch.zeros(4, 3, 5, 5))
    back = act(out)
    assert torch.isfinite(out).all() and torch.allclose(back.double(), by_hand, atol=1e-6)


# ------------------------------------------------------------------------------------------------ resume


def _kill_inside_fold_1(cmd: list) -> None:
    """Run ``cmd`` (saving every few updates, each save followed by a pause: the test hooks) and SIGKILL it while
    it is paused after its first save inside an epoch of fold 1."""
    proc = subprocess.Popen(cmd, env=HOOKED, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    in_fold_1 = False
    for line in proc.stderr:
        in_fold_1 = in_fold_1 or "fold 1 of 2" in line
        at = paused_at(line)
        if at is not None:
            if in_fold_1 and at[2] > 0:
                break
            go_on(at[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def more_data(tmp_path_factory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("kfold-kill"), n=144, seed=0, size=32) / "train"


def test_fold_all_killed_inside_fold_1_resumes_exactly_without_retraining(more_data, tmp_path):
    """With EMA and Mixup/CutMix on: the weights, their average and the OOF table come out bit for bit."""
    extra = ["--folds", "2", "--deterministic", "--ema", "0.9", "--mixup", "0.4", "--cutmix", "1.0",
             "--save-every", "3"]  # on the hooks' ticking clock: every few updates
    data = more_data
    full = subprocess.run([sys.executable, "-m", "kernel.train", *_args(data, tmp_path, "full", *extra)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    cmd = [sys.executable, "-m", "kernel.train", *_args(data, tmp_path, "cut", *extra, "--resume", "auto")]
    _kill_inside_fold_1(cmd)
    cut = tmp_path / "cut"
    assert (cut / "fold0" / "oof.csv").is_file() and (cut / "fold1" / "last.pt").is_file()
    assert not (cut / "fold1" / "oof.csv").exists() and not (cut / "oof.csv").exists()
    fold0 = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (cut / "fold0").iterdir() if p.is_file()}
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fold 0 of 2: finished earlier" in done.stderr and "resumed from" in done.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (cut / "fold0").iterdir() if p.is_file()} == fold0
    for f in range(2):
        a = torch.load(tmp_path / "full" / f"fold{f}" / "last.pt", weights_only=True)
        b = torch.load(cut / f"fold{f}" / "last.pt", weights_only=True)
        for key in ("model", "ema"):  # the weights and their moving average, bit for bit
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), (f, key)
        assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert (tmp_path / "full" / "oof.csv").read_text() == (cut / "oof.csv").read_text()
    assert Counter(r["fold"] for r in _read(cut / "oof.csv")) == Counter(r["fold"] for r in _read(cut / "folds.csv"))


@pytest.mark.parametrize("resume", ["auto", ""])
def test_the_next_kaggle_version_carries_the_kfold_run_over(tmp_path, monkeypatch, resume):
    """Version 2 mounts version 1's /kaggle/working read-only: with --resume auto its k-fold folder (finished
    folds, the fold in progress, folds.csv) is copied into this version's, temp files left behind."""
    inputs, working = tmp_path / "input", tmp_path / "working"
    prev = inputs / "notebooks" / "alice" / "kernel-train" / "cv"
    for name, text in (("folds.csv", "image,fold\n"), ("fold0/oof.csv", "path\n"), ("fold1/last.pt", "x"),
                       ("fold1/.last.pt.123.tmp", "cut")):
        (prev / name).parent.mkdir(parents=True, exist_ok=True)
        (prev / name).write_text(text)
    for key, value in (("KAGGLE_KERNEL_RUN_TYPE", "Batch"), ("KERNEL_KAGGLE_INPUT", str(inputs)),
                       ("KERNEL_KAGGLE_WORKING", str(working))):
        monkeypatch.setenv(key, value)
    carry_over_root(parse_options(["--folds", "3", "--name", "cv", "--resume", resume]))
    if not resume:  # a fresh run starts over: nothing is carried
        assert not (working / "cv").exists()
        return
    assert fold_finished(working / "cv", 0) and not fold_finished(working / "cv", 1)
    assert (working / "cv" / "fold1" / "last.pt").read_text() == "x" and (working / "cv" / "folds.csv").is_file()
    assert not (working / "cv" / "fold1" / ".last.pt.123.tmp").exists()


# ------------------------------------------------------------------------------------------------ segmentation


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_an_unreadable_image_is_left_out_of_the_oof_rows(tmp_path, task):
    """A truncated image (replaced by the next readable one in training and validation) gets no row: the row
    would hold another image's prediction under its id. The other images have theirs, and the CV score."""
    from kernel.tasks.segment.shapes_seg import write_shapes_seg

    if task == "segment":
        data, model = write_shapes_seg(tmp_path / "d", n=24, seed=0, size=32), "tu-test_resnet"
    else:
        data, model = write_shapes(tmp_path / "d", n=48, seed=0, size=32) / "train", "test_resnet"
    images = sorted(p for p in data.rglob("*.png") if "masks" not in p.parts)
    bad = images[5]
    bad.write_bytes(bad.read_bytes()[:60])
    args = _args(data, tmp_path / "runs", "cv", "--folds", "2", "--bad-images-limit", "0.1")
    args[args.index("test_resnet")], args[args.index("--epochs") + 1] = model, "1"
    assert main(args) == 0
    oof = _read(tmp_path / "runs" / "cv" / "oof.csv")
    paths = {p.relative_to(data).as_posix() for p in images}
    assert sorted(r["path"] for r in oof) == sorted(paths - {bad.relative_to(data).as_posix()})
    assert json.loads((tmp_path / "runs" / "cv" / "summary.json").read_text())["images"] == len(images) - 1
    if task == "segment":  # nor a mask file: it would be the replacement's prediction under the bad image's name
        written = sorted(p.name for p in (tmp_path / "runs" / "cv" / "oof_masks").iterdir())
        assert written == sorted(f"{Path(r['path']).stem}.png" for r in oof) and f"{bad.stem}.png" not in written


def test_segmentation_folds_write_oof_scores_masks_and_the_cv_miou(tmp_path):
    """Folds by image; OOF masks equal the fold's best.pt predicting the image file; cv_miou recomputed from the
    rows' pixel counts over every image (the foreground classes present, as val_miou)."""
    from PIL import Image

    from kernel.tasks.segment.shapes_seg import write_shapes_seg

    data = write_shapes_seg(tmp_path / "seg", n=24, seed=0, size=40)  # masks at 40 px, the model at 32
    args = ["--data", str(data), "--model", "tu-test_resnet", "--img-size", "32", "--epochs", "1", "--batch-size",
            "8", "--workers", "0", "--device", "cpu", "--output", str(tmp_path / "runs"), "--name", "seg",
            "--no-tensorboard", "--folds", "2"]
    assert main(args) == 0
    run = tmp_path / "runs" / "seg"
    oof = _read(run / "oof.csv")
    assert sorted(r["path"] for r in oof) == sorted(f"images/{i:05d}.png" for i in range(24))
    names = ["background", "circle", "square", "triangle", "cross"]
    counts = {s: np.array([[int(r[f"{s}_{n}"]) for n in names] for r in oof]).sum(0) for s in ("tp", "fp", "fn")}
    union = counts["tp"] + counts["fp"] + counts["fn"]
    present = np.flatnonzero(union[1:] > 0) + 1  # foreground classes seen in truth or prediction
    cv = (counts["tp"][present] / union[present]).mean()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cv_metric_name"] == "cv_miou" and summary["cv_metric"] == pytest.approx(cv, abs=1e-12)
    assert all(0.0 <= float(r["iou"]) <= 1.0 and 0.0 <= float(r["dice"]) <= 1.0 for r in oof)
    first = next(r for r in oof if r["fold"] == "1")
    stem = Path(first["path"]).stem
    assert predict_main(["--checkpoint", str(run / "fold1"), str(data / first["path"]), "--out",
                         str(tmp_path / "masks"), "--workers", "0"]) == 0
    with Image.open(run / "oof_masks" / f"{stem}.png") as a, Image.open(tmp_path / "masks" / f"{stem}.png") as b:
        assert a.size == (40, 40) and np.array_equal(np.asarray(a), np.asarray(b))
