"""The inference kernel of a code competition: a trained run predicts the test set into ``submission.csv``.

``python build.py --config infer.yaml --inference`` packs this entry into ``dist/inference/infer.py``; Kaggle runs
it with no arguments on the public test set, then again on the hidden one (other ids, more images), so nothing is
fixed at build time: the trained run (:attr:`InferOptions.checkpoint`), the competition's test images and its
``sample_submission.csv`` are searched under ``/kaggle/input`` in both mount layouts when it starts.

It writes ``/kaggle/working/submission.csv`` and ``summary.json`` (the trained run's, with an ``inference`` entry:
what ran, on how many images, in how long); the predictions table and masks go to scratch space, so nothing
else large lands in the kept output. A time budget (``time_limit``) is split once, from the first batches, into
the ensemble members and TTA that fit: every image gets the same ensemble. Each failure is one line naming what
was searched and where; a failed run writes no submission (an empty one would only score as an error).

Locally: ``python -m kernel.infer --checkpoint RUN --competition SLUG`` with ``KAGGLE_KERNEL_RUN_TYPE`` unset
searches the current folder's paths as given.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python kernel/infer.py`: run as kernel.infer
    import os as _os
    import sys as _sys

    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    from kernel.cli import run_file

    run_file(__file__)

import csv
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .cli import one_line, parser_from_dataclass
from .config import check_infer_config, field_choices
from .data import ImageList, collect_inputs, index_sample_ids
from .engine import resolve_device
from .errors import ConfigError
from .options import InferOptions
from .paths import detect_platform, input_root, mounted_roots, resolve_path, scratch_root, working_root
from .predict import load_for_prediction, predict, trained_folds
from .report import close_logging, setup_logging
from .report.files import write_json
from .run.budget import parse_duration
from .tasks.predicting import predict_batches

__all__ = ["EnsemblePlan", "plan_ensemble", "competition_root", "run_inference", "build_parser", "main"]

log = logging.getLogger("kernel")
KAGGLE_BUDGET_S = 8.5 * 3600  # a code competition's usual 9 h, less a margin for start-up and writing
TEST_FOLDERS = ("test", "test_images", "test-jpg", "test_jpg", "images/test")
SAMPLE_NAMES = ("sample_submission.csv", "sampleSubmission.csv", "sample_submission_v2.csv")
SAFETY = 0.8  # of the budget left: the first batches' speed is an estimate


@dataclass(frozen=True)
class EnsemblePlan:
    """The members (fold positions) and TTA that fit the budget, and the log line that says why."""

    members: Tuple[int, ...]
    tta: bool
    why: str


def plan_ensemble(seconds_per_image: float, images: int, members: int, tta: bool,
                  budget_s: Optional[float]) -> EnsemblePlan:
    """The largest ensemble that fits ``budget_s`` at ``seconds_per_image`` per member and image (TTA: twice
    that): every member with TTA, then every member without, then fewer members without; one member when none
    fits. Members are dropped whole (model-major), so every image is predicted by the same ensemble."""
    wanted = (members, tta)
    if budget_s is None:
        return EnsemblePlan(tuple(range(members)), tta, "no time limit: every member" + (" with TTA" if tta else ""))
    options = [(members, tta)] + ([(members, False)] if tta else []) + [(m, False) for m in range(members - 1, 0, -1)]
    for m, t in options:
        cost = seconds_per_image * images * m * (2 if t else 1)
        if cost <= budget_s:
            kept = "every member" if m == members else f"{m} of {members} members"
            why = f"{kept}{' with TTA' if t else ''} fit the budget (estimated {cost:.0f} s of {budget_s:.0f} s left)"
            if (m, t) != wanted:
                why += f"; {members} members{' with TTA' if tta else ''} would take " \
                       f"{seconds_per_image * images * members * (2 if tta else 1):.0f} s"
            return EnsemblePlan(tuple(range(m)), t, why)
    return EnsemblePlan((0,), False, f"even one member without TTA may not fit (estimated "
                                     f"{seconds_per_image * images:.0f} s of {budget_s:.0f} s left): one member")


def competition_root(slug: str) -> Path:
    """The competition's mount: ``competitions/<slug>`` (new layout) or ``<slug>`` (old); without a slug the one
    mount that holds a sample submission. One line naming what was searched when there is none."""
    root = input_root()
    if slug:
        for cand in (root / "competitions" / slug, root / slug):
            if cand.is_dir():
                return cand
        searched = f"{root / 'competitions' / slug} and {root / slug}"
    else:
        holding = [m for m in mounted_roots(root) if any((m / n).is_file() for n in SAMPLE_NAMES)]
        if len(holding) == 1:
            return holding[0]
        searched = f"every mount under {root} for {SAMPLE_NAMES[0]}" + (f" (found {len(holding)})" if holding else "")
    mounts = [str(m.relative_to(root)) for m in mounted_roots(root)] or ["nothing"]
    raise ConfigError(f"the competition's data is not mounted: searched {searched} (mounted: {', '.join(mounts)}); "
                      "attach the competition (competition_sources) or set competition: in the config")


def _find(given: Optional[Sequence[str]], defaults: Sequence[str], root: Optional[Path], what: str) -> List[str]:
    """Paths under the competition's mount first (as given, or the first default present), then anywhere."""
    if given:
        return [str(root / g) if root is not None and (root / g).exists() else resolve_path(g, what, flag=False)
                for g in given]
    for name in defaults:
        if root is not None and (root / name).exists():
            return [str(root / name)]
    where = str(root) if root is not None else "the current folder"
    raise ConfigError(f"predict {what}: none of {', '.join(defaults)} under {where}; give predict: {what}: in the "
                      "config")


def _check_sample(sample: str, items: List[Tuple[str, str]], inputs: Sequence[str]) -> None:
    """The sample submission has an id column and every id an image; else one line naming both places."""
    with open(sample, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows or len(rows[0]) < 2:
        raise ConfigError(f"sample submission {sample}: needs an id column and a target column, found header "
                          f"{rows[0] if rows else '(empty file)'}; give the competition's sample_submission.csv")
    ids = list(dict.fromkeys(r[0] for r in rows[1:]))  # one row per image and class in some competitions
    try:
        index_sample_ids([i for i, _ in items], ids)
    except ConfigError as e:
        raise ConfigError(f"{e} (searched {', '.join(inputs)}: {len(items)} images)") from None


def _run_folder(checkpoint: str) -> Path:
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def _probe(trained: Any, paths: List[str], popts: Dict[str, Any], device: Any, clock: Callable[[], float]) -> float:
    """Seconds per image of one member on the first batches (loading and decoding included)."""
    first = paths[:2 * popts.get("batch_size", 64)]
    start = clock()
    for _ in predict_batches(trained.model, lambda m, x, _: (None, m(x)), ImageList(first, trained.transform,
                             trained.in_chans, trained.draft), device=device, batch_size=popts.get("batch_size", 64),
                             workers=0, amp=popts.get("amp", False), bad={}):
        pass
    return (clock() - start) / max(1, len(first))


def run_inference(iopts: InferOptions, clock: Callable[[], float] = time.perf_counter) -> Dict[str, Any]:
    """Predict the competition's test set with the trained run -> what was written (``clock``: the budget's)."""
    start = clock()
    if not iopts.checkpoint:
        raise ConfigError("checkpoint: not given; name the trained run, e.g. checkpoint: kernel-train/exp")
    checkpoint = resolve_path(iopts.checkpoint, "checkpoint", flag=False)
    folds = trained_folds(checkpoint)
    section = dict(iopts.predict or {})
    root = competition_root(iopts.competition) if detect_platform() == "kaggle" or iopts.competition else None
    inputs = _find(section.pop("inputs", None), TEST_FOLDERS, root, "inputs")
    sample = _find([section.pop("sample_submission")] if section.get("sample_submission") else None,
                   SAMPLE_NAMES, root, "sample_submission")[0]
    items = collect_inputs(inputs, image_dir=section.get("image_dir", ""), image_col=section.get("image_col", ""))
    _check_sample(sample, items, inputs)
    budget = (KAGGLE_BUDGET_S if detect_platform() == "kaggle" else None) if iopts.time_limit == "auto" else \
        parse_duration(iopts.time_limit, "time_limit")
    tta = bool(section.pop("tta", False))
    device = resolve_device(section.get("device", "auto"))
    first = load_for_prediction(checkpoint, device, str(folds[0]) if folds else "")  # the task; the probe
    per_image = _probe(first, [p for _, p in items], section, device, clock) if budget is not None else 0.0
    default_out = first.task.default_out
    del first
    left = None if budget is None else max(0.0, (budget - (clock() - start)) * SAFETY)
    plan = plan_ensemble(per_image, len(items), max(1, len(folds)), tta, left)
    log.info("inference: %d test images; %s", len(items), plan.why)
    out_dir = scratch_root() / "kernel-infer"
    given_file = section.pop("submission_file", "")
    section.pop("submission", None)  # an inference kernel always writes the submission
    # Kaggle scores /kaggle/working/submission.csv; elsewhere the given file, or submission.csv here
    submission = str(working_root() / "submission.csv") if detect_platform() == "kaggle" else \
        given_file or "submission.csv"
    result = predict(checkpoint, inputs, **{**section, "out": section.get("out") or str(out_dir / default_out),
                                            "tta": plan.tta, "sample_submission": sample,
                                            "submission_file": submission,
                                            "folds": ",".join(str(folds[m]) for m in plan.members) if folds else ""})
    _write_summary(checkpoint, Path(submission).parent / "summary.json", {
        "images": len(items), "members": len(plan.members), "of_members": max(1, len(folds)), "tta": plan.tta,
        "plan": plan.why, "seconds": round(clock() - start, 1), "checkpoint": iopts.checkpoint,
        "unreadable": len(result.get("unreadable", []))})
    log.info("wrote %s (%d images)", submission, len(items))
    return result


def _write_summary(checkpoint: str, path: Path, inference: Dict[str, Any]) -> None:
    """The trained run's summary.json (its CV score and options, for the ledger) with what this kernel did."""
    trained = _run_folder(checkpoint) / "summary.json"
    data = json.loads(trained.read_text(encoding="utf-8")) if trained.is_file() else {}
    write_json({**data, "inference": inference}, path)


def build_parser() -> Any:
    """The ``kernel.infer`` parser, generated from :class:`InferOptions`."""
    return parser_from_dataclass(InferOptions, "python -m kernel.infer",
                                 "Predict a competition's test set with a trained run.", ("general",), field_choices)


def main(argv: Optional[Sequence[str]] = None, baked: Optional[Dict[str, Any]] = None) -> int:
    """Entry (the packed infer.py passes its baked config): 0 on success, 2 on a user error (one line)."""
    setup_logging()
    try:
        given = check_infer_config(dict(baked or {}), "infer.py CONFIG")
        given.update(vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))))
        defaults = {f.name: f.default for f in dataclasses.fields(InferOptions)}
        run_inference(InferOptions(**{**defaults, **given}))
        return 0
    except ConfigError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        close_logging()


if __name__ == "__main__":
    sys.exit(main())
