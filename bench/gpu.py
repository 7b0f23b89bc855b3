"""GPU training throughput and peak memory: fp32, fp16 + GradScaler, bf16, channels_last, torch.compile.

For each workload (resnet50 at 224 px from ``kernel.models.create_model``; an smp U-Net on resnet34 at
256 px, 3 classes, from ``kernel.models.segmentation.create_seg_model``) and each config, a fresh model
(same seed) is built, trained for ``--warmup`` batches (``--compile-warmup`` under torch.compile) and
then timed with ``kernel.engine.train_one_epoch`` over ``--steps`` batches, ``--repeats`` times; the
median img/s is reported with ``torch.cuda.max_memory_allocated`` (reset before each config, so it
covers the model, optimizer state, gradients, activations and the 2 input batches held on the GPU).
Then one config is timed against the plain hand-written loop of ``bench/loop_overhead.py``
(alternating, medians; goal >= 0.97). Batches are synthetic and live on the device (no data
loading is timed); the optimizer, loss, meter and cudnn.benchmark are a real run's.

    python bench/gpu.py --json bench/gpu.json           # on a machine with a CUDA GPU
    python bench/gpu.py --device cpu --tiny             # smoke test of the code path (no figures)
    python bench/gpu.py --fed --json bench/gpu_fed.json # the real loader feeding the GPU (bench/fed.py)
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel.engine import (StepConfig, amp_name, create_optimizer, make_scaler, param_groups,  # noqa: E402
                           resolve_amp_dtype, train_one_epoch)
from kernel.losses import create_loss  # noqa: E402
from kernel.models import create_model  # noqa: E402
from kernel.models.segmentation import create_seg_model  # noqa: E402
from kernel.paths import atomic_write  # noqa: E402
from kernel.tasks.classify import ClassifyMeter  # noqa: E402
from kernel.tasks.segment.metrics import SegMeter  # noqa: E402
from cuda_check import require_cuda  # noqa: E402
from loop_overhead import plain_epoch  # noqa: E402  (bench/ is sys.path[0] when run as a script)

__all__ = ["CONFIGS", "Workload", "workloads", "config_setup", "run_config", "compare_loops", "render", "main"]

CONFIGS = ("fp32", "fp16", "bf16", "channels_last", "compile")
Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Workload:
    """A model to time: ``build()`` -> nn.Module; ``batch(g)`` -> (images (N,3,S,S) float32, targets) on the
    CPU; ``meter()`` -> the task's meter; ``loss`` a ``kernel.losses.create_loss`` spec."""
    name: str
    build: Callable[[], nn.Module]
    batch_size: int
    img_size: int
    loss: str
    make_batch: Callable[[torch.Generator], Batch]
    meter: Callable[[], Any]


def workloads(a: argparse.Namespace) -> List[Workload]:
    """resnet50 (1000 classes, CE, accuracy meter) and unet/resnet34 (3 classes, dice+ce, SegMeter);
    ``--tiny``: timm's ``test_resnet`` and unet on ``tu-test_resnet``, 32 px."""
    cls_model, seg_encoder = ("test_resnet", "tu-test_resnet") if a.tiny else ("resnet50", "resnet34")
    n_cls, cls_px, seg_px = (10, 32, 32) if a.tiny else (1000, a.cls_size, a.seg_size)
    bc, bs = a.batch_cls, a.batch_seg

    def cls_batch(g: torch.Generator) -> Batch:
        return torch.randn(bc, 3, cls_px, cls_px, generator=g), torch.randint(0, n_cls, (bc,), generator=g)

    def seg_batch(g: torch.Generator) -> Batch:
        return torch.randn(bs, 3, seg_px, seg_px, generator=g), torch.randint(0, 3, (bs, seg_px, seg_px), generator=g)

    return [Workload(cls_model, lambda: create_model(cls_model, num_classes=n_cls), bc, cls_px, "ce",
                     cls_batch, ClassifyMeter),
            Workload(f"unet/{seg_encoder}", lambda: create_seg_model("unet", seg_encoder, 3, in_chans=3), bs, seg_px,
                     "dice+ce", seg_batch, lambda: SegMeter(3, "multiclass"))]


def config_setup(config: str, device: torch.device,
                 cpu_compile: bool = False) -> Tuple[Optional[torch.dtype], bool, bool, str]:
    """(autocast dtype or None, channels_last, compile, skip reason or "") of a config name.

    channels_last and compile run in the AMP dtype the device prefers (``resolve_amp_dtype``: bf16 on
    sm >= 8.0 and on CPU, fp16 below), since that is how they are used. compile is skipped on CPU
    unless ``cpu_compile``: building a U-Net's kernels takes over 5 minutes on 2 cores.
    """
    preferred = resolve_amp_dtype(device, True)
    dtype, cl, compiled = {"fp32": (None, False, False), "fp16": (torch.float16, False, False),
                           "bf16": (torch.bfloat16, False, False), "channels_last": (preferred, True, False),
                           "compile": (preferred, False, True)}[config]
    skip = ""
    if config == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        skip = "skipped: sm<8.0"
    elif compiled and device.type == "cpu" and not cpu_compile:
        skip = "skipped: torch.compile is not timed on CPU (minutes to build; --cpu-compile forces it)"
    return dtype, cl, compiled, skip


def _fresh(device: torch.device) -> None:
    """Free the last config's tensors and restart the peak-memory count."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _setup(w: Workload, device: torch.device, channels_last: bool, compiled: bool, opt: str):
    """Model (seed 0), the module to train (compiled or not), optimizer, loss and 2 device batches,
    built as kernel.run.prepare does (to device, channels_last, then torch.compile)."""
    torch.manual_seed(0)
    model = w.build().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if compiled else model
    optimizer = create_optimizer(opt, param_groups(model, 0.01), 1e-3, 0.9)
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    pool = [w.make_batch(g) for _ in range(2)]
    pool = [(x.to(device, memory_format=fmt), y.to(device)) for x, y in pool]
    return train_model, optimizer, create_loss(w.loss).to(device), pool


def _cycle(pool: List[Batch], n: int) -> List[Batch]:
    return [pool[i % len(pool)] for i in range(n)]


def run_config(w: Workload, config: str, a: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """One table row: median img/s of ``train_one_epoch`` over ``a.repeats`` epochs and the peak memory."""
    dtype, cl, compiled, skip = config_setup(config, device, a.cpu_compile)
    row: Dict[str, Any] = {"model": w.name, "config": config, "precision": amp_name(dtype), "channels_last": cl,
                           "compile": compiled, "batch_size": w.batch_size, "img_size": w.img_size,
                           "img_per_s": None, "runs": [], "peak_mib": None, "note": skip}
    if skip:
        return row
    _fresh(device)
    model, optimizer, loss_fn, pool = _setup(w, device, cl, compiled, a.opt)
    scaler = make_scaler(device, dtype)  # one per run, as a real run: warm-up settles its scale
    cfg = StepConfig(loss_fn, device, dtype, scaler, channels_last=cl)
    model.train()
    train_one_epoch(model, _cycle(pool, a.compile_warmup if compiled else a.warmup), optimizer, cfg)
    for _ in range(a.repeats):
        row["runs"].append(train_one_epoch(model, _cycle(pool, a.steps), optimizer, cfg, meter=w.meter()).img_per_s)
    row["img_per_s"] = statistics.median(row["runs"])
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return row


def compare_loops(w: Workload, config: str, a: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """Our loop (with the task's meter) against the plain loop on one config; the two alternate who goes
    first each round, as in bench/loop_overhead.py."""
    dtype, cl, compiled, skip = config_setup(config, device, a.cpu_compile)
    out: Dict[str, Any] = {"model": w.name, "config": config, "precision": amp_name(dtype), "plain": [],
                           "ours": [], "ratio": None, "note": skip}
    if skip:
        return out
    _fresh(device)
    model, optimizer, loss_fn, pool = _setup(w, device, cl, compiled, a.opt)
    scaler = make_scaler(device, dtype)
    batches = _cycle(pool, a.steps)
    plain_epoch(model, _cycle(pool, a.compile_warmup if compiled else a.warmup), optimizer, loss_fn, device, dtype,
                scaler)
    for r in range(a.ratio_repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternate who goes first: drift hits both
            if which == 0:
                out["plain"].append(plain_epoch(model, batches, optimizer, loss_fn, device, dtype, scaler))
            else:
                model.train()
                cfg = StepConfig(loss_fn, device, dtype, scaler, channels_last=cl)
                out["ours"].append(train_one_epoch(model, batches, optimizer, cfg, meter=w.meter()).img_per_s)
    out["ratio"] = statistics.median(out["ours"]) / statistics.median(out["plain"])
    return out


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render(header: Dict[str, Any], rows: List[Dict[str, Any]], ratio: Optional[Dict[str, Any]]) -> str:
    """The results as markdown: a header line, the config table and the loop-vs-plain line."""
    lines = [", ".join(f"{k}: {v}" for k, v in header.items()), "",
             "| model | config | precision | channels_last | compile | batch | img/s | peak memory (MiB) | note |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        yes = {k: "yes" if r[k] else "no" for k in ("channels_last", "compile")}
        lines.append(f"| {r['model']}, {r['img_size']} px | {r['config']} | {r['precision']} | "
                     f"{yes['channels_last']} | {yes['compile']} | {r['batch_size']} | "
                     f"{_fmt(r['img_per_s'])} | {_fmt(r['peak_mib'], 0)} | {r['note']} |")
    if ratio is not None:
        lines += ["", "| loop comparison | plain loop img/s | train_one_epoch img/s | ratio (goal >= 0.97) |",
                  "|---|---:|---:|---:|"]
        med = {k: statistics.median(ratio[k]) if ratio[k] else None for k in ("plain", "ours")}
        note = f" {ratio['note']}" if ratio["note"] else ""
        lines.append(f"| {ratio['model']}, {ratio['config']} ({ratio['precision']}){note} | "
                     f"{_fmt(med['plain'])} | {_fmt(med['ours'])} | {_fmt(ratio['ratio'], 3)} |")
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu only with --tiny (a smoke test)")
    p.add_argument("--tiny", action="store_true", help="tiny models, 32 px, 2 steps: checks the code path, no figures")
    p.add_argument("--models", nargs="+", choices=["resnet50", "unet"], default=["resnet50", "unet"],
                   help="workloads to time (both); the loop comparison is --ratio-model's either way")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS), help="configs to time (all)")
    p.add_argument("--batch-cls", type=int, default=None, help="resnet50 batch size (128; --tiny: 4)")
    p.add_argument("--batch-seg", type=int, default=None, help="U-Net batch size (32; --tiny: 2)")
    p.add_argument("--cls-size", type=int, default=224, help="resnet50 image size")
    p.add_argument("--seg-size", type=int, default=256, help="U-Net image size")
    p.add_argument("--steps", type=int, default=None, help="timed batches per epoch (30; --tiny: 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per config, median (3; --tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed batches first (5; --tiny: 1)")
    p.add_argument("--compile-warmup", type=int, default=None, help="untimed batches under compile (15; --tiny: 2)")
    p.add_argument("--ratio-model", default="resnet50", choices=["resnet50", "unet", "none"],
                   help="workload of the loop-vs-plain comparison (none: skip it)")
    p.add_argument("--ratio-config", default="amp", choices=["amp", *CONFIGS],
                   help="its config; amp: the AMP dtype the device prefers")
    p.add_argument("--ratio-repeats", type=int, default=None, help="rounds of the comparison (5; --tiny: 1)")
    p.add_argument("--opt", default="adamw", help="optimizer by kernel.engine name (a real run's default: adamw)")
    p.add_argument("--cpu-compile", action="store_true", help="time torch.compile on CPU too (slow)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (rewritten after every row)")
    a = p.parse_args(argv)
    defaults = dict(batch_cls=(4, 128), batch_seg=(2, 32), steps=(2, 30), repeats=(1, 3), warmup=(1, 5),
                    compile_warmup=(2, 15), ratio_repeats=(1, 5))
    for name, (tiny, full) in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, tiny if a.tiny else full)
    return a


def header(a: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    """What the figures depend on: the device, the library versions, the run's shape."""
    import segmentation_models_pytorch as smp
    import timm

    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        where = {"GPU": torch.cuda.get_device_name(device), "sm": f"{cap[0]}.{cap[1]}", "CUDA": torch.version.cuda,
                 "cuDNN": torch.backends.cudnn.version(), "cudnn.benchmark": True,
                 # fp32 rows use PyTorch's defaults: TF32 convolutions on sm >= 8.0, fp32 matmuls
                 "TF32 conv/matmul": f"{torch.backends.cudnn.allow_tf32}/{torch.backends.cuda.matmul.allow_tf32}"}
    else:
        where = {"device": f"cpu (--tiny smoke test, threads={a.threads}: not figures)"}
    return {**where, "torch": torch.__version__, "timm": timm.__version__, "smp": smp.__version__,
            "batch sizes": f"classify {a.batch_cls}, segment {a.batch_seg}", "optimizer": a.opt,
            "steps x repeats": f"{a.steps} x {a.repeats} (median)",
            "warm-up": f"{a.warmup} batches ({a.compile_warmup} under compile)",
            "loop comparison": f"{a.ratio_repeats} alternating rounds of {a.steps} batches"}


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--fed" in argv:  # the real loader feeding the model: bench/fed.py
        from fed import main as fed_main

        return fed_main([x for x in argv if x != "--fed"])
    a = parse_args(argv)
    require_cuda(a.device, "gpu.py", "or smoke-test the code path with --device cpu --tiny")
    if a.device == "cpu" and not a.tiny:
        print("gpu.py: --device cpu is only a smoke test; add --tiny (CPU throughput is bench/loop_overhead.py's)",
              file=sys.stderr)
        raise SystemExit(2)
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True  # as kernel.run.prepare sets it for a non-deterministic run
    head, rows, ratio = header(a, device), [], None
    every = dict(zip(("resnet50", "unet"), workloads(a)))
    work = [every[key] for key in a.models]

    def save() -> None:
        if a.json:
            data = json.dumps({"header": head, "rows": rows, "loop_vs_plain": ratio}, indent=1, default=str)
            atomic_write(a.json, lambda tmp: Path(tmp).write_text(data + "\n"))

    for w in work:
        for config in a.configs:
            rows.append(run_config(w, config, a, device))
            r = rows[-1]
            print(f"{w.name} {config}: {_fmt(r['img_per_s'])} img/s, peak {_fmt(r['peak_mib'], 0)} MiB {r['note']}",
                  file=sys.stderr, flush=True)
            save()  # a run cut short (a device's time limit) still leaves the rows it finished
    if a.ratio_model != "none":
        config = a.ratio_config
        if config == "amp":
            config = "bf16" if resolve_amp_dtype(device, True) == torch.bfloat16 else "fp16"
        ratio = compare_loops(every[a.ratio_model], config, a, device)
        save()
    print(render(head, rows, ratio))


if __name__ == "__main__":
    main()
