"""Throughput of kernel.loop.train_one_epoch against a plain hand-written PyTorch loop.

Same model, same in-memory batches, same thread count; the two loops alternate for
``--repeats`` rounds and the median img/s of each is compared. Goal: ratio >= 0.97.

    python bench/loop_overhead.py                  # CPU, resnet18 at 64 px
    python bench/loop_overhead.py --device cuda --amp --img-size 224 --batch-size 128
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel.models import create_model  # noqa: E402
from kernel.engine import StepConfig, autocast, make_scaler, resolve_amp_dtype, train_one_epoch  # noqa: E402
from kernel.tasks.classify import ClassifyMeter  # noqa: E402


def plain_epoch(model, batches, optimizer, loss_fn, device, dtype, scaler) -> float:
    """The loop a person writes by hand (nanoGPT/torchvision-reference style)."""
    model.train()
    start = time.perf_counter()
    n = 0
    for images, targets in batches:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = resolve_amp_dtype(device, a.amp)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(a.batch_size, 3, a.img_size, a.img_size, generator=g),
                torch.randint(0, 10, (a.batch_size,), generator=g)) for _ in range(a.batches)]
    loss_fn = nn.CrossEntropyLoss()
    model = create_model(a.model, num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ours, plain = [], []
    plain_epoch(model, batches[:2], opt, loss_fn, device, dtype, make_scaler(device, dtype))  # warm-up
    for r in range(a.repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternate who goes first: drift hits both
            if which == 0:
                plain.append(plain_epoch(model, batches, opt, loss_fn, device, dtype, make_scaler(device, dtype)))
            else:
                model.train()
                # With the classify task's meter, as a real run: the accuracy counts are part of our loop.
                m = train_one_epoch(model, batches, opt, StepConfig(loss_fn, device, dtype, make_scaler(device, dtype)),
                                    meter=ClassifyMeter())
                ours.append(m.img_per_s)
    o, pl = statistics.median(ours), statistics.median(plain)
    print(f"{a.model} {a.img_size}px bs{a.batch_size} {device} threads={a.threads} "
          f"precision={'fp32' if dtype is None else str(dtype)[6:]}")
    print(f"plain loop     {pl:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in plain)})")
    print(f"train_one_epoch{o:8.1f} img/s  (runs: {', '.join(f'{x:.1f}' for x in ours)})")
    print(f"ratio {o / pl:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
