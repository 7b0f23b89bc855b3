"""Checkpoints: atomic writes, weights_only loading, RNG round trips, unwrapped state dicts."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from kernel.engine import (RunIdentity, RunProgress, TrainingParts, export_safetensors, load_checkpoint, load_trained, make_checkpoint, read_checkpoint,
                           rng_state, save_checkpoint, set_rng_state, unwrap_model)
from kernel.paths import atomic_write
from kernel.errors import ConfigError


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def broken(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half a checkp")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, broken)
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_rng_state_round_trip_through_weights_only(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_unwrap_strips_wrappers_and_safetensors_export(tmp_path):
    model = nn.Linear(2, 3)
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    assert list(unwrap_model(wrapped).state_dict()) == ["weight", "bias"]
    export_safetensors(wrapped, ["a", "b", "c"], tmp_path / "model.safetensors", task="classify",
                       meta={"multilabel": False}, model_name="linear", in_chans=2)
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["bias", "weight"] and '"a"' in f.metadata()["classes"]
    assert (tmp_path / "classes.json").read_text().count('"') == 6
    trained = load_trained(tmp_path / "model.safetensors")
    assert trained["classes"] == ["a", "b", "c"] and trained["task"] == "classify"
    assert torch.equal(trained["model"]["weight"], model.weight.detach())


def test_checkpoint_schema_round_trip_and_refusals(tmp_path):
    model = nn.Linear(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = make_checkpoint(nn.DataParallel(model), RunIdentity("classify", ["a", "b", "c"], {"multilabel": False},
                                                            {"model": "x"}),
                           RunProgress(2, 0.5, 1, [{"epoch": 1}]), TrainingParts(optimizer=opt))
    save_checkpoint(ckpt, tmp_path / "last.pt")
    back = read_checkpoint(tmp_path / "last.pt")
    assert back["format"] == 3 and back["epoch"] == 2 and list(back["model"]) == ["weight", "bias"]
    assert back["position"] == {"epoch": 2, "batch": 0, "partial": None} and back["world_size"] == 1
    # Format 1 (kernel 0.1.0) is read as format 3, at the end of its last epoch.
    save_checkpoint({"model": model.state_dict(), "classes": ["a"], "multilabel": True, "epoch": 1,
                     "options": {}}, tmp_path / "v1.pt")
    v1 = read_checkpoint(tmp_path / "v1.pt")
    assert v1["task"] == "classify" and v1["meta"] == {"multilabel": True} and v1["position"]["epoch"] == 1
    save_checkpoint({**ckpt, "format": 99}, tmp_path / "future.pt")
    with pytest.raises(ConfigError, match="newer than this bundle"):
        read_checkpoint(tmp_path / "future.pt")
    save_checkpoint({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a kernel.train checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def _tensor_bytes(x) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_tensor_bytes(v) for v in x.values())
    return 0


def test_best_pt_holds_what_prediction_needs_not_the_training_state(tmp_path, capsys):
    """best.pt: weights, EMA, classes, options and metrics, no optimizer moments (issue 20, item 10); last.pt
    keeps everything a resume needs, and a resume from best.pt is refused in one line."""
    from safetensors.torch import load_file

    from conftest import small_args
    from kernel.train import main

    args = small_args(tmp_path, "--dry-run", "--ema", "0.9", "--name", "e", "--no-tensorboard", "--no-plots")
    assert main(args) == 0
    run = tmp_path / "e"
    best, last = read_checkpoint(run / "best.pt"), read_checkpoint(run / "last.pt")
    assert all(best[k] is None for k in ("optimizer", "schedule", "scaler", "rng", "rng_ranks"))
    assert last["optimizer"] is not None and last["rng"] is not None
    assert best["classes"] == last["classes"] and best["options"] == last["options"]
    assert best["epoch"] == best["best_epoch"] == last["best_epoch"]
    assert best["history"] == last["history"][:best["epoch"]]
    weights = _tensor_bytes(best["model"]) + _tensor_bytes(best["ema"])
    assert (run / "best.pt").stat().st_size < weights + 2**20 < (run / "last.pt").stat().st_size
    exported = load_file(run / "model.safetensors")  # prediction uses the EMA weights, as before
    assert all(torch.equal(exported[k], v) for k, v in load_trained(run / "best.pt")["model"].items())
    capsys.readouterr()
    assert main(args + ["--resume", str(run / "best.pt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "holds the weights only" in err and "last.pt" in err, err
