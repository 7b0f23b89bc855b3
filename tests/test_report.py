"""Results a person can look at: curves, confusion matrix + per_class.csv, prediction grid, TensorBoard,
the --summary layer table, and the config's predict: section running after training."""
import csv
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from kernel.data import SHAPE_CLASSES, write_shapes
from kernel.train import main

from conftest import REPORT_EPOCHS as EPOCHS, small_args

@pytest.fixture
def run(trained_run):
    return trained_run


def _check_png(path: Path, min_w: int, min_h: int) -> np.ndarray:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_w and im.height >= min_h, im.size
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 20  # a drawing, not a blank canvas
    return arr


def test_plots_are_real_pngs(run):
    _check_png(run["run"] / "curves.png", 900, 300)
    _check_png(run["run"] / "confusion_matrix.png", 400, 350)
    arr = _check_png(run["run"] / "predictions.png", 800, 300)
    # wrong predictions get a red frame, right ones green: at least one of the two colours is there
    red = ((arr[..., 0] > 180) & (arr[..., 1] < 60) & (arr[..., 2] < 70)).sum()
    green = ((arr[..., 1] > 100) & (arr[..., 0] < 60) & (arr[..., 2] < 90)).sum()
    assert red + green > 100
    log = (run["run"] / "train.log").read_text()
    assert "could not write" not in log and "Traceback" not in log


def test_per_class_csv_matches_an_independent_confusion_matrix(run):
    from kernel.predict import predict

    out = run["root"] / "val_pred.csv"
    predict(str(run["run"] / "best.pt"), [str(run["val"] / "train")], out=str(out), topk=1, batch_size=16,
            device="cpu", workers=0)
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    true = [Path(r["path"]).parent.name for r in rows]
    pred = [r["label"] for r in rows]
    assert len(rows) == 48
    with open(run["run"] / "per_class.csv") as fh:
        table = {r["class"]: r for r in csv.DictReader(fh)}
    assert set(SHAPE_CLASSES) | {"macro avg", "weighted avg"} == set(table)
    for c in SHAPE_CLASSES:
        tp = sum(t == c and p == c for t, p in zip(true, pred))
        fp = sum(t != c and p == c for t, p in zip(true, pred))
        fn = sum(t == c and p != c for t, p in zip(true, pred))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        row = table[c]
        assert int(row["support"]) == tp + fn == 12
        for key, want in (("precision", precision), ("recall", recall), ("f1", f1)):
            assert float(row[key]) == pytest.approx(want, abs=1e-5), (c, key)


def test_tensorboard_has_scalars_for_every_epoch(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run["run"] / "tb"))
    ea.Reload()
    tags = ea.Tags()
    for tag in ("loss/train", "loss/val", "acc/train", "acc/val", "lr"):
        assert [e.step for e in ea.Scalars(tag)] == list(range(1, EPOCHS + 1)), tag
    assert "val/samples" in tags["images"]
    assert tags["graph"]  # test_resnet traces (--tb-graph)
    with open(run["run"] / "metrics.csv") as fh:
        val_acc = [float(r["val_acc"]) for r in csv.DictReader(fh)]
    assert [e.value for e in ea.Scalars("acc/val")] == pytest.approx(val_acc, rel=1e-4)


def test_predict_section_runs_after_training(run):
    preds = run["run"] / "test_predictions.csv"
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 48 and list(rows[0]) == ["path", "label", "prob", "label_2", "prob_2"]
    with open(run["run"] / "submission.csv") as fh:
        sub = list(csv.reader(fh))
    assert sub[0] == ["id", "label"]
    assert [r[0] for r in sub[1:]] == [f"{i:05d}" for i in range(48)]
    assert {r[1] for r in sub[1:]} <= set(SHAPE_CLASSES)


def test_predict_section_is_checked_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"predict": {"inputs": ["x"], "top_k": 3}}))
    assert main(small_args(tmp_path, "--config", str(bad), "--name", "bad")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "top_k" in err and "did you mean 'topk'" in err
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"predict": {"inputs": [str(tmp_path / "nope")]}}))
    assert main(small_args(tmp_path, "--config", str(missing), "--name", "miss", "--epochs", "1")) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "miss" / "last.pt").exists()


def test_plot_failure_never_fails_the_run(tmp_path):
    """A picture that cannot be written (here: a folder stands where the file goes) is a warning, not a failure."""
    for name in ("curves.png", "confusion_matrix.png"):
        (tmp_path / "p" / name).mkdir(parents=True)
    assert main(small_args(tmp_path, "--dry-run", "--epochs", "1", "--name", "p", "--no-tensorboard")) == 0
    run = tmp_path / "p"
    log = (run / "train.log").read_text()
    assert "WARNING" in log and "could not write curves.png: IsADirectoryError" in log
    assert "could not write confusion_matrix.png" in log
    assert not any((run / "curves.png").iterdir()) and not list(run.glob(".*.tmp")) and not (run / "tb").exists()
    assert (run / "predictions.png").is_file() and (run / "per_class.csv").is_file()  # the others still work


def test_without_matplotlib_per_class_csv_is_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # every plot's import now raises ImportError
    assert main(small_args(tmp_path, "--dry-run", "--epochs", "1", "--name", "nompl", "--no-tensorboard")) == 0
    run = tmp_path / "nompl"
    log = (run / "train.log").read_text()
    assert log.count("plots disabled") == 1
    assert (run / "per_class.csv").is_file()  # numpy and csv only: not gated on matplotlib
    assert not any((run / f).exists() for f in ("curves.png", "confusion_matrix.png", "predictions.png"))


def test_no_plots_skips_the_pictures_and_keeps_the_tables(tmp_path):
    assert main(small_args(tmp_path, "--dry-run", "--epochs", "1", "--name", "np", "--no-tensorboard",
                           "--no-plots")) == 0
    run = tmp_path / "np"
    assert not list(run.glob("*.png")) and "plots disabled" not in (run / "train.log").read_text()
    assert (run / "per_class.csv").is_file() and (run / "metrics.csv").is_file()


@pytest.mark.parametrize("graph", [False, True])
def test_the_model_graph_is_traced_only_with_tb_graph(tmp_path, graph):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kernel.models import create_model
    from kernel.report import EpochReporter

    reporter = EpochReporter(tmp_path, task=None, split=None, dcfg={}, monitor="val_acc", plots=False, graph=graph)
    reporter.on_train_start(create_model("test_resnet", num_classes=2), (3, 32, 32), torch.device("cpu"))
    reporter.close()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert bool(ea.Tags()["graph"]) == graph


def test_tensorboard_absent_is_one_log_line(tmp_path, monkeypatch, caplog):
    from kernel.report import TensorBoardLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    caplog.set_level(logging.INFO, logger="kernel")
    assert TensorBoardLogger.open(tmp_path / "tb") is None
    lines = [r.getMessage() for r in caplog.records if "tensorboard" in r.getMessage().lower()]
    assert len(lines) == 1 and "not installed" in lines[0]
    assert not (tmp_path / "tb").exists()


def test_multilabel_per_class_stats_are_binary():
    from kernel.tasks.classify import per_class_stats

    probs = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.6], [0.3, 0.1]])
    hot = np.array([[1, 0], [1, 1], [0, 0], [1, 1]])
    s = per_class_stats(probs, hot, multilabel=True)
    assert "cm" not in s
    assert s["precision"].tolist() == [1.0, 0.5] and s["recall"].tolist() == [2 / 3, 0.5]
    assert s["support"].tolist() == [3, 2]


def _total_from_table(text: str) -> int:
    line = next(ln for ln in text.splitlines() if ln.startswith("total params:"))
    return int(line.split(":")[1].replace(",", ""))


@pytest.mark.parametrize("model", ["resnet10t", "tv:resnet18"])
def test_summary_table_for_timm_and_torchvision(tmp_path, capsys, model):
    from kernel.models import create_model

    assert main(small_args(tmp_path, "--summary", "--model", model, "--name", "s")) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:2] == ["layer", "output"] and "parameters" in header and "trainable" in header
    expected = sum(p.numel() for p in create_model(model, 4, 3).parameters())
    assert _total_from_table(out) == expected
    rows = [ln for ln in out.splitlines() if " (" in ln and ln.rstrip().endswith(("yes", "no", "partly", "-"))]
    assert sum(int(ln.split()[-2].replace(",", "")) for ln in rows) == expected
    assert any("Conv2d" in ln and "[1, " in ln for ln in rows)
    assert not (tmp_path / "s" / "last.pt").exists()


def test_summary_counts_root_and_tied_parameters_once():
    from kernel.report import layer_rows, summary_table

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))  # held by the root, as ViT's cls_token
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # tied
            self.unused = nn.Linear(4, 2)
            self.unused.requires_grad_(False)

        def forward(self, x):
            return self.b(self.a(x + self.token))

    net = Net()
    rows = layer_rows(net, (4,))
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in net.parameters()) == 4 + 20 + 4 + 10
    assert [r["name"] for r in rows][-1] == "unused" and rows[-1]["shape"] == "-"
    text = summary_table(net, (4,))
    assert _total_from_table(text) == 38 and "non-trainable params: 10" in text


def test_multilabel_run_reports_binary_stats_and_submits_label_sets(tmp_path):
    root = write_shapes(tmp_path / "data", n=64, seed=0, size=32)
    with open(root / "train.csv") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / "tags.csv", "w") as fh:  # a second, overlapping label on every third image
        fh.write("image,tags\n" + "".join(f"{r['id']},{r['label']}{' odd' if i % 3 == 0 else ''}\n"
                                          for i, r in enumerate(rows)))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"predict": {"inputs": [str(root / "tags.csv")], "image_dir": str(root / "images"),
                                               "submission": "sub.csv", "topk": 1}}))
    args = small_args(tmp_path, "--data", str(root), "--csv", "tags.csv", "--image-dir", "images", "--epochs", "1",
                      "--aug", "none", "--name", "ml", "--no-tensorboard", "--config", str(cfg))
    assert main(args) == 0
    run = tmp_path / "ml"
    with open(run / "per_class.csv") as fh:
        table = {r["class"]: r for r in csv.DictReader(fh)}
    assert set(SHAPE_CLASSES) | {"odd"} <= set(table)
    assert not (run / "confusion_matrix.png").exists()  # not defined for multi-label data
    _check_png(run / "predictions.png", 800, 300)
    with open(run / "sub.csv") as fh:
        sub = list(csv.reader(fh))
    assert sub[0] == ["id", "label"] and len(sub) == 65
    assert all(r[1] and set(r[1].split()) <= set(SHAPE_CLASSES) | {"odd"} for r in sub[1:])


def test_pictures_are_drawn_every_few_seconds_from_the_start_and_at_the_end(tmp_path):
    """--plot-every counts from the start of training: a run shorter than it draws once, at the end; a longer
    one draws when the interval has passed, with the best epoch's files drawn from the epoch that was best."""
    from kernel.report import EpochReporter

    class Task:
        metric_panel = ("accuracy", [("val_acc", "val")])

        def __init__(self):
            self.best = []

        def write_best(self, run_dir, epoch, val, split, val_dataset, dcfg, safe):
            self.best.append(epoch)

    now = [0.0]
    task = Task()
    reporter = EpochReporter(tmp_path, task=task, split=None, dcfg={}, monitor="val_acc", tensorboard=False,
                             every=10.0, clock=lambda: now[0])
    history = []
    for epoch, t, improved in [(1, 3.0, True), (2, 6.0, False), (3, 11.0, True), (4, 14.0, True)]:
        now[0] = t
        history.append({"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "val_acc": 0.1 * epoch,
                        "lr": 0.1})
        reporter.on_epoch_end(epoch, history, {}, improved=improved, best_epoch=epoch if improved else 1)
        assert (tmp_path / "curves.png").is_file() == (epoch >= 3), epoch  # first drawn 10 s in (epoch 3)
    assert task.best == [3]
    reporter.on_train_end()
    assert task.best == [3, 4]  # the end draws what was still waiting
