"""LR schedules: every name runs, exact torch sequences, hand-worked values, stepping, resume, preview."""
from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as tls

from kernel.schedule import compile_lr_expr, eval_lr_expr
from kernel.errors import ConfigError
from kernel.schedule import SCHEDULERS, create_scheduler, format_lr_table, preview_lr

ALL_NAMES = ["step", "multistep", "exponential", "cosine", "cosine_restarts", "plateau", "cyclic", "onecycle",
             "constant", "linear", "polynomial", "lambda", "multiplicative", "sequential", "chained",
             "step_decay", "none"]
LR = 0.1
E, S = 6, 4  # epochs, optimizer updates per epoch


def make_opt(lr: float = LR, kind: str = "sgd") -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(3))]
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def drive(schedule, opt, epochs: int = E, spe: int = S, metrics=None) -> list:
    """The loop's protocol: LR used by every update; step_update after it; step_epoch after 'validation'."""
    lrs = []
    for e in range(epochs):
        for _ in range(spe):
            lrs.append(schedule.get_last_lr()[0])
            opt.step()  # no grads: a no-op that still marks the optimizer as stepped
            schedule.step_update()
        schedule.step_epoch(None if metrics is None else metrics[e])
    return lrs


def drive_torch(sched, opt, per_update: bool, epochs: int = E, spe: int = S) -> list:
    """The same torch class driven by hand, the textbook way."""
    lrs = []
    for _ in range(epochs):
        for _ in range(spe):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_update:
                sched.step()
        if not per_update:
            sched.step()
    return lrs


def test_registry_has_all_17_names():
    assert sorted(SCHEDULERS.names()) == sorted(ALL_NAMES)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_name_builds_and_runs_a_full_run(name):
    opt = make_opt()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedule = create_scheduler(name, opt, epochs=E, steps_per_epoch=S)
        lrs = drive(schedule, opt, metrics=[0.5] * E)
    assert schedule.interval == ("step" if name in ("onecycle", "cyclic") else "epoch")  # auto
    assert len(lrs) == E * S and all(math.isfinite(v) and v >= 0 for v in lrs)
    assert isinstance(schedule.get_last_lr(), list) and isinstance(schedule.get_last_lr()[0], float)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_per_group_lrs_keep_their_ratio(name):
    # --backbone-lr-mult gives the backbone its own group: every schedule must scale both alike.
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01},
                           {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=LR, momentum=0.9)
    schedule = create_scheduler(name, opt, epochs=E, steps_per_epoch=S, warmup_steps=2)
    for e in range(E):
        for _ in range(S):
            low, high = schedule.get_last_lr()
            assert low == pytest.approx(high / 10, rel=1e-9, abs=1e-15)
            opt.step()
            schedule.step_update()
        schedule.step_epoch(0.5)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_cli_dry_run(name, tmp_path):
    from kernel.train import main

    argv = ["--dry-run", "--data", "shapes", "--model", "test_resnet", "--img-size", "32", "--epochs", "2",
            "--workers", "0", "--device", "cpu", "--sched", name, "--output", str(tmp_path), "--name", name,
            "--no-tensorboard", "--no-plots"]  # the schedule is under test, not the pictures
    assert main(argv) == 0


# name -> (torch class and kwargs written out from the documented defaults for E=6, S=4, LR=0.1, per_update)
EXACT = {
    "step": (tls.StepLR, dict(step_size=2, gamma=0.1), False),
    "multistep": (tls.MultiStepLR, dict(milestones=[3, 4], gamma=0.1), False),
    "exponential": (tls.ExponentialLR, dict(gamma=0.01 ** (1 / 6)), False),
    "cosine": (tls.CosineAnnealingLR, dict(T_max=6, eta_min=0.0), False),
    "cosine_restarts": (tls.CosineAnnealingWarmRestarts, dict(T_0=2, T_mult=1), False),
    "cyclic": (tls.CyclicLR, dict(base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=True), True),
    "onecycle": (tls.OneCycleLR, dict(max_lr=0.1, total_steps=24), True),
    "constant": (tls.ConstantLR, dict(factor=1 / 3, total_iters=1), False),
    "linear": (tls.LinearLR, dict(start_factor=1.0, end_factor=0.0, total_iters=6), False),
    "polynomial": (tls.PolynomialLR, dict(total_iters=6, power=0.9), False),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_sequence_matches_torch_class_with_the_documented_defaults(name):
    cls, kwargs, per_update = EXACT[name]
    opt = make_opt()
    ours = drive(create_scheduler(name, opt, epochs=E, steps_per_epoch=S), opt)
    ref_opt = make_opt()
    ref = drive_torch(cls(ref_opt, **kwargs), ref_opt, per_update)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    if name == "onecycle":  # ours holds at total_steps - 1 (its end); torch's extra step extrapolates past it
        assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    else:  # momentum cycling (cyclic) follows torch too
        assert opt.param_groups[0]["momentum"] == pytest.approx(ref_opt.param_groups[0]["momentum"])


@pytest.mark.parametrize("name,cls,kwargs", [
    ("cosine", tls.CosineAnnealingLR, dict(T_max=E * S)),
    ("linear", tls.LinearLR, dict(start_factor=1.0, end_factor=0.0, total_iters=E * S)),
    ("polynomial", tls.PolynomialLR, dict(total_iters=E * S, power=0.9)),
])
def test_per_update_lengths_are_in_updates(name, cls, kwargs):
    opt = make_opt()
    schedule = create_scheduler(name, opt, epochs=E, steps_per_epoch=S, interval="step")
    assert schedule.interval == "step"
    ref_opt = make_opt()
    assert drive(schedule, opt) == pytest.approx(drive_torch(cls(ref_opt, **kwargs), ref_opt, True))


def test_sequential_and_chained_with_explicit_parts_match_torch():
    parts = [{"name": "linear", "start_factor": 0.1, "total_iters": 2}, {"name": "cosine"}]
    opt = make_opt()
    ours = drive(create_scheduler("sequential", opt, epochs=E, steps_per_epoch=S, schedulers=parts, milestones=[2]),
                 opt)
    ref_opt = make_opt()
    ref = tls.SequentialLR(ref_opt, [tls.LinearLR(ref_opt, start_factor=0.1, end_factor=1.0, total_iters=2),
                                     tls.CosineAnnealingLR(ref_opt, T_max=E - 2)], milestones=[2])
    assert ours == pytest.approx(drive_torch(ref, ref_opt, False))

    parts = [{"name": "constant", "factor": 0.5, "total_iters": 2}, {"name": "exponential", "gamma": 0.9}]
    opt = make_opt()
    ours = drive(create_scheduler("chained", opt, epochs=E, steps_per_epoch=S, schedulers=parts), opt)
    ref_opt = make_opt()
    ref = tls.ChainedScheduler([tls.ConstantLR(ref_opt, factor=0.5, total_iters=2),
                                tls.ExponentialLR(ref_opt, gamma=0.9)], ref_opt)
    assert ours == pytest.approx(drive_torch(ref, ref_opt, False))


def test_step_decay_is_the_notes_formula_over_100_epochs():
    opt = make_opt()
    lrs = drive(create_scheduler("step_decay", opt, epochs=100, steps_per_epoch=1), opt, epochs=100, spe=1)
    assert lrs == pytest.approx([LR * 0.1 ** (e // 30) for e in range(100)], rel=1e-12)
    opt = make_opt()
    lrs = drive(create_scheduler("step_decay", opt, epochs=10, steps_per_epoch=1, decay_every=4, decay_rate=0.5),
                opt, epochs=10, spe=1)
    assert lrs == pytest.approx([LR * 0.5 ** (e // 4) for e in range(10)])


def test_warmup_then_per_update_cosine_hand_worked():
    # 4 warmup updates at LR*(k+1)/5, then cosine over the remaining 24 - 4 = 20 updates.
    opt = make_opt()
    lrs = drive(create_scheduler("cosine", opt, epochs=E, steps_per_epoch=S, interval="step", warmup_steps=4), opt)
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[3] == pytest.approx(0.08)
    assert lrs[4] == pytest.approx(0.1)  # warmup lands exactly on the cosine's start
    assert lrs[14] == pytest.approx(0.05)  # cosine midpoint: 10 of 20 updates
    assert lrs[-1] == pytest.approx(0.1 * (1 + math.cos(math.pi * 19 / 20)) / 2)


def test_warmup_epochs_become_updates_in_front_of_a_per_epoch_cosine():
    opt = make_opt()
    schedule = create_scheduler("cosine", opt, epochs=E, steps_per_epoch=S, warmup_epochs=1)
    assert schedule.interval == "epoch" and schedule.warmup_steps == S
    lrs = drive(schedule, opt)
    assert lrs[:S] == pytest.approx([0.1 * (k + 1) / (S + 1) for k in range(S)])
    per_epoch = [lrs[i * S] for i in range(1, E)]  # cosine over the remaining 5 epochs
    assert per_epoch == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])


def test_onecycle_with_uneven_accumulation_ends_at_its_final_lr():
    batches, accum, epochs = 10, 3, 3
    spe = math.ceil(batches / accum)  # 4 updates: 3 + 3 + 3 + 1
    opt = make_opt()
    schedule = create_scheduler("onecycle", opt, epochs=epochs, steps_per_epoch=spe)
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(epochs):
            for b in range(batches):
                if (b + 1) % accum == 0 or b == batches - 1:
                    used.append(schedule.get_last_lr()[0])
                    opt.step()
                    schedule.step_update()
            schedule.step_epoch(0.5)
        for _ in range(5):  # stepping past the end holds the LR instead of raising "Tried to step"
            schedule.step_update()
    final = LR / 25 / 1e4
    assert len(used) == 12 and used[-1] == pytest.approx(final)
    assert schedule.get_last_lr()[0] == pytest.approx(final)
    assert max(used) == pytest.approx(LR, rel=0.05)


@pytest.mark.parametrize("mode,metrics", [
    ("max", [0.5, 0.6, 0.6, 0.55, 0.6, 0.6, 0.6, 0.6]),  # val_acc: stalls after epoch 1
    ("min", [1.0, 0.8, 0.8, 0.9, 0.8, 0.8, 0.8, 0.8]),  # val_loss: stalls after epoch 1
])
def test_plateau_lowers_lr_after_patience(mode, metrics):
    opt = make_opt()
    schedule = create_scheduler("plateau", opt, epochs=8, steps_per_epoch=1, monitor_mode=mode, patience=2,
                                factor=0.5)
    lrs = drive(schedule, opt, epochs=8, spe=1, metrics=metrics)
    # epochs 2, 3, 4 do not improve on 0.6/0.8; after the 3rd (> patience=2) the LR halves; then 3 more.
    assert lrs == pytest.approx([0.1] * 5 + [0.05] * 3)
    with pytest.raises(ConfigError, match="mode"):
        create_scheduler("plateau", make_opt(), epochs=8, steps_per_epoch=1, monitor_mode=mode,
                         mode="min" if mode == "max" else "max")


def test_plateau_with_warmup_waits_for_the_warmup():
    opt = make_opt()
    schedule = create_scheduler("plateau", opt, epochs=6, steps_per_epoch=2, warmup_epochs=1, patience=0)
    lrs = drive(schedule, opt, epochs=6, spe=2, metrics=[0.5] * 6)
    # warmup: 1/3, 2/3 of LR; epoch 1 at LR (its metric is the first plateau sees); then x0.1 per epoch
    assert lrs == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])


def _loop_update(model, opt, scaler, schedule, poison: bool) -> bool:
    """One fp16-style update as kernel/loop.py does it; returns whether the optimizer really stepped."""
    loss = model(torch.ones(2, 3)).sum()
    scaler.scale(loss).backward()
    if poison:
        model.weight.grad[0, 0] = float("inf")
    before = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    stepped = scaler.get_scale() >= before
    if stepped:
        schedule.step_update()
    return stepped


def test_gradscaler_skipped_step_does_not_advance_and_nothing_warns():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    schedule = create_scheduler("cosine", opt, epochs=2, steps_per_epoch=4, interval="step")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _loop_update(model, opt, scaler, schedule, poison=True)  # the very first update is skipped
        assert schedule.get_last_lr()[0] == pytest.approx(LR)
        assert _loop_update(model, opt, scaler, schedule, poison=False)
        assert schedule.get_last_lr()[0] == pytest.approx(0.05 * (1 + math.cos(math.pi / 8)))
        schedule.step_epoch(0.5)  # per-update schedule: epoch end changes nothing
        assert schedule.get_last_lr()[0] == pytest.approx(0.05 * (1 + math.cos(math.pi / 8)))

    # A per-epoch schedule whose first epoch had every update skipped: no "before optimizer.step()" warning.
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    schedule = create_scheduler("step", opt, epochs=4, steps_per_epoch=2, step_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not any(_loop_update(model, opt, scaler, schedule, poison=True) for _ in range(2))
        schedule.step_epoch(0.5)
    assert schedule.get_last_lr()[0] == pytest.approx(LR * 0.1)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in ALL_NAMES] + [
    ("cosine", dict(interval="step", warmup_steps=5)),
    ("cosine", dict(warmup_epochs=2)),
    ("onecycle", dict(warmup_steps=3)),
    ("lambda", dict(lr_lambda="max(0.1, 1 - step / 30)")),
])
@pytest.mark.parametrize("cut", [3, 13])  # mid-warmup (where there is one) and mid-schedule
def test_resume_continues_exactly_through_weights_only_checkpoint(name, kwargs, cut):
    opt = make_opt(kind="adamw" if name == "onecycle" else "sgd")
    full = drive(create_scheduler(name, opt, epochs=E, steps_per_epoch=S, **kwargs), opt, metrics=[0.5] * E)

    opt = make_opt(kind="adamw" if name == "onecycle" else "sgd")
    schedule = create_scheduler(name, opt, epochs=E, steps_per_epoch=S, **kwargs)
    lrs, n = [], 0
    for e in range(E):
        for _ in range(S):
            if n == cut:  # a fresh optimizer and schedule, as a resumed process builds them
                state = _roundtrip(schedule.state_dict())
                opt = make_opt(kind="adamw" if name == "onecycle" else "sgd")
                schedule = create_scheduler(name, opt, epochs=E, steps_per_epoch=S, **kwargs)
                schedule.load_state_dict(state)
            lrs.append(schedule.get_last_lr()[0])
            opt.step()
            schedule.step_update()
            n += 1
        schedule.step_epoch(0.5)
    assert lrs == pytest.approx(full, rel=1e-12, abs=1e-15)


def test_user_file_lambda_and_its_checkpoint(tmp_path):
    src = tmp_path / "my_sched.py"
    src.write_text("def halve(epoch):\n    return 0.5 ** epoch\n")
    opt = make_opt()
    schedule = create_scheduler("lambda", opt, epochs=4, steps_per_epoch=1, lr_lambda=f"{src}:halve")
    assert drive(schedule, opt, epochs=4, spe=1) == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    _roundtrip(schedule.state_dict())


def test_lambda_formulas_in_epoch_and_step():
    opt = make_opt()
    lrs = drive(create_scheduler("lambda", opt, epochs=E, steps_per_epoch=S, lr_lambda="0.5 ** epoch"), opt)
    assert lrs == pytest.approx([LR * 0.5 ** (i // S) for i in range(E * S)])
    opt = make_opt()
    schedule = create_scheduler("lambda", opt, epochs=E, steps_per_epoch=S, lr_lambda="1 / (1 + step)")
    assert schedule.interval == "step"  # a formula in `step` steps per update
    assert drive(schedule, opt) == pytest.approx([LR / (1 + i) for i in range(E * S)])
    opt = make_opt()  # per epoch, `step` is the update count at the epoch's start
    lrs = drive(create_scheduler("lambda", opt, epochs=E, steps_per_epoch=S, interval="epoch",
                                 lr_lambda="1 / (1 + step)"), opt)
    assert lrs == pytest.approx([LR / (1 + S * (i // S)) for i in range(E * S)])
    opt = make_opt()
    lrs = drive(create_scheduler("multiplicative", opt, epochs=4, steps_per_epoch=1, lr_lambda="0.9"), opt, 4, 1)
    assert lrs == pytest.approx([LR * 0.9 ** e for e in range(4)])


@pytest.mark.parametrize("text", [
    "__import__('os').system('x')", "epoch.__class__", "().__class__.__bases__", "open('x')", "exp(epoch)",
    "x + 1", "'a' * 3", "[1][0]", "epoch if epoch else 1", "lambda: 1", "min(epoch, key=abs)", "True + epoch",
    "epoch < 3", "cos.__globals__", "",
])
def test_evaluator_refuses_code(text):
    with pytest.raises(ConfigError):
        compile_lr_expr(text)
    with pytest.raises(ConfigError):
        create_scheduler("lambda", make_opt(), epochs=3, steps_per_epoch=2, lr_lambda=text)


def test_evaluator_arithmetic_and_runtime_errors():
    env = {"epoch": 3.0, "step": 30.0}
    for text, value in [("0.95 ** epoch", 0.95 ** 3), ("max(0.1, 1 - epoch / 10)", 0.7), ("-epoch % 4 + 1", 2.0),
                        ("cos(pi * epoch / 6)", math.cos(math.pi / 2)), ("step // 7 * 2", 8.0), ("min(1, 2, 3)", 1)]:
        assert eval_lr_expr(compile_lr_expr(text), env) == pytest.approx(value, abs=1e-12)
    for text in ["1 / epoch", "10 ** 10 ** 10", "(-1) ** 0.5"]:
        with pytest.raises(ConfigError):
            create_scheduler("lambda", make_opt(), epochs=3, steps_per_epoch=2, lr_lambda=text)


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match=r"Did you mean 'cosine'.*Known:.*onecycle"):
        create_scheduler("cosin", make_opt(), epochs=3, steps_per_epoch=2)
    with pytest.raises(ConfigError, match=r"'cosine' does not take T_maxx.*Did you mean 'T_max'.*accepts: T_max"):
        create_scheduler("cosine", make_opt(), epochs=3, steps_per_epoch=2, T_maxx=3)
    with pytest.raises(ConfigError, match=r"'step' cannot step per optimizer update: it counts step_size in epochs"):
        create_scheduler("step", make_opt(), epochs=3, steps_per_epoch=2, interval="step")
    for name in ("multistep", "exponential", "plateau", "step_decay"):
        with pytest.raises(ConfigError, match="cannot step per optimizer update"):
            create_scheduler(name, make_opt(), epochs=3, steps_per_epoch=2, interval="step")
    with pytest.raises(ConfigError, match="'cyclic' cannot step per epoch"):
        create_scheduler("cyclic", make_opt(), epochs=3, steps_per_epoch=2, interval="epoch")
    with pytest.raises(ConfigError, match=r"sequential \(its part 'step'\)"):
        create_scheduler("sequential", make_opt(), epochs=3, steps_per_epoch=2, schedulers=["step", "cyclic"])
    with pytest.raises(ConfigError, match="cannot contain 'plateau'"):
        create_scheduler("sequential", make_opt(), epochs=3, steps_per_epoch=2, schedulers=["linear", "plateau"])
    with pytest.raises(ConfigError, match=r"sequential -> cosine.*does not take gamma"):
        create_scheduler("sequential", make_opt(), epochs=3, steps_per_epoch=2,
                         schedulers=[{"name": "cosine", "gamma": 2}])
    with pytest.raises(ConfigError, match="leaves nothing"):
        create_scheduler("cosine", make_opt(), epochs=3, steps_per_epoch=2, warmup_epochs=3)
    with pytest.raises(ConfigError, match="not both"):
        create_scheduler("cosine", make_opt(), epochs=3, steps_per_epoch=2, warmup_epochs=1, warmup_steps=1)
    with pytest.raises(ConfigError, match="whole number"):
        create_scheduler("step", make_opt(), epochs=3, steps_per_epoch=2, step_size=1.5)
    with pytest.raises(ConfigError, match=r"T_max=0 must be a whole number >= 1"):
        create_scheduler("cosine", make_opt(), epochs=3, steps_per_epoch=2, T_max=0)
    with pytest.raises(ConfigError, match="scheduler 'linear' refused"):  # torch's own check, as a ConfigError
        create_scheduler("linear", make_opt(), epochs=3, steps_per_epoch=2, start_factor=2.0)
    schedule = create_scheduler("cosine", make_opt(), epochs=3, steps_per_epoch=2)
    with pytest.raises(ConfigError, match="--resume"):
        schedule.load_state_dict(create_scheduler("step", make_opt(), epochs=3, steps_per_epoch=2).state_dict())


@pytest.mark.parametrize("name,kwargs", [("onecycle", {}), ("plateau", {}), ("cosine", dict(warmup_epochs=1))])
def test_preview_writes_png_and_table_and_restores_the_schedule(name, kwargs, tmp_path):
    opt = make_opt()
    schedule = create_scheduler(name, opt, epochs=E, steps_per_epoch=S, **kwargs)
    before = schedule.get_last_lr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = preview_lr(schedule, opt, epochs=E, steps_per_epoch=S, path=tmp_path)
    png = tmp_path / "lr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert [r[0] for r in rows] == list(range(1, E + 1)) and all(len(r) == 3 for r in rows)
    table = format_lr_table(rows)
    assert table.splitlines()[0].split() == ["epoch", "lr_start", "lr_end"] and len(table.splitlines()) == E + 1
    assert schedule.get_last_lr() == before  # the real run starts from the beginning
    ref_opt = make_opt()
    ref = drive(create_scheduler(name, ref_opt, epochs=E, steps_per_epoch=S, **kwargs), ref_opt, metrics=[0.5] * E)
    assert drive(schedule, opt, metrics=[0.5] * E) == pytest.approx(ref)
    # The table's numbers are the LR of each epoch's first and last update in a real run.
    # Explicit per-element tolerances: pytest.approx does not compare nested sequences.
    for (epoch, start, end) in rows:
        assert start == pytest.approx(ref[(epoch - 1) * S], rel=1e-12, abs=1e-15), epoch  # epochs count from 1
        assert end == pytest.approx(ref[(epoch - 1) * S + S - 1], rel=1e-12, abs=1e-15), epoch
