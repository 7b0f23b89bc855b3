"""EMA of the weights and Mixup/CutMix in the training loop, checked against hand computations and timm itself."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from timm.data import Mixup
from torch import nn

from kernel.config import parse_options
from kernel.data import DataSplit
from kernel.engine import StepConfig, create_ema, train_one_epoch
from kernel.losses import create_loss
from kernel.run.prepare import prepare_mixing
from kernel.tasks import get_task
from kernel.train import main

from conftest import small_args


def _error(stderr: str) -> str:
    """The one line a user error prints (log lines aside), or a failure when there is more (a traceback)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def _batches(n: int = 3, size: int = 8, classes: int = 3) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


def test_ema_after_three_steps_equals_the_hand_computed_average():
    decay = 0.9
    model = _model()
    reference = copy.deepcopy(model)  # trained by hand, its weights recorded after every step
    ema = create_ema(model, decay)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_one_epoch(model.train(), _batches(), optimizer, StepConfig(nn.CrossEntropyLoss(), torch.device("cpu"), ema=ema))

    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)
    average = {k: v.clone() for k, v in reference.state_dict().items()}  # the average starts as the weights
    reference.train()
    for images, targets in _batches():
        ref_opt.zero_grad()
        nn.functional.cross_entropy(reference(images), targets).backward()
        ref_opt.step()
        for k, v in reference.state_dict().items():
            average[k] = decay * average[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
    got = ema.module.state_dict()
    for k, v in average.items():  # BatchNorm's running statistics too
        assert torch.allclose(got[k], v, atol=1e-6, rtol=1e-5), k
    assert any(not torch.allclose(got[k], v) for k, v in model.state_dict().items() if v.is_floating_point())


def _split(classes: int = 3, multilabel: bool = False) -> DataSplit:
    return DataSplit(None, None, [f"c{i}" for i in range(classes)], multilabel)


class _Spy(nn.Module):
    """A model that records the batches it is given."""

    def __init__(self, classes: int):
        super().__init__()
        self.head = nn.Linear(3, classes)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("flags, timm_kwargs", [
    (["--mixup", "0.4"], dict(mixup_alpha=0.4, cutmix_alpha=0.0)),
    (["--cutmix", "1.0"], dict(mixup_alpha=0.0, cutmix_alpha=1.0)),
    (["--mixup", "0.2", "--cutmix", "1.0", "--mixup-switch-prob", "0.7", "--mixup-prob", "0.6"],
     dict(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.7, prob=0.6)),
    (["--mixup", "0.8", "--label-smoothing", "0.1"], dict(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)),
])
def test_mixed_batches_and_targets_are_timms(flags, timm_kwargs):
    opts = parse_options(["--batch-size", "8", *flags])
    loss_seen = []

    def loss(logits, targets):
        loss_seen.append(targets.clone())
        return nn.functional.cross_entropy(logits, targets)

    mix = prepare_mixing(opts, get_task("classify"), _split(), create_loss("ce"))
    model = _Spy(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    np.random.seed(0)
    train_one_epoch(model, _batches(4), optimizer, StepConfig(loss, torch.device("cpu"), mix=mix))

    reference = Mixup(**{"prob": 1.0, "switch_prob": 0.5, "label_smoothing": 0.0, **timm_kwargs}, num_classes=3)
    np.random.seed(0)
    for k, (images, targets) in enumerate(_batches(4)):
        x, y = reference(images.clone(), targets)
        assert torch.equal(model.seen[k], x) and torch.equal(loss_seen[k], y), k
    assert any(not torch.equal(model.seen[k], images) for k, (images, _) in enumerate(_batches(4)))


def test_label_smoothing_alone_smooths_without_mixing():
    mix = prepare_mixing(parse_options(["--label-smoothing", "0.2"]), get_task("classify"), _split(), create_loss("ce"))
    images, targets = _batches(1)[0]
    x, y = mix(images.clone(), targets)
    assert torch.equal(x, images)
    assert torch.allclose(y, nn.functional.one_hot(targets, 3) * 0.8 + 0.2 / 3)


def test_the_meter_gets_the_dominant_labels():
    mix = prepare_mixing(parse_options(["--mixup", "1.0"]), get_task("classify"), _split(), create_loss("ce"))
    seen = []

    class Meter:
        def update(self, logits, targets):
            seen.append(targets)

        def state(self):
            return {}

        def compute(self):
            return {}

    model = _Spy(3)
    np.random.seed(0)
    train_one_epoch(model, _batches(2), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                    StepConfig(nn.CrossEntropyLoss(), torch.device("cpu"), mix=mix), meter=Meter())
    assert all(t.dtype == torch.int64 and t.shape == (8,) for t in seen)


def test_a_hard_label_loss_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "hard.py").write_text("import torch.nn.functional as F\n\n"
                                      "def nll(logits, target):\n"
                                      "    return F.nll_loss(F.log_softmax(logits, 1), target)\n")
    code = main(small_args(tmp_path, "--mixup", "0.2", "--loss", f"{tmp_path / 'hard.py'}:nll", "--dry-run",
                           "--name", "hard"))
    err = _error(capsys.readouterr().err)
    assert code == 2 and err.startswith(f"error: --loss {tmp_path / 'hard.py'}:nll: takes class labels only"), err


@pytest.mark.parametrize("extra, message", [
    (["--task", "segment", "--model", "tu-test_resnet", "--mixup", "0.2"],
     "--mixup: mixes the labels of whole images (classification)"),
    (["--task", "segment", "--model", "tu-test_resnet", "--label-smoothing", "0.1"],
     "--label-smoothing: mixes the labels of whole images"),
    (["--cutmix", "1.0", "--batch-size", "7"], "--batch-size 7: Mixup/CutMix pair the images of a batch"),
    (["--ema", "1.0"], "--ema must be a decay in [0, 1)"),
    (["--mixup-prob", "1.5"], "--mixup-prob must be a probability in [0, 1]"),
])
def test_mixing_options_fail_in_one_line(tmp_path, capsys, extra, message):
    assert main(small_args(tmp_path, "--dry-run", "--name", "bad", *extra)) == 2  # the last --batch-size counts
    err = _error(capsys.readouterr().err)
    assert message in err, err
