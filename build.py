#!/usr/bin/env python3
"""Pack the ``kernel`` bundle for Kaggle: a code dataset and a one-file kernel, validated and pushed.

``python build.py (--config run.yaml | --demo) [--out dist] [--owner NAME] [--push [--wait] [--until-done N]]``
writes::

    dist/kernel/train.py              one self-contained script: the run config baked in at the top,
                                      every module of kernel/ (and the user modules the config names)
                                      embedded as readable source and served by an import hook
    dist/kernel/kernel-metadata.json  from ./kernel-metadata.json: code_file, sources, GPU, internet
    dist/dataset/dataset-metadata.json
    dist/dataset/kernel/...           the package itself, importable from a notebook
    dist/dataset/vendor/<package>/... pure-Python packages Kaggle's image lacks (imgaug, smp)
    dist/dataset/README.md

Everything is checked before anything is written, with the same rules as the official ``kaggle``
client plus a few of our own (placeholder owner, local absolute paths, secrets). Each problem is
one line naming the field, the problem and the fix; the exit status is then 2. Identical inputs
give byte-identical output. ``--wait`` then follows the pushed kernel to its end and downloads its
outputs to ``outputs/<kernel-slug>/v<N>/`` (exit 1 when it failed); ``--until-done N`` pushes it again
while a version stops on its time limit. ``--publish-model RUN --model-slug NAME`` instead uploads a
trained run as a Kaggle Model (:mod:`kernel.packer.kaggle_models`) and prints its ``model_sources`` entry.
``--submit COMP`` submits what the run produced (the downloaded submission.csv, or with ``--code``/``--inference``
the kernel version) and waits for the score (exit 1 on Kaggle's ERROR); ``--ledger [COMP]`` prints the CV-vs-LB
ledger ``outputs/<COMP>/ledger.csv`` (:mod:`kernel.packer.submit`, :mod:`kernel.packer.ledger`).
The work is done by :mod:`kernel.packer`; this file only wires it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from kernel.cli import OneLineParser
from kernel.packer import (BuildError, follow, follow_hint, kaggle_runner, next_steps, plan, push, show_ledger,
                           submit_and_score, write)
from kernel.packer.kaggle_models import DEFAULT_MODEL_LICENSE, MODEL_LICENSES, publish_model
from kernel.errors import ConfigError

__all__ = ["PROJECT", "main"]

PROJECT = Path(__file__).resolve().parent


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python build.py",
                      description="Pack the bundle into a Kaggle code dataset and a one-file kernel.")
    p.add_argument("--config", type=Path, help="run config (YAML/JSON) to bake into train.py, required unless "
                   "--demo; an optional `kaggle:` section adds kernel-metadata fields such as dataset_sources")
    p.add_argument("--demo", action="store_true", help="pack without a config: the kernel trains the built-in "
                   "shapes demo data")
    p.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    p.add_argument("--owner", help="your Kaggle username: replaces the owner in both ids (instead of editing "
                   "the templates)")
    p.add_argument("--push", action="store_true", help="then upload the dataset and push the kernel with the "
                   "kaggle CLI")
    p.add_argument("-m", "--message", help="dataset version message for --push; with --publish-model: the version "
                   "notes")
    p.add_argument("--wait", action="store_true", help="then follow the pushed kernel until it ends, download its "
                   "outputs to outputs/<kernel-slug>/v<N>/ and print the run summary; exit 1 if it failed or was "
                   "cancelled (implies --push)")
    p.add_argument("--until-done", type=_at_least_one, metavar="N", help="while a version stops on its time limit "
                   "(summary.json \"stopped\": \"time_limit\"), push the same kernel again, up to N versions in all "
                   "(implies --push --wait)")
    p.add_argument("--no-vendor", action="store_true", help="do not vendor packages into the dataset")
    p.add_argument("--inference", action="store_true", help="pack a predict-only inference kernel for a code "
                   "competition into OUT/inference/infer.py from an inference config (checkpoint:, predict:, "
                   "kaggle: competition_sources and the trained run's source); its id gets -infer")
    _add_publish_flags(p)
    _add_submit_flags(p)
    return p


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of versions of at least 1")
    return int(text)


def _add_publish_flags(p: OneLineParser) -> None:
    p.add_argument("--publish-model", type=Path, metavar="RUN", help="instead of building: upload a trained run "
                   "folder (its best.pt, or a k-fold run's fold folders, with config.yaml, classes.json, summary.json) "
                   "as a Kaggle Model with the kaggle CLI (the model, the variation or a new version of it) and print "
                   "the inference kernel's model_sources entry; needs --model-slug")
    p.add_argument("--model-slug", metavar="NAME", help="the Kaggle Model's slug (lowercase letters, digits, '-')")
    p.add_argument("--variation", default="default", help="the model variation's slug (default: default)")
    p.add_argument("--license", default=DEFAULT_MODEL_LICENSE, help="the variation's licence, one of Kaggle's: "
                   + "; ".join(MODEL_LICENSES) + f" (default: {DEFAULT_MODEL_LICENSE})")
    p.add_argument("--public", action="store_true", help="with --publish-model: a new model is public (default: "
                   "private)")


def _add_submit_flags(p: OneLineParser) -> None:
    p.add_argument("--submit", metavar="COMP", help="submit to competition COMP and wait for the score: after "
                   "--push it submits what that run produced (implies --wait); alone it pushes nothing and submits "
                   "the latest downloaded outputs/<kernel-slug>/v<N>/submission.csv (or --submission-file)")
    p.add_argument("--submit-message", metavar="MSG", help="the submission's description (default: the kernel and "
                   "version); a short unique token is appended to find it in the listing")
    p.add_argument("--submission-file", type=Path, metavar="FILE", help="with --submit: submit this file (no build "
                   "needed)")
    p.add_argument("--code", action="store_true", help="with --submit: a code competition: submit the kernel version "
                   "(its submission.csv output) instead of uploading a file (implied by --inference)")
    p.add_argument("--score-timeout", type=float, default=30.0, metavar="MIN", help="with --submit: wait at most MIN "
                   "minutes for the score (default: 30); `--ledger COMP` fills in what is still pending")
    p.add_argument("--ledger", nargs="?", const="", metavar="COMP", help="instead of building: refresh and print "
                   "outputs/<COMP>/ledger.csv (CV beside public and private score per submission) and write ledger.png")


def _check_submit_flags(args: argparse.Namespace) -> None:
    """The submit flags need --submit; a code submission uploads no file."""
    extra = [flag for flag, on in (("--submit-message", args.submit_message), ("--code", args.code),
                                   ("--submission-file", args.submission_file)) if on]
    if extra and not args.submit:
        raise ConfigError(f"{', '.join(extra)} go(es) with --submit COMP (the competition's slug)")
    if args.submission_file is not None and (args.code or args.inference):
        raise ConfigError("--submission-file uploads a file, but a code competition (--code, --inference) submits the "
                          "kernel version; drop one")
    if args.submission_file is not None and args.push:
        raise ConfigError("--submission-file submits a file you have; --push/--wait submit what the run produces; "
                          "drop one")


def _submit(args: argparse.Namespace, kernel_id: Optional[str], version: Optional[int],
            sleep: Callable[[float], None], clock: Callable[[], float]) -> int:
    """``--submit COMP``: limits, submit, score, ledger (:func:`kernel.packer.submit_and_score`)."""
    again = (args.until_done or 1) > 1  # follow may have pushed later versions: the latest downloaded is the run's
    return submit_and_score(kaggle_runner(), args.submit, kernel=kernel_id, version=None if again else version,
                            code=args.code or args.inference, file=args.submission_file,
                            message=args.submit_message, latest=again or not args.push,
                            timeout_s=args.score_timeout * 60, sleep=sleep, clock=clock)


def _publish(args: argparse.Namespace, project: Path) -> int:
    """``--publish-model RUN --model-slug NAME``: nothing is built; the flags of a build are refused."""
    if args.publish_model is None or not args.model_slug:
        raise ConfigError("--publish-model RUN and --model-slug NAME go together (e.g. --publish-model "
                          "outputs/kernel-train/v3/exp --model-slug my-model)")
    build_flags = [flag for flag, on in (("--config", args.config), ("--demo", args.demo), ("--push", args.push),
                                         ("--wait", args.wait), ("--until-done", args.until_done),
                                         ("--inference", getattr(args, "inference", False))) if on]
    if build_flags:
        raise ConfigError(f"--publish-model uploads a trained run and builds no kernel; drop {', '.join(build_flags)}")
    return publish_model(args.publish_model, args.model_slug, project=project, out=args.out, owner=args.owner,
                         variation=args.variation, license_name=args.license, public=args.public,
                         message=args.message)


def _check_config_or_demo(config: Optional[Path], demo: bool) -> None:
    """Without a config the packed kernel trains the built-in shapes data: only when asked for with --demo,
    never by a forgotten --config."""
    if config is None and not demo:
        raise ConfigError("no --config: the kernel would train the built-in shapes demo data; write a run config "
                          "(e.g. run.yaml with `data: my-dataset/train`, see the README's Kaggle section) and pass "
                          "--config run.yaml, or pass --demo to pack the demo")
    if config is not None and demo:
        raise ConfigError(f"--demo packs the demo without a config, but --config {config} was given; drop one")


def _errors(lines: Sequence[str]) -> int:
    for line in lines:
        print(f"build.py: error: {line}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None, project: Path = PROJECT, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> int:
    """Build (and optionally push and follow); user errors print one line each and return 2.

    ``sleep`` and ``clock`` pace the waits (tests pass a fake clock that sleeping advances).
    """
    start = time.perf_counter()
    try:
        args = _parser().parse_args(argv)
        if args.publish_model is not None or args.model_slug:
            return _publish(args, project)
        if args.ledger is not None:
            return show_ledger(kaggle_runner, args.ledger)
        args.wait = args.wait or args.until_done is not None or bool(args.submit and args.push)
        args.push = args.push or args.wait
        _check_submit_flags(args)
        if args.submission_file is not None:
            return _submit(args, None, None, sleep, clock)
        _check_config_or_demo(args.config, args.demo)
        if args.inference and args.config is None:
            raise ConfigError("--inference needs --config infer.yaml (checkpoint: the trained run; kaggle: "
                              "competition_sources and the run's kernel or model source); see the README's Submitting")
        bundle = plan(args.config, project=project, owner=args.owner, vendor=not args.no_vendor,
                      inference=args.inference)
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
          f"  {args.out / bundle.folder / bundle.script}  {bundle.script_bytes / 1024:.0f} KB, {bundle.module_count} "
          f"embedded modules; kernel {bundle.kernel_id}\n"
          f"  {args.out / 'dataset'}  code dataset {bundle.dataset_id}{vendored}")
    if not args.push and not args.submit:
        print("Next steps:\n  " + "\n  ".join(next_steps(bundle, args.out)))
        return 0
    try:
        version = push(bundle, args.out, args.message, sleep=sleep, clock=clock) if args.push else None
        if args.push and not args.wait:
            print(follow_hint(bundle))
            return 0
        rc = follow(kaggle_runner(), bundle.kernel_id, args.out / bundle.folder, version,
                    max_versions=args.until_done or 1, sleep=sleep, clock=clock) if args.push else 0
        return _submit(args, bundle.kernel_id, version, sleep, clock) if args.submit and rc == 0 else rc
    except BuildError as e:
        return _errors(e.problems)


if __name__ == "__main__":
    sys.exit(main())
