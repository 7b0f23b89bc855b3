"""Segmentation models: smp decoders on smp/timm encoders, or torchvision's segmentation models.

* ``arch`` (``--arch``) names an smp decoder in :data:`SEG_ARCHS` (``unet``, ``fpn``, ``deeplabv3plus``...).
* ``encoder`` (``--model``) is an smp encoder name (``resnet18``, ``efficientnet-b0``, ``mit_b0``), any
  timm model name (built as smp's timm-universal encoder ``tu-<name>``) or ``tu-<name>`` as is.
  smp's own encoder wins when a name is both (``resnet18`` is smp's torchvision-style ResNet).
* ``tv:<name>`` (``tv:deeplabv3_resnet50``, ``tv:fcn_resnet50``, ``tv:lraspp_mobilenet_v3_large``...) is a
  whole torchvision segmentation model, decoder included, so ``arch`` is not used: it must be the CLI
  default (:data:`DEFAULT_ARCH`) or the torchvision model's own family (``deeplabv3``, ``fcn``, ``lraspp``).
* Every model comes wrapped in :class:`PadToMultiple`: any H x W goes in, (N, num_classes, H, W) logits
  come out. Its ``kernel_head`` is a tuple of dotted submodule names (from the wrapper) that make up the
  non-backbone part: ``("model.decoder", "model.segmentation_head")`` for smp, ``("model.classifier",)``
  for torchvision; the backbone is everything else (``model.encoder`` / ``model.backbone``).
* ``pretrained``: ``none``; a weights file (``.pth``/``.pt``/``.bin``/``.safetensors``: a timm or
  torchvision classifier's state_dict, or a checkpoint of ours) or ``local-dir:PATH`` (a folder holding
  ``model.safetensors`` or ``pytorch_model.bin``), loaded into the backbone only (see
  :func:`load_backbone_weights`). ``hub`` is refused: models are built offline.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .create import adapt_first_conv, list_pattern, read_weights
from ..errors import ConfigError
from ..registry import Registry, closest, did_you_mean

__all__ = ["SegArch", "SEG_ARCHS", "DEFAULT_ARCH", "PadToMultiple", "pad_amounts", "create_seg_model",
           "list_seg_archs", "list_encoders", "list_seg_models", "resolve_encoder", "fit_backbone_state",
           "load_backbone_weights"]

log = logging.getLogger(__name__)

DEFAULT_ARCH = "unet"


@dataclass(frozen=True)
class SegArch:
    """An smp architecture: its class name in ``segmentation_models_pytorch`` and its input needs.

    ``min_feature``: the smallest size (pixels) the deepest feature map may have; the input is padded
    up to ``min_feature * output_stride`` when smaller. ``works_with`` goes into the error message.
    """
    smp_class: str
    works_with: str
    min_feature: int = 1


_ANY = "CNN or hierarchical encoders (resnet*, efficientnet-*, mit_b*, tu-<timm CNN/convnext/swin>), not plain ViTs"
_NO_MIT = "CNN encoders with a stride-2 stage (resnet*, efficientnet-*, tu-<timm CNN>), not mit_b* or ViTs"
_DILATED = ("encoders that can be dilated (resnet*, resnext*, se_*, efficientnet-*, mobilenet_v2, mit_b*, "
            "tu-<timm CNN with output_stride>), not vgg*, densenet*, inception*, xception, swin or ViTs")

SEG_ARCHS: Registry = Registry("segmentation architecture (--arch)")
SEG_ARCHS.register("unet", SegArch("Unet", _ANY))
SEG_ARCHS.register("unetplusplus", SegArch("UnetPlusPlus", _NO_MIT), aliases=("unet++",))
SEG_ARCHS.register("fpn", SegArch("FPN", _ANY))
SEG_ARCHS.register("deeplabv3", SegArch("DeepLabV3", _DILATED))
SEG_ARCHS.register("deeplabv3plus", SegArch("DeepLabV3Plus", _DILATED), aliases=("deeplabv3+",))
SEG_ARCHS.register("linknet", SegArch("Linknet", _NO_MIT))
SEG_ARCHS.register("pspnet", SegArch("PSPNet", _ANY))
SEG_ARCHS.register("manet", SegArch("MAnet", _ANY))
# PAN's feature-pyramid attention max-pools the deepest map three times (2x each): it needs >= 8 px.
SEG_ARCHS.register("pan", SegArch("PAN", _DILATED, min_feature=8))
SEG_ARCHS.register("upernet", SegArch("UPerNet", _ANY))
SEG_ARCHS.register("segformer", SegArch("Segformer", _ANY))
# smp's DPT is left out: it only takes timm ViT encoders at a fixed input size.

# torchvision dilates ResNet backbones to stride 8 and MobileNetV3 ones to stride 16.
_TV_STRIDE = {"resnet": 8, "mobilenet_v3": 16}


def list_seg_archs() -> List[str]:
    """The smp architecture names accepted by :func:`create_seg_model` (aliases left out)."""
    return SEG_ARCHS.names()


def list_encoders(pattern: str = "*") -> List[str]:
    """smp encoder names, then ``tu-<timm name>`` for timm models, matching a shell-style pattern.

    A bare timm name (without ``tu-``) is accepted by :func:`create_seg_model` too.
    """
    import segmentation_models_pytorch as smp
    import timm

    names = [n for n in smp.encoders.get_encoder_names() if fnmatch.fnmatch(n, pattern)]
    timm_pattern = pattern[3:] if pattern.startswith("tu-") else pattern
    return names + ["tu-" + n for n in timm.list_models(timm_pattern)]


def list_seg_models(pattern: str = "*") -> List[str]:
    """What ``--model`` takes with ``--task segment``, matching a shell-style pattern: encoders
    (:func:`list_encoders`), then the ``tv:`` torchvision segmentation models (a ``tv:`` pattern: only those)."""
    import torchvision

    tv = torchvision.models.list_models(module=torchvision.models.segmentation)
    tv_pattern = pattern[3:] if pattern.startswith("tv:") else pattern
    return ([] if pattern.startswith("tv:") else list_encoders(pattern)) + \
        ["tv:" + n for n in tv if fnmatch.fnmatch(n, tv_pattern)]


def resolve_encoder(encoder: str) -> str:
    """The smp ``encoder_name`` for ``--model``: smp's own name, or ``tu-<timm name>``."""
    import segmentation_models_pytorch as smp
    import timm

    smp_names = smp.encoders.get_encoder_names()
    if encoder in smp_names:
        return encoder
    bare = encoder[3:] if encoder.startswith("tu-") else encoder
    if timm.is_model(bare):
        return "tu-" + bare
    timm_names = timm.list_models()
    match = closest(encoder, ["tu-" + n for n in timm_names] if encoder.startswith("tu-") else smp_names + timm_names)
    hint = f"; did you mean {match!r}?" if match else ""
    raise ConfigError(f"--model: unknown encoder {encoder!r}{hint} (give an smp encoder, a timm model name "
                      f"or tu-<timm name>; list them with --task segment --list-models "
                      f"'{list_pattern(encoder, match, list_seg_models)}')")


def pad_amounts(height: int, width: int, divisor: int, min_size: int = 0) -> Tuple[int, int]:
    """Bottom and right padding that makes (height, width) multiples of ``divisor``, at least ``min_size``."""
    def pad(size: int) -> int:
        target = max(size, min_size)
        return -(-target // divisor) * divisor - size
    return pad(height), pad(width)


class PadToMultiple(nn.Module):
    """Zero-pad the input (bottom/right) to what ``model`` needs, crop the logits back to the input size.

    ``model`` maps (N, C, H', W') float to (N, K, H', W') logits, or to torchvision's ``{"out": logits}``;
    this module maps any (N, C, H, W) to (N, K, H, W). The input itself is never cropped or resized.
    """

    def __init__(self, model: nn.Module, divisor: int, min_size: int = 0):
        super().__init__()
        self.model = model
        self.divisor = int(divisor)
        self.min_size = int(min_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = pad_amounts(height, width, self.divisor, self.min_size)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        out = self.model(x)
        if isinstance(out, dict):
            out = out["out"]
        return out[..., :height, :width]

    def extra_repr(self) -> str:
        return f"divisor={self.divisor}, min_size={self.min_size}"


def _build_smp(arch: str, encoder: str, num_classes: int, in_chans: int) -> PadToMultiple:
    import segmentation_models_pytorch as smp

    name = SEG_ARCHS.canonical(arch.lower())
    spec = SEG_ARCHS.get(name)
    encoder_name = resolve_encoder(encoder)
    try:
        model = getattr(smp, spec.smp_class)(encoder_name=encoder_name, encoder_weights=None,
                                             in_channels=in_chans, classes=num_classes)
    except Exception as e:  # smp/timm reject unusable encoder/arch pairs with assorted error types
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"--arch {name}: cannot use --model {encoder!r} ({type(e).__name__}: {reason}); "
                          f"{name} works with {spec.works_with}") from e
    stride = model.encoder.output_stride
    wrapper = PadToMultiple(model, stride, spec.min_feature * stride)
    wrapper.kernel_head = ("model.decoder", "model.segmentation_head")
    return wrapper


def _build_tv(arch: str, name: str, num_classes: int, in_chans: int) -> PadToMultiple:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models.segmentation)
    if name not in known:
        hint = did_you_mean("tv:" + name, ["tv:" + n for n in known])
        raise ConfigError(f"--model: unknown torchvision segmentation model 'tv:{name}'{hint} "
                          f"(known: {', '.join('tv:' + n for n in known)})")
    family = name.split("_")[0]
    if arch.lower() not in (DEFAULT_ARCH, family):
        raise ConfigError(f"--arch {arch}: --model tv:{name} is a whole torchvision model with its own "
                          f"{family} decoder; leave --arch at {DEFAULT_ARCH!r} (or {family!r}), or give an "
                          "smp/timm encoder in --model to use --arch")
    # num_classes sizes the final classifier conv(s) (both of LRASPP's); no aux head, no downloads.
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                         num_classes=num_classes, aux_loss=False)
    if in_chans != 3:
        adapt_first_conv(model, in_chans)
    stride = next((s for key, s in _TV_STRIDE.items() if key in name), 32)
    wrapper = PadToMultiple(model, stride)
    wrapper.kernel_head = ("model.classifier",)
    return wrapper


def _candidate_keys(key: str) -> Iterator[str]:
    """Where a weights-file key may live in a backbone's state_dict, most literal first."""
    for prefix in ("model.encoder.", "model.backbone.", "encoder.", "backbone."):  # our own seg checkpoints
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    yield key  # smp's native encoders subclass the torchvision/timm classifier: same keys, minus the head
    yield "model." + key  # tu- encoders hold timm's features_only model as .model
    if key.count(".") >= 2:
        yield "model." + key.replace(".", "_", 1)  # timm's FeatureListNet flattens stages.0 into stages_0
    yield "model.model." + key  # timm's FeatureGetterNet wraps the classifier once more
    if key.startswith("features."):
        yield key[len("features."):]  # torchvision's MobileNetV3 backbones are the classifier's .features


def _fit_tensor(value: torch.Tensor, target: torch.Tensor):
    """``value`` shaped like ``target``: as is, a 3-channel first conv adapted to target's inputs, or None."""
    if value.shape == target.shape:
        return value
    if (value.ndim == 4 and target.ndim == 4 and value.shape[1] == 3 and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]):
        from timm.models import adapt_input_conv
        return adapt_input_conv(target.shape[1], value)
    return None


def fit_backbone_state(state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The tensors of ``state`` (a weights file) that fit ``own`` (a backbone's state_dict), keyed as in ``own``.

    Keys are mapped by :func:`_candidate_keys`; classifier/head keys find no place and are dropped, and so
    are tensors of another shape, except 3-channel first convs (O, 3, kH, kW), which are adapted to
    ``own``'s (O, C, kH, kW) by timm's ``adapt_input_conv``.
    """
    fit: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for cand in _candidate_keys(key):
            if cand in own and cand not in fit:
                value_fit = _fit_tensor(value, own[cand])
                if value_fit is not None:
                    fit[cand] = value_fit
                    break
    return fit


def load_backbone_weights(backbone: nn.Module, path: str, label: str) -> int:
    """Load what fits of the weights file ``path`` into ``backbone``; return how many tensors loaded.

    Fewer than half of the backbone's tensors fitting means the file is of another architecture.
    """
    state = read_weights(path)  # one-line errors for missing, cut, unsafe or foreign files
    own = backbone.state_dict()
    fit = fit_backbone_state({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, own)
    if 2 * len(fit) < len(own):
        raise ConfigError(f"--pretrained {path!r}: only {len(fit)} of {len(own)} encoder tensors fit {label}; "
                          "is it a checkpoint of another architecture? (a timm model's weights fit "
                          "--model tu-<its timm name>)")
    backbone.load_state_dict(fit, strict=False)
    log.info("pretrained: %d of %d encoder tensors loaded from %s", len(fit), len(own), path)
    return len(fit)


def _weights_file(pretrained: str) -> str:
    """The weights file behind ``--pretrained`` (a file, or ``local-dir:PATH``'s model file)."""
    if pretrained == "hub":
        raise ConfigError("--pretrained hub: segmentation models are built offline (smp/torchvision downloads "
                          "need internet); pass a local weights file (a timm/torchvision classifier or one of "
                          "our checkpoints) with --pretrained PATH")
    if pretrained.startswith("local-dir:"):
        folder = pretrained[len("local-dir:"):]
        for file in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(folder, file)):
                return os.path.join(folder, file)
        raise ConfigError(f"--pretrained: folder {folder!r} holds no model.safetensors or pytorch_model.bin")
    if not os.path.isfile(pretrained):
        raise ConfigError(f"--pretrained: weights file {pretrained!r} not found; give a .pth/.pt/.bin/"
                          ".safetensors file, local-dir:PATH or 'none'")
    return pretrained


def create_seg_model(arch: str, encoder: str, num_classes: int, in_chans: int = 3,
                     pretrained: str = "none") -> nn.Module:
    """Build a segmentation model: (N, in_chans, H, W) float -> (N, num_classes, H, W) logits, any H x W.

    ``arch``/``encoder``/``pretrained``: see the module docstring. The result is a :class:`PadToMultiple`
    whose ``kernel_head`` tuple names the head submodules; smp encoders are built with
    ``encoder_weights=None`` and torchvision models with ``weights=None`` (offline).
    """
    weights = None if pretrained == "none" else _weights_file(pretrained)
    if encoder.startswith("tv:"):
        wrapper = _build_tv(arch, encoder[3:], num_classes, in_chans)
        backbone, label = wrapper.model.backbone, encoder
    else:
        wrapper = _build_smp(arch, encoder, num_classes, in_chans)
        backbone, label = wrapper.model.encoder, resolve_encoder(encoder)
    if weights is not None:
        load_backbone_weights(backbone, weights, label)
    return wrapper
