"""Every command line of the README's code blocks runs as written, from a fresh folder, twice in a row.

The commands are read from README.md itself (``bash`` blocks, and the ``!`` lines of ``python`` blocks;
continuation lines joined, comments dropped). Each one is either in :data:`RUN` (run here, with the
substitutions of :data:`SUBSTITUTIONS`, in a fresh temporary folder holding the user files it names) or
in :data:`SKIP` with the reason it cannot run here. A command in neither table fails the test, so the
README cannot gain a command nobody has tried.

The user's files a command names (``data/train``, ``weights.safetensors``, ``run.yaml``...) are written
by :func:`_user_files` at the very paths the README uses, inside the fresh folder; a command that needs
an earlier run (prediction, ``--resume auto``) gets a copy of the folder its producing README command
left. Every command runs twice in the same folder: both exit 0, and both runs' outputs are there.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from conftest import ROOT, subprocess_env

# What runs here instead of the README's text: smaller models, images and epochs (applied to every command
# and to the README's run.yaml, longest match first). Nothing else in a command is changed.
SUBSTITUTIONS: Dict[str, str] = {
    "--model convnext_tiny": "--model test_resnet",
    "model: convnext_tiny": "model: test_resnet",
    "--model resnet34 --arch unet": "--model tu-test_resnet --arch unet",
    "--model resnet34": "--model test_resnet",
    "--model efficientnet-b0 --arch fpn": "--model tu-test_resnet --arch fpn",
    "--img-size 256 800": "--img-size 32 64",
    "--img-size 256": "--img-size 32",
    "--epochs 30": "--epochs 1",
    "--epochs 20": "--epochs 1",
    "--epochs 15": "--epochs 1",
    "epochs: 20": "epochs: 1",
    "--resume auto": "--resume auto --epochs 2",  # the run it continues trained 1 epoch: one more
}
# Added to every kernel.train command: small inputs, no worker processes, no pictures (the README's
# outputs are the checkpoints and tables), unless the command sets them itself.
TRAIN_DEFAULTS = (("--model", "test_resnet"), ("--img-size", "32"), ("--epochs", "1"), ("--workers", "0"),
                  ("--no-plots", ""), ("--batch-size", "8"))


@dataclass
class Cmd:
    """A README command that runs here: ``needs`` names the README command whose folder it starts from;
    ``outputs`` are the files the README names, after the first run and after the second."""

    outputs: Tuple[str, ...] = ()
    again: Tuple[str, ...] = ()
    needs: Optional[str] = None
    stdout: str = ""  # a regular expression the output must match
    absent: Tuple[str, ...] = ()  # what must not be there after both runs
    files: Optional[Callable[[Path], None]] = None  # writes what this command alone needs into its folder


RUN_FILES = ("last.pt", "best.pt", "model.safetensors", "classes.json", "metrics.csv", "summary.json",
             "config.yaml", "train.log")


def _run_files(name: str) -> Tuple[str, ...]:
    return tuple(f"runs/{name}/{f}" for f in RUN_FILES)


def _seg_sample_submission(folder: Path) -> None:
    """Severstal's layout for the segmenter of ``data/seg``: ImageId,ClassId,EncodedPixels, numeric ClassIds
    naming mask values (1..4 are the shapes), a row per test image and class."""
    ids = sorted(p.name for p in (folder / "data" / "test").glob("*.png"))
    rows = [f"{i},{k},1 1" for i in ids for k in range(1, 5)]
    (folder / "data" / "sample_submission.csv").write_text("ImageId,ClassId,EncodedPixels\n" + "\n".join(rows) + "\n")


DEMO = "python -m kernel.train --dry-run"
SEG_TRAIN = "python -m kernel.train --data data/seg --model resnet34 --arch unet --img-size 256 --epochs 30 --amp"
CLS_TRAIN = "python -m kernel.train --data data --csv train.csv --image-dir images"
REG_TRAIN = ("python -m kernel.train --task regress --data pets --csv train.csv --image-dir train --label-col Pawpularity "
             "--clip-target --epochs 5")
CV_TRAIN = ("python -m kernel.train --data data/train --model resnet34 --lr 0.001 --epochs 15 --amp --folds 5 "
            "--ema 0.999 --mixup 0.2 --cutmix 1.0 --label-smoothing 0.1 --name cv")
FOLDS = tuple(f"runs/cv/fold{i}/best.pt" for i in range(5)) + ("runs/cv/folds.csv", "runs/cv/oof.csv",
                                                                 "runs/cv/summary.json")

RUN: Dict[str, Cmd] = {
    DEMO: Cmd(_run_files("exp"), _run_files("exp-2")),
    "python -m kernel.train --data data/train --model convnext_tiny --pretrained weights.safetensors --epochs 20 "
    "--amp": Cmd(_run_files("exp"), _run_files("exp-2")),
    CLS_TRAIN: Cmd(_run_files("exp"), _run_files("exp-2")),
    # the README's run.yaml says `resume: auto`: the second run continues the first (finished: nothing to train)
    "python -m kernel.train --config run.yaml --lr 3e-4": Cmd(_run_files("exp"), absent=("runs/exp-2",)),
    "python -m kernel.train --list-models '*convnext*'": Cmd(stdout=r"(?m)^convnext_tiny$"),
    "python -m kernel.train --resume auto": Cmd(_run_files("exp"), needs="python -m kernel.train --epochs 1"),
    SEG_TRAIN: Cmd(_run_files("exp"), _run_files("exp-2")),
    "python -m kernel.train --data severstal --csv train.csv --image-dir train_images --class-col ClassId "
    "--model efficientnet-b0 --arch fpn --img-size 256 800": Cmd(_run_files("exp"), _run_files("exp-2")),
    "python -m kernel.predict --checkpoint runs/exp/best.pt data/test --out masks --tta":
        Cmd(("masks/00000.png", "masks/00005.png"), needs=SEG_TRAIN),
    "python -m kernel.predict --checkpoint runs/exp data/test --out masks --submission --sample-submission "
    "data/sample_submission.csv --min-area 50": Cmd(("masks/submission.csv",), needs=SEG_TRAIN,
                                                    files=_seg_sample_submission),
    "python -m kernel.predict --checkpoint runs/exp/best.pt data/test --topk 3 --tta":
        Cmd(("runs/exp/predict/predictions.csv",), ("runs/exp/predict-2/predictions.csv",), needs=CLS_TRAIN),
    "python -m kernel.predict --checkpoint runs/exp data/test.csv --image-dir data/test --submission "
    "--sample-submission data/sample_submission.csv":
        Cmd(("runs/exp/predict/submission.csv",), ("runs/exp/predict-2/submission.csv",), needs=CLS_TRAIN),
    "python -m kernel.train --data data/train --model resnet34 --find-lr": Cmd(stdout=r"suggested LR: \d"),
    CV_TRAIN: Cmd(FOLDS, tuple(f.replace("runs/cv/", "runs/cv-2/") for f in FOLDS)),
    "python -m kernel.train --data comp --csv train.csv --image-dir train --group-col patient_id --folds 5 "
    "--fold 2": Cmd(("runs/exp/fold2/best.pt", "runs/exp/folds.csv"), ("runs/exp-2/fold2/best.pt",)),
    "python -m kernel.train --data data/train --model convnext_tiny --folds 5 --folds-file runs/cv/folds.csv "
    "--name cv2": Cmd(tuple(f"runs/cv2/fold{i}/best.pt" for i in range(5)) + ("runs/cv2/oof.csv",),
                     ("runs/cv2-2/oof.csv",), needs=CV_TRAIN),
    "python -m kernel.predict --checkpoint runs/cv data/test --submission --tta":
        Cmd(("runs/cv/predict/submission.csv",), ("runs/cv/predict-2/submission.csv",), needs=CV_TRAIN),
    "python -m kernel.predict --checkpoint runs/cv --folds 0,2 data/test --out two.csv":
        Cmd(("two.csv",), needs=CV_TRAIN),
    REG_TRAIN: Cmd(_run_files("exp"), _run_files("exp-2")),
    "python -m kernel.predict --checkpoint runs/exp pets/test --submission --sample-submission "
    "pets/sample_submission.csv": Cmd(("runs/exp/predict/submission.csv",), ("runs/exp/predict-2/submission.csv",),
                                      needs=REG_TRAIN),
    "python build.py --config run.yaml": Cmd(("dist/kernel/train.py", "dist/kernel/kernel-metadata.json",
                                              "dist/dataset/dataset-metadata.json")),
    "python -m kernel.predict --checkpoint runs/exp data/test --submission --sample-submission "
    "data/sample_submission.csv --submit-as topk --topk 2":
        Cmd(("runs/exp/predict/submission.csv",), ("runs/exp/predict-2/submission.csv",), needs=CLS_TRAIN),
    "python build.py --config infer.yaml --inference": Cmd(("dist/inference/infer.py",
                                                            "dist/inference/kernel-metadata.json",
                                                            "dist/dataset/dataset-metadata.json")),
}
# A command that only sets up another one (not in the README).
SETUP = {"python -m kernel.train --epochs 1"}

SKIP: Dict[str, str] = {
    "python -m pip install -r requirements.txt && python -m kernel.train --dry-run":
        "installs packages; its kernel.train half is the demo, run above",
    "python -m pip install -r requirements-dev.txt && python -m pytest -q": "this is the test suite itself (.ci/run runs it)",
    "kaggle datasets create -p dist/dataset --dir-mode zip": "talks to Kaggle",
    'kaggle datasets version -p dist/dataset --dir-mode zip -m "kernel 0.1.0"': "talks to Kaggle",
    "kaggle kernels push -p dist/kernel": "talks to Kaggle",
    "kaggle kernels status <your-username>/kernel-train": "talks to Kaggle",
    "kaggle kernels output <your-username>/kernel-train -p outputs/kernel-train": "talks to Kaggle",
    'python build.py --config run.yaml --push -m "try focal loss"':
        "talks to Kaggle; tests/test_push_wait.py runs --push with the real client, HTTP scripted",
    "python build.py --config run.yaml --until-done 3":
        "talks to Kaggle; tests/test_push_wait.py runs --until-done with the real client, HTTP scripted",
    "python build.py --publish-model outputs/kernel-train/v3/exp --model-slug my-model":
        "talks to Kaggle; tests/test_publish_model.py runs it with the real client, HTTP scripted",
    'python build.py --publish-model outputs/kernel-train/v4/exp --model-slug my-model -m "focal loss, 12 epochs"':
        "talks to Kaggle; tests/test_publish_model.py runs it with the real client, HTTP scripted",
    'python build.py --config run.yaml --wait --submit my-competition':
        "submits to a competition on kaggle.com; tests/test_submit.py runs it with the real client, HTTP scripted",
    'python build.py --config run.yaml --submit my-competition --submit-message "lr 3e-4, 12 epochs"':
        "submits to a competition on kaggle.com; tests/test_submit.py runs it with the real client, HTTP scripted",
    'python build.py --submit my-competition --submission-file runs/exp/predict/submission.csv':
        "submits to a competition on kaggle.com; tests/test_submit.py runs it with the real client, HTTP scripted",
    'python build.py --config infer.yaml --inference --wait --submit my-competition':
        "submits to a competition on kaggle.com; tests/test_submit.py runs it with the real client, HTTP scripted",
    'python build.py --ledger my-competition':
        "submits to a competition on kaggle.com; tests/test_submit.py runs it with the real client, HTTP scripted",
    "torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint host0:29500 -m kernel.train "
    "--config run.yaml": "two machines; tests/test_distributed.py runs torchrun on one",
    "!pip install -q imgaug": "Colab; installs a package",
    "!python train.py --amp": "Colab's train.py is dist/kernel/train.py (built above); "
                              "tests/test_bootstrap.py runs the packed script",
}


def readme_commands() -> List[str]:
    """Every command line of README.md's ``bash`` blocks and the ``!`` lines of its ``python`` blocks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("bash", "python"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+", " ", line.split("  #")[0].split(" # ")[0]).strip()
            if line and not line.startswith("#") and (lang == "bash" or line.startswith("!")):
                out.append(line)
    return out


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    commands = readme_commands()
    assert len(commands) >= 25, commands
    unknown = [c for c in commands if c not in RUN and c not in SKIP]
    assert not unknown, f"README commands in neither RUN nor SKIP of {Path(__file__).name}: {unknown}"
    stale = sorted((set(RUN) | set(SKIP)) - set(commands))
    assert not stale, f"commands no longer in the README: {stale}"


def _substitute(text: str) -> str:
    for old in sorted(SUBSTITUTIONS, key=len, reverse=True):
        text = re.sub(re.escape(old) + r"(?=\s|$)", SUBSTITUTIONS[old], text)
    return text


def _argv(command: str) -> List[str]:
    """The README command as this test runs it: the substitutions, then the small defaults it does not set."""
    argv = shlex.split(_substitute(command))
    if argv[:3] == ["python", "-m", "kernel.train"]:
        argv += [x for flag, value in TRAIN_DEFAULTS if flag not in argv for x in (flag, value) if x]
    if argv[:2] == ["python", "build.py"]:
        argv = [sys.executable, str(ROOT / "build.py"), *argv[2:], "--owner", "test-user"]
    elif argv[0] == "python":
        argv[0] = sys.executable
    return argv


MY_LOSSES = '''import torch.nn.functional as F


def focal2(output, target):
    """Focal loss with gamma 2 on class indices."""
    logp = F.log_softmax(output.float(), 1).gather(1, target.long()[:, None])[:, 0]
    return (-(1 - logp.exp()) ** 2 * logp).mean()
'''


def _user_files(root: Path) -> None:
    """The files the README's commands name, at the README's paths under ``root``, tiny."""
    import timm
    from safetensors.torch import save_file

    from kernel.data import write_shapes
    from kernel.tasks.segment.shapes_seg import write_shapes_rle, write_shapes_seg

    write_shapes(root / "data", n=40, seed=0, size=32)  # data/train/<class>/, data/images/, data/train.csv
    test = write_shapes(root / "test-src", n=8, seed=1, size=32)
    (test / "images").rename(root / "data" / "test")
    ids = sorted(p.stem for p in (root / "data" / "test").glob("*.png"))
    (root / "data" / "test.csv").write_text("id\n" + "".join(f"{i}\n" for i in ids))
    (root / "data" / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},circle\n" for i in ids))
    shutil.rmtree(test)
    write_shapes_seg(root / "data" / "seg", n=12, seed=0, size=32)
    write_shapes_rle(root / "severstal", n=12, seed=0, size=32)
    comp = write_shapes(root / "comp-src", n=40, seed=2, size=32)  # Kaggle style: comp/train.csv, comp/train/<id>
    (root / "comp").mkdir()
    (comp / "images").rename(root / "comp" / "train")
    rows = (comp / "train.csv").read_text().splitlines()
    (root / "comp" / "train.csv").write_text("\n".join([rows[0] + ",patient_id"] +
                                                       [f"{r},p{i // 2}" for i, r in enumerate(rows[1:])]) + "\n")
    shutil.rmtree(comp)
    pets = write_shapes(root / "pets-src", n=40, seed=3, size=32)  # PetFinder style: Id,Pawpularity (1-100)
    (root / "pets").mkdir()
    (pets / "images").rename(root / "pets" / "train")
    rows = (pets / "train.csv").read_text().splitlines()[1:]
    score = {"circle": 10, "square": 35, "triangle": 60, "cross": 95}
    (root / "pets" / "train.csv").write_text("Id,Pawpularity\n" + "".join(
        f"{r.split(',')[0]},{score[r.split(',')[1]]}\n" for r in rows))
    (root / "pets" / "test").mkdir()
    for name in ("00001", "00002"):
        shutil.copy(root / "pets" / "train" / f"{name}.png", root / "pets" / "test" / f"{name}.png")
    (root / "pets" / "sample_submission.csv").write_text("Id,Pawpularity\n00002,50\n00001,50\n")
    shutil.rmtree(pets)
    save_file(timm.create_model("test_resnet").state_dict(), str(root / "weights.safetensors"))
    (root / "resnet-weights").mkdir()
    shutil.copy(root / "weights.safetensors", root / "resnet-weights" / "model.safetensors")
    shutil.copytree(root / "data" / "train", root / "my-images" / "train")
    (root / "my_losses.py").write_text(MY_LOSSES)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    run_yaml = re.search(r"```yaml\n# run.yaml\n(.*?)```", text, re.S).group(1)
    (root / "run.yaml").write_text(_substitute(run_yaml))
    infer_yaml = re.search(r"```yaml\n# infer.yaml\n(.*?)```", text, re.S).group(1)
    (root / "infer.yaml").write_text(infer_yaml)


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    """``run(command) -> (folder, [first, second] CompletedProcess)``, each command run once per module."""
    template = tmp_path_factory.mktemp("user-files")
    _user_files(template)
    done: Dict[str, Tuple[Path, list]] = {}

    def run(command: str):
        if command in done:
            return done[command]
        spec = RUN.get(command, Cmd())
        folder = tmp_path_factory.mktemp("readme")
        shutil.rmtree(folder)
        if spec.needs:
            shutil.copytree(run(spec.needs)[0], folder, symlinks=True)
        else:
            shutil.copytree(template, folder)
        if spec.files:
            spec.files(folder)
        procs = []
        for _ in range(1 if command in SETUP else 2):
            procs.append(subprocess.run(_argv(command), cwd=folder, env=subprocess_env(), capture_output=True,
                                        text=True, timeout=600))
            assert procs[-1].returncode == 0, (command, _argv(command), procs[-1].stdout[-3000:],
                                               procs[-1].stderr[-3000:])
        done[command] = (folder, procs)
        return done[command]

    return run


@pytest.mark.parametrize("command", sorted(RUN))
def test_readme_command_runs_twice_from_a_fresh_folder(readme_runs, command):
    spec = RUN[command]
    folder, procs = readme_runs(command)
    for path in spec.outputs + spec.again:
        assert (folder / path).is_file(), (command, path, sorted(str(p.relative_to(folder)) for p in
                                                                  folder.rglob("*") if "runs" in p.parts)[:60])
    for path in spec.absent:
        assert not (folder / path).exists(), (command, path)
    if spec.stdout:
        for proc in procs:
            assert re.search(spec.stdout, proc.stdout + proc.stderr), (command, proc.stdout[-2000:])
