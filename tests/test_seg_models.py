"""Segmentation models: every smp architecture at any input size, torchvision models, pretrained encoders."""
import logging

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torchvision
from timm.models import adapt_input_conv
from torch import nn

from kernel.models.segmentation import (SEG_ARCHS, PadToMultiple, create_seg_model, list_encoders,
                                        list_seg_archs, pad_amounts, resolve_encoder)
from kernel.errors import ConfigError

# What smp's check_input_shape needs for a 70 x 45 input, worked out by hand from each architecture's
# encoder output stride: 32 unless dilated (deeplabv3 8, deeplabv3plus 16, pan 16) or shallow (pspnet:
# depth 3 -> 8); pan's pyramid also needs its stride-16 map >= 8 px, so >= 128 px.
PADDED = {"deeplabv3": (72, 48), "pspnet": (72, 48), "deeplabv3plus": (80, 48), "pan": (128, 128)}
TV = ["tv:deeplabv3_resnet50", "tv:fcn_resnet50", "tv:lraspp_mobilenet_v3_large", "tv:deeplabv3_mobilenet_v3_large"]


def _check_head_partition(model, backbone):
    """kernel_head names resolve; head and backbone parameters split all parameters between them."""
    assert isinstance(model.kernel_head, tuple) and model.kernel_head
    head = {id(p) for name in model.kernel_head for p in model.get_submodule(name).parameters()}
    body = {id(p) for p in backbone.parameters()}
    assert head and body and not head & body
    assert head | body == {id(p) for p in model.parameters()}


def test_registry_is_smp_minus_dpt():
    assert set(list_seg_archs()) == set(smp.MODEL_ARCHITECTURES_MAPPING) - {"dpt"}


@pytest.mark.parametrize("arch,encoder", [(a, "resnet18") for a in SEG_ARCHS.names()]
                         + [("segformer", "mit_b0"), ("unet", "tu-resnet18"), ("fpn", "efficientnet-b0")])
def test_any_input_size(arch, encoder):
    torch.manual_seed(0)
    model = create_seg_model(arch, encoder, num_classes=3).eval()
    seen = []
    model.model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 70, 45))
    assert out.shape == (2, 3, 70, 45)
    assert seen == [(2, 3) + PADDED.get(arch, (96, 64))]
    _check_head_partition(model, model.model.encoder)
    assert model.kernel_head == ("model.decoder", "model.segmentation_head")


def test_pad_amounts_by_hand():
    assert pad_amounts(70, 45, 32) == (26, 19)
    assert pad_amounts(64, 96, 32) == (0, 0)
    assert pad_amounts(70, 45, 16, 128) == (58, 83)
    assert pad_amounts(144, 160, 16, 128) == (0, 0)


def test_pad_to_multiple_pads_with_zeros_and_crops_back():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x)
            return {"out": x * 2}  # torchvision's dict output

    x = torch.randn(1, 2, 70, 45)
    out = PadToMultiple(Probe(), 32)(x)
    assert torch.equal(out, x * 2)
    assert seen[0].shape == (1, 2, 96, 64)
    assert torch.equal(seen[0][..., :70, :45], x)
    assert not seen[0][..., 70:, :].any() and not seen[0][..., :, 45:].any()


def test_pad_to_multiple_equals_the_cropped_model():
    torch.manual_seed(0)
    model = create_seg_model("unet", "resnet18", num_classes=4).eval()
    x = torch.randn(1, 3, 70, 45)
    padded = torch.zeros(1, 3, 96, 64)
    padded[..., :70, :45] = x
    square = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model.model(padded)[..., :70, :45])
        assert torch.equal(model(square), model.model(square))


@pytest.mark.parametrize("name", TV)
def test_torchvision_models(name):
    torch.manual_seed(0)
    model = create_seg_model("unet", name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 45))
    assert out.shape == (1, 5, 70, 45)
    assert model.kernel_head == ("model.classifier",)
    assert getattr(model.model, "aux_classifier", None) is None  # aux_loss off
    _check_head_partition(model, model.model.backbone)


def test_torchvision_arch_rule():
    assert create_seg_model("deeplabv3", "tv:deeplabv3_mobilenet_v3_large", 2).model.__class__.__name__ == "DeepLabV3"
    with pytest.raises(ConfigError, match="--arch fpn: --model tv:lraspp_mobilenet_v3_large is a whole"):
        create_seg_model("fpn", "tv:lraspp_mobilenet_v3_large", 2)


def _timm_resnet18_checkpoint(tmp_path, prefix=""):
    torch.manual_seed(1)
    sd = timm.create_model("resnet18", num_classes=4).state_dict()
    path = tmp_path / "ours.pt"
    torch.save({"model": {prefix + k: v for k, v in sd.items()}, "classes": list("abcd"), "epoch": 2}, path)
    return sd, path


def _expected_encoder_state(sd, encoder):
    """The file's tensors keyed as in the encoder: smp's ResNet = torchvision keys; tu- adds 'model.'."""
    lead = "model." if encoder.startswith("tu-") else ""
    return {lead + k: v for k, v in sd.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("encoder", ["tu-resnet18", "resnet18"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_pretrained_timm_checkpoint(tmp_path, caplog, encoder, prefix):
    sd, path = _timm_resnet18_checkpoint(tmp_path, prefix)
    with caplog.at_level(logging.INFO, logger="kernel"):
        model = create_seg_model("unet", encoder, num_classes=2, pretrained=str(path))
    expected = _expected_encoder_state(sd, encoder)
    got = model.model.encoder.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert f"pretrained: {len(expected)} of {len(expected)} encoder tensors loaded from {path}" in caplog.messages


def test_pretrained_torchvision_resnet_into_smp_encoder(tmp_path):
    torch.manual_seed(2)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    got = create_seg_model("fpn", "resnet18", 2, pretrained=str(tmp_path / "tv.pth")).model.encoder.state_dict()
    expected = _expected_encoder_state(sd, "resnet18")
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("how", ["file", "local-dir"])
def test_pretrained_safetensors(tmp_path, how):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    sd = timm.create_model("resnet18", num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    spec = f"local-dir:{tmp_path}" if how == "local-dir" else str(tmp_path / "model.safetensors")
    got = create_seg_model("unet", "tu-resnet18", 2, pretrained=spec).model.encoder.state_dict()
    expected = _expected_encoder_state(sd, "tu-resnet18")
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_pretrained_from_our_segmentation_checkpoint(tmp_path):
    torch.manual_seed(4)
    donor = create_seg_model("unet", "tu-resnet18", 3)
    torch.save({"model": donor.state_dict()}, tmp_path / "seg.pt")
    torch.manual_seed(5)
    model = create_seg_model("fpn", "tu-resnet18", 2, pretrained=str(tmp_path / "seg.pt"))
    want, got = donor.model.encoder.state_dict(), model.model.encoder.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("donor", ["test_vit", "test_efficientnet"])
def test_pretrained_of_another_architecture(tmp_path, donor):
    torch.save(timm.create_model(donor).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=r"only \d+ of \d+ encoder tensors fit resnet18") as err:
        create_seg_model("unet", "resnet18", 2, pretrained=str(tmp_path / "other.pth"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_adapts_first_conv(tmp_path, encoder, in_chans):
    sd, path = _timm_resnet18_checkpoint(tmp_path)
    model = create_seg_model("unet", encoder, 2, in_chans=in_chans, pretrained=str(path))
    got = model.model.encoder.state_dict()
    conv = ("model." if encoder.startswith("tu-") else "") + "conv1.weight"
    assert got[conv].shape == (64, in_chans, 7, 7)
    assert torch.equal(got[conv], adapt_input_conv(in_chans, sd["conv1.weight"]))
    expected = _expected_encoder_state(sd, encoder)
    assert all(torch.equal(got[k], expected[k]) for k in expected if k != conv)
    assert model(torch.randn(1, in_chans, 40, 40)).shape == (1, 2, 40, 40)


@pytest.mark.parametrize("name", ["tv:lraspp_mobilenet_v3_large", "tv:deeplabv3_mobilenet_v3_large"])
def test_pretrained_torchvision_backbone(tmp_path, name):
    torch.manual_seed(6)
    sd = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    torch.save(sd, tmp_path / "mnv3.pth")
    model = create_seg_model("unet", name, 3, in_chans=1, pretrained=str(tmp_path / "mnv3.pth"))
    # torchvision's segmentation backbone is the classifier's .features (IntermediateLayerGetter keys).
    expected = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    got = model.model.backbone.state_dict()
    assert set(got) == set(expected)
    assert torch.equal(got["0.0.weight"], adapt_input_conv(1, expected["0.0.weight"]))
    assert all(torch.equal(got[k], expected[k]) for k in expected if k != "0.0.weight")


@pytest.mark.parametrize("arch,encoder,closest", [
    ("unett", "resnet18", "'unet'"), ("unet", "resnet18x", "'resnet18'"), ("unet", "convnext_tinyy", "'convnext_tiny'"),
    ("fpn", "tu-efficientnet_b00", "'tu-efficientnet_b0'"), ("unet", "tv:fcn_resnet5", "'tv:fcn_resnet50'")])
def test_unknown_names(arch, encoder, closest):
    with pytest.raises(ConfigError, match=closest) as err:
        create_seg_model(arch, encoder, 2)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch,encoder,works", [
    ("linknet", "mit_b0", "not mit_b*"), ("unet", "tu-test_vit", "not plain ViTs"), ("deeplabv3", "densenet121", "densenet*")])
def test_arch_that_cannot_use_the_encoder(arch, encoder, works):
    with pytest.raises(ConfigError, match=f"--arch {arch}: cannot use --model '{encoder}'") as err:
        create_seg_model(arch, encoder, 2)
    assert works in str(err.value) and "\n" not in str(err.value)


def test_pretrained_errors(tmp_path):
    with pytest.raises(ConfigError, match="need internet"):
        create_seg_model("unet", "resnet18", 2, pretrained="hub")
    with pytest.raises(ConfigError, match="'nope.pth' not found"):
        create_seg_model("unet", "resnet18", 2, pretrained="nope.pth")
    with pytest.raises(ConfigError, match="holds no model.safetensors"):
        create_seg_model("unet", "resnet18", 2, pretrained=f"local-dir:{tmp_path}")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        create_seg_model("unet", "resnet18", 2, pretrained=str(tmp_path / "junk.pth"))


def test_encoder_names():
    assert resolve_encoder("resnet18") == "resnet18"  # smp's own ResNet wins over timm's
    assert resolve_encoder("convnext_atto") == "tu-convnext_atto"
    assert resolve_encoder("tu-resnet18") == "tu-resnet18"
    names = list_encoders("resnet1*")
    assert "resnet18" in names and "tu-resnet18" in names and "resnet50" not in names
    assert list_encoders("tu-convnext_atto*") == ["tu-" + n for n in timm.list_models("convnext_atto*")]
    assert set(smp.encoders.get_encoder_names()) <= set(list_encoders())


@pytest.mark.parametrize("encoder, match, listed", [("resnt18", "resnet18", "resnet18"),
                                                   ("tu-convnext_atto_x", "tu-convnext_atto", "tu-convnext_atto"),
                                                   ("convnext_attoo", "convnext_atto", "tu-convnext_atto")])
def test_unknown_encoder_suggests_a_pattern_that_lists_its_match(capsys, encoder, match, listed):
    """Issue 20, item 14: the suggested --task segment --list-models pattern lists the close match (a bare
    timm name as its ``tu-`` encoder)."""
    import re

    from kernel.train import main

    with pytest.raises(ConfigError) as e:
        resolve_encoder(encoder)
    message = str(e.value)
    assert f"did you mean {match!r}" in message
    pattern = re.search(r"--task segment --list-models '([^']+)'", message).group(1)
    capsys.readouterr()
    assert main(["--task", "segment", "--list-models", pattern]) == 0
    assert listed in capsys.readouterr().out.split()
