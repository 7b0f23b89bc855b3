"""Checkpoints: atomic writes, weights_only loading, RNG round trips, unwrapped state dicts."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from kernel.engine import (export_safetensors, load_checkpoint, load_trained, make_checkpoint, read_checkpoint,
                           rng_state, save_checkpoint, set_rng_state, unwrap_model)
from kernel.paths import atomic_write
from kernel.registry import ConfigError


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
    ckpt = make_checkpoint(model=nn.DataParallel(model), task="classify", classes=["a", "b", "c"],
                           meta={"multilabel": False}, options={"model": "x"}, epoch=2, best_metric=0.5,
                           best_epoch=1, history=[{"epoch": 1}], optimizer=opt)
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
