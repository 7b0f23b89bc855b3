"""Losses: every registry entry by name, from logits, classification and segmentation shapes.

Known values are worked out by hand (or with torch / torchvision) here, independently of
kernel.loss_functional.
"""
from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernel.losses import LOSSES, CombinedLoss, create_loss
from kernel.errors import ConfigError

torch.set_num_threads(1)  # tiny tensors; the machine is shared

ALL = LOSSES.names()
SIGMOID_ONLY_BINARY_FAILS = {"ce"}  # softmax CE on one output is meaningless: it raises instead


def _case(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """(logits, target) for one shape/mode case; logits require grad."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"cls_multiclass": (5, 3), "cls_multilabel": (5, 3), "cls_binary": (5, 1),
              "seg_multiclass": (2, 3, 3, 3), "seg_multilabel": (2, 3, 3, 3), "seg_binary": (2, 1, 3, 3),
              "seg_binary_hw": (2, 1, 3, 3)}
    shape = shapes[kind]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    if kind.endswith("multiclass"):
        t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    elif kind == "seg_binary_hw":  # an (N, H, W) int mask for one output channel
        t = torch.randint(0, 2, shape[:1] + shape[2:], generator=g)
    else:
        t = (torch.rand(shape, generator=g) > 0.5).to(dtype)
    return x, t


CASES = ["cls_multiclass", "cls_multilabel", "cls_binary", "seg_multiclass", "seg_multilabel", "seg_binary",
         "seg_binary_hw"]


def _supported(name: str, case: str) -> bool:
    return not (name in SIGMOID_ONLY_BINARY_FAILS and "binary" in case)


PAIRS = [(n, c) for n in ALL for c in CASES if _supported(n, c)]

# option variants that take other code paths (each must pass gradcheck as well)
VARIANTS = [
    ("ce", {"label_smoothing": 0.1, "weight": [1.0, 2.0, 0.5]}, "seg_multiclass"),
    ("ce", {"ignore_index": 2}, "seg_multiclass"),
    ("bce", {"pos_weight": [2.0, 1.0, 0.5], "weight": 0.5}, "cls_multilabel"),
    ("bce", {"mode": "multilabel"}, "cls_multiclass"),
    ("smooth_l1", {"beta": 0.5, "activation": "sigmoid"}, "cls_multilabel"),
    ("mse", {"activation": "none"}, "cls_multiclass"),
    ("kl", {"label_smoothing": 0.1}, "seg_multiclass"),
    ("kl", {"mode": "multilabel"}, "cls_multilabel"),
    ("focal", {"multiclass": "sigmoid"}, "seg_multiclass"),
    ("focal", {"alpha": [0.2, 0.3, 0.5], "gamma": 1.5}, "cls_multiclass"),
    ("focal", {"alpha": None, "gamma": 0.5}, "seg_binary"),
    ("focal", {"ignore_index": 1}, "seg_multiclass"),
    ("dice", {"per_image": True, "classes": [1, 2]}, "seg_multiclass"),
    ("dice", {"smooth": 0.0, "weight": [1.0, 2.0, 3.0]}, "seg_multilabel"),
    ("iou", {"per_image": True}, "seg_binary"),
    ("tversky", {"alpha": 0.7, "beta": 0.3, "gamma": 0.75}, "seg_multiclass"),
    ("dice_bce", {"per_image": True, "pos_weight": 2.0}, "seg_binary"),
    ("qfl", {"beta": 1.5}, "cls_multilabel"),
]


# ---------------------------------------------------------------- 1. gradcheck

@pytest.mark.parametrize("name,case", PAIRS)
def test_gradcheck_every_loss_every_mode(name, case):
    x, t = _case(case)
    if name == "qfl" and t.is_floating_point():  # soft quality targets
        t = torch.rand(t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = create_loss(name)
    assert torch.autograd.gradcheck(lambda inp: loss(inp, t), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,case", VARIANTS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(VARIANTS)])
def test_gradcheck_option_variants(name, kwargs, case):
    x, t = _case(case)
    loss = create_loss(name, **kwargs)
    assert torch.autograd.gradcheck(lambda inp: loss(inp, t), (x,), eps=1e-6, atol=1e-5)


def test_every_registry_entry_is_tested():
    assert set(ALL) == {"ce", "bce", "mse", "l1", "smooth_l1", "huber", "kl", "focal", "dice", "iou", "tversky",
                        "dice_bce", "qfl"}


@pytest.mark.parametrize("case", [c for c in CASES if "binary" in c])
def test_softmax_ce_refuses_a_single_output(case):
    x, t = _case(case)
    with pytest.raises(ConfigError, match="C >= 2"):
        create_loss("ce")(x, t)


# ---------------------------------------------------------------- 2. known values

def test_binary_focal_matches_torchvision():
    from torchvision.ops import sigmoid_focal_loss
    g = torch.Generator().manual_seed(0)
    for shape in [(16, 1), (4, 5), (2, 1, 6, 6)]:
        x = torch.randn(shape, generator=g) * 3
        y = (torch.rand(shape, generator=g) > 0.7).float()
        ours = create_loss("focal", alpha=0.25, gamma=2)(x, y)
        ref = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2, reduction="mean")
        assert torch.allclose(ours, ref, atol=1e-6), (shape, ours, ref)
    # multiclass one-vs-rest == torchvision on the one-hot targets
    x, labels = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    ref = sigmoid_focal_loss(x, F.one_hot(labels, 4).float(), alpha=0.25, gamma=2, reduction="mean")
    assert torch.allclose(create_loss("focal", multiclass="sigmoid")(x, labels), ref, atol=1e-6)
    # alpha=None switches alpha_t off (torchvision: alpha < 0)
    y = (torch.rand(6, 4, generator=g) > 0.5).float()
    ref = sigmoid_focal_loss(x, y, alpha=-1, gamma=2, reduction="mean")
    assert torch.allclose(create_loss("focal", alpha=None)(x, y), ref, atol=1e-6)


def test_softmax_focal_hand_value_and_gamma0_is_ce():
    # softmax([0, ln 3]) = [1/4, 3/4]; label 0: -(1 - 1/4)^2 log(1/4) = 0.5625 ln 4
    x = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.allclose(create_loss("focal")(x, torch.tensor([0])), torch.tensor(0.5625 * math.log(4)))
    # per-class alpha weighs the true class's term: alpha_1 = 0.3 -> 0.3 * (1/4)^2 * ln(4/3)
    ref = 0.3 * 0.0625 * math.log(4 / 3)
    assert torch.allclose(create_loss("focal", alpha=[0.7, 0.3])(x, torch.tensor([1])), torch.tensor(ref))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 3, 3, generator=g), torch.randint(0, 4, (2, 3, 3), generator=g)
    assert torch.allclose(create_loss("focal", gamma=0, alpha=None)(x, y), F.cross_entropy(x, y), atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 5), (2, 5, 4, 4)])
def test_ce_label_smoothing_weights_ignore_match_torch(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, 5, shape[:1] + shape[2:], generator=g)
    y.view(-1)[:3] = 255
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    ours = create_loss("ce", label_smoothing=0.1, weight=w.tolist(), ignore_index=255)(x, y)
    assert torch.allclose(ours, F.cross_entropy(x, y, w, ignore_index=255, label_smoothing=0.1), atol=1e-6)
    y = y.clamp_max(4)
    assert torch.allclose(create_loss("ce", label_smoothing=0.2)(x, y), F.cross_entropy(x, y, label_smoothing=0.2))


# Two 2x2 binary images, probabilities given directly (from_logits=False):
#   image 1: p = [1, .5, 0, 0], t = [1, 1, 0, 0]: TP = 1.5, FP = 0, FN = .5, sum p = 1.5, sum t = 2
#   image 2: p = [.5, 0, 0, 0], t = 0 (empty):    TP = 0,   FP = .5, FN = 0
#   batch:   TP = 1.5, FP = .5, FN = .5
# dice = (2TP + s) / (2TP + FP + FN + s); iou = (TP + s) / (TP + FP + FN + s)
P = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]], [[[0.5, 0.0], [0.0, 0.0]]]])
T = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
HAND = {
    # smooth = 1: image 1 dice 4/4.5 = 8/9, image 2 dice 1/1.5 = 2/3, batch (3+1)/(4+1) = 4/5
    ("dice", True, 1.0): ((1 - 8 / 9) + (1 - 2 / 3)) / 2,
    ("dice", False, 1.0): 1 - 4 / 5,
    # smooth = 0: image 1 dice 3/3.5 = 6/7, image 2 0/0.5 = 0; batch 3/4
    ("dice", True, 0.0): ((1 - 6 / 7) + 1) / 2,
    ("dice", False, 0.0): 1 - 3 / 4,
    # iou smooth = 1: image 1 (1.5+1)/(2+1) = 5/6, image 2 1/1.5 = 2/3, batch 2.5/3.5 = 5/7
    ("iou", True, 1.0): ((1 - 5 / 6) + (1 - 2 / 3)) / 2,
    ("iou", False, 1.0): 1 - 5 / 7,
    # iou smooth = 0: image 1 1.5/2 = 3/4, image 2 0; batch 1.5/2.5 = 3/5
    ("iou", True, 0.0): ((1 - 3 / 4) + 1) / 2,
    ("iou", False, 0.0): 1 - 3 / 5,
    # tversky alpha=.3 beta=.7 smooth 0: image 1 1.5/(1.5 + .35) ; image 2 0 ; batch 1.5/(1.5 + .15 + .35)
    ("tversky", True, 0.0): ((1 - 1.5 / 1.85) + 1) / 2,
    ("tversky", False, 0.0): 1 - 1.5 / 2.0,
}


@pytest.mark.parametrize("key", list(HAND), ids=[f"{k}-per_image={p}-smooth={s}" for k, p, s in HAND])
def test_overlap_losses_hand_values(key):
    name, per_image, smooth = key
    loss = create_loss(name, per_image=per_image, smooth=smooth, from_logits=False)
    assert torch.allclose(loss(P, T), torch.tensor(HAND[key]), atol=1e-6)


def test_dice_iou_from_logits_and_multiclass_hand_values():
    # logits 0 -> p = .5 everywhere; 2x2 image with one positive pixel: TP = .5, FP = 1.5, FN = .5
    x, t = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert torch.allclose(create_loss("dice", smooth=0)(x, t), torch.tensor(1 - 1 / 3))  # 1 / (1 + 2)
    assert torch.allclose(create_loss("jaccard", smooth=0)(x, t), torch.tensor(1 - 0.5 / 2.5))
    # multiclass: 2 classes, logits 0 -> p = .5 each; labels [0, 1, 1, 1]
    # class 0: TP .5, FP 1.5, FN .5 -> dice 1/3; class 1: TP 1.5, FP .5, FN 1.5 -> dice 3/5
    x, y = torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [1, 1]]])
    assert torch.allclose(create_loss("dice", smooth=0)(x, y), torch.tensor(1 - (1 / 3 + 3 / 5) / 2))
    assert torch.allclose(create_loss("dice", smooth=0, classes=[1])(x, y), torch.tensor(1 - 3 / 5))
    w = create_loss("dice", smooth=0, weight=[1.0, 3.0])(x, y)
    assert torch.allclose(w, torch.tensor(1 - (1 / 3 + 3 * 3 / 5) / 4))
    # ignore_index: the ignored pixel (label 1 at [1, 1]) leaves class 0: TP .5 FP 1 FN .5 -> dice 1/2.5
    y2 = torch.tensor([[[0, 1], [1, 255]]])
    assert torch.allclose(create_loss("dice", smooth=0, classes=[0], ignore_index=255)(x, y2), torch.tensor(0.6))


def test_qfl_matches_published_formula_by_hand():
    # QFL = -|y - s|^b ((1 - y) log(1 - s) + y log s)
    # logit 0: s = .5, y = .8 -> .3^2 * ln 2;   logit ln 3: s = .75, y = 0 -> .75^2 * ln 4
    x = torch.tensor([[0.0], [math.log(3.0)]])
    y = torch.tensor([[0.8], [0.0]])
    ref = (0.09 * math.log(2) + 0.5625 * math.log(4)) / 2
    assert torch.allclose(create_loss("qfl")(x, y), torch.tensor(ref), atol=1e-7)
    # beta = 1: |.3| ln 2 and .75 ln 4
    ref1 = (0.3 * math.log(2) + 0.75 * math.log(4)) / 2
    assert torch.allclose(create_loss("qfl", beta=1)(x, y), torch.tensor(ref1), atol=1e-7)


def test_other_losses_known_values():
    x, y = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])  # softmax = [1/4, 3/4]
    assert torch.allclose(create_loss("kl")(x, y), torch.tensor(math.log(4 / 3)))  # one-hot: KL == CE
    ref = 0.1 * math.log(0.1 / 0.25) + 0.9 * math.log(0.9 / 0.75)  # smoothed q = [.1, .9]
    assert torch.allclose(create_loss("kl", label_smoothing=0.2)(x, y), torch.tensor(ref))
    assert torch.allclose(create_loss("kl")(x, torch.tensor([[0.5, 0.5]])), torch.tensor(
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)))
    # regression on class labels: softmax probabilities vs one-hot: errors .25, .25
    assert torch.allclose(create_loss("mse")(x, y), torch.tensor(0.0625))
    assert torch.allclose(create_loss("l1")(x, y), torch.tensor(0.25))
    assert torch.allclose(create_loss("smooth_l1")(x, y), torch.tensor(0.5 * 0.0625))
    # float targets: plain regression on the raw outputs ((N, 1) outputs with (N,) targets too)
    out, target = torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 5.0])
    assert torch.allclose(create_loss("mse")(out, target), torch.tensor(2.5))
    assert torch.allclose(create_loss("l1")(out, target), torch.tensor(1.5))
    # huber, delta 1.5: errors 1 (quadratic: 0.5) and 2 (linear: 1.5 * (2 - 0.75) = 1.875), torch's own as reference
    assert torch.allclose(create_loss("huber", beta=1.5)(out, target), torch.tensor((0.5 + 1.875) / 2))
    assert torch.allclose(create_loss("huber", beta=1.5)(out, target),
                          torch.nn.functional.huber_loss(out[:, 0], target, delta=1.5))
    # bce on int labels one-hots them
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 3, (4, 2, 2), generator=g)
    ref = F.binary_cross_entropy_with_logits(x, F.one_hot(y, 3).permute(0, 3, 1, 2).float())
    assert torch.allclose(create_loss("bce")(x, y), ref)
    pw = torch.tensor([1.0, 2.0, 3.0])
    m = (torch.rand(4, 3, generator=g) > 0.5).float()
    ref = F.binary_cross_entropy_with_logits(x[:, :, 0, 0], m, pos_weight=pw)
    assert torch.allclose(create_loss("bce", pos_weight=pw.tolist())(x[:, :, 0, 0], m), ref)


def test_multi_hot_ce_is_normalised_soft_target_ce():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    ref = F.cross_entropy(x, torch.tensor([[0.5, 0.0, 0.5]]))
    assert torch.allclose(create_loss("ce")(x, torch.tensor([[1.0, 0.0, 1.0]])), ref)


def test_combinations_and_kwargs_routing():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1, 4, 4, generator=g), (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    both = create_loss("dice+bce")
    assert isinstance(both, CombinedLoss)
    assert torch.allclose(both(x, y), create_loss("dice")(x, y) + create_loss("bce")(x, y))
    mix = create_loss({"dice": 0.5, "focal": 0.5}, gamma=1, **{"dice.smooth": 0.0})
    ref = 0.5 * create_loss("dice", smooth=0)(x, y) + 0.5 * create_loss("focal", gamma=1)(x, y)
    assert torch.allclose(mix(x, y), ref)
    same = create_loss("0.5*dice + 0.5*focal", gamma=1, dice__smooth=0)
    assert torch.allclose(same(x, y), ref)
    # an unprefixed kwarg goes to every member that takes it
    routed = create_loss("dice+iou", smooth=0)
    assert all(m.smooth == 0 for m in routed.members.values())
    for bad, kwargs in [("dice+bce", {"gamma": 2}), ("dice+bce", {"focal__gamma": 2}), ("dice+dice", {}),
                        ("x*dice+bce", {}), ("dice+", {}), ({}, {}), ("dice+bce", {"dice__nope": 1})]:
        with pytest.raises(ConfigError):
            create_loss(bad, **kwargs)


def test_unknown_names_and_options_fail_clearly():
    with pytest.raises(ConfigError, match=r"Did you mean 'dice'\?.*Known: ce, bce"):
        create_loss("dcie")
    with pytest.raises(ConfigError, match="did you mean 'gamma'"):
        create_loss("focal", gama=2)
    for name, kwargs in [("focal", {"gamma": -1}), ("focal", {"multiclass": "x"}), ("dice", {"mode": "multi"}),
                         ("ce", {"reduction": "avg"}), ("focal", {"alpha": 2.0}), ("dice", {"classes": "1"})]:
        with pytest.raises(ConfigError):
            create_loss(name, **kwargs)
    x = torch.randn(4, 3)
    with pytest.raises(ConfigError, match="do not fit"):
        create_loss("ce")(x, torch.randint(0, 3, (5,)))
    with pytest.raises(ConfigError, match="single alpha"):
        create_loss("focal", alpha=0.25)(x, torch.randint(0, 3, (4,)))
    with pytest.raises(ConfigError, match="per-class"):
        create_loss("ce", weight=[1.0, 2.0])(x, torch.randint(0, 3, (4,)))
    with pytest.raises(ConfigError, match="binary needs 1 output"):
        create_loss("bce", mode="binary")(x, torch.rand(4, 3))


def test_mode_inference_and_ignore_index():
    from kernel.losses.functional import infer_mode
    assert infer_mode(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)) == "multiclass"
    assert infer_mode(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)) == "multiclass"
    assert infer_mode(torch.zeros(2, 3), torch.zeros(2, 3)) == "multilabel"
    assert infer_mode(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)) == "binary"
    assert infer_mode(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)) == "binary"
    assert infer_mode(torch.zeros(2, 3), torch.zeros(2)) is None
    # ignored pixels get no gradient and do not count in the mean
    for name in ALL:
        x = torch.randn(2, 3, 4, 4, requires_grad=True)
        y = torch.randint(0, 3, (2, 4, 4))
        y[0, 0, 0] = 255
        create_loss(name, ignore_index=255)(x, y).backward()
        assert x.grad[0, :, 0, 0].abs().max() == 0, name
        assert x.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- 3. focal focuses

def _textbook_focal(x, y, alpha=0.8, gamma=2):
    """The widespread counter-example: the focal factor on the batch-MEAN BCE of probabilities."""
    bce = F.binary_cross_entropy(torch.sigmoid(x), y, reduction="mean")
    return alpha * (1 - torch.exp(-bce)) ** gamma * bce


def _hard_share(loss_fn) -> float:
    # 999 easy negatives and 1 hard positive, all at logit -4 (p = .018)
    x = torch.full((1000, 1), -4.0, requires_grad=True)
    y = torch.zeros(1000, 1)
    y[0] = 1
    loss_fn(x, y).backward()
    g = x.grad.abs()
    return (g[0] / g.sum()).item()


def test_focal_focuses_on_the_hard_positive():
    assert _hard_share(create_loss("focal")) > 0.9
    assert _hard_share(create_loss("focal", alpha=None)) > 0.9
    assert _hard_share(create_loss("bce")) < 0.1
    assert _hard_share(_textbook_focal) < 0.1  # one scalar factor rescales all gradients alike


# ---------------------------------------------------------------- 4. empty masks

def _fp_grad(loss, x, t) -> torch.Tensor:
    x = x.clone().requires_grad_()
    loss(x, t).backward()
    return x.grad


def test_empty_masks():
    # image 0: empty ground truth, a false-positive blob; image 1: an object, predicted well
    t = torch.zeros(2, 1, 8, 8)
    t[1, 0, 2:6, 2:6] = 1
    x = torch.where(t > 0, 4.0, -4.0)
    x_fp = x.clone()
    x_fp[0, 0, :3, :3] = 3.0
    for loss in [create_loss("dice_bce"), create_loss("dice", per_image=True), create_loss("dice_bce", per_image=True),
                 create_loss("iou", per_image=True), create_loss("dice+focal")]:
        assert loss(x_fp, t) > loss(x, t) + 0.05, loss
        assert (_fp_grad(loss, x_fp, t)[0, 0, :3, :3] > 0).all(), loss  # descent lowers the FP logits
    # per image, predicting nothing on an empty mask is perfect (smooth > 0)
    empty, none = torch.zeros(1, 1, 8, 8), torch.full((1, 1, 8, 8), -20.0)
    assert create_loss("dice", per_image=True)(none, empty) < 1e-6
    # per image saturates (documented): a large false blob on an empty image gets a weak gradient,
    # the BCE half of dice_bce keeps a strong one
    g_img = _fp_grad(create_loss("dice", per_image=True), x_fp, t)[0, 0, :3, :3]
    g_pair = _fp_grad(create_loss("dice_bce", per_image=True), x_fp, t)[0, 0, :3, :3]
    assert (g_pair > 10 * g_img).all()
    # batch mode (documented in DiceLoss): the empty image's FPs join the batch FP sum: penalised,
    # diluted by the object in the other image (a bigger object -> a smaller push); per image they are not
    batch, per_image = create_loss("dice"), create_loss("dice", per_image=True)
    assert batch(x_fp, t) > batch(x, t)
    t_big = torch.zeros(2, 1, 8, 8)
    t_big[1, 0, 1:7, 1:7] = 1
    x_big = torch.where(t_big > 0, 4.0, -4.0)
    x_big[0, 0, :3, :3] = 3.0
    g_small, g_large = _fp_grad(batch, x_fp, t)[0, 0, :3, :3], _fp_grad(batch, x_big, t_big)[0, 0, :3, :3]
    assert (g_small > 0).all() and (g_large > 0).all() and (g_large < 0.7 * g_small).all()
    assert torch.allclose(_fp_grad(per_image, x_fp, t)[0], _fp_grad(per_image, x_big, t_big)[0])
    # a batch with no ground truth at all scores like one empty image
    assert torch.allclose(batch(x_fp[:1], t[:1]), per_image(x_fp[:1], t[:1]))
    # smooth=0 (documented): an empty (image, class) scores 0 -> loss 1 whatever the prediction, no gradient
    flat = create_loss("dice", per_image=True, smooth=0)
    assert torch.allclose(flat(x_fp[:1], t[:1]), torch.tensor(1.0))
    assert torch.allclose(flat(x[:1], t[:1]), torch.tensor(1.0))
    assert _fp_grad(flat, x_fp[:1], t[:1]).abs().max() < 1e-6


# ---------------------------------------------------------------- 5. autocast

@pytest.mark.parametrize("name,case", PAIRS)
def test_autocast_bf16_inputs_give_fp32(name, case):
    x, t = _case(case, dtype=torch.bfloat16)
    loss = create_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(x, t)
    assert out.dtype == torch.float32 and out.ndim == 0 and torch.isfinite(out)
    ref = loss(x.detach().float(), t.float() if t.is_floating_point() else t)
    assert torch.allclose(out, ref, atol=1e-6)  # the same maths as fp32 on the same values
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad.float()).all()


def test_autocast_combination_and_user_loss(tmp_path):
    x, t = _case("seg_binary", dtype=torch.bfloat16)
    path = _write_user_file(tmp_path)
    for spec in ["dice+bce", {"iou": 1.0, "qfl": 2.0}, f"{path}:my_loss"]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = create_loss(spec)(x, t)
        assert out.dtype == torch.float32 and out.ndim == 0


# ---------------------------------------------------------------- 7. custom losses

USER_CODE = '''
import torch.nn.functional as F
from torch import nn

def my_loss(output, target):
    return F.cross_entropy(output, target) if not target.is_floating_point() else \\
        F.binary_cross_entropy_with_logits(output, target)

def scaled(output, target, scale=1.0):
    return scale * my_loss(output, target)

def one_arg(output):
    return output.mean()

def per_sample(output, target):
    return F.cross_entropy(output, target, reduction="none")

class MyLoss(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, output, target):
        return self.scale * my_loss(output, target)

NOT_CALLABLE = 3
'''


def _write_user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_losses.py"
    path.write_text(textwrap.dedent(USER_CODE))
    return path


def test_custom_losses_from_files_and_modules(tmp_path):
    path = _write_user_file(tmp_path)
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    ref = F.cross_entropy(x, y)
    assert torch.allclose(create_loss(f"{path}:my_loss")(x, y), ref)
    assert torch.allclose(create_loss(f"{path}:scaled", scale=2.0)(x, y), 2 * ref)
    cls_loss = create_loss(f"{path}:MyLoss", scale=3.0)
    assert isinstance(cls_loss, nn.Module) and torch.allclose(cls_loss(x, y), 3 * ref)
    assert torch.allclose(create_loss("torch.nn:CrossEntropyLoss", label_smoothing=0.1)(x, y),
                          F.cross_entropy(x, y, label_smoothing=0.1))
    assert torch.allclose(create_loss("torch.nn.functional:cross_entropy")(x, y), ref)
    assert torch.allclose(create_loss(f"bce+{path}:my_loss")(x, y), create_loss("bce")(x, y) + ref)


def test_bad_custom_specs_give_one_clear_line(tmp_path):
    path = _write_user_file(tmp_path)
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    bad = {
        f"{tmp_path}/missing.py:my_loss": "not found",
        f"{path}:nope": "no attribute",
        f"{path}:one_arg": "fn\\(output, target\\)",
        f"{path}:NOT_CALLABLE": "not a function",
        "no_such_pkg_xyz.mod:fn": "cannot import",
    }
    for spec, pattern in bad.items():
        with pytest.raises(ConfigError, match=pattern) as err:
            create_loss(spec)
        assert "\n" not in str(err.value), str(err.value)
    for spec, kwargs in [(f"{path}:MyLoss", {"nope": 1}), (f"{path}:my_loss", {"scale": 2})]:
        with pytest.raises(ConfigError) as err:
            create_loss(spec, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="scalar"):
        create_loss(f"{path}:per_sample")(x, y)


# ---------------------------------------------------------------- 6. training works

@pytest.fixture(scope="module")
def shapes_batches():
    """160 shapes images at 32 px as 5 in-memory batches of 32 (class labels and one-hot targets)."""
    from kernel.data import ShapesSource

    src = ShapesSource(160, seed=0, size=32)
    images = torch.stack([torch.from_numpy(src[i][0]).permute(2, 0, 1).float() / 127.5 - 1 for i in range(160)])
    labels = torch.tensor(src.targets)
    return [(images[k:k + 32], labels[k:k + 32]) for k in range(0, 160, 32)]


def _train_losses(loss_fn: nn.Module, batches, epochs: int = 4) -> list:
    """Per-epoch mean training loss of a tiny timm model on the batches, through the bundle's loop."""
    from kernel.engine import StepConfig, train_one_epoch
    from kernel.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    out = []
    for _ in range(epochs):
        model.train()
        out.append(train_one_epoch(model, batches, opt, StepConfig(loss_fn, torch.device("cpu"))).loss)
    return out


@pytest.mark.parametrize("name", ALL)
def test_every_classification_loss_trains_shapes(shapes_batches, name):
    losses = _train_losses(create_loss(name), shapes_batches)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


def test_user_loss_and_routed_combination_train_through_the_cli(tmp_path):
    from kernel.data import write_shapes
    from kernel.train import main

    data = write_shapes(tmp_path / "data", n=96, seed=0, size=32)
    path = _write_user_file(tmp_path)
    for name, loss, extra in (("user", f"{path}:my_loss", []),
                              ("combo", "0.5*dice+ce", ["--loss-kwargs", "dice__smooth=0.5,label_smoothing=0.1"])):
        argv = ["--data", str(data / "train"), "--model", "test_resnet", "--img-size", "32", "--epochs", "3",
                "--batch-size", "16", "--lr", "0.003", "--loss", loss, "--output", str(tmp_path), "--name", name,
                "--workers", "0", "--device", "cpu", "--aug", "none", "--no-tensorboard", "--no-plots", *extra]
        assert main(argv) == 0
        with open(tmp_path / name / "metrics.csv", newline="") as fh:
            losses = [float(row["train_loss"]) for row in csv.DictReader(fh)]
        assert len(losses) == 3 and losses[-1] < losses[0], (name, losses)
