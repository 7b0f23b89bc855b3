"""Segmentation metrics checked against smp's get_stats, torchmetrics' confusion matrix, a numpy
reference and hand-worked examples."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from segmentation_models_pytorch.metrics import get_stats
from torchmetrics.classification import MulticlassConfusionMatrix

from kernel.errors import ConfigError
from kernel.tasks.segment.metrics import (MODES, SegMeter, confusion_matrix, mean_present, predict_labels,
                                          scores, stat_counts)

IGNORE = 255
C = 4  # classes (multiclass) / channels (multilabel)


def make_batch(mode: str, seed: int, n: int = 3, size: int = 8, ignore: bool = True):
    """Random logits (N, C|1, H, W) and a target for ``mode`` with ~10% pixels = IGNORE."""
    g = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "binary" else C
    logits = torch.randn(n, channels, size, size, generator=g) * 2
    if mode == "multilabel":
        target = torch.randint(0, 2, (n, C, size, size), generator=g)
    else:
        target = torch.randint(0, 2 if mode == "binary" else C, (n, size, size), generator=g)
    if ignore:
        target[torch.rand(target.shape, generator=g) < 0.1] = IGNORE
    return logits, target


def meter_classes(mode: str) -> int:
    return 1 if mode == "binary" else C


def logits_for(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Multiclass logits (N, C, H, W) whose argmax is ``labels`` (N, H, W)."""
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float() * 5


# --- reference libraries -------------------------------------------------------------------------

def test_stat_counts_match_smp_multiclass():
    logits, target = make_batch("multiclass", 0)
    pred = logits.argmax(1)
    ref = get_stats(pred, target, mode="multiclass", ignore_index=IGNORE, num_classes=C)[:3]
    for ours, theirs in zip(stat_counts(pred, target, "multiclass", C, IGNORE), ref):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_stat_counts_match_smp_binary(threshold):
    logits, target = make_batch("binary", 1)
    prob, keep = torch.sigmoid(logits), (target != IGNORE).unsqueeze(1)
    truth = torch.where(keep, target.unsqueeze(1), 0)
    # smp has no ignore_index for binary: an ignored pixel predicted 0 with target 0 is only a tn there.
    fg = get_stats(torch.where(keep, prob, 0), truth, mode="binary", threshold=threshold)[:3]
    bg = get_stats(torch.where(keep, 1 - prob, 0), torch.where(keep, 1 - truth, 0), mode="binary",
                   threshold=1 - threshold)[:3]
    ours = stat_counts(predict_labels(logits, "binary", threshold), target, "binary", 1, IGNORE)
    for o, f, b in zip(ours, fg, bg):
        assert o.shape == (3, 2)
        assert torch.equal(o, torch.cat([b, f], 1))


def test_stat_counts_match_smp_multilabel():
    logits, target = make_batch("multilabel", 2)
    keep = target != IGNORE
    ref = get_stats(torch.where(keep, torch.sigmoid(logits), 0), torch.where(keep, target, 0),
                    mode="multilabel", threshold=0.4)[:3]
    ours = stat_counts(predict_labels(logits, "multilabel", 0.4), target, "multilabel", C, IGNORE)
    for o, r in zip(ours, ref):
        assert torch.equal(o, r)


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_confusion_matches_torchmetrics(mode):
    logits, target = make_batch(mode, 3)
    pred = predict_labels(logits, mode)
    classes = 2 if mode == "binary" else C
    ref = MulticlassConfusionMatrix(num_classes=classes, ignore_index=IGNORE)
    ref.update(pred, target)
    expected = ref.compute()
    assert torch.equal(confusion_matrix(pred, target, classes, IGNORE), expected)
    meter = SegMeter(meter_classes(mode), mode, ignore_index=IGNORE)
    meter.update(logits, target)
    out = meter.compute()
    assert out["confusion"].dtype == torch.int64 and torch.equal(out["confusion"], expected)
    m = expected.double().numpy()
    iou = np.diag(m) / (m.sum(0) + m.sum(1) - np.diag(m))
    np.testing.assert_allclose(out["per_class"]["iou"], iou, rtol=1e-12)
    assert out["per_class"]["support"] == m.sum(1).astype(int).tolist()


# --- numpy reference over batches ----------------------------------------------------------------

def numpy_reference(batches, mode: str, threshold: float = 0.5):
    """Summed tp/fp/fn over all batches, then miou/mdice as nan-means over present foreground classes."""
    tp = fp = fn = 0
    for logits, target in batches:
        x, t = logits.double().numpy(), target.numpy()
        if mode == "multiclass":
            p = x.argmax(1)
            classes = np.arange(C).reshape(1, C, 1, 1)
            p, valid, t = p[:, None] == classes, (t != IGNORE)[:, None], t[:, None] == classes
        elif mode == "binary":
            p = 1 / (1 + np.exp(-x[:, 0])) > threshold
            p, valid, t = np.stack([~p, p], 1), (t != IGNORE)[:, None], np.stack([t == 0, t == 1], 1)
        else:
            p, valid, t = 1 / (1 + np.exp(-x)) > threshold, t != IGNORE, t == 1
        tp = tp + (p & t & valid).sum((0, 2, 3))
        fp = fp + (p & ~t & valid).sum((0, 2, 3))
        fn = fn + (~p & t & valid).sum((0, 2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, dice = tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)
    start = 0 if mode == "multilabel" else 1
    return float(np.nanmean(iou[start:])), float(np.nanmean(dice[start:])), tp


@pytest.mark.parametrize("mode", MODES)
def test_accumulation_matches_numpy_reference_and_one_big_batch(mode):
    batches = [make_batch(mode, seed) for seed in (10, 11, 12)]
    meter = SegMeter(meter_classes(mode), mode, ignore_index=IGNORE)
    for logits, target in batches:
        meter.update(logits, target)
    out = meter.compute()
    miou, mdice, tp = numpy_reference(batches, mode)
    assert out["miou"] == pytest.approx(miou, rel=1e-12)
    assert out["mdice"] == pytest.approx(mdice, rel=1e-12)
    assert torch.equal(meter.state()["tp"], torch.as_tensor(tp))
    whole = SegMeter(meter_classes(mode), mode, ignore_index=IGNORE)
    whole.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    for key, value in whole.state().items():
        assert torch.allclose(meter.state()[key], value, rtol=1e-12, atol=0), key
    assert torch.allclose(whole.compute()["image_iou"], out["image_iou"], rtol=1e-12, atol=0)
    assert out["image_iou"].shape == (9,)


# --- absent classes, ignore_index ----------------------------------------------------------------

def test_absent_class_left_out_and_prediction_only_class_counts_zero():
    truth = torch.tensor([[[0, 1, 1, 1]]])
    pred = torch.tensor([[[0, 1, 2, 1]]])  # class 2 only predicted, class 3 nowhere
    meter = SegMeter(4, "multiclass")
    meter.update(logits_for(pred, 4), truth)
    out = meter.compute()
    assert out["per_class"]["iou"][2] == 0.0 and math.isnan(out["per_class"]["iou"][3])
    assert math.isnan(out["per_class"]["precision"][3]) and math.isnan(out["per_class"]["recall"][2])
    assert out["miou"] == pytest.approx((2 / 3 + 0.0) / 2)  # classes 1 and 2; 3 left out
    assert out["mdice"] == pytest.approx((0.8 + 0.0) / 2)
    with_bg = SegMeter(4, "multiclass", include_background=True)
    with_bg.update(logits_for(pred, 4), truth)
    assert with_bg.compute()["miou"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_every_class_absent_gives_nan_mean_but_image_scores_one():
    meter = SegMeter(3, "multiclass")
    zeros = torch.zeros(2, 4, 4, dtype=torch.long)
    meter.update(logits_for(zeros, 3), zeros)
    out = meter.compute()
    assert math.isnan(out["miou"]) and math.isnan(out["mdice"])
    assert out["image_miou"] == 1.0 and out["image_iou"].tolist() == [1.0, 1.0] and out["pixel_acc"] == 1.0
    assert math.isnan(mean_present(torch.tensor([0.5, 0.2]), torch.tensor([True, False]), False, "binary"))
    both = torch.tensor([True, True])
    assert mean_present(torch.tensor([0.5, 0.2]), both, False, "multilabel") == pytest.approx(0.35)


@pytest.mark.parametrize("mode", MODES)
def test_predictions_on_ignored_pixels_change_nothing(mode):
    logits, target = make_batch(mode, 20)
    ignored = target == IGNORE
    if mode != "multilabel":
        ignored = ignored.unsqueeze(1).expand_as(logits)
    other = torch.where(ignored, -logits + torch.randn_like(logits) * 3, logits)
    results = []
    for x in (logits, other):
        meter = SegMeter(meter_classes(mode), mode, ignore_index=IGNORE)
        meter.update(x, target)
        results.append(meter.state())
    assert not torch.equal(logits, other)
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_ignore_index_inside_the_class_range():
    truth = torch.tensor([[[0, 1], [2, 1]]])
    pred = torch.tensor([[[2, 1], [0, 1]]])  # truth-0 pixels ignored; predicting 0 elsewhere is still a fp
    meter = SegMeter(3, "multiclass", ignore_index=0, include_background=True)
    meter.update(logits_for(pred, 3), truth)
    out = meter.compute()
    assert out["confusion"].tolist() == [[0, 0, 0], [0, 2, 0], [1, 0, 0]]
    assert out["per_class"]["support"] == [0, 2, 1] and out["per_class"]["iou"] == [0.0, 1.0, 0.0]
    assert out["pixel_acc"] == pytest.approx(2 / 3) and out["miou"] == pytest.approx(1 / 3)


# --- hand-worked examples ------------------------------------------------------------------------

TRUTH_4X4 = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
PRED_4X4 = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 0, 2], [2, 2, 2, 1]])


def test_hand_worked_multiclass_4x4_and_empty_image():
    meter = SegMeter(3, "multiclass")
    meter.update(logits_for(PRED_4X4[None], 3), TRUTH_4X4[None])
    out = meter.compute()
    # class 0: tp 3 fp 1 fn 1; class 1: tp 3 fp 2 fn 1; class 2: tp 6 fp 1 fn 2
    pc = out["per_class"]
    assert pc["iou"] == pytest.approx([3 / 5, 3 / 6, 6 / 9])
    assert pc["dice"] == pytest.approx([6 / 8, 6 / 9, 12 / 15])
    assert pc["precision"] == pytest.approx([3 / 4, 3 / 5, 6 / 7])
    assert pc["recall"] == pytest.approx([3 / 4, 3 / 4, 6 / 8])
    assert pc["support"] == [4, 4, 8]
    assert out["pixel_acc"] == pytest.approx(12 / 16)
    assert out["miou"] == pytest.approx(7 / 12) and out["mdice"] == pytest.approx(11 / 15)
    assert out["confusion"].tolist() == [[3, 1, 0], [0, 3, 1], [1, 1, 6]]
    empty = torch.zeros(1, 4, 4, dtype=torch.long)  # all background, predicted all background
    meter.update(logits_for(empty, 3), empty)
    out = meter.compute()
    assert out["image_iou"].tolist() == pytest.approx([7 / 12, 1.0])
    assert out["image_miou"] == pytest.approx((7 / 12 + 1) / 2)
    assert out["miou"] == pytest.approx(7 / 12) and out["pixel_acc"] == pytest.approx(28 / 32)


@pytest.mark.parametrize("target_shape", ["N,H,W", "N,1,H,W"])
def test_hand_worked_binary_2x2_threshold(target_shape):
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    truth = torch.tensor([[[1, 1], [0, 0]]])
    meter = SegMeter(1, "binary", threshold=0.7)  # logit(0.7) = 0.85: only the 2.0 pixel is foreground
    meter.update(logits, truth if target_shape == "N,H,W" else truth[:, None])
    out = meter.compute()
    pc = out["per_class"]  # background: tp 2 fp 1 fn 0; foreground: tp 1 fp 0 fn 1
    assert pc["iou"] == pytest.approx([2 / 3, 1 / 2]) and pc["dice"] == pytest.approx([4 / 5, 2 / 3])
    assert pc["precision"] == pytest.approx([2 / 3, 1.0]) and pc["recall"] == pytest.approx([1.0, 1 / 2])
    assert pc["support"] == [2, 2] and out["pixel_acc"] == pytest.approx(3 / 4)
    assert out["miou"] == pytest.approx(1 / 2) and out["image_miou"] == pytest.approx(1 / 2)
    assert out["confusion"].tolist() == [[2, 0], [1, 1]]


def test_hand_worked_multilabel_2x2_with_ignore():
    logits = torch.tensor([[[[1.0, 1.0], [1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])
    truth = torch.tensor([[[[1, 0], [IGNORE, 1]], [[0, 0], [0, 0]]]])
    meter = SegMeter(2, "multilabel", ignore_index=IGNORE)
    meter.update(logits, truth)
    out = meter.compute()
    # channel 0: tp 1 fp 1 fn 1 (the ignored pixel's positive prediction is not a fp); channel 1 absent
    assert out["per_class"]["iou"][0] == pytest.approx(1 / 3) and math.isnan(out["per_class"]["iou"][1])
    assert out["miou"] == pytest.approx(1 / 3) and out["image_miou"] == pytest.approx(1 / 3)
    assert out["pixel_acc"] == pytest.approx(5 / 7) and out["per_class"]["support"] == [2, 0]
    assert "confusion" not in out


def test_scores_nan_where_undefined():
    out = scores(torch.tensor([0, 2]), torch.tensor([0, 0]), torch.tensor([0, 2]))
    assert math.isnan(out["iou"][0]) and math.isnan(out["precision"][0]) and out["iou"][1] == 0.5
    assert out["precision"][1] == 1.0 and out["recall"][1] == 0.5 and out["dice"][1] == pytest.approx(2 / 3)


# --- distributed state ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_summed_states_of_two_halves_equal_one_meter(mode):
    logits, target = make_batch(mode, 30, n=4)
    halves = [SegMeter(meter_classes(mode), mode, ignore_index=IGNORE) for _ in range(2)]
    halves[0].update(logits[:2], target[:2])
    halves[1].update(logits[2:], target[2:])
    states = [h.state() for h in halves]
    halves[0].load_state({key: states[0][key] + states[1][key] for key in states[0]})  # what all_reduce(SUM) does
    whole = SegMeter(meter_classes(mode), mode, ignore_index=IGNORE)
    whole.update(logits, target)
    got, want = halves[0].compute(), whole.compute()
    for key in ("miou", "mdice", "image_miou", "pixel_acc"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert got["per_class"] == want["per_class"]
    assert got["image_iou"].shape == (2,)  # the per-image list stays local to the process
    with pytest.raises(ConfigError):
        halves[0].load_state({"tp": states[0]["tp"]})


@pytest.mark.parametrize("mode", MODES)
def test_update_never_reads_values_back_to_the_host(mode):
    # Meta tensors have shapes but no values: .item(), .cpu(), bool(tensor) and data-sized ops such as
    # torch.bincount (which syncs on CUDA) all raise on them, so update() passing here cannot sync.
    channels = meter_classes(mode)
    meter = SegMeter(channels, mode, ignore_index=IGNORE)
    target_shape = (2, C, 4, 4) if mode == "multilabel" else (2, 4, 4)
    for _ in range(2):
        meter.update(torch.empty(2, channels if mode != "multiclass" else C, 4, 4, device="meta"),
                     torch.empty(target_shape, dtype=torch.long, device="meta"))
    assert all(value.device.type == "meta" for value in meter.state().values())


# --- errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,logits_shape,target_shape", [
    ("multiclass", (2, 3, 4, 4), (2, 3, 4, 4)),
    ("multiclass", (2, 2, 4, 4), (2, 4, 4)),
    ("binary", (2, 2, 4, 4), (2, 4, 4)),
    ("binary", (2, 1, 4, 4), (2, 5, 4)),
    ("multilabel", (2, 3, 4, 4), (2, 4, 4)),
    ("multilabel", (2, 3, 4), (2, 3, 4)),
])
def test_wrong_shapes_raise_one_line(mode, logits_shape, target_shape):
    meter = SegMeter(1 if mode == "binary" else 3, mode)
    with pytest.raises(ConfigError) as err:
        meter.update(torch.randn(logits_shape), torch.zeros(target_shape, dtype=torch.long))
    message = str(err.value)
    assert "\n" not in message and str(logits_shape) in message and str(target_shape) in message


def test_bad_settings_and_targets_raise_one_line():
    errors = []
    for make in (lambda: SegMeter(3, "segmentation"), lambda: SegMeter(3, "binary"),
                 lambda: SegMeter(3, "multilabel", threshold=1.5), lambda: SegMeter(1, "multiclass")):
        with pytest.raises(ConfigError) as err:
            make()
        errors.append(str(err.value))
    meter = SegMeter(3, "multiclass")  # no ignore_index: 255 is not a class
    meter.update(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 255]]]))
    with pytest.raises(ConfigError) as err:
        meter.compute()
    errors.append(str(err.value))
    soft = SegMeter(1, "binary")  # a soft float mask: 0.5 is no class, and is not truncated to 0
    soft.update(torch.randn(1, 1, 2, 2), torch.tensor([[[0.0, 1.0], [0.5, 1.0]]]))
    with pytest.raises(ConfigError, match="1 target values are neither a class 0/1"):
        soft.compute()
    with pytest.raises(ConfigError) as err:
        SegMeter(3, "multiclass").update(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2))  # float class map
    errors.append(str(err.value))
    assert all("\n" not in e for e in errors) and "1 target values" in errors[4] and "ignore_index=None" in errors[4]


def test_multiclass_predictions_are_argmaxs_ties_and_nans_included():
    logits = torch.randn(3, 5, 7, 9, generator=torch.Generator().manual_seed(0))
    logits[0, :, 0, 0] = 1.0  # a tie across every class: the first one
    logits[1, 1:4, 2, 2] = 2.0
    logits[2, 3, 4, 5] = float("nan")  # argmax takes a NaN as the maximum
    pred = predict_labels(logits, "multiclass")
    assert torch.equal(pred, logits.argmax(1)) and pred[0, 0, 0] == 0 and pred[1, 2, 2] == 1 and pred[2, 4, 5] == 3
