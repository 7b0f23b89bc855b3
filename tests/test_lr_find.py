"""The LR range test: ramp, smoothing, suggestion, and a find_lr that leaves no trace."""
from __future__ import annotations

import copy
import csv
import json
import math
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kernel.engine import StepConfig, create_optimizer
from kernel.errors import ConfigError
from kernel.config import parse_options
from kernel.run import effective_options, prepare
from kernel.run.lr_curve import BOTTOM_MARGIN, centred_mean, lr_schedule, plot_ylim, smooth, suggest_lr
from kernel.run.lr_find import find_lr, plot_lr_find
from kernel.train import main

from conftest import small_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")


# ---------------------------------------------------------------- pure maths


def test_lr_schedule_endpoints_and_geometric_spacing():
    lrs = lr_schedule(1e-4, 1.0, 5)
    assert lrs.shape == (5,) and lrs.dtype == np.float64
    assert lrs[0] == 1e-4 and lrs[-1] == 1.0  # exact endpoints
    np.testing.assert_allclose(lrs, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10.0, rtol=1e-12)  # constant ratio
    two = lr_schedule(1e-7, 10.0, 2)
    assert two.tolist() == [1e-7, 10.0]


@pytest.mark.parametrize("start,end,steps", [(0.0, 1.0, 10), (-1e-3, 1.0, 10), (1.0, 1.0, 10), (1e-3, 1e-4, 10),
                                             (1e-7, math.inf, 10), (1e-7, 10.0, 1), (1e-7, 10.0, 2.5)])
def test_lr_schedule_refuses_bad_ramps_in_one_line(start, end, steps):
    with pytest.raises(ConfigError) as e:
        lr_schedule(start, end, steps)
    assert "\n" not in str(e.value) and "lr_find" in str(e.value)


def test_smooth_matches_a_hand_worked_example():
    # beta 0.5: avg = .5, 1.25, 2.125; bias terms 1 - .5**k = .5, .75, .875 -> 1, 5/3, 17/7
    np.testing.assert_allclose(smooth([1.0, 2.0, 3.0], beta=0.5), [1.0, 5 / 3, 17 / 7], rtol=1e-12)
    np.testing.assert_allclose(smooth([4.0, 1.0, 7.0], beta=0.0), [4.0, 1.0, 7.0])  # no memory: the losses
    np.testing.assert_allclose(smooth([3.0] * 20, beta=0.98), 3.0, rtol=1e-12)  # bias correction: no pull to 0
    with pytest.raises(ConfigError):
        smooth([1.0], beta=1.0)


def test_centred_mean_is_hand_checked():
    np.testing.assert_allclose(centred_mean([1.0, 2.0, 3.0, 10.0], 1), [1.0, 2.0, 5.0, 10.0])  # ends: the values
    np.testing.assert_allclose(centred_mean([1.0, 2.0, 3.0, 4.0, 20.0], 2), [1.0, 2.0, 6.0, 9.0, 20.0])
    np.testing.assert_allclose(centred_mean([4.0, 1.0, 7.0], 0), [4.0, 1.0, 7.0])
    line = np.linspace(3.0, 1.0, 30)
    np.testing.assert_allclose(centred_mean(line, 4), line)  # no lag: a straight line stays where it is


GRID = np.geomspace(1e-6, 1.0, 100)  # 100 LRs, 6/99 decades apart
STEP = 6 / 99


def _descent(x_top: float, x_bottom: float, top: float = 2.0, bottom: float = 0.5, floor: float = 0.5,
             rise: float = 10.0):
    """Flat at ``top`` up to log10 lr = x_top, linear down to ``bottom`` at x_bottom, flat for ``floor`` decades,
    then a steep rise (divergence)."""
    x = np.log10(GRID)
    fall = top + (bottom - top) * np.clip((x - x_top) / (x_bottom - x_top), 0.0, 1.0)
    return np.where(x <= x_bottom + floor, fall, bottom + rise * (x - x_bottom - floor) ** 2)


def test_suggestion_lies_two_thirds_down_a_known_descent():
    s = suggest_lr(GRID, _descent(-5.0, -2.0))
    # 2.0 -> 0.5 over 3 decades: 2/3 of the way down (loss 1.0) is at log10 lr = -3, the first grid point at or
    # past it within a step; the bottom (on the floor at -2 .. -1.5) / 3 is higher.
    assert s.usable and -3.0 <= math.log10(s.lr) <= -3.0 + STEP, s
    assert -2.0 <= math.log10(GRID[s.bottom]) <= -1.5 and math.log10(GRID[s.top]) <= -5.0 + STEP
    assert "guess" not in s.note and s.curve.shape == GRID.shape


def test_suggestion_stays_a_factor_below_the_bottom_of_a_cliff():
    s = suggest_lr(GRID, _descent(-3.0, -2.7, floor=0.0))  # the whole fall within 0.3 decades, then divergence
    assert s.usable and abs(math.log10(GRID[s.bottom]) - (-2.7)) <= STEP
    assert s.lr == pytest.approx(GRID[s.bottom] / BOTTOM_MARGIN, rel=1e-12)  # 2/3 down would be next to the bottom


def test_suggestion_ignores_the_diverged_tail_and_the_first_points():
    lrs = np.geomspace(1e-5, 1.0, 60)
    loss = np.r_[np.linspace(2.0, 1.0, 31),  # a gentle fall to the minimum at index 30,
                 np.linspace(1.0, 3.0, 16)[1:],  # a rise (divergence),
                 np.linspace(3.0, 0.2, 11)[1:], np.full(4, 0.2)]  # and a deeper fall after it: not a descent to use
    s = suggest_lr(lrs, loss)
    assert s.usable and lrs[10] <= s.lr <= lrs[30] and s.bottom <= 31
    # A NaN ends the curve: nothing after it counts, however low.
    cut = np.r_[np.linspace(2.0, 1.0, 40), np.nan, np.full(19, 0.01)]
    s = suggest_lr(lrs, cut)
    assert s.curve.size == 40 and s.bottom < 40 and s.lr <= lrs[39]
    early = np.linspace(2.0, 1.0, 60)
    early[:5] = [9.0, 6.0, 3.0, 2.1, 2.05]  # the first points are noise around the start: skipped
    s = suggest_lr(lrs, early)
    assert s.start == 6 and s.top == 6 and s.lr >= lrs[10]


def test_suggestion_on_a_noisy_descent_and_on_noise_alone():
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal(100)
    s = suggest_lr(GRID, _descent(-4.0, -2.0, top=1.4, bottom=1.0, floor=0.0) + noise)  # a drop of 8 noise sigmas
    assert s.usable and 10 ** -3.6 <= s.lr <= 10 ** -2.4, s
    s = suggest_lr(GRID, 1.4 + noise)  # no descent, only noise: a guess, and it says so
    assert not s.usable and "guess" in s.note and GRID[0] <= s.lr <= GRID[-1]


def test_suggestion_without_a_descent_is_a_guess_in_the_ramp():
    lrs = np.geomspace(1e-3, 1e4, 8)  # one decade apart
    s = suggest_lr(lrs, np.linspace(1.0, 2.0, 8))  # rising from the start: lowest after the skip is lrs[1] ...
    assert not s.usable and s.bottom == 1 and "does not fall" in s.note
    assert s.lr == pytest.approx(lrs[1] / 10) and "starts to climb" in s.note  # ... and it climbs from lrs[1] on
    flat = suggest_lr(GRID, np.full(100, 1.3))
    assert not flat.usable and flat.lr == pytest.approx(GRID[flat.bottom] / 10) and "lowest loss" in flat.note
    tiny = suggest_lr(GRID, 1.3 - 1e-6 * np.arange(100))  # falls, but by a millionth: numerically flat
    assert not tiny.usable
    for losses in (np.full(8, np.nan), np.r_[1.0, 0.5, np.full(6, np.inf)]):  # fewer than 3 finite losses
        s = suggest_lr(lrs, losses)
        assert not s.usable and s.lr == lrs[0] and "guess" in s.note
    with pytest.raises(ValueError):
        suggest_lr(lrs, np.ones(7))


def test_the_20_step_shapes_curve_gets_a_trainable_guess_not_the_first_lr():
    """The losses --find-lr --find-lr-steps 20 saw on shapes with resnet18 (the old rule said 1e-07): the minimum of
    the running average was its first point. The fall at 2e-3..1e-2 is only three batches, so this is a guess: a
    tenth of the LR at which the loss starts to climb (1.1e-2, the last point before 3e-2), where training works."""
    lrs = lr_schedule(1e-7, 10.0, 20)
    loss = [1.430, 1.464, 1.578, 1.502, 1.389, 1.472, 1.440, 1.486, 1.442, 1.488, 1.400, 1.317, 1.297, 1.703,
            2.151, 2.026, 6.217, 3.256, 1.640, 8.983]
    s = suggest_lr(lrs, loss)
    assert s.lr == pytest.approx(lrs[12] / 10) and s.bottom == 11 and not s.usable, s
    lo, hi = plot_ylim(loss, s.curve, s.bottom)
    assert lo < 1.317 and 1.515 < hi < 1.8  # the lowest loss up to the bottom is 1.317; the spikes (to 9) are off the top


def test_plot_ylim_is_hand_checked():
    # lo: the lowest loss or curve value up to the bottom (1.0), hi: the highest curve value there (2.0)
    assert plot_ylim([2.0, 1.8, 1.0, 9.0, 50.0], [2.0, 1.6, 1.2, 20.0, 50.0], 2) == pytest.approx((0.9, 2.5))
    assert plot_ylim([1.0] * 4, [1.0] * 4, 3) == pytest.approx((0.995, 1.025))  # flat: 5 % of the value
    assert plot_ylim([np.nan] * 3, [], 0) == (0.0, 1.0)


# ---------------------------------------------------------------- find_lr on a tiny model


def _data(n: int = 64, seed: int = 0):
    """16 px random images; the label is whether the image is brighter than the median (learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) + torch.linspace(-0.5, 0.5, n)[torch.randperm(n, generator=g)].view(
        n, 1, 1, 1)
    y = (x.mean(dim=(1, 2, 3)) > x.mean(dim=(1, 2, 3)).median()).long()
    return torch.utils.data.TensorDataset(x, y)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Dropout(0.1), nn.Linear(8, 2))


def _loader(batch_size: int = 16) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_data(), batch_size=batch_size, shuffle=True)  # shuffling draws torch's RNG


def _two_group_sgd(model: nn.Sequential, lr: float = 0.01, backbone_mult: float = 0.1) -> torch.optim.Optimizer:
    groups = [{"params": list(model[:2].parameters()), "lr_mult": backbone_mult},
              {"params": list(model[-1].parameters()), "lr_mult": 1.0}]
    return create_optimizer("sgd", groups, lr, 0.9)


class _Spy:
    """A cross-entropy loss that records, per step, the groups' LRs, the train flag and whether weights moved."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, fail_at: int = -1):
        self.model, self.optimizer, self.fail_at = model, optimizer, fail_at
        self.start = copy.deepcopy(model.state_dict())
        self.lrs, self.training, self.moved = [], [], False

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if len(self.lrs) == self.fail_at:
            raise RuntimeError("boom")
        self.lrs.append([float(g["lr"]) for g in self.optimizer.param_groups])
        self.training.append(self.model.training)
        now = self.model.state_dict()
        self.moved = self.moved or any(not torch.equal(now[k], v) for k, v in self.start.items())
        return nn.functional.cross_entropy(logits, targets)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), torch.get_rng_state(),
            np.random.get_state()[1].copy(), random.getstate())


def _assert_same(before, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    sd, opt, rng, np_keys, py = before
    now = model.state_dict()
    assert now.keys() == sd.keys()
    for k, v in sd.items():  # BatchNorm's running stats and num_batches_tracked included
        assert torch.equal(now[k], v), k
    opt_now = optimizer.state_dict()
    assert [{k: v for k, v in g.items()} for g in opt_now["param_groups"]] == opt["param_groups"]
    assert opt_now["state"].keys() == opt["state"].keys()
    for i, s in opt["state"].items():
        assert torch.equal(opt_now["state"][i]["momentum_buffer"], s["momentum_buffer"])
    assert torch.equal(torch.get_rng_state(), rng)
    assert np.array_equal(np.random.get_state()[1], np_keys) and random.getstate() == py


def test_find_lr_suggests_inside_the_ramp_and_restores_everything():
    model = _model()
    opt = _two_group_sgd(model)
    loader = _loader()
    # One real step first, so the optimizer has momentum state that must come back unchanged.
    x, y = next(iter(loader))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()  # find_lr trains in train mode and hands the model back in eval mode
    before = _state(model, opt)
    spy = _Spy(model, opt)
    res = find_lr(model, loader, opt, StepConfig(spy, CPU), ramp=(1e-5, 1.0, 40))
    assert res["steps"] == 40 == len(res["lrs"]) == len(res["losses"]) == len(res["smoothed"])  # 4 batches, cycled
    assert not res["stopped_early"]
    np.testing.assert_allclose(res["lrs"], lr_schedule(1e-5, 1.0, 40))
    np.testing.assert_allclose(res["smoothed"], smooth(res["losses"], 0.98))
    assert math.isfinite(res["suggestion"]) and 1e-5 <= res["suggestion"] <= 1.0
    s = suggest_lr(res["lrs"], res["losses"])
    assert (res["suggestion"], res["usable"], res["note"], res["bottom"]) == (s.lr, s.usable, s.note, s.bottom)
    # During the ramp: train mode, the weights moved, the head got the ramp and the backbone 0.1 x it.
    assert all(spy.training) and spy.moved
    seen = np.array(spy.lrs)
    np.testing.assert_allclose(seen[:, 1], res["lrs"], rtol=1e-12)
    np.testing.assert_allclose(seen[:, 0] / seen[:, 1], 0.1, rtol=1e-12)
    # Afterwards: weights, BN statistics, optimizer state and LRs, RNGs, modes, gradients as before.
    _assert_same(before, model, opt)
    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("diverged", [False, True])
def test_plot_lr_find_writes_a_png(tmp_path, diverged):
    lrs, loss = GRID, _descent(-5.0, -2.0)
    if diverged:
        loss = np.r_[loss[:80], np.inf]  # the step that stopped the ramp
        lrs = lrs[:81]
    s = suggest_lr(lrs, loss)
    res = {"lrs": lrs, "losses": loss, "smoothed": smooth(loss, 0.98), "suggestion": s.lr, "usable": s.usable,
           "curve": s.curve, "bottom": s.bottom, "stopped_early": diverged, "steps": lrs.size}
    path = plot_lr_find(res, tmp_path / "lr_find.png")
    data = (tmp_path / "lr_find.png").read_bytes()
    assert path == str(tmp_path / "lr_find.png") and data[:8] == PNG_SIGNATURE and len(data) > 10_000
    with Image.open(tmp_path / "lr_find.png") as im:
        assert im.size == (700, 450)  # new_figure(7, 4.5) at save_figure's 100 dpi
        im.load()  # decodes: not a truncated file


def test_find_lr_keeps_the_ratio_of_groups_without_lr_mult():
    model = _model()
    opt = torch.optim.Adam([{"params": list(model[:2].parameters()), "lr": 3e-4},
                            {"params": list(model[-1].parameters()), "lr": 3e-3}])
    gen = torch.Generator().manual_seed(3)  # a loader with its own shuffling generator: put back too
    loader = torch.utils.data.DataLoader(_data(), batch_size=16, shuffle=True, generator=gen)
    gen_state = gen.get_state()
    before = _state(model, opt)
    spy = _Spy(model, opt)
    res = find_lr(model, loader, opt, StepConfig(spy, CPU), ramp=(1e-6, 1e-2, 12))
    assert torch.equal(gen.get_state(), gen_state)
    seen = np.array(spy.lrs)
    np.testing.assert_allclose(seen[:, 0], res["lrs"], rtol=1e-12)  # the first group carries the ramp
    np.testing.assert_allclose(seen[:, 1] / seen[:, 0], 10.0, rtol=1e-12)
    sd, _, rng, _, _ = before
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-3] and len(opt.state) == 0  # Adam state gone again
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items()) and torch.equal(torch.get_rng_state(), rng)


def test_find_lr_stops_early_when_the_loss_diverges():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _state(model, opt)
    res = find_lr(model, _loader(), opt, StepConfig(nn.CrossEntropyLoss(), CPU), ramp=(1e-3, 1e6, 80), beta=0.5)
    assert res["stopped_early"] and res["steps"] < 80
    sm = res["smoothed"]
    best = sm[:-1].min()
    assert not math.isfinite(sm[-1]) or sm[-1] > 4.0 * best  # the step that stopped it diverged ...
    assert np.all(sm[:-1] <= 4.0 * np.minimum.accumulate(sm[:-1]))  # ... and none before it did
    assert math.isfinite(res["suggestion"]) and 1e-3 <= res["suggestion"] <= 1e6
    _assert_same(before, model, opt)


def test_find_lr_restores_on_an_exception_and_the_scaler():
    model = _model()
    opt = _two_group_sgd(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)  # the scale grows every step
    scale_before = copy.deepcopy(scaler.state_dict())
    model.train()
    before = _state(model, opt)
    spy = _Spy(model, opt, fail_at=6)
    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, _loader(), opt, StepConfig(spy, CPU, scaler=scaler), ramp=(1e-7, 10.0, 30))
    assert len(spy.lrs) == 6 and spy.moved
    _assert_same(before, model, opt)
    assert scaler.state_dict() == scale_before and model.training
    res = find_lr(model, _loader(), opt, StepConfig(nn.CrossEntropyLoss(), CPU, scaler=scaler, clip_grad=1.0),
                  ramp=(1e-4, 1e-1, 8))
    assert res["steps"] == 8 and np.isfinite(res["losses"]).all()
    assert scaler.state_dict() == scale_before
    _assert_same(before, model, opt)


def test_find_lr_refuses_bad_settings_before_touching_anything():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs in (dict(diverge=1.0), dict(beta=1.5), dict(ramp=(1e-7, 10.0, 1))):
        with pytest.raises(ConfigError):
            find_lr(model, _loader(), opt, StepConfig(nn.CrossEntropyLoss(), CPU), **kwargs)
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 3, 16, 16),
                                                                       torch.zeros(0, dtype=torch.long)), batch_size=4)
    sd = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="no batch"):
        find_lr(model, empty, opt, StepConfig(nn.CrossEntropyLoss(), CPU), ramp=(1e-7, 10.0, 5))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


# ---------------------------------------------------------------- --find-lr on shapes


@pytest.mark.parametrize("steps", ["20", "100"])
def test_find_lr_on_shapes_suggests_an_lr_that_learns(tmp_path, capsys, steps):
    """The one-shot command on shapes: a suggestion above the ramp's first LR (the old rule answered 1e-07 on a
    20-step ramp), the picture and nothing else; two epochs at the suggested LR bring the validation loss well
    below chance (ln 4 for 4 balanced classes) and below the first epoch's."""
    assert main(small_args(tmp_path, "--find-lr", "--find-lr-steps", steps, "--seed", "0", "--name", "lrf")) == 0
    printed = capsys.readouterr().out
    lr = float(re.search(r"suggested LR: (\S+) ", printed).group(1))
    assert 1e-5 <= lr <= 1.0, printed
    assert (tmp_path / "lrf" / "lr_find.png").read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in (tmp_path / "lrf").iterdir()] == ["lr_find.png"]  # no weights, no run
    assert main(small_args(tmp_path, "--lr", str(lr), "--epochs", "2", "--seed", "0", "--aug", "none", "--name", "at",
                           "--no-tensorboard", "--no-plots")) == 0
    with open(tmp_path / "at" / "metrics.csv") as fh:
        val_loss = [float(r["val_loss"]) for r in csv.DictReader(fh)]
    assert val_loss[-1] < 0.8 * math.log(4) and val_loss[-1] < val_loss[0], (lr, val_loss)


def test_find_lr_says_when_its_number_is_a_guess(tmp_path, capsys):
    """A range test too short to show a descent (2 steps: suggest_lr needs 3 losses): a warning, and the printed
    line still gives a number and calls it a guess."""
    assert main(small_args(tmp_path, "--find-lr", "--find-lr-steps", "2", "--dry-run", "--name", "guess")) == 0
    out = capsys.readouterr()
    assert re.search(r"suggested LR: [0-9.e+-]+ \(only 2 finite losses: the first LR, a guess; 2 steps", out.out), out.out
    warning = [line for line in out.err.splitlines() if "--find-lr: the loss shows no clear descent" in line]
    assert len(warning) == 1 and "is a guess" in warning[0], out.err
    assert (tmp_path / "guess" / "lr_find.png").is_file()


def test_find_lr_leaves_a_prepared_run_untouched(tmp_path):
    p = prepare(effective_options(parse_options(small_args(tmp_path))))
    before = (copy.deepcopy(p.model.state_dict()), copy.deepcopy(p.optimizer.state_dict()), torch.get_rng_state())
    p.train_sampler.set_epoch(1)
    result = find_lr(p.model, p.train_loader, p.optimizer, StepConfig(p.loss_fn, p.device), ramp=(1e-7, 10.0, 20))
    assert result["steps"] >= 2
    assert all(torch.equal(v, p.model.state_dict()[k]) for k, v in before[0].items())
    assert p.optimizer.state_dict()["param_groups"] == before[1]["param_groups"]
    assert torch.equal(torch.get_rng_state(), before[2])
