"""``--summary``: a layer table (layer, output shape, parameters, trainable) from one forward pass.

Forward hooks on every module that owns parameters directly or has no children (no extra
dependency such as torchinfo). Each parameter is counted once, at the first module that owns
it, so the total equals ``sum(p.numel() for p in model.parameters())`` even with tied weights
or parameters held by container modules (ViT's ``cls_token``, ConvNeXt's layer-scale gamma).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["summary_table", "layer_rows"]


def _shape(x: Any) -> str:
    """Shape text of a module output: a tensor, or the first tensor of a tuple/list/dict (+ '...')."""
    if torch.is_tensor(x):
        return str(list(x.shape))
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)) and x:
        first = _shape(x[0])
        return first + (" ..." if len(x) > 1 else "")
    return "-"


def layer_rows(model: nn.Module, input_shape: Sequence[int]) -> List[Dict[str, Any]]:
    """One dict per reported module, in call order: name, type, shape, params, trainable (params)."""
    seen_params: set = set()
    owned: Dict[str, Tuple[int, int]] = {}  # module name -> (params, trainable), each parameter once
    modules = dict(model.named_modules())
    for name, m in modules.items():
        n = t = 0
        for p in m.parameters(recurse=False):
            if id(p) not in seen_params:
                seen_params.add(id(p))
                n += p.numel()
                t += p.numel() if p.requires_grad else 0
        owned[name] = (n, t)
    # The root too when it owns parameters itself (ViT's cls_token, pos_embed) or is a single layer.
    report = [name for name, m in modules.items() if owned[name][0] or (name and not list(m.children()))]
    if not report:
        report = [""]
    shapes: Dict[str, str] = {}
    order: List[str] = []

    def hook(name: str):
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            if name not in shapes:  # a module called twice keeps its first shape
                shapes[name] = _shape(out)
                order.append(name)
        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in report]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()  # eval: BatchNorm statistics stay untouched and batch 1 is fine
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    names = order + [n for n in report if n not in shapes]  # never-called modules last, still counted
    return [{"name": n or type(model).__name__, "type": type(modules[n]).__name__, "shape": shapes.get(n, "-"),
             "params": owned[n][0], "trainable": owned[n][1]} for n in names]


def summary_table(model: nn.Module, input_shape: Sequence[int]) -> str:
    """The layer table for ``model`` on an input of ``input_shape`` (C, H, W), with totals."""
    rows = layer_rows(model, input_shape)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counted = sum(r["params"] for r in rows)
    header = ("layer", "output shape", "parameters", "trainable")
    body = []
    for r in rows:
        flag = "-" if not r["params"] else ("yes" if r["trainable"] == r["params"] else
                                            "no" if not r["trainable"] else "partly")
        body.append((f"{r['name']} ({r['type']})", r["shape"], f"{r['params']:,}", flag))
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(4)]
    line = "-" * (sum(widths) + 6)

    def fmt(cols: Sequence[str]) -> str:
        return "  ".join([cols[0].ljust(widths[0]), cols[1].ljust(widths[1]), cols[2].rjust(widths[2]),
                          cols[3]]).rstrip()

    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
    lines = [fmt(header), line, *(fmt(b) for b in body), line,
             f"input: {list(input_shape)}  (batch 1 shown)",
             f"total params: {total:,}",
             f"trainable params: {trainable:,}",
             f"non-trainable params: {total - trainable:,}",
             f"parameter size: {size_mb:.2f} MB"]
    if counted != total:  # cannot happen with the once-per-parameter rule; say so if it ever does
        lines.append(f"warning: layers above hold {counted:,} parameters, the model {total:,}")
    return "\n".join(lines)
