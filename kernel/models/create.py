"""Classification models for fine-tuning: timm and torchvision by name, pretrained weights, new heads.

* timm names as they are (``resnet34``, ``convnext_tiny``); torchvision with ``tv:`` (``tv:resnet18``).
* Only classifiers: torchvision's detection, segmentation, video, optical-flow and quantized models are
  refused by kind (segmentation ones belong to ``--task segment``) and :func:`list_models` leaves them out.
* ``pretrained``: a ``.pth``/``.pt``/``.safetensors`` file (a state_dict or one of our
  checkpoints), ``local-dir:PATH`` (timm), ``hub`` (needs internet) or ``none``. On a file,
  the head and the first convolution adapt to ``num_classes`` and ``in_chans``, and one line logs how many
  tensors were loaded, which were skipped (the new head, other shapes) and which the file lacks. ``hub``
  first probes the download host (a short TCP connect), so an offline run fails at once rather than after
  the hub client's retries.
* The head is named on the model (``model.kernel_head``, see :mod:`kernel.models.freeze`), so
  freezing, per-group learning rates and unfreezing work the same for every library.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import socket
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from ..data.images import DEFAULT_DATA_CONFIG, fit_channel_stats
from ..paths import load_tensors
from ..errors import ConfigError
from ..registry import closest

__all__ = ["create_model", "list_models", "list_pattern", "read_weights", "adapt_first_conv", "resolve_data_config",
           "model_summary", "hub_reachable"]

log = logging.getLogger(__name__)

_PREFIXES = ("tv:", "tu-")  # name spaces: torchvision models; timm encoders of a segmentation model


def _tv_classifiers() -> List[str]:
    """torchvision's classification models (the package's top level; not detection, video, ...)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def list_models(pattern: str = "*") -> List[str]:
    """The classifiers ``--model`` builds matching a shell-style pattern: timm names, then ``tv:`` torchvision
    classification names (a pattern starting with ``tv:`` lists only those)."""
    import timm

    tv_pattern = pattern[3:] if pattern.startswith("tv:") else pattern
    names = [] if pattern.startswith("tv:") else timm.list_models(pattern)
    names += ["tv:" + n for n in _tv_classifiers() if fnmatch.fnmatch(n, tv_pattern)]
    return names


def list_pattern(name: str, match: Optional[str], lister: Callable[[str], List[str]]) -> str:
    """A ``--list-models`` pattern to suggest for the unknown ``name``: one that lists ``match`` (its closest
    known name) and its family, else ``name``'s, else everything of its name space; never one listing nothing."""
    source = match or name
    prefix = next((p for p in _PREFIXES if source.startswith(p)), "")
    for pattern in (f"{prefix}*{source[len(prefix):][:4]}*", f"{prefix}*"):
        if lister(pattern):
            return pattern
    return "*"


def _unknown_model(name: str) -> ConfigError:
    known = list_models("*")
    match = closest(name, known)
    hint = f"; did you mean {match!r}?" if match else ""
    return ConfigError(f"--model: unknown model {name!r}{hint} (list them with "
                       f"--list-models '{list_pattern(name, match, list_models)}')")


def _not_a_classifier(name: str) -> Optional[ConfigError]:
    """The refusal of a torchvision model of another kind (detection, video...) than classification, or None."""
    import torchvision

    if name not in torchvision.models.list_models():
        return None
    kind = torchvision.models.get_model_builder(name).__module__.split(".")[2].replace("_", " ")
    also = f"; it belongs to --task segment (--model tv:{name})" if kind == "segmentation" else ""
    return ConfigError(f"--model: tv:{name} is a torchvision {kind} model{also}; --task classify trains "
                       "torchvision classification models (--list-models 'tv:*') and timm models "
                       "(--list-models '*')")


def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` seconds (an offline Kaggle run: no)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_source(name: str) -> Optional[str]:
    """The host ``--pretrained hub`` downloads ``name``'s weights from; None when they are cached already
    (torchvision: in torch.hub's folder; timm: ``HF_HUB_OFFLINE`` set, so the hub client reads its cache),
    or when the name has no weights (the library says so itself, at once)."""
    if name.startswith("tv:"):
        import torchvision

        try:
            url = torchvision.models.get_model_weights(name[3:]).DEFAULT.url
        except (ValueError, KeyError, AttributeError):
            return None
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
        return None if os.path.isfile(cached) else urlparse(url).hostname
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        return None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    return urlparse(cfg.url).hostname if cfg.url else None


def _check_hub(name: str, reachable: Callable[[str], bool]) -> None:
    """Refuse ``--pretrained hub`` at once when the weights' host cannot be reached (and they are not cached)."""
    host = _hub_source(name)
    if host is not None and not reachable(host):
        cache = "" if name.startswith("tv:") else " (timm weights already in the hub cache: set HF_HUB_OFFLINE=1)"
        raise ConfigError(f"--pretrained hub: no network ({host} cannot be reached) to download {name}'s weights; "
                          f"attach a weights file and pass --pretrained PATH, or enable internet{cache}")


def _short(names: List[str], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "") or "none"


def log_loaded(model: nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Log what of the weights file ``path`` (its ``state``) is in ``model``: tensors loaded (equal to the
    file's), skipped (in the file, not loaded: the new head, an adapted first convolution, another shape) and
    missing (not in the file)."""
    own = model.state_dict()
    loaded = {k for k, v in own.items() if k in state and state[k].shape == v.shape and torch.equal(state[k], v)}
    skipped = [k for k in own if k in state and k not in loaded]
    missing = [k for k in own if k not in state]
    log.info("pretrained: %d of %d tensors loaded from %s; not loaded as they are (the new head, an adapted first "
             "conv, other shapes): %s; not in the file: %s", len(loaded), len(own), path, _short(skipped),
             _short(missing))


def read_weights(path: str, option: str = "pretrained") -> Dict[str, torch.Tensor]:
    """A state_dict from a weights file: plain state_dict, ours ({'model': ...}) or safetensors.

    Unreadable, truncated or unsafe files are one-line ConfigErrors (see :func:`kernel.paths.load_tensors`).
    """
    sd = load_tensors(path, option)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"--{option}: {path!r} holds no state_dict (a mapping of names to tensors); save one with "
                          "torch.save(model.state_dict(), ...)")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}


def _get(model: nn.Module, dotted: str) -> nn.Module:
    return model.get_submodule(dotted)


def _set(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Give the first 3-channel convolution ``in_chans`` inputs, adapting its weights (timm's rule)."""
    from timm.models import adapt_input_conv

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(in_chans, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            m.groups, m.bias is not None, m.padding_mode)
            with torch.no_grad():
                new.weight.copy_(adapt_input_conv(in_chans, m.weight))
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            _set(model, name, new)
            return
    raise ConfigError("--in-chans: this model has no 3-channel input convolution to adapt")


def _replace_tv_head(model: nn.Module, num_classes: int, old_classes: int = 1000) -> str:
    """Replace the last Linear/1x1-Conv producing ``old_classes`` outputs (fc, classifier[-1], heads...)."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == old_classes:
            found = name
        elif isinstance(m, nn.Conv2d) and m.out_channels == old_classes and m.kernel_size == (1, 1):
            found = name
    if found is None:
        raise ConfigError("--model: cannot find this torchvision model's classifier to replace")
    m = _get(model, found)
    new = (nn.Linear(m.in_features, num_classes) if isinstance(m, nn.Linear)
           else nn.Conv2d(m.in_channels, num_classes, 1))
    _set(model, found, new)
    return found


def _create_tv(name: str, num_classes: int, in_chans: int, pretrained: str) -> nn.Module:
    import torchvision

    if name not in _tv_classifiers():
        raise _not_a_classifier(name) or _unknown_model("tv:" + name)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    weights = "DEFAULT" if pretrained == "hub" else None
    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    if pretrained not in ("none", "hub"):
        sd = read_weights(pretrained)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:  # a checkpoint of ours: its head/first conv differ; load what fits
            own = model.state_dict()
            fit = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
            if len(fit) < 0.9 * len(own):
                raise ConfigError(f"--pretrained: {pretrained!r} does not match tv:{name} "
                                  f"({len(fit)} of {len(own)} tensors fit); give weights of tv:{name} itself")
            model.load_state_dict(fit, strict=False)
    model.kernel_head = _replace_tv_head(model, num_classes)
    if in_chans != 3:
        adapt_first_conv(model, in_chans)
    return model


def _check_fit(state: Dict[str, torch.Tensor], model: nn.Module, path: str, name: str) -> None:
    """Refuse weights of which fewer than half the model's tensors fit (same name and shape): another model."""
    own = model.state_dict()
    fit = sum(1 for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape))
    if 2 * fit < len(own):
        raise ConfigError(f"--pretrained: {path!r} does not match {name} ({fit} of {len(own)} tensors fit); "
                          f"give weights of {name} itself (or pick the --model they belong to)")


def _create_timm(name: str, num_classes: int, in_chans: int, pretrained: str) -> nn.Module:
    import timm

    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans)
    if pretrained.startswith("local-dir:"):
        if not os.path.isdir(pretrained[len("local-dir:"):]):
            raise ConfigError(f"--pretrained: folder {pretrained[10:]!r} not found")
        model = timm.create_model(pretrained, pretrained=True, **kwargs)
    else:
        if not timm.is_model(name):
            raise _unknown_model(name)
        if pretrained not in ("none", "hub"):
            _check_fit(read_weights(pretrained), timm.create_model(name, **kwargs), pretrained, name)
            # timm adapts the classifier and first conv, and applies the model's own filter_fn.
            kwargs["pretrained_cfg_overlay"] = dict(file=os.path.abspath(pretrained))
        try:
            model = timm.create_model(name, pretrained=pretrained != "none", **kwargs)
        except RuntimeError as e:  # load_state_dict: names or shapes beyond the head and first conv differ
            if pretrained in ("none", "hub"):
                raise
            raise ConfigError(f"--pretrained: {pretrained!r} does not fit {name}: "
                              f"{str(e).strip().splitlines()[0][:160]}") from None
    head = model.pretrained_cfg.get("classifier", "head")
    model.kernel_head = head[0] if isinstance(head, (list, tuple)) else head
    return model


def create_model(name: str, num_classes: int, in_chans: int = 3, pretrained: str = "none",
                 reachable: Callable[[str], bool] = hub_reachable) -> nn.Module:
    """Build ``name`` with a fresh ``num_classes`` head and ``in_chans`` inputs; logits are (N, num_classes).

    ``reachable(host)``: whether ``--pretrained hub`` can download from ``host`` (a probe; tests pass their own).
    """
    is_file = pretrained not in ("none", "hub") and not pretrained.startswith("local-dir:")
    if is_file and not os.path.isfile(pretrained):
        raise ConfigError(f"--pretrained: weights file {pretrained!r} not found; give a .pth/.safetensors "
                          "file, local-dir:PATH, 'hub' or 'none'")
    try:
        if pretrained == "hub":
            _check_hub(name, reachable)
        if name.startswith("tv:"):
            model = _create_tv(name[3:], num_classes, in_chans, pretrained)
        else:
            model = _create_timm(name, num_classes, in_chans, pretrained)
    except (OSError, RuntimeError) as e:
        if pretrained == "hub":  # offline Kaggle/Colab runs land here
            raise ConfigError(f"--pretrained hub: download failed ({type(e).__name__}); with no internet, "
                              "attach a weights file and pass --pretrained PATH") from e
        raise
    if is_file:
        log_loaded(model, read_weights(pretrained), pretrained)
    return model


def resolve_data_config(model: nn.Module, img_size: int = 0, in_chans: int = 3) -> Dict[str, Any]:
    """Input size, mean/std, interpolation and crop_pct from the model's pretrained config."""
    cfg = dict(DEFAULT_DATA_CONFIG)
    pcfg = getattr(model, "pretrained_cfg", None)
    if pcfg:
        import timm.data

        t = timm.data.resolve_model_data_config(model)
        cfg.update(img_size=t["input_size"][-1], mean=t["mean"], std=t["std"],
                   interpolation=t["interpolation"], crop_pct=t["crop_pct"])
    if img_size:
        cfg["img_size"] = img_size
    for k in ("mean", "std"):  # one value per input channel
        cfg[k] = fit_channel_stats(cfg[k], in_chans, k)
    return cfg


def model_summary(model: nn.Module, name: str) -> str:
    """One line: name, total and trainable parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"model {name}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable"
