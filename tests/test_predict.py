"""python -m kernel.predict: agrees with training, TTA, submissions (own columns or a sample's), inputs, errors."""
import csv
import json
import re
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
