"""uint8 batches finished on a CUDA device against the float path (issue 23, acceptance 3): how far apart they are.

Run from the repository root, where a CUDA GPU is lent:  python bench/uint8_parity.py [--json OUT]

On a CPU both paths are bit-identical (``tests/test_uint8_batches.py``). On CUDA the float conversion and the
normalization run on the GPU, whose float32 arithmetic may round differently from the CPU's, so the goal is
"within 1e-5". For every task (its built-in smoke data, 32 px, batch 8, 2 workers: pinned memory and the side
stream of ``kernel.data.DeviceLoader``), this prints:

- ``batch``: the largest absolute difference between the two paths' images over two training batches and every
  validation batch, and whether every target (labels, masks with ``ignore_index``, regression values) is equal;
- ``weights``/``predictions``: two 2-epoch ``kernel.train`` runs with ``--deterministic`` (so a path's rerun is
  bit-identical, shown by ``rerun``), the largest absolute difference of their final weights and of their
  validation outputs on the same batch.

It exits 1 when a batch differs by more than ``--tol`` or a target differs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel.config import parse_options  # noqa: E402
from kernel.engine.amp import forward  # noqa: E402
from kernel.run import effective_options, prepare  # noqa: E402
from kernel.tasks import TASKS, get_task  # noqa: E402
from cuda_check import require_cuda  # noqa: E402

__all__ = ["main"]


def _flags(name: str, out: Path, device: str, *extra: str) -> List[str]:
    return ["--task", name, *get_task(name).smoke_flags, "--img-size", "32", "--workers", "2", "--device", device,
            "--batch-size", "8", "--dry-run", "--output", str(out), "--no-tensorboard", "--no-plots",
            "--cache", "off", *extra]


def _batches(p: Any) -> List[Any]:
    p.train_sampler.set_epoch(1)
    out = [b for _, b in zip(range(2), p.train_loader)] + list(p.val_loader)
    p.close_loaders()
    return [tuple(t.cpu() if torch.is_tensor(t) else t for t in b) for b in out]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def batch_parity(name: str, out: Path, device: str) -> Dict[str, Any]:
    on = prepare(effective_options(parse_options(_flags(name, out / "on", device, "--name", "on"))))
    off = prepare(effective_options(parse_options(_flags(name, out / "off", device, "--name", "off",
                                                         "--no-uint8-batches"))))
    diff, same = 0.0, True
    for a, b in zip(_batches(on), _batches(off), strict=True):
        diff = max(diff, _max_diff(a[0], b[0]))
        same = same and a[1].dtype == b[1].dtype and torch.equal(a[1], b[1])
    return {"batch max |diff|": diff, "targets equal": same}


def _weights(run: Path) -> Dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True, map_location="cpu")["model"]


def run_parity(name: str, out: Path, device: str) -> Dict[str, Any]:
    from kernel.train import main as train

    flags = _flags(name, out, device, "--epochs", "2", "--deterministic")
    for run, extra in (("u8", []), ("u8-again", []), ("f32", ["--no-uint8-batches"])):
        if train([*flags, "--name", run, *extra]) != 0:
            raise SystemExit(f"uint8_parity: the {name} run {run} failed")
    u8, again, f32 = (_weights(out / r) for r in ("u8", "u8-again", "f32"))
    worst = lambda a, b: max(_max_diff(a[k], b[k]) for k in a if a[k].is_floating_point())  # noqa: E731
    p = prepare(effective_options(parse_options(_flags(name, out / "view", device, "--name", "view"))))
    batch = next(iter(p.val_loader))
    p.close_loaders()
    outputs = []
    for weights in (u8, f32):
        p.model.load_state_dict(weights)
        p.model.eval()
        with torch.no_grad():
            _, out = forward(p.task.step, p.model, batch, None, p.device, p.amp_dtype)  # the task's own forward
        outputs.append(out.float().cpu())
    return {"weights max |diff|": worst(u8, f32), "rerun weights max |diff|": worst(u8, again),
            "predictions max |diff|": _max_diff(outputs[0], outputs[1])}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tasks", nargs="+", default=TASKS.names(), choices=TASKS.names())
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    require_cuda(a.device, "uint8_parity.py", "--device cpu: exact on a CPU")
    rows: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.tasks:
            rows[name] = {**batch_parity(name, Path(tmp) / name, a.device),
                          **run_parity(name, Path(tmp) / f"{name}-runs", a.device)}
            print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    where = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    print(f"| task ({where}) | batch max abs diff | targets equal | weights max abs diff (rerun) | predictions |")
    print("|---|---:|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['batch max |diff|']:.2e} | {r['targets equal']} | {r['weights max |diff|']:.2e} "
              f"({r['rerun weights max |diff|']:.2e}) | {r['predictions max |diff|']:.2e} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": where, "tol": a.tol, "rows": rows}, indent=1) + "\n")
    bad = [n for n, r in rows.items() if r["batch max |diff|"] > a.tol or not r["targets equal"]]
    if bad:
        print(f"uint8_parity.py: batches beyond {a.tol:g} or targets differing: {', '.join(bad)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
