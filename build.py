#!/usr/bin/env python3
"""Pack the ``kernel`` bundle for Kaggle: a code dataset and a one-file kernel, validated and pushed.

``python build.py [--config run.yaml] [--out dist] [--owner NAME] [--push]`` writes::

    dist/kernel/train.py              one self-contained script: the run config baked in at the top,
                                      every module of kernel/ (and the user modules the config names)
                                      embedded as readable source and served by an import hook
    dist/kernel/kernel-metadata.json  from ./kernel-metadata.json: code_file, sources, GPU, internet
    dist/dataset/dataset-metadata.json
    dist/dataset/kernel/...           the package itself, importable from a notebook
    dist/dataset/vendor/<package>/... pure-Python packages Kaggle's image lacks (imgaug)
    dist/dataset/README.md

Everything is checked before anything is written, with the same rules as the official ``kaggle``
client plus a few of our own (placeholder owner, local absolute paths, secrets). Each problem is
one line naming the field, the problem and the fix; the exit status is then 2. Identical inputs
give byte-identical output. The work is done by :mod:`kernel.packer`; this file only wires it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from kernel.cli import OneLineParser
from kernel.packer import BuildError, next_steps, plan, push, write
from kernel.registry import ConfigError

__all__ = ["PROJECT", "main"]

PROJECT = Path(__file__).resolve().parent


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python build.py",
                      description="Pack the bundle into a Kaggle code dataset and a one-file kernel.")
    p.add_argument("--config", type=Path, help="run config (YAML/JSON) to bake into train.py; "
                   "an optional `kaggle:` section adds kernel-metadata fields such as dataset_sources")
    p.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    p.add_argument("--owner", help="your Kaggle username: replaces the owner in both ids (instead of editing "
                   "the templates)")
    p.add_argument("--push", action="store_true", help="then upload the dataset and push the kernel with the "
                   "kaggle CLI")
    p.add_argument("-m", "--message", help="dataset version message for --push")
    p.add_argument("--no-vendor", action="store_true", help="do not vendor packages into the dataset")
    return p


def _errors(lines: Sequence[str]) -> int:
    for line in lines:
        print(f"build.py: error: {line}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None, project: Path = PROJECT) -> int:
    """Build (and optionally push); user errors print one line each and return 2."""
    start = time.perf_counter()
    try:
        args = _parser().parse_args(argv)
        bundle = plan(args.config, project=project, owner=args.owner, vendor=not args.no_vendor)
        write(bundle, args.out, project)
    except BuildError as e:
        return _errors(e.problems)
    except ConfigError as e:
        return _errors([str(e)])
    for w in bundle.warnings:
        print(f"build.py: warning: {w}", file=sys.stderr)
    vendored = f" (with vendor/{', vendor/'.join(sorted(bundle.vendored))})" if bundle.vendored else ""
    print(f"Built kernel {bundle.version} in {time.perf_counter() - start:.2f} s (sources sha256 "
          f"{bundle.sha256[:12]}):\n"
          f"  {args.out / 'kernel' / 'train.py'}  {bundle.script_bytes / 1024:.0f} KB, {bundle.module_count} "
          f"embedded modules; kernel {bundle.kernel_id}\n"
          f"  {args.out / 'dataset'}  code dataset {bundle.dataset_id}{vendored}")
    if not args.push:
        print("Next steps:\n  " + "\n  ".join(next_steps(bundle, args.out)))
        return 0
    try:
        return push(bundle, args.out, args.message)
    except BuildError as e:
        return _errors(e.problems)


if __name__ == "__main__":
    sys.exit(main())
