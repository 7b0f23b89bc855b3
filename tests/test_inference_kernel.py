"""The inference kernel of a code competition (``build.py --inference``), run as Kaggle runs it.

A k-fold run trained here is mounted in a fake ``/kaggle`` tree as a training kernel's output (both layouts),
then as a Kaggle Model; the packed ``infer.py`` runs with no arguments, the network cut, and writes
``/kaggle/working/submission.csv``. Then the test folder and the sample submission are replaced by a larger set
with other ids (Kaggle's re-run on the hidden test set) and the same script writes the new ids. Failures are
one line naming what was searched; the build refuses what a code competition refuses.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import pytest
import yaml
from PIL import Image

import build
from kernel.data.shapes import draw_shape
from kernel.infer import plan_ensemble
from kernel.train import main as train_main

from kaggle_fake import make_project
from test_build import _isolated_env, digest

OWNER = "alice"
CLASSES = ("circle", "square", "triangle")


def _shapes(folder: Path, names: List[str], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        img, _ = draw_shape(n % 3, seed, n, 32)
        Image.fromarray(img).save(folder / name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-fold classification run (the fold ensemble), trained one epoch on 24 images."""
    root = tmp_path_factory.mktemp("trained")
    for c, name in enumerate(CLASSES):
        _shapes(root / "train" / name, [f"{name}{i}.png" for i in range(8)], c)
    assert train_main(["--data", str(root / "train"), "--model", "test_resnet", "--img-size", "32", "--epochs", "1",
                       "--workers", "0", "--device", "cpu", "--batch-size", "8", "--no-plots", "--no-tensorboard",
                       "--folds", "2", "--output", str(root / "runs"), "--name", "cv"]) == 0
    return root / "runs" / "cv"


def _build(tmp_path: Path, config: Dict, *extra: str) -> SimpleNamespace:
    proj = make_project(tmp_path / "proj", OWNER)
    cfg = tmp_path / "infer.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "dist"
    old = os.getcwd()
    os.chdir(proj)
    try:
        code = build.main(["--config", str(cfg), "--out", str(out), "--inference", *extra], project=proj)
    finally:
        os.chdir(old)
    return SimpleNamespace(code=code, out=out)


def _config(checkpoint: str, **kaggle) -> Dict:
    return {"checkpoint": checkpoint, "predict": {"tta": True, "device": "cpu", "workers": 0, "batch_size": 4},
            "kaggle": {"competition_sources": ["shapes-comp"], **kaggle}}


def _competition(folder: Path, ids: List[str], seed: int) -> None:
    """test/<id>.png and sample_submission.csv (id,label with 0 placeholders), as a competition mounts them."""
    if folder.exists():
        shutil.rmtree(folder)
    _shapes(folder / "test", [f"{i}.png" for i in ids], seed)
    with open(folder / "sample_submission.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "label"], *[[i, "circle"] for i in ids]])


def _kaggle_tree(tmp_path: Path, dist: Path, trained: Path, layout: str, source: str) -> SimpleNamespace:
    """/kaggle with the code dataset, the competition and the trained run (``kernel``: a training kernel's
    output; ``model``: a Kaggle Model version), in the ``new`` or ``old`` mount layout."""
    kaggle = tmp_path / "kaggle"
    inputs = kaggle / "input"
    new = layout == "new"
    shutil.copytree(dist / "dataset", inputs / ("datasets/alice/kernel-code" if new else "kernel-code"),
                    ignore=shutil.ignore_patterns("dataset-metadata.json"))
    comp = inputs / ("competitions/shapes-comp" if new else "shapes-comp")
    _competition(comp, [f"img_{i:03d}" for i in range(5)], 11)
    if source == "kernel":  # the training kernel's /kaggle/working, with its run folder cv/
        run = inputs / ("notebooks/alice/kernel-train" if new else "kernel-train") / trained.name
    else:  # what --publish-model uploads: the run folder's files at the version's top
        run = inputs / ("models/alice/shapes-model/pytorch/default/1" if new else "shapes-model/pytorch/default/1")
    shutil.copytree(trained, run)
    for d in (kaggle / "working", kaggle / "src", kaggle / "temp"):
        d.mkdir(parents=True)
    shutil.copy(dist / "inference" / "infer.py", kaggle / "src" / "script.py")
    env = _isolated_env(tmp_path, KAGGLE_KERNEL_RUN_TYPE="Batch", KERNEL_KAGGLE_INPUT=str(inputs),
                        KERNEL_KAGGLE_WORKING=str(kaggle / "working"), KERNEL_KAGGLE_TEMP=str(kaggle / "temp"))
    return SimpleNamespace(kaggle=kaggle, inputs=inputs, comp=comp, working=kaggle / "working", env=env,
                           script=kaggle / "src" / "script.py", run=run)


def _run(k: SimpleNamespace, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(k.script)], cwd=tmp_path, env=k.env, capture_output=True, text=True,
                          timeout=600)


def _rows(path: Path) -> List[List[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _valid(path: Path, ids: List[str]) -> None:
    """The competition's rules: the header, every sample id once in its order, P(class) in [0, 1] per class."""
    rows = _rows(path)
    assert rows[0] == ["id", "label"] and [r[0] for r in rows[1:]] == ids
    assert all(r[1] in CLASSES for r in rows[1:])


@pytest.mark.parametrize("layout, source", [("new", "kernel"), ("old", "kernel"), ("new", "model"),
                                            ("old", "model")])
def test_the_packed_inference_kernel_writes_the_submission_and_again_on_the_hidden_set(trained, tmp_path, layout,
                                                                                       source):
    if source == "kernel":
        config = _config("kernel-train/cv", kernel_sources=[f"{OWNER}/kernel-train"])
    else:
        config = _config("shapes-model/pytorch/default/1", model_sources=[f"{OWNER}/shapes-model/pyTorch/default/1"])
    b = _build(tmp_path, config)
    assert b.code == 0
    meta = json.loads((b.out / "inference" / "kernel-metadata.json").read_text())
    assert meta["id"] == f"{OWNER}/kernel-train-infer" and meta["code_file"] == "infer.py"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True
    assert meta["competition_sources"] == ["shapes-comp"] and f"{OWNER}/kernel-code" in meta["dataset_sources"]
    assert not (b.out / "kernel").exists()

    k = _kaggle_tree(tmp_path, b.out, trained, layout, source)
    before = digest(k.inputs)
    proc = _run(k, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "ensemble of 2 folds (fold0, fold1)" in log and "every member with TTA fit the budget" in log
    _valid(k.working / "submission.csv", [f"img_{i:03d}" for i in range(5)])
    summary = json.loads((k.working / "summary.json").read_text())
    cv = json.loads((trained / "summary.json").read_text())
    assert summary["cv_metric"] == cv["cv_metric"] and summary["inference"]["members"] == 2
    assert summary["inference"]["tta"] is True and summary["inference"]["images"] == 5
    assert sorted(p.name for p in k.working.iterdir()) == ["submission.csv", "summary.json"]
    assert (k.kaggle / "temp" / "kernel-infer" / "predictions.csv").is_file()  # the rest: scratch space
    assert digest(k.inputs) == before

    # Kaggle's re-run: the hidden test set, more images, other ids; the same script.
    hidden = [f"hidden_{i:04d}" for i in range(9)]
    _competition(k.comp, hidden, 23)
    (k.working / "submission.csv").unlink()
    proc = _run(k, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    _valid(k.working / "submission.csv", hidden)
    assert json.loads((k.working / "summary.json").read_text())["inference"]["images"] == 9


def test_a_budget_too_small_for_the_ensemble_keeps_one_member_for_every_image(trained, tmp_path):
    config = _config("kernel-train/cv", kernel_sources=[f"{OWNER}/kernel-train"])
    config["time_limit"] = "0.001"
    b = _build(tmp_path, config)
    assert b.code == 0
    k = _kaggle_tree(tmp_path, b.out, trained, "new", "kernel")
    proc = _run(k, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "even one member without TTA may not fit" in log and "ensemble of" not in log
    _valid(k.working / "submission.csv", [f"img_{i:03d}" for i in range(5)])
    assert json.loads((k.working / "summary.json").read_text())["inference"]["members"] == 1


@pytest.mark.parametrize("breaking, says", [
    ("no run", "'kernel-train/cv' not found as given nor under"),
    ("no id column", "needs an id column and a target column"),
    ("ids without images", "ids have no predicted image"),
])
def test_run_time_failures_are_one_line_and_leave_no_submission(trained, tmp_path, breaking, says):
    b = _build(tmp_path, _config("kernel-train/cv", kernel_sources=[f"{OWNER}/kernel-train"]))
    k = _kaggle_tree(tmp_path, b.out, trained, "new", "kernel")
    if breaking == "no run":
        shutil.rmtree(k.run)
    elif breaking == "no id column":
        (k.comp / "sample_submission.csv").write_text("id\nimg_000\n")
    else:
        with open(k.comp / "sample_submission.csv", "a") as fh:
            fh.write("not_in_test,circle\n")
    proc = _run(k, tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and says in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (k.working / "submission.csv").exists()
    if breaking == "ids without images":
        assert "searched" in errors[0] and "test" in errors[0]


@pytest.mark.parametrize("change, says", [
    ({"kaggle": {"competition_sources": ["shapes-comp"], "kernel_sources": ["alice/kernel-train"],
                 "enable_internet": True}}, "enable_internet is true"),
    ({"kaggle": {"kernel_sources": ["alice/kernel-train"]}}, "no competition_sources"),
    ({"kaggle": {"competition_sources": ["shapes-comp"]}}, "is in none of the attached sources"),
    ({"checkpont": "x"}, "did you mean 'checkpoint'"),
    ({"kaggle": {"competition_sources": ["shapes-comp"], "kernel_sources": ["alice/kernel-train"],
                 "id": "alice/kernel-train"}}, "is the training kernel's"),
])
def test_the_build_refuses_what_a_code_competition_refuses(tmp_path, capsys, change, says):
    config = {"checkpoint": "kernel-train/cv", **change}
    b = _build(tmp_path, config)
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("build.py: error:")]
    assert b.code == 2 and any(says in e for e in errors), errors
    assert not b.out.exists()


@pytest.mark.parametrize("per_image, members, tta, budget, kept, with_tta", [
    (0.01, 5, True, None, 5, True),
    (0.01, 5, True, 100.0, 5, True),     # 5 members x 2 (TTA) x 1000 images x 10 ms = 100 s
    (0.01, 5, True, 99.0, 5, False),     # without TTA: 50 s
    (0.01, 5, True, 30.0, 3, False),
    (0.01, 1, False, 1.0, 1, False),     # nothing fits: one member anyway
])
def test_plan_ensemble_drops_tta_then_whole_members(per_image, members, tta, budget, kept, with_tta):
    plan = plan_ensemble(per_image, 1000, members, tta, budget)
    assert (len(plan.members), plan.tta) == (kept, with_tta) and plan.members == tuple(range(kept)) and plan.why


def test_a_segmentation_run_writes_rle_rows_and_its_masks_only_to_scratch(tmp_path):
    from kernel.tasks.segment.shapes_seg import write_shapes_seg

    data = write_shapes_seg(tmp_path / "seg", n=12, seed=0, size=32)
    assert train_main(["--data", str(data), "--model", "tu-test_resnet", "--img-size", "32", "--epochs", "1",
                       "--workers", "0", "--device", "cpu", "--batch-size", "4", "--no-plots", "--no-tensorboard",
                       "--output", str(tmp_path / "runs"), "--name", "seg"]) == 0
    b = _build(tmp_path, _config("kernel-train/seg", kernel_sources=[f"{OWNER}/kernel-train"]))
    assert b.code == 0
    k = _kaggle_tree(tmp_path, b.out, tmp_path / "runs" / "seg", "new", "kernel")
    ids = [f"{i:05d}" for i in range(3)]
    shutil.rmtree(k.comp / "test")
    _shapes(k.comp / "test", [f"{i}.png" for i in ids], 5)
    with open(k.comp / "sample_submission.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["ImageId", "ClassId", "EncodedPixels"],
                                  *[[i, str(c), "1 1"] for i in ids for c in range(1, 5)]])
    proc = _run(k, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = _rows(k.working / "submission.csv")
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(i, str(c)) for i in ids for c in range(1, 5)]
    assert sorted(p.name for p in k.working.iterdir()) == ["submission.csv", "summary.json"]
    assert sorted(p.name for p in (k.kaggle / "temp" / "kernel-infer" / "masks").glob("*.png")) == \
        [f"{i}.png" for i in ids]
