"""The one check every GPU script of bench/ makes first: is the CUDA device it was asked for there?"""
from __future__ import annotations

import sys

import torch

__all__ = ["require_cuda"]


def require_cuda(device: str, script: str, on_cpu: str) -> None:
    """Exit (status 2, one line) when ``device`` is ``cuda`` and none is visible; ``on_cpu`` says what
    ``--device cpu`` gives instead."""
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{script}: no CUDA device is visible (torch.cuda.is_available() is False); run it where a GPU is "
              f"lent ({on_cpu})", file=sys.stderr)
        raise SystemExit(2)
