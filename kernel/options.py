"""Every option in one dataclass per command: each default is written once, here.

:class:`Options` holds ``kernel.train``'s options, :class:`PredictOptions` ``kernel.predict``'s (and the
keys of a config file's ``predict:`` section), :class:`InferOptions` the inference kernel's (``kernel.infer``). Field metadata (help, group, choices, flags) is what
:mod:`kernel.config` turns into argparse parsers and config-file checks. This module is data only: it imports
nothing of the bundle, and choices that come from a registry are named (:class:`FromRegistry`), listed by
:mod:`kernel.config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["Options", "PredictOptions", "InferOptions", "FromRegistry", "DEVICES", "ONE_SHOT_FLAGS"]

DEVICES = ("auto", "cpu", "cuda")
ONE_SHOT_FLAGS = ("list_models", "summary", "preview_lr", "show_aug", "check_data", "find_lr")  # options that do one thing and exit


@dataclass(frozen=True)
class FromRegistry:
    """Choices listed by the registry named ``name`` (resolved by :func:`kernel.config.field_choices`, which
    imports it only when a parser or a check asks), after the fixed names in ``first`` (e.g. ``auto``)."""
    name: str
    first: Tuple[str, ...] = ()


def _opt(default: Any = None, help: str = "", group: str = "general", *, choices: Any = None,
         flags: Sequence[str] = (), cli: bool = True, metavar: Optional[str] = None, **meta: Any) -> Any:
    return field(default=default, metadata=dict(help=help, group=group, choices=choices, flags=tuple(flags),
                                                cli=cli, metavar=metavar, **meta))


@dataclass
class Options:
    """All run options with their defaults. Field order is the order of ``--help``."""

    # general
    config: str = _opt("", "YAML/JSON file of option values (flags override it)", metavar="FILE")
    name: str = _opt("exp", "run name: outputs go to OUTPUT/NAME")
    output: str = _opt("", "output root (default: /kaggle/working on Kaggle, ./runs elsewhere)")
    resume: str = _opt("", "checkpoint to continue from: PATH to last.pt, or 'auto' for this run's newest (the "
                           "highest-numbered NAME, NAME-2, ... folder with a last.pt)")
    overwrite: bool = _opt(False, "write into OUTPUT/NAME even when it holds another run (its files are replaced); "
                                  "without it a new run takes the next free name, NAME-2, NAME-3, ...")
    seed: int = _opt(42, "random seed for data split, shuffling, augmentation and init")
    device: str = _opt("auto", "compute device ('--cuda' is the same as '--device cuda')", choices=DEVICES)
    devices: str = _opt("auto", "processes, one per device: auto (every visible GPU; 1 on CPU) or a number N")
    sync_bn: bool = _opt(False, "with several devices, BatchNorm statistics over every device's batch (SyncBatchNorm)")
    workers: Any = _opt("auto", "DataLoader worker processes per device: a number, or auto (from the CPU count)")
    deterministic: bool = _opt(False, "deterministic algorithms (cuDNN, cuBLAS), for bit-identical resumes on GPUs")
    time_limit: str = _opt("auto", "stop cleanly (last.pt saved, predict: run) before this duration since the "
                                   "process started: 11h30m, 90m, 45s; auto: 11h30m on Kaggle, none elsewhere")
    save_every: str = _opt("auto", "also save last.pt inside epochs at this interval (e.g. 30m); auto: 30m on Kaggle "
                                   "and Colab, none elsewhere")
    async_save: bool = _opt(True, "write the end-of-epoch checkpoints on a thread while the next epoch trains (a "
                                  "copy of the weights and optimizer state in RAM meanwhile); --no-async-save "
                                  "writes them before going on")
    dry_run: bool = _opt(False, "a few batches of training and validation on a tiny subset, to debug")
    log_every: int = _opt(20, "batches between progress lines when not on a terminal")
    plot_every: float = _opt(60.0, "seconds between redraws of the run's pictures (0: every epoch; always at the end)")
    plots: bool = _opt(True, "draw the pictures (curves.png, predictions.png, confusion_matrix.png); --no-plots "
                             "skips them (a second or more each on a CPU), the CSV and JSON outputs stay")
    tensorboard: bool = _opt(True, "write TensorBoard events when tensorboard is installed")
    tb_graph: bool = _opt(False, "also trace the model into TensorBoard's graph tab (off, as Lightning's log_graph: "
                                 "about a second per run for a U-Net)")
    list_models: str = _opt("", "print model names matching a pattern (e.g. '*resnet*', 'tv:*') and exit",
                            metavar="PATTERN")
    summary: bool = _opt(False, "print a layer table for the model and input size, then exit")
    preview_lr: bool = _opt(False, "write lr.png and print the LR per epoch, then exit")
    show_aug: int = _opt(0, "write a grid of N augmented training samples, then exit", metavar="N")
    check_data: bool = _opt(False, "read every training and validation image once, write bad_images.txt, then exit "
                                   "(non-zero when any is unreadable)")
    find_lr: bool = _opt(False, "LR range test: train a few steps while the LR grows from 1e-7 to 10, write "
                                "lr_find.png, print the suggested LR, then exit (weights untouched)")
    find_lr_steps: int = _opt(100, "--find-lr: steps (batches) of the ramp")
    # data
    task: str = _opt("auto", "what to learn: a registered task (see the choices), or your own Task class as "
                             "file.py:Class; auto: the task that claims the data (masks: segment), else classify",
                     "data",
                     choices=FromRegistry("tasks", ("auto",)), user_code=True)
    data: str = _opt("shapes", "ImageFolder train dir, a CSV root with --csv, or 'shapes' (built-in)", "data")
    val_data: str = _opt("", "validation ImageFolder dir (default: split off --val-split)", "data")
    val_split: float = _opt(0.2, "fraction held out for validation when --val-data is not given", "data")
    csv: str = _opt("", "CSV of image ids and labels (Kaggle style), relative to --data", "data")
    image_dir: str = _opt("", "folder of the CSV's images, relative to --data", "data")
    image_col: str = _opt("", "CSV column of image ids (default: first column)", "data")
    label_col: str = _opt("", "CSV column of labels, space-separated for multi-label (default: second); tasks with "
                              "several targets per image take a comma-separated list of columns", "data")
    clip_target: bool = _opt(False, "numeric targets: clip predictions to the training targets' range", "data")
    img_size: Any = _opt(0, "input size S, or H W (HxW) for segmentation (default: the model's config; 256 for "
                            "segmentation)", "data", nargs="+", metavar="SIZE")
    seg_mode: str = _opt("auto", "segmentation masks: binary, multiclass (a class per pixel) or multilabel "
                                 "(overlapping classes); auto: from the data", "data", choices=FromRegistry("seg_modes"))
    ignore_index: int = _opt(255, "mask value of void pixels, left out of losses and metrics (-1: none)", "data")
    rle_col: str = _opt("", "RLE column of a segmentation CSV (default: EncodedPixels, rle_mask or rle)", "data")
    class_col: str = _opt("", "class column of an RLE CSV with a row per image and class (e.g. ClassId)", "data")
    rle_order: str = _opt("F", "RLE pixel order: F (column-major, Kaggle's usual) or C (row-major)", "data",
                          choices=("F", "C"))
    bad_images: str = _opt("skip", "an unreadable image: skip (replace it, log it in bad_images.txt) or error (stop)",
                           "data", choices=FromRegistry("bad_images"))
    bad_images_limit: float = _opt(0.01, "stop when more than this fraction of the images (training and validation "
                                         "together) is unreadable, and more than --bad-images-floor files", "data")
    bad_images_floor: int = _opt(5, "never stop for this many unreadable images or fewer, however small the data "
                                    "(a small data set survives a few bad files)", "data", metavar="N")
    aug: Any = _opt("default", "augmentation preset (a YAML list gives a custom pipeline)", "data",
                    choices=FromRegistry("aug_presets"))
    fast_decode: str = _opt("auto", "decode a JPEG at 1/2, 1/4 or 1/8 scale when it is at least twice the size the "
                                    "first resize needs (PIL draft; faster, pixels change slightly); auto: on unless "
                                    "the task's masks must align (segmentation); saved with the run, used by "
                                    "prediction", "data", choices=("auto", "on", "off"))
    aug_backend: str = _opt("auto", "augmentation library (auto: the fastest installed one, imgaug, albumentations, "
                                    "then torchvision; saved with the run)", "data",
                            choices=FromRegistry("aug_backends"))
    cache: str = _opt("auto", "decoded-image cache: each training and validation image decoded and pre-resized "
                              "once, read back every later epoch (disk: a scratch folder, /kaggle/temp on Kaggle; "
                              "ram: shared memory); auto: disk when the run has more than one epoch and it fits",
                      "data", choices=("auto", "off", "ram", "disk"))
    cache_dir: str = _opt("", "folder of the decoded-image cache (default: the platform's scratch space)", "data",
                          metavar="DIR")
    cache_limit: float = _opt(0.0, "largest decoded-image cache in GB (0: the free space of its folder less 1 GB); "
                                   "a cache that would not fit is skipped, in one line", "data", metavar="GB")
    uint8_batches: bool = _opt(True, "workers hand over uint8 images, converted to float and normalized on the "
                                     "training device (a quarter of the bytes; bit-identical on a CPU); "
                                     "--no-uint8-batches normalizes in the workers", "data")
    cache_export: str = _opt("", "at the end, copy the decoded-image cache to DIR, a folder to upload as a dataset: "
                                 "later runs with it attached read it instead of decoding again", "data",
                             metavar="DIR")
    # model
    model: str = _opt("resnet18", "timm name (resnet34, convnext_tiny, ...) or tv:NAME for torchvision; for "
                                  "segmentation the encoder (smp or timm name)", "model")
    arch: str = _opt("unet", "segmentation decoder (smp): unet, fpn, deeplabv3plus, ...", "model",
                     choices=FromRegistry("seg_archs"))
    pretrained: str = _opt("none", "weights: a .pth/.pt/.safetensors file, local-dir:PATH, 'hub' or 'none'", "model")
    in_chans: int = _opt(3, "input channels (the first convolution adapts)", "model")
    freeze: str = _opt("none", "train only the head with 'backbone'", "model", choices=("none", "backbone"))
    unfreeze_at: int = _opt(0, "epoch at which a frozen backbone starts training (0: never)", "model")
    backbone_lr_mult: float = _opt(1.0, "backbone LR = lr x this (the head keeps lr)", "model")
    # optimization
    epochs: int = _opt(10, "training epochs", "optimization", flags=("--epochs", "--niter"))
    batch_size: int = _opt(32, "images per batch", "optimization")
    lr: float = _opt(1e-3, "learning rate (of the head when --backbone-lr-mult is set)", "optimization")
    opt: str = _opt("adamw", "optimizer", "optimization", choices=FromRegistry("optimizers"))
    momentum: float = _opt(0.9, "momentum (sgd, rmsprop)", "optimization")
    weight_decay: float = _opt(0.01, "weight decay (not applied to norms and biases)", "optimization")
    loss: Any = _opt("auto", "loss name, 'dice+bce', file.py:fn, or auto (the task's default)", "optimization")
    loss_kwargs: Any = _opt("", "loss options as k=v,... (e.g. gamma=2,alpha=0.25)", "optimization")
    sched: str = _opt("cosine", "LR scheduler", "optimization", choices=FromRegistry("schedulers"))
    sched_kwargs: Any = _opt("", "scheduler options as k=v,... (e.g. step_size=5)", "optimization")
    sched_interval: str = _opt("auto", "step the scheduler per optimizer update or per epoch", "optimization",
                               choices=("auto", "step", "epoch"))
    warmup_epochs: int = _opt(0, "linear warmup epochs in front of the scheduler", "optimization")
    warmup_steps: int = _opt(0, "linear warmup optimizer updates in front of the scheduler", "optimization")
    decay_every: Optional[int] = _opt(None, "step_decay: epochs between decays (unset: the scheduler's, see "
                                      "kernel/schedule)", "optimization")
    decay_rate: Optional[float] = _opt(None, "step_decay: LR factor at each decay (unset: the scheduler's)",
                                       "optimization")
    amp: bool = _opt(False, "mixed precision with torch.autocast", "optimization")
    amp_dtype: str = _opt("auto", "autocast dtype (auto: bf16 on sm>=8.0 and CPU, fp16+GradScaler else)",
                          "optimization", choices=("auto", "fp16", "bf16"))
    accum_steps: int = _opt(1, "batches per optimizer update (gradient accumulation)", "optimization")
    clip_grad: float = _opt(0.0, "clip the gradient norm to this (0: off)", "optimization")
    channels_last: bool = _opt(False, "NHWC memory format (faster convolutions on tensor cores)", "optimization")
    compile: bool = _opt(False, "torch.compile the model", "optimization")
    monitor: str = _opt("auto", "metric that picks best.pt and drives plateau/early stopping (auto: the task's)",
                        "optimization", choices=FromRegistry("monitors", ("auto",)))
    early_stop: int = _opt(0, "stop after this many epochs without improvement (0: off)", "optimization")
    threshold: float = _opt(0.5, "segmentation (binary, multilabel): probability above which a pixel is a class",
                            "optimization")
    seg_include_background: bool = _opt(False, "segmentation: count the background class in mIoU and Dice",
                                        "optimization")
    # competing
    folds: int = _opt(0, "k-fold cross-validation: split the data into K folds (0: off, --val-split holds out "
                         "one part)", "competing", metavar="K")
    fold: str = _opt("all", "with --folds: the fold to validate on, 0..K-1, or all (every fold in turn)",
                     "competing")
    folds_file: str = _opt("", "reuse this image,fold CSV (e.g. another run's folds.csv) instead of a new split",
                           "competing", metavar="CSV")
    group_col: str = _opt("", "CSV column of groups (e.g. a patient id): no group is in two folds", "competing")
    ema: float = _opt(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999; "
                           "0: off); validation, best.pt and exported weights use it", "competing", metavar="DECAY")
    mixup: float = _opt(0.0, "Mixup alpha (classification; 0: off)", "competing", metavar="ALPHA")
    cutmix: float = _opt(0.0, "CutMix alpha (classification; 0: off)", "competing", metavar="ALPHA")
    mixup_prob: float = _opt(1.0, "probability of mixing a batch (--mixup, --cutmix)", "competing")
    mixup_switch_prob: float = _opt(0.5, "with --mixup and --cutmix: probability of CutMix instead of Mixup",
                                    "competing")
    label_smoothing: float = _opt(0.0, "smooth the (mixed) one-hot targets by this (classification)", "competing")
    # config-file only
    predict: Any = _opt(None, "prediction to run after training (config file only)", cli=False)


@dataclass
class PredictOptions:
    """``python -m kernel.predict`` options; also the keys of a training config's ``predict:`` section.

    In a ``predict:`` section, ``batch_size``, ``device``, ``amp`` and ``workers`` not given take the
    training run's values, and relative outputs land in the run folder.
    """

    inputs: List[str] = _opt(None, "image files, folders, or a CSV of image ids", positional=True)
    checkpoint: str = _opt("", "RUN/best.pt, RUN/model.safetensors, or the RUN folder (a k-fold RUN: the folds' "
                               "ensemble)", required=True, show_default=False)
    folds: str = _opt("", "with a k-fold RUN folder: the folds to average, e.g. 0,2 (default: every trained fold)")
    out: str = _opt("", "output: the predictions CSV or the masks folder (segment); a file there is replaced. Unset: "
                        "RUN/predict/predictions.csv or RUN/predict/masks, beside the checkpoint, in the next free "
                        "RUN/predict-2, -3... when taken")
    topk: Optional[int] = _opt(None, "labels per image in the predictions CSV (default 5) and in a --submit-as topk "
                                     "submission (default: as many as the sample's placeholders hold)")
    tta: bool = _opt(False, "average with the horizontally flipped image (segmentation: flipped logits flipped back)")
    threshold: Optional[float] = _opt(None, "multi-label classification and segmentation (binary, multilabel): "
                                            "probability above which a label or pixel is on (default: the training "
                                            "run's)")
    min_area: int = _opt(0, "segmentation: drop predicted regions smaller than this many pixels per class")
    batch_size: int = _opt(64, "images per batch")
    device: str = _opt("auto", "compute device", choices=DEVICES)
    amp: bool = _opt(False, "mixed precision (bf16/fp16 autocast)")
    workers: int = _opt(2, "DataLoader worker processes")
    image_dir: str = _opt("", "folder of a CSV input's images (default: the CSV's folder)")
    image_col: str = _opt("", "CSV column of image ids (default: first column)")
    submission: bool = _opt(False, "also write a Kaggle submission.csv beside --out (in a config: true or a file name)")
    submission_file: str = _opt("", "write the submission to this file (implies a submission)")
    id_col: str = _opt("", "submission id column (default: the training --image-col, or 'id')")
    target_col: str = _opt("", "submission target column (default: the training --label-col, or 'label'; "
                               "segmentation: rle_mask, or EncodedPixels with classes)")
    sample_submission: str = _opt("", "CSV whose header and id order the submission copies (implies a submission)")
    submit_as: str = _opt("auto", "classification submission values: label, prob (binary: P(positive class); a "
                                  "column per class: each class's), topk (the K best labels); auto: from the sample "
                                  "submission and the model, logged", choices=("auto", "label", "prob", "topk"))
    positive_class: str = _opt("", "binary --submit-as prob: the class whose probability is written (default: the "
                                   "second in sorted order, e.g. 1, dog, malignant)")


@dataclass
class InferOptions:
    """The inference kernel's config (``build.py --config infer.yaml --inference``; ``kernel.infer``): the
    trained run, the competition and the prediction. Kaggle runs it with no arguments on the public test set,
    then again on the hidden one: every path is searched at run time."""

    checkpoint: str = _opt("", "the trained run, searched under /kaggle/input in both layouts: e.g. kernel-train/exp "
                               "(a training kernel's output) or my-model/pytorch/default/1 (a Kaggle Model); a k-fold "
                               "run gives the folds' ensemble", show_default=False)
    competition: str = _opt("", "the competition's slug, whose mount holds the test images and sample submission "
                                "(default: the kaggle: section's first competition_sources)")
    time_limit: str = _opt("auto", "inference budget: ensemble members and TTA that would not fit are dropped, decided "
                                   "once from the first batches (auto: 8h30m on Kaggle, a code competition's usual 9 h "
                                   "less a margin; none elsewhere)")
    predict: Any = _opt(None, "predict: keys (inputs, sample_submission, tta, submit_as...); inputs default to the "
                              "competition's test folder, sample_submission to its sample_submission.csv", cli=False)
