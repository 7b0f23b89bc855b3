"""Segmentation throughput of kernel.engine.train_one_epoch against a plain hand-written PyTorch loop.

The segmentation twin of ``bench/loop_overhead.py`` (whose plain loop it reuses): the same smp model
from ``kernel.models.segmentation.create_seg_model``, the same in-memory batches of images
(N, 3, H, W) float32 and masks (N, H, W) int64, the loss ``dice+ce`` and the same thread count for
both loops. Our loop runs with the segment task's ``SegMeter`` (multiclass), as a real run does, so
its confusion counts are part of what is timed. The loops alternate for ``--repeats`` rounds (who
goes first flips every round) and the median img/s of each is compared. Goal: ratio >= 0.97.

    python bench/seg_loop.py                                   # CPU, unet/resnet18, 3 classes, 64 px, batch 8
    python bench/seg_loop.py --device cuda --amp --img-size 256 --batch-size 32 --encoder resnet34
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel.engine import StepConfig, amp_name, make_scaler, resolve_amp_dtype, resolve_device, train_one_epoch  # noqa: E402
from kernel.losses import create_loss  # noqa: E402
from kernel.models.segmentation import create_seg_model  # noqa: E402
from kernel.errors import ConfigError  # noqa: E402
from kernel.tasks.segment.metrics import SegMeter  # noqa: E402
from loop_overhead import plain_epoch  # noqa: E402  (bench/ is sys.path[0] when run as a script)

__all__ = ["make_seg_batches", "main"]


def make_seg_batches(n: int, batch_size: int, size: int, num_classes: int,
                     seed: int = 0) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``n`` CPU batches: images (batch_size, 3, size, size) float32 N(0, 1), masks (batch_size, size, size)
    int64 in [0, num_classes), from a fixed seed so every round sees the same data."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, size, size, generator=g),
             torch.randint(0, num_classes, (batch_size, size, size), generator=g)) for _ in range(n)]


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="unet", help="smp decoder (kernel.models.segmentation.SEG_ARCHS)")
    p.add_argument("--encoder", default="resnet18", help="smp encoder, timm name or tu-<name>")
    p.add_argument("--num-classes", type=int, default=3)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=12, help="batches per timed epoch")
    p.add_argument("--repeats", type=int, default=5, help="rounds; each times both loops once")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--amp", action="store_true", help="autocast in the dtype kernel.engine picks (bf16 on CPU)")
    return p.parse_args(argv)


def main(argv: List[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        device = resolve_device(a.device)
    except ConfigError as e:  # e.g. --device cuda without a GPU: one line, not a traceback
        raise SystemExit(f"seg_loop.py: {e}") from None
    dtype = resolve_amp_dtype(device, a.amp)
    torch.manual_seed(0)
    batches = make_seg_batches(a.batches, a.batch_size, a.img_size, a.num_classes)
    loss_fn = create_loss("dice+ce").to(device)
    model = create_seg_model(a.arch, a.encoder, a.num_classes, in_chans=3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ours, plain = [], []
    plain_epoch(model, batches[:2], opt, loss_fn, device, dtype, make_scaler(device, dtype))  # warm-up
    for r in range(a.repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternate who goes first: drift hits both
            if which == 0:
                plain.append(plain_epoch(model, batches, opt, loss_fn, device, dtype, make_scaler(device, dtype)))
            else:
                model.train()
                # A fresh meter per epoch, as a real run: its compute() at the end is timed too.
                m = train_one_epoch(model, batches, opt, StepConfig(loss_fn, device, dtype, make_scaler(device, dtype)),
                                    meter=SegMeter(a.num_classes, "multiclass"))
                ours.append(m.img_per_s)
    o, pl = statistics.median(ours), statistics.median(plain)
    print(f"{a.arch}/{a.encoder} {a.num_classes} classes {a.img_size}px bs{a.batch_size} x{a.batches} batches "
          f"{device} threads={a.threads} precision={amp_name(dtype)} loss=dice+ce")
    print(f"plain loop     {pl:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in plain)})")
    print(f"train_one_epoch{o:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"ratio {o / pl:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
