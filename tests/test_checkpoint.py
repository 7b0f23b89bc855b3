"""Checkpoints: atomic writes, weights_only loading, RNG round trips, unwrapped state dicts."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from kernel.checkpoint import (atomic_write, export_safetensors, load_checkpoint, rng_state, save_checkpoint,
                               set_rng_state, unwrap_model)


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
    export_safetensors(wrapped, ["a", "b", "c"], tmp_path / "model.safetensors")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["bias", "weight"] and '"a"' in f.metadata()["classes"]
    assert (tmp_path / "classes.json").read_text().count('"') == 6
