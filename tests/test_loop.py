"""The AMP loop: CPU autocast, GradScaler skips, accumulation maths, clipping after unscale."""
import warnings

import pytest
import torch
from torch import nn

from kernel.engine import StepConfig, evaluate, make_scaler, resolve_amp_dtype, train_one_epoch
from kernel.tasks.classify import ClassifyMeter, accuracy

CPU = torch.device("cpu")


def _batches(n=3, bs=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 5, generator=g), torch.randint(0, classes, (bs,), generator=g)) for _ in range(n)]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(5, 3)


def test_amp_dtype_rules():
    assert resolve_amp_dtype(CPU, False) is None
    assert resolve_amp_dtype(CPU, True, "auto") == torch.bfloat16
    assert resolve_amp_dtype(CPU, True, "fp16") == torch.float16
    assert make_scaler(CPU, torch.bfloat16) is None
    assert isinstance(make_scaler(CPU, torch.float16), torch.amp.GradScaler)


def test_amp_path_on_cpu_runs_in_bf16():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = train_one_epoch(model, _batches(), opt, StepConfig(nn.CrossEntropyLoss(), CPU, amp_dtype=torch.bfloat16))
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert torch.isfinite(torch.tensor(m.loss)) and m.updates == 3
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


class _CountingSchedule:
    def __init__(self):
        self.updates = 0

    def step_update(self):
        self.updates += 1


def test_skipped_fp16_step_does_not_advance_the_schedule():
    from kernel.schedule import create_scheduler

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = create_scheduler("onecycle", opt, epochs=1, steps_per_epoch=3)
    scaler = torch.amp.GradScaler("cpu")
    poisoned = {"n": 0}

    def loss_fn(logits, target):  # the first batch's gradient is inf
        poisoned["n"] += 1
        loss = nn.functional.cross_entropy(logits, target)
        return loss * float("inf") if poisoned["n"] == 1 else loss

    before = [p.detach().clone() for p in model.parameters()]
    lrs_by_hand = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's "scheduler before optimizer" warning would raise
        m = train_one_epoch(model, _batches(), opt, StepConfig(loss_fn, CPU, amp_dtype=torch.float16, scaler=scaler,
                                                               schedule=sched))
    assert m.skipped_steps == 1 and m.updates == 2
    ref = torch.optim.SGD(_model().parameters(), lr=0.1)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.1, total_steps=3)
    for _ in range(2):
        ref.step()
        ref_sched.step()
        lrs_by_hand.append(ref.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs_by_hand[-1])  # advanced twice, not three times
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_accumulation_equals_the_big_batch_and_weights_the_short_group():
    batches = _batches(n=3)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train_one_epoch(model, batches, opt, StepConfig(nn.CrossEntropyLoss(), CPU, accum_steps=2))
    # By hand: update 1 on the mean loss of batches 1-2 (one batch of 8), update 2 on batch 3 alone.
    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for xs, ys in ((torch.cat([batches[0][0], batches[1][0]]), torch.cat([batches[0][1], batches[1][1]])),
                   batches[2]):
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(xs), ys).backward()
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_clipping_happens_on_unscaled_gradients():
    batches = _batches(n=1)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        train_one_epoch(model, batches, opt, StepConfig(nn.CrossEntropyLoss(), CPU, scaler=scaler, clip_grad=0.01))
        results.append([p.detach().clone() for p in model.parameters()])
    ref = _model()
    nn.functional.cross_entropy(ref(batches[0][0]), batches[0][1]).backward()
    norm = torch.norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    expected = [p - p.grad * (0.01 / (norm + 1e-6)) for p in ref.parameters()]
    for got in results:
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-6)


def test_accuracy_topk_and_multilabel():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    assert accuracy(logits, torch.tensor([1, 2]), 1).item() == 1
    assert accuracy(logits, torch.tensor([1, 0]), 2).item() == 1
    multi = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    assert accuracy(multi, torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])).item() == 1


def test_evaluate_reports_top5_and_outputs():
    torch.manual_seed(0)
    model = nn.Linear(5, 7)
    batches = [(torch.randn(4, 5), torch.randint(0, 7, (4,))) for _ in range(2)]
    m = evaluate(model, batches, StepConfig(nn.CrossEntropyLoss(), CPU), meter=ClassifyMeter(keep_outputs=True)).summary()
    assert {"loss", "acc1", "acc5", "img_per_s"} <= set(m)
    assert m["probs"].shape == (8, 7) and torch.allclose(m["probs"].sum(1), torch.ones(8))
    logits = model(torch.cat([b[0] for b in batches]))
    targets = torch.cat([b[1] for b in batches])
    assert m["acc1"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())  # a fraction
