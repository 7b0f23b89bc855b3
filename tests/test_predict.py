"""python -m kernel.predict: agrees with training, TTA, submissions (own columns or a sample's), inputs, errors."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernel.predict import main as predict_main
from kernel.data import SHAPE_CLASSES

from conftest import subprocess_env


@pytest.fixture
def run(trained_run):
    return trained_run


def _predict(run, *args):
    return predict_main(["--checkpoint", str(run["run"] / "best.pt"), "--workers", "0", "--device", "cpu",
                         "--batch-size", "16", *map(str, args)])


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _errors(text):
    """stderr without the timestamped log lines."""
    return [ln for ln in text.strip().splitlines() if ln and not re.match(r"\d\d:\d\d:\d\d ", ln)]


def _probs(rows):
    """{path: {label: prob}} from a predictions.csv (header first)."""
    out = {}
    for r in rows[1:]:
        out[r[0]] = {r[i]: float(r[i + 1]) for i in range(1, len(r), 2)}
    return out


def test_predict_reproduces_training_accuracy_and_tta_sums_to_one(run, tmp_path):
    val = run["val"] / "train"
    out = tmp_path / "pred.csv"
    assert _predict(run, val, "--out", out, "--topk", "4") == 0
    rows = _rows(out)
    assert rows[0] == ["path", "label", "prob", "label_2", "prob_2", "label_3", "prob_3", "label_4", "prob_4"]
    assert len(rows) == 49
    acc = np.mean([Path(r[0]).parent.name == r[1] for r in rows[1:]])
    best = json.loads((run["run"] / "summary.json").read_text())["best_metric"]
    assert acc == pytest.approx(best, abs=1e-3)
    plain = _probs(rows)
    for probs in plain.values():
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)

    tta = tmp_path / "tta.csv"
    assert _predict(run, val, "--out", tta, "--topk", "4", "--tta") == 0
    flipped = _probs(_rows(tta))
    assert list(flipped) == list(plain)  # same images, same order
    for probs in flipped.values():
        assert set(probs) == set(SHAPE_CLASSES) and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert any(abs(flipped[k]["circle"] - plain[k]["circle"]) > 1e-4 for k in plain)  # TTA changed something


def test_submission_columns_rows_and_stable_order(run, tmp_path):
    images = run["val"] / "images"
    out = tmp_path / "a" / "predictions.csv"
    assert _predict(run, images, "--out", out, "--submission", "--id-col", "image_id", "--target-col", "shape") == 0
    sub = _rows(tmp_path / "a" / "submission.csv")
    assert sub[0] == ["image_id", "shape"]
    assert [r[0] for r in sub[1:]] == sorted(p.stem for p in images.iterdir())
    assert all(len(r) == 2 and r[1] in SHAPE_CLASSES for r in sub[1:])
    again = tmp_path / "again.csv"
    assert _predict(run, images, "--out", tmp_path / "b.csv", "--submission-file", again,
                    "--id-col", "image_id", "--target-col", "shape") == 0
    assert _rows(again) == sub  # same inputs, same file


def test_submission_follows_a_sample_submission(run, tmp_path):
    ids = [f"{i:05d}" for i in range(48)]
    order = [ids[i] for i in np.random.default_rng(0).permutation(48)]
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("ImageId,Shape\n" + "".join(f"{i}.png,none\n" for i in order))
    sub_path = tmp_path / "sub.csv"
    assert _predict(run, run["val"] / "images", "--out", tmp_path / "p.csv", "--sample-submission", sample,
                    "--submission-file", sub_path) == 0
    sub = _rows(sub_path)
    assert sub[0] == ["ImageId", "Shape"] and [r[0] for r in sub[1:]] == [f"{i}.png" for i in order]
    labels = {r[0].split("/")[-1][:-4]: r[1] for r in _rows(tmp_path / "p.csv")[1:]}
    assert all(r[1] == labels[r[0][:-4]] for r in sub[1:])

    # one probability column per class, in the sample's column order
    probs_sample = tmp_path / "probs_sample.csv"
    cols = ["triangle", "circle", "square", "cross"]
    probs_sample.write_text("id," + ",".join(cols) + "\n" + "".join(f"{i},0,0,0,0\n" for i in order[:10]))
    assert _predict(run, run["val"] / "images", "--out", tmp_path / "q.csv", "--sample-submission", probs_sample) == 0
    sub = _rows(tmp_path / "submission.csv")
    assert sub[0] == ["id"] + cols and len(sub) == 11
    assert all(sum(map(float, r[1:])) == pytest.approx(1.0, abs=1e-4) for r in sub[1:])


def test_csv_input_safetensors_checkpoint_and_odd_image_modes(run, tmp_path):
    val = run["val"]
    from_pt = tmp_path / "pt.csv"
    assert _predict(run, val / "train.csv", "--image-dir", val / "images", "--out", from_pt, "--submission") == 0
    sub = _rows(tmp_path / "submission.csv")
    with open(val / "train.csv") as fh:
        assert [r[0] for r in sub[1:]] == [r["id"] for r in csv.DictReader(fh)]  # the CSV's ids and order
    from_st = tmp_path / "st.csv"
    assert predict_main(["--checkpoint", str(run["run"] / "model.safetensors"), str(val / "train.csv"),
                         "--image-dir", "images", "--out", str(from_st), "--workers", "0", "--device", "cpu"]) == 0
    a, b = _probs(_rows(from_pt)), _probs(_rows(from_st))
    assert list(a) == list(b) and all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)

    src = np.asarray(Image.open(val / "images" / "00000.png"))
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(src).convert("L").save(odd / "gray.png")
    Image.fromarray(src).convert("P").save(odd / "palette.png")
    Image.fromarray(src).convert("RGBA").save(odd / "rgba.png")
    Image.fromarray((src[..., 0].astype(np.uint16) * 257)).save(odd / "deep16.png")
    out = tmp_path / "odd.csv"
    assert _predict(run, odd, "--out", out) == 0
    assert [Path(r[0]).name for r in _rows(out)[1:]] == ["deep16.png", "gray.png", "palette.png", "rgba.png"]


def test_user_errors_are_one_line(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    cases = [
        (["--checkpoint", str(tmp_path / "missing.pt"), str(empty)], "--checkpoint"),
        (["--checkpoint", str(run["run"] / "best.pt"), str(empty)], "no images"),
        (["--checkpoint", str(run["run"] / "best.pt"), str(empty / "notes.txt")], "not an image"),
        (["--checkpoint", str(run["run"] / "best.pt"), str(run["val"] / "images"), "--topk", "0"], "--topk"),
    ]
    for argv, needle in cases:
        assert predict_main(argv + ["--device", "cpu", "--workers", "0"]) == 2
        err = _errors(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err

    sample = tmp_path / "sample.csv"
    sample.write_text("id,label\n00000,x\nnot_there,x\n")
    assert _predict(run, run["val"] / "images", "--out", tmp_path / "p.csv", "--sample-submission", sample) == 2
    assert "not_there" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    # a read error inside a DataLoader worker still comes out as one line naming the file
    assert predict_main(["--checkpoint", str(run["run"] / "best.pt"), str(bad), "--workers", "1",
                         "--device", "cpu", "--out", str(tmp_path / "x.csv")]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "bad.png" in err[0] and "Traceback" not in err[0], err


def test_module_entry_point(run, tmp_path):
    env = subprocess_env()
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, "-m", "kernel.predict", "--checkpoint", str(run["run"]),
                           str(run["val"] / "images" / "00001.png"), "--out", str(out), "--workers", "0",
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(_rows(out)) == 2
    proc = subprocess.run([sys.executable, "-m", "kernel.predict", "--checkpoint", str(run["run"])],
                          env=env, capture_output=True, text=True, timeout=120)
    err = _errors(proc.stderr)
    assert proc.returncode == 2 and len(err) == 1 and "inputs" in err[0], proc.stderr


def _copy_run(run, to):
    """A run folder of its own holding the shared run's best.pt, so this test writes nothing into the shared run."""
    import shutil

    to.mkdir(parents=True)
    shutil.copy2(run["run"] / "best.pt", to / "best.pt")
    return to


def test_default_outputs_go_beside_the_run_and_never_replace_an_earlier_prediction(run, tmp_path, monkeypatch,
                                                                                    capsys):
    """Without --out: RUN/predict/, then RUN/predict-2/ (both kept, the log says where); nothing in the current
    folder. A path the user names is replaced, and the log says so."""
    mine = _copy_run(run, tmp_path / "r")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    images = run["val"] / "images"
    argv = ["--checkpoint", str(mine / "best.pt"), str(images), "--workers", "0", "--device", "cpu", "--submission"]
    assert predict_main(argv) == 0
    first = {p.name: p.read_bytes() for p in (mine / "predict").iterdir()}
    assert sorted(first) == ["predictions.csv", "submission.csv"] and len(_rows(mine / "predict" / "submission.csv")) == 49
    capsys.readouterr()
    assert predict_main(argv[:2] + [str(images / "00000.png")] + argv[3:]) == 0  # another input, same command
    err = capsys.readouterr().err
    assert "predict-2" in err and "earlier prediction" in err, err
    assert {p.name: p.read_bytes() for p in (mine / "predict").iterdir()} == first  # the first one untouched
    assert len(_rows(mine / "predict-2" / "predictions.csv")) == 2 and len(_rows(mine / "predict-2" / "submission.csv")) == 2
    assert list(cwd.iterdir()) == []

    # a read-only run folder (a Kaggle input): predict/ in the current folder
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # every folder read-only
    assert predict_main(argv) == 0
    assert sorted(p.name for p in (cwd / "predict").iterdir()) == ["predictions.csv", "submission.csv"]
    monkeypatch.undo()
    monkeypatch.chdir(cwd)

    named = tmp_path / "named.csv"
    assert _predict(run, images / "00000.png", "--out", named) == 0
    assert "replaced" not in capsys.readouterr().err
    assert _predict(run, images, "--out", named) == 0
    err = capsys.readouterr().err
    assert f"{named} exists: it is replaced" in err, err
    assert len(_rows(named)) == 49


def test_messages_name_no_flag_that_does_not_exist(run, tmp_path, capsys, monkeypatch):
    """Inputs are positional and predict: keys are not flags: their errors do not name --inputs or --predict."""
    from kernel.predict import resolve_predict_section
    from kernel.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    empty_csv = tmp_path / "ids.csv"
    empty_csv.write_text("id\n")
    for given, needle in (("data/test", "inputs: 'data/test' does not exist"), (str(empty_csv), "has no rows")):
        assert predict_main(["--checkpoint", str(run["run"] / "best.pt"), given, "--device", "cpu"]) == 2
        err = _errors(capsys.readouterr().err)
        assert len(err) == 1 and needle in err[0] and "--inputs" not in err[0], err
    for section in ({"inputs": ["data/test"]}, {"inputs": [str(run["val"] / "images")], "image_dir": "nowhere"}):
        with pytest.raises(ConfigError) as e:
            resolve_predict_section(section)
        assert str(e.value).startswith("predict ") and "--" not in str(e.value).split(":")[0], str(e.value)
def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:60])
    return str(path)


def test_an_unreadable_test_image_gets_the_training_prior_and_keeps_its_row(tmp_path, capsys):
    """Training on 6 circles and 2 of each other shape (the prior: circle 0.5), then a predict: section over 20 test
    images, one of them truncated: 20 rows, the bad one with the prior (label circle, 0.5), named and listed, and
    the run ends 0. More unreadable inputs than the floor (5) and the fraction stop in one line naming them."""
    import yaml

    from kernel.data import write_shapes
    from kernel.train import main
    from conftest import small_args

    train = write_shapes(tmp_path / "tr", n=24, seed=0, size=32) / "train"
    for name, keep in (("cross", 2), ("square", 2), ("triangle", 2)):
        for extra in sorted((train / name).iterdir())[keep:]:
            extra.unlink()
    val = write_shapes(tmp_path / "va", n=4, seed=1, size=32) / "train"
    test = write_shapes(tmp_path / "te", n=20, seed=2, size=32) / "images"
    files = sorted(test.iterdir())
    bad = _truncate(files[7])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"predict": {"inputs": [str(test)], "submission": True,
                                                                   "workers": 0, "topk": 4}}))
    assert main(small_args(tmp_path / "runs", "--data", str(train), "--val-data", str(val), "--epochs", "1",
                           "--name", "p", "--no-tensorboard", "--no-plots", "--aug", "none",
                           "--config", str(tmp_path / "cfg.yaml"))) == 0
    run = tmp_path / "runs" / "p"
    rows = _rows(run / "predictions.csv")
    assert len(rows) == 1 + 20 and [r[0] for r in rows[1:]] == [str(f) for f in files]
    fallback = _probs(rows)[bad]
    assert rows[1 + 7][1] == "circle" and fallback == {"circle": 0.5, "cross": pytest.approx(1 / 6, abs=1e-5),
                                                      "square": pytest.approx(1 / 6, abs=1e-5),
                                                      "triangle": pytest.approx(1 / 6, abs=1e-5)}, rows[1 + 7]
    assert len(_rows(run / "submission.csv")) == 1 + 20
    assert (run / "predictions_bad_images.txt").read_text().split("\t")[0] == bad
    log = (run / "train.log").read_text()
    assert f"1 of 20 inputs are unreadable ({bad}): each has a row with the training prior" in log, log
    capsys.readouterr()
    # 7 of 20, read by 2 workers: too many; nothing is written
    more = [bad] + [_truncate(f) for f in files[:6]]
    out = tmp_path / "again.csv"
    assert predict_main(["--checkpoint", str(run), str(test), "--workers", "2", "--device", "cpu",
                         "--out", str(out)]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "inputs: 7 of 20 images are unreadable" in err[0] and "and 4 more" in err[0], err
    assert sum(f in err[0] for f in more) == 3 and "--bad-images-floor 5" in err[0], err
    assert not out.exists() and not (tmp_path / "again_bad_images.txt").exists()


def test_the_class_prior_counts_training_labels_single_and_multi_label(tmp_path):
    from kernel.data import CsvSource, DataSplit, Subset
    from kernel.tasks import get_task

    folder = tmp_path / "imgs"
    folder.mkdir()
    labels = ["a b", "a", "a", "c"]
    for i in range(4):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    (tmp_path / "t.csv").write_text("id,label\n" + "".join(f"{i},{l}\n" for i, l in enumerate(labels)))
    source = CsvSource(str(tmp_path / "t.csv"), str(folder))
    task = get_task("classify")
    meta = task.export_meta(DataSplit(Subset(source, [0, 1, 3]), Subset(source, [2]), source.classes, True))
    assert meta["multilabel"] is True and meta["prior"] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    (tmp_path / "s.csv").write_text("id,label\n0,a\n1,a\n2,a\n3,c\n")
    single = CsvSource(str(tmp_path / "s.csv"), str(folder))
    meta = task.export_meta(DataSplit(single, single, single.classes, False))
    assert meta["multilabel"] is False and meta["prior"] == [0.75, 0.25]


def test_an_unreadable_image_gets_an_empty_mask_row_in_a_segmentation_submission(tmp_path, capsys):
    from kernel.tasks.segment.shapes_seg import write_shapes_seg
    from kernel.train import main
    from conftest import small_args

    data = write_shapes_seg(tmp_path / "seg", n=12, seed=0, size=32)
    args = small_args(tmp_path / "runs", "--data", str(data), "--epochs", "1", "--name", "s", "--no-tensorboard",
                      "--no-plots", "--aug", "none")
    args[args.index("test_resnet")] = "tu-test_resnet"
    assert main(args) == 0
    test = tmp_path / "test"
    test.mkdir()
    for i in range(4):
        shutil.copy(data / "images" / f"{i:05d}.png", test / f"t{i}.png")
    bad = _truncate(test / "t2.png")
    out = tmp_path / "masks"
    assert predict_main(["--checkpoint", str(tmp_path / "runs" / "s"), str(test), "--out", str(out),
                         "--submission", "--device", "cpu", "--workers", "0"]) == 0
    rows = _rows(out / "submission.csv")
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"] and len(rows) == 1 + 4 * 4  # 4 shape classes each
    assert [r[2] for r in rows[1:] if r[0] == "t2"] == ["", "", "", ""]
    assert sorted(p.name for p in out.glob("*.png")) == ["t0.png", "t1.png", "t3.png"]
    assert (out / "bad_images.txt").read_text().split("\t")[0] == bad
    assert f"1 of 4 inputs are unreadable ({bad})" in capsys.readouterr().err
