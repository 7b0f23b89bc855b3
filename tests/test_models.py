"""Models: heads for timm and torchvision families, pretrained files, in_chans, freezing."""
import pytest
import torch
from torch import nn

from kernel.engine import create_optimizer, param_groups
from kernel.models import create_model, head_parameters, list_models, resolve_data_config, set_backbone_frozen, \
    train_mode
from kernel.errors import ConfigError

TIMM = ["resnet10t", "test_efficientnet", "test_convnext", "test_vit"]
TV = ["tv:resnet18", "tv:mobilenet_v3_small", "tv:squeezenet1_0", "tv:shufflenet_v2_x0_5",
      "tv:densenet121", "tv:efficientnet_b0", "tv:regnet_x_400mf", "tv:vit_b_16"]


def _size(name):
    return 224 if name == "tv:vit_b_16" else 64


@pytest.mark.parametrize("name", TIMM + TV)
@pytest.mark.parametrize("in_chans", [3, 1])
def test_head_and_input_channels(name, in_chans):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=in_chans).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, _size(name), _size(name)))
    assert out.shape == (2, 7)
    head = head_parameters(model)
    assert head and any(p.shape[0] == 7 for p in head)


def _write_weights(tmp_path, name, fmt):
    torch.manual_seed(1)
    donor = create_model(name, num_classes=1000 if name.startswith("tv:") else 10, in_chans=3)
    sd = donor.state_dict()
    if fmt == "ours":
        path = tmp_path / "ours.pt"
        torch.save({"model": sd, "epoch": 3, "classes": ["a"]}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    return donor, path


@pytest.mark.parametrize("name", ["resnet10t", "tv:resnet18"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "ours"])
def test_pretrained_file_adapts_head_and_in_chans(tmp_path, name, fmt):
    donor, path = _write_weights(tmp_path, name, fmt)
    model = create_model(name, num_classes=5, in_chans=1, pretrained=str(path))
    donor_sd, sd = donor.state_dict(), model.state_dict()
    # A deep backbone tensor is copied exactly.
    key = [k for k in donor_sd if "layer4" in k and k.endswith("weight") and donor_sd[k].ndim == 4][-1]
    assert torch.equal(sd[key], donor_sd[key])
    # The first conv is the donor's RGB kernel summed over channels (timm's adapt_input_conv rule).
    first = "conv1.0.weight" if name == "resnet10t" else "conv1.weight"
    assert sd[first].shape[1] == 1
    assert torch.allclose(sd[first], donor_sd[first].sum(dim=1, keepdim=True), atol=1e-6)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_missing_weights_and_unknown_model():
    with pytest.raises(ConfigError, match="not found"):
        create_model("resnet10t", 3, pretrained="nope.pth")
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("resnet18x", 3)
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("tv:resnet1800", 3)


def test_list_models():
    names = list_models("*resnet1*")
    assert "resnet18" in names and "tv:resnet18" in names
    assert all(n.startswith("tv:") for n in list_models("tv:mobilenet*"))


@pytest.mark.parametrize("name", ["resnet10t", "tv:mobilenet_v3_small"])
def test_freeze_counts_and_unfreeze(name):
    model = create_model(name, num_classes=4)
    head = sum(p.numel() for p in head_parameters(model))
    total = sum(p.numel() for p in model.parameters())
    set_backbone_frozen(model, True)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == head
    train_mode(model, backbone_frozen=True)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)  # frozen BN statistics stay put
    set_backbone_frozen(model, False)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total


def test_param_groups_lr_mult_and_no_decay():
    model = create_model("resnet10t", num_classes=4)
    opt = create_optimizer("sgd", param_groups(model, 0.01, backbone_lr_mult=0.1), lr=1.0, momentum=0.9)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["head_decay"]["lr"] == 1.0 and by_name["backbone_decay"]["lr"] == pytest.approx(0.1)
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_data_config_from_pretrained_cfg():
    import timm.data

    model = create_model("resnet10t", 4)
    timm_cfg = timm.data.resolve_model_data_config(model)
    cfg = resolve_data_config(model, 0, 1)
    assert cfg["img_size"] == timm_cfg["input_size"][-1] == 176  # resnet10t's own pretrained size
    assert cfg["interpolation"] == timm_cfg["interpolation"]
    assert cfg["mean"] == (pytest.approx(sum(timm_cfg["mean"]) / 3),)
    assert resolve_data_config(create_model("tv:resnet18", 4), 96)["img_size"] == 96


@pytest.mark.parametrize("name", ["resnet10t", "tv:resnet18"])
def test_pretrained_file_logs_what_was_loaded_skipped_and_missing(tmp_path, caplog, name):
    """Issue 20, item 12: a classifier's --pretrained FILE says how many tensors it loaded and which it did not."""
    import logging

    donor, path = _write_weights(tmp_path, name, "ours")
    with caplog.at_level(logging.INFO, logger="kernel"):
        model = create_model(name, num_classes=5, in_chans=1, pretrained=str(path))
    own = model.state_dict()
    head = [k for k in own if k.startswith("fc.")]
    first = "conv1.0.weight" if name == "resnet10t" else "conv1.weight"
    line = next(m for m in caplog.messages if m.startswith("pretrained:"))
    # Everything but the new 5-class head and the 1-channel first convolution comes from the file.
    assert line.startswith(f"pretrained: {len(own) - len(head) - 1} of {len(own)} tensors loaded from {path}"), line
    assert all(k in line for k in head + [first]) and line.endswith("not in the file: none"), line


def _suggested_pattern(message: str) -> str:
    import re

    found = re.search(r"--list-models '([^']+)'", message)
    assert found, message
    return found.group(1)


def _listed(capsys, *argv: str) -> list:
    from kernel.train import main

    capsys.readouterr()
    assert main(["--list-models", *argv]) == 0
    return capsys.readouterr().out.split()


@pytest.mark.parametrize("name, match", [("tv:resnet19", "tv:resnet18"), ("resnt18", "resnet18"),
                                         ("tv:mobilenet_v3_smal", "tv:mobilenet_v3_small")])
def test_unknown_model_suggests_a_pattern_that_lists_its_match(capsys, name, match):
    """Issue 20, item 14: the suggested --list-models pattern lists the close match."""
    with pytest.raises(ConfigError) as e:
        create_model(name, 3)
    assert f"did you mean {match!r}" in str(e.value)
    assert match in _listed(capsys, _suggested_pattern(str(e.value)))


def test_list_models_lists_what_trains_and_the_others_are_refused_by_kind(capsys):
    """Issue 20, item 14: 'tv:*' lists torchvision classifiers only; a detection or video model is refused
    with the kinds that train, a segmentation one points to --task segment."""
    listed = _listed(capsys, "tv:*")
    assert "tv:resnet18" in listed and "tv:vit_b_16" in listed
    assert not {"tv:fasterrcnn_resnet50_fpn", "tv:r3d_18", "tv:raft_small", "tv:deeplabv3_resnet50",
                "tv:quantized_resnet18"} & set(listed)
    for name, kind in [("tv:fasterrcnn_resnet50_fpn", "detection"), ("tv:r3d_18", "video"),
                       ("tv:raft_small", "optical flow")]:
        with pytest.raises(ConfigError, match=f"is a torchvision {kind} model; --task classify trains torchvision "
                                              "classification models"):
            create_model(name, 3)
    with pytest.raises(ConfigError, match="it belongs to --task segment"):
        create_model("tv:deeplabv3_resnet50", 3)
    segment = _listed(capsys, "tv:*", "--task", "segment")
    assert "tv:deeplabv3_resnet50" in segment and "tv:resnet18" not in segment


@pytest.mark.parametrize("name, host", [("tv:resnet18", "download.pytorch.org"), ("resnet18", "huggingface.co")])
def test_offline_hub_fails_at_once_with_the_fix(tmp_path, monkeypatch, name, host):
    """Issue 20, item 17: --pretrained hub asks the injected probe first and stops in one line when the host
    cannot be reached, before any download is tried."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no torchvision weights cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    with pytest.raises(ConfigError) as e:
        create_model(name, 3, pretrained="hub", reachable=lambda h: asked.append(h) or False)
    assert asked == [host]
    message = str(e.value)
    assert "\n" not in message and "no network" in message and "--pretrained PATH" in message, message
