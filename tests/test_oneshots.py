"""The one-shot commands (--show-aug, --preview-lr, --find-lr, --summary, --check-data, --list-models) as a new user
runs them: from a fresh folder, into a run folder that does not exist yet, next to an earlier run; and what
--show-aug draws (labels, masks)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from conftest import small_args
from kernel.config import parse_options
from kernel.run import ONE_SHOTS, effective_options, seed_everything
from kernel.run.oneshots import WRITERS
from kernel.run.prepare import prepare_data
from kernel.tasks import get_task
from kernel.train import main

# one-shot -> (its flags, the files it writes into the run folder); --check-data on readable data lists nothing
CASES = {
    "show_aug": (["--show-aug", "4"], ["augmentations.png"]),
    "preview_lr": (["--preview-lr"], ["lr.png"]),
    "find_lr": (["--find-lr", "--find-lr-steps", "5"], ["lr_find.png"]),
    "check_data": (["--check-data"], []),
    "summary": (["--summary"], []),
    "list_models": (["--list-models", "resnet1*"], []),
}
FAST = ["--model", "test_resnet", "--img-size", "32", "--workers", "0", "--device", "cpu", "--dry-run"]


def _tree(folder: Path) -> dict:
    """Every file and folder under ``folder``: relative path -> sha256 of the content (folders: '/')."""
    return {p.relative_to(folder).as_posix(): "/" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def test_the_cases_cover_every_one_shot():
    assert sorted(CASES) == sorted(ONE_SHOTS) and set(WRITERS) <= set(CASES)


@pytest.mark.parametrize("output", ["default", "new"], ids=["./runs", "new --output"])
@pytest.mark.parametrize("shot", list(CASES))
def test_every_one_shot_works_from_a_fresh_folder(tmp_path, monkeypatch, shot, output):
    """A fresh clone has no runs/ and a new --output/--name does not exist: the one-shot makes its run folder,
    writes its file there and nothing else (no empty folder either)."""
    monkeypatch.chdir(tmp_path)
    flags, files = CASES[shot]
    where = ["--output", "new/deeper", "--name", "n"] if output == "new" else []
    assert main([*FAST, *where, *flags]) == 0
    run = "new/deeper/n" if output == "new" else "runs/exp"
    parents = [p.as_posix() for p in reversed(Path(run).parents) if p != Path(".")] + [run]
    assert set(_tree(tmp_path)) == ({*parents, *(f"{run}/{f}" for f in files)} if files else set())


@pytest.mark.parametrize("shot", WRITERS)
def test_a_one_shot_leaves_an_earlier_run_in_its_folder_untouched(tmp_path, monkeypatch, shot):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    for name in ("best.pt", "last.pt", "model.safetensors", "classes.json", "metrics.csv", "summary.json",
                 "config.yaml", "train.log", "curves.png", "predictions.png"):
        (run / name).write_bytes(f"the earlier run's {name}".encode())
    before = _tree(tmp_path)
    flags, files = CASES[shot]
    assert main([*FAST, *flags]) == 0
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {f"runs/exp/{f}" for f in files}


def _show_aug(tmp_path: Path, *flags: str) -> tuple:
    """Run --show-aug 6 in-process, seeded as kernel.train seeds it: (its result, the effective options)."""
    opts = effective_options(parse_options(small_args(tmp_path, "--show-aug", "6", "--name", "aug", *flags)))
    seed_everything(opts.seed, False)
    return ONE_SHOTS["show_aug"](opts), opts


def test_show_aug_titles_each_classification_sample_with_its_label(tmp_path):
    result, opts = _show_aug(tmp_path, "--data", "shapes", "--dry-run")
    split = prepare_data(opts, get_task(opts.task))
    assert result["titles"] == [split.classes[split.train[i][1]] for i in range(6)]
    assert Path(result["show_aug"]).is_file() and Path(result["show_aug"]).parent == tmp_path / "aug"


def test_show_aug_overlays_each_segmentation_mask_and_names_its_classes(tmp_path):
    """The masks reach the grid with the run's class colours (predictions.png's), and each tile is titled with the
    classes in its augmented mask; aug_tile's own test checks the colours land where the mask is."""
    result, opts = _show_aug(tmp_path, "--task", "segment", "--data", "shapes", "--model", "tu-test_resnet",
                             "--dry-run")
    split = prepare_data(opts, get_task("segment"))
    drawn = {"samples": result["tiles"], **result["drawing"]}
    assert drawn["colors"] == [list(c) for c in split.meta["colors"]] and drawn["names"] == split.classes
    masks = [torch.as_tensor(m) for _, m in drawn["samples"] if m is not None]
    assert len(masks) == 6 and any((m > 0).any() for m in masks)  # a crop may leave a tile without its shape
    for title, mask in zip(result["titles"], masks):
        present = [split.classes[k] for k in torch.unique(mask).tolist() if 0 < k < len(split.classes)]
        assert title == (", ".join(present) or "-"), (title, present)
    assert drawn["titles"] == result["titles"] and Path(result["show_aug"]).is_file()
