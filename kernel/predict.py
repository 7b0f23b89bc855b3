"""Predict with a trained run: ``python -m kernel.predict --checkpoint RUN/best.pt INPUT [INPUT ...]``.

INPUTs are image files, folders (searched recursively, sorted) or a CSV of image ids (with
``--image-dir``/``--image-col``, as in training). The model and its evaluation preprocessing
(resize, center crop, mean/std) are rebuilt from the options saved with the checkpoint, so
predictions match the validation numbers of training. Writes ``predictions.csv`` (path, label,
prob, label_2, prob_2, ... top-k) and, with ``--submission``, a Kaggle ``submission.csv`` whose
columns and row order come from ``--id-col``/``--target-col`` or a ``--sample-submission`` file.

A ``predict:`` mapping in the training config (same keys as these flags, underscores) runs this
with ``best.pt`` when training ends; relative outputs then go into the run folder.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: make the package importable
    import os as _os
    import sys as _sys

    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    from kernel.predict import main as _main

    _sys.exit(_main())

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import Dataset

from .checkpoint import load_checkpoint
from .registry import ConfigError, did_you_mean
from .submission import collect_inputs, write_predictions_csv, write_submission

__all__ = ["Predictor", "load_predictor", "predict_probs", "predict", "predict_after_training",
           "check_predict_spec", "PREDICT_DEFAULTS", "build_parser", "main"]

log = logging.getLogger("kernel")

# Keys of a config file's ``predict:`` section (the CLI flags with underscores); None: the training run's value.
PREDICT_DEFAULTS: Dict[str, Any] = dict(
    inputs=[], out="predictions.csv", topk=5, tta=False, batch_size=None, device=None, amp=None, workers=None,
    image_dir="", image_col="", submission=False, id_col="", target_col="", sample_submission="")


class Predictor:
    """A model in eval mode plus what it needs: classes, eval transform, input channels."""

    def __init__(self, model: nn.Module, classes: List[str], transform: Any, options: Dict[str, Any],
                 multilabel: bool = False):
        self.model, self.classes, self.transform, self.options = model, classes, transform, options
        self.in_chans, self.multilabel = int(options["in_chans"]), multilabel


def _read_json_classes(path: Path) -> Optional[List[str]]:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data)


def _load_weights(path: Path) -> Tuple[Dict[str, torch.Tensor], List[str], Dict[str, Any], bool]:
    """-> (state_dict, classes, saved options, multilabel) from best.pt/last.pt or model.safetensors."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        classes = _read_json_classes(path.with_name("classes.json")) or json.loads(meta.get("classes", "null") or "null")
        if not classes:
            raise ConfigError(f"--checkpoint: no classes.json beside {str(path)!r} and none in its metadata")
        cfg = path.with_name("config.yaml")
        if cfg.is_file():
            import yaml
            options = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        else:
            log.warning("no config.yaml beside %s: using the model's default preprocessing", path)
            options = {"model": meta.get("model", ""), "in_chans": int(meta.get("in_chans", 3))}
        return load_file(str(path)), classes, options, meta.get("multilabel") == "true"
    try:
        ckpt = load_checkpoint(path)
    except Exception as e:
        raise ConfigError(f"--checkpoint: cannot load {str(path)!r} ({type(e).__name__}); give a best.pt, "
                          "last.pt or model.safetensors written by kernel.train") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "classes" not in ckpt:
        raise ConfigError(f"--checkpoint: {str(path)!r} is not a kernel.train checkpoint (no model/classes)")
    return ckpt["model"], list(ckpt["classes"]), dict(ckpt.get("options") or {}), bool(ckpt.get("multilabel"))


def load_predictor(checkpoint: str, device: torch.device) -> Predictor:
    """Rebuild the trained model and its evaluation transform from a checkpoint (file or run folder)."""
    from .augment import build_transform
    from .finetune import create_model, resolve_data_config
    from .options import Options, options_to_dict
    from .platform import resolve_path

    path = Path(resolve_path(checkpoint, "checkpoint"))
    if path.is_dir():
        path = next((path / n for n in ("best.pt", "model.safetensors") if (path / n).is_file()), path / "best.pt")
        if not path.is_file():
            raise ConfigError(f"--checkpoint: {str(path.parent)!r} has no best.pt or model.safetensors")
    state, classes, saved, multilabel = _load_weights(path)
    opts = options_to_dict(Options())
    opts.update({k: v for k, v in saved.items() if k in opts and v is not None})
    model = create_model(opts["model"], len(classes), int(opts["in_chans"]), "none")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"--checkpoint: weights do not fit model {opts['model']!r} with {len(classes)} classes "
                          f"({str(e).splitlines()[0]})") from None
    dcfg = resolve_data_config(model, int(opts["img_size"]), int(opts["in_chans"]))
    transform = build_transform(opts["aug"], train=False, backend=opts["aug_backend"], img_size=dcfg["img_size"],
                                mean=dcfg["mean"], std=dcfg["std"], interpolation=dcfg["interpolation"],
                                crop_pct=dcfg["crop_pct"], in_chans=int(opts["in_chans"]))
    log.info("checkpoint %s: %s, %d classes, input %dpx", path, opts["model"], len(classes), dcfg["img_size"])
    return Predictor(model.to(device).eval(), classes, transform, opts, multilabel)


class _Images(Dataset):
    """Items (image (C, S, S) normalized, index) read with ``kernel.data.load_image``."""

    def __init__(self, paths: Sequence[str], transform: Any, in_chans: int):
        self.paths, self.transform, self.in_chans = list(paths), transform, in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        from .data import load_image

        try:
            image = load_image(self.paths[i], self.in_chans)
        except Exception as e:  # name the file; the loader's traceback would not
            raise ConfigError(f"inputs: cannot read image {self.paths[i]!r} ({type(e).__name__}: {e})") from None
        return self.transform(image, None)[0], i


@torch.no_grad()
def predict_probs(pred: Predictor, paths: Sequence[str], *, device: torch.device, batch_size: int = 64,
                  workers: int = 0, amp: bool = False, tta: bool = False) -> torch.Tensor:
    """Probabilities (N, C) for ``paths``: softmax, or sigmoid for multi-label; ``tta`` averages a flip."""
    from .data import build_loader
    from .loop import autocast, resolve_amp_dtype

    dtype = resolve_amp_dtype(device, amp)
    loader = build_loader(_Images(paths, pred.transform, pred.in_chans), batch_size=batch_size, train=False,
                          workers=workers, device=device)
    act = torch.sigmoid if pred.multilabel else (lambda z: z.softmax(dim=1))
    out = []
    for images, _ in loader:
        images = images.to(device, non_blocking=device.type == "cuda")
        with autocast(device, dtype):
            p = act(pred.model(images).float())
            if tta:  # horizontal flip: probabilities averaged, so they still sum to 1
                p = (p + act(pred.model(images.flip(3)).float())) / 2
        out.append(p.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(pred.classes))


def predict(checkpoint: str, inputs: Sequence[str], *, out: str = "predictions.csv", topk: int = 5,
            tta: bool = False, batch_size: int = 64, device: str = "auto", amp: bool = False, workers: int = 2,
            image_dir: str = "", image_col: str = "", submission: Optional[str] = None, id_col: str = "",
            target_col: str = "", sample_submission: str = "") -> Dict[str, Any]:
    """Predict ``inputs``; write ``out`` and, when ``submission`` is a path, a submission CSV there."""
    from .loop import resolve_device

    if topk < 1 or batch_size < 1 or workers < 0:
        raise ConfigError("predict: need --topk >= 1, --batch-size >= 1 and --workers >= 0")
    dev = resolve_device(device)
    pred = load_predictor(checkpoint, dev)
    items = collect_inputs(inputs, image_dir=image_dir, image_col=image_col)
    probs = predict_probs(pred, [p for _, p in items], device=dev, batch_size=batch_size, workers=workers,
                          amp=amp, tta=tta)
    result: Dict[str, Any] = {"images": len(items), "predictions": write_predictions_csv(
        [p for _, p in items], probs, pred.classes, out, topk)}
    log.info("predicted %d images%s -> %s", len(items), " (flip TTA)" if tta else "", out)
    if submission:
        o = pred.options
        result["submission"] = write_submission(
            [i for i, _ in items], probs, pred.classes, submission, id_col=id_col or o.get("image_col") or "id",
            target_col=target_col or o.get("label_col") or "label", sample=sample_submission,
            multilabel=pred.multilabel)
        log.info("wrote %s", submission)
    return result


def check_predict_spec(spec: Any, resolve_paths: bool = False) -> Dict[str, Any]:
    """Validate a config ``predict:`` section -> a full dict of its keys (unknown key: ConfigError)."""
    if isinstance(spec, (str, list)):  # shorthand: just the inputs
        spec = {"inputs": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"predict: expected a mapping such as {{inputs: [test/], submission: true}}, got {spec!r}")
    out = dict(PREDICT_DEFAULTS)
    for key, value in spec.items():
        name = str(key).replace("-", "_")
        if name not in PREDICT_DEFAULTS:
            raise ConfigError(f"predict: unknown key {key!r}{did_you_mean(name, PREDICT_DEFAULTS)} "
                              f"(keys: {', '.join(PREDICT_DEFAULTS)})")
        out[name] = value
    inputs = [out["inputs"]] if isinstance(out["inputs"], str) else out["inputs"]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) and i for i in inputs):
        raise ConfigError("predict: 'inputs' must be a path or a non-empty list of paths (files, folders, CSV)")
    out["inputs"] = inputs
    for name in ("topk", "batch_size", "workers"):
        v = out[name]
        if (v is not None or name == "topk") and (isinstance(v, bool) or not isinstance(v, int)
                                                  or v < (0 if name == "workers" else 1)):
            raise ConfigError(f"predict: {name!r} must be an integer >= {0 if name == 'workers' else 1}, got {v!r}")
    for name in ("tta", "amp"):
        if out[name] is not None and not isinstance(out[name], bool):
            raise ConfigError(f"predict: {name!r} must be true or false, got {out[name]!r}")
    if not isinstance(out["submission"], (bool, str)):
        raise ConfigError(f"predict: 'submission' must be true/false or a file name, got {out['submission']!r}")
    if out["device"] not in (None, "auto", "cpu", "cuda"):
        raise ConfigError(f"predict: 'device' must be auto, cpu or cuda, got {out['device']!r}")
    for name in ("out", "image_dir", "image_col", "id_col", "target_col", "sample_submission"):
        if not isinstance(out[name], str):
            raise ConfigError(f"predict: {name!r} must be a string, got {out[name]!r}")
    if resolve_paths:  # fail before hours of training, not after
        from .platform import resolve_path
        out["inputs"] = [resolve_path(i, "predict inputs") for i in inputs]
        for name in ("image_dir", "sample_submission"):
            out[name] = resolve_path(out[name], f"predict {name}") or ""
    return out


def predict_after_training(spec: Dict[str, Any], run_dir: str | os.PathLike, opts: Any) -> Dict[str, Any]:
    """Run a checked ``predict:`` section with ``run_dir/best.pt``; relative outputs go into ``run_dir``."""
    run_dir, s = Path(run_dir), spec
    sub = s["submission"]
    submission = None if sub is False or sub == "" else str(run_dir / ("submission.csv" if sub is True else sub))
    pick = lambda key, default: default if s[key] is None else s[key]
    return predict(str(run_dir / "best.pt"), s["inputs"], out=str(run_dir / s["out"]), topk=s["topk"],
                   tta=s["tta"], batch_size=pick("batch_size", opts.batch_size), device=pick("device", opts.device),
                   amp=pick("amp", opts.amp), workers=pick("workers", opts.workers), image_dir=s["image_dir"],
                   image_col=s["image_col"], submission=submission, id_col=s["id_col"],
                   target_col=s["target_col"], sample_submission=s["sample_submission"])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kernel.predict", description="Predict images with a trained kernel.train run.")
    p.add_argument("inputs", nargs="+", help="image files, folders, or a CSV of image ids")
    p.add_argument("--checkpoint", required=True, help="RUN/best.pt, RUN/model.safetensors, or the RUN folder")
    p.add_argument("--out", default="predictions.csv", help="predictions CSV (default: predictions.csv)")
    p.add_argument("--topk", type=int, default=5, help="labels per image in the predictions CSV (default: 5)")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16/fp16 autocast)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    p.add_argument("--image-dir", default="", help="folder of a CSV input's images (default: the CSV's folder)")
    p.add_argument("--image-col", default="", help="CSV column of image ids (default: first column)")
    p.add_argument("--submission", action="store_true", help="also write submission.csv beside --out")
    p.add_argument("--submission-file", default="", help="submission file name (implies --submission)")
    p.add_argument("--id-col", default="", help="submission id column (default: training --image-col or 'id')")
    p.add_argument("--target-col", default="", help="submission target column (default: training --label-col or 'label')")
    p.add_argument("--sample-submission", default="", help="CSV whose header and id order the submission copies")
    return p


def _one_line(e: ConfigError) -> str:
    """The message; a ConfigError raised in a DataLoader worker comes back wrapped with its traceback."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and "ConfigError: " in lines[-1]:
        return lines[-1].split("ConfigError: ", 1)[1]
    return str(e)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: 0 on success, 2 on a user error (one line, no traceback)."""
    from .report import close_logging, setup_logging

    setup_logging(None)
    try:
        a = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        submission = None
        if a.submission or a.submission_file or a.sample_submission:
            submission = a.submission_file or str(Path(a.out).with_name("submission.csv"))
        predict(a.checkpoint, a.inputs, out=a.out, topk=a.topk, tta=a.tta, batch_size=a.batch_size,
                device=a.device, amp=a.amp, workers=a.workers, image_dir=a.image_dir, image_col=a.image_col,
                submission=submission, id_col=a.id_col, target_col=a.target_col,
                sample_submission=a.sample_submission)
        return 0
    except ConfigError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        close_logging()


if __name__ == "__main__":
    sys.exit(main())
