"""build.py: packing, validation like the official client, and the packed kernel on fake Kaggle/Colab.

Everything is offline. The official ``kaggle`` client is exercised for real with only its network
layer (``requests.Session.send``) replaced. The packed ``train.py`` runs in subprocesses with a
fake ``/kaggle`` tree, a socket guard and a site-packages imgaug hidden from import.

What "writes nothing anywhere else" means here (test_kaggle_run): the working directory stays
empty, the input tree is byte-identical afterwards, TORCH_HOME stays empty, TMPDIR holds no file
(torch itself may create an empty ``torchinductor_<user>`` folder there) and the script's own
folder holds only the script. HOME may receive library caches (matplotlib's font
cache, as on a real Kaggle machine, where HOME is outside /kaggle/working); the test lists what
it allows there and fails on anything else.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest
import yaml
from PIL import Image

import build
from kernel import packer

ROOT = Path(__file__).resolve().parents[1]
OWNER = "alice"

TRAIN_CONFIG = {
    "data": "shapes-png/train",  # relative: found under the Kaggle input mount
    "model": "test_resnet",
    "img_size": 32,
    "epochs": 1,
    "dry_run": True,
    "device": "cpu",
    "workers": 0,
    "batch_size": 8,
    "aug_backend": "imgaug",  # proves the vendored imgaug copy is used
    "resume": "auto",
    "name": "exp",
    "loss": "my_losses.py:smooth_ce",  # a user module, embedded as kernel_user.my_losses
    "cache": "disk",  # the decoded-image cache: written to scratch space (/kaggle/temp) only
}

USER_LOSSES = '''\
"""A user loss module, named by the config as my_losses.py:smooth_ce."""
import torch.nn.functional as F


def smooth_ce(logits, target):
    return F.cross_entropy(logits.float(), target, label_smoothing=0.1)


def broken():
    raise RuntimeError("raised in the user module")  # line 10
'''


# ------------------------------------------------------------------------------------- helpers

def make_project(dst: Path, owner: str = OWNER) -> Path:
    """A copy of the project (build inputs only) so tests can plant files and edit templates."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "kernel", dst / "kernel", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("kernel-metadata.json", "dataset-metadata.json"):
        text = (ROOT / name).read_text()
        (dst / name).write_text(text.replace(packer.PLACEHOLDER_OWNER, owner) if owner else text)
    return dst


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def write_config(folder: Path, config: Dict, name: str = "run.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_build(project: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python build.py ...` as a user runs it (a subprocess, so exit codes and stderr are real)."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import build, pathlib; " \
           f"sys.exit(build.main(sys.argv[1:], project=pathlib.Path({str(project)!r})))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd or project, capture_output=True,
                          text=True, timeout=120)


def build_into(project: Path, out: Path, config: Dict | None = None) -> Path:
    """Build in-process (fast) with a config (plus my_losses.py next to it), or without one as the demo."""
    argv = ["--out", str(out)] + ([] if config is not None else ["--demo"])
    if config is not None:
        cfg_dir = project / "configs"
        (cfg_dir).mkdir(exist_ok=True)
        (cfg_dir / "my_losses.py").write_text(USER_LOSSES)
        argv += ["--config", str(write_config(cfg_dir, config))]
    old = os.getcwd()
    os.chdir(project)
    try:
        assert build.main(argv, project=project) == 0
    finally:
        os.chdir(old)
    return out


def tree(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def digest(folder: Path) -> Dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in tree(folder).items()} if folder.exists() else {}


def write_png_dataset(root: Path, classes=("circle", "square", "triangle"), per_class: int = 8) -> None:
    """A tiny ImageFolder of PNGs (3 classes) written with PIL."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(24, 24, 3), dtype=np.uint8)
            img[4 + c * 4:12 + c * 4, 4:20, c] = 255
            Image.fromarray(img).save(d / f"{name}_{i}.png")


# ---------------------------------------------------------------------- 1. the official client

class FakeKaggle:
    """Stands in for api.kaggle.com behind requests.Session.send; records every request."""

    def __init__(self, dataset_exists: bool = False):
        self.requests: List[dict] = []
        self.uploads: Dict[str, bytes] = {}
        self.dataset_exists = dataset_exists
        self._pending: List[str] = []

    def send(self, session, request, **kwargs):
        import requests

        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode()
        url = request.url
        self.requests.append({"method": request.method, "url": url, "body": body or b""})
        status, payload = 200, {}
        if url.endswith("/GetDatasetStatus"):
            status, payload = (200, {"status": "ready"}) if self.dataset_exists else (404, {"message": "not found"})
        elif url.endswith("/StartBlobUpload"):
            name = json.loads(body)["name"]
            self._pending.append(name)
            payload = {"token": f"tok-{name}", "createUrl": f"https://upload.invalid/{name}"}
        elif url.startswith("https://upload.invalid/"):
            self.uploads[url.rsplit("/", 1)[1]] = body or b""
        elif url.endswith("/SaveKernel"):
            payload = {"ref": "/code/alice/kernel-train", "url": "https://www.kaggle.com/code/alice/kernel-train",
                       "versionNumber": 1}
        elif url.endswith(("/CreateDataset", "/CreateDatasetVersion")):
            payload = {"ref": "alice/kernel-code", "url": "https://www.kaggle.com/datasets/alice/kernel-code",
                       "status": "ok"}
        resp = requests.Response()
        resp.status_code, resp.url, resp.request = status, url, request
        resp._content = json.dumps(payload).encode()
        resp.headers["Content-Type"] = "application/json"
        return resp

    def json_bodies(self, suffix: str) -> List[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["url"].endswith(suffix)]


@pytest.fixture()
def kaggle_api(tmp_path, monkeypatch):
    """A real, authenticated KaggleApi whose network is a FakeKaggle."""
    import tempfile

    import requests

    cfg, tmp = tmp_path / "kaggle-config", tmp_path / "tmpdir"
    cfg.mkdir()
    tmp.mkdir()
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setenv("KAGGLE_USERNAME", OWNER)
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kaggle/access_token of the real user is seen
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    fake = FakeKaggle()
    monkeypatch.setattr(requests.Session, "send", lambda self, request, **kw: fake.send(self, request, **kw))
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.config_dir = str(cfg)
    api.authenticate()
    return api, fake


def test_official_client_accepts_the_kernel_push(project, tmp_path, kaggle_api):
    api, fake = kaggle_api
    (project / "kernel-metadata.json").write_text(json.dumps({
        **json.loads((project / "kernel-metadata.json").read_text()),
        "dataset_sources": ["alice/shapes-png"], "model_sources": ["alice/resnet/pytorch/default/1"]}))
    out = build_into(project, tmp_path / "dist", TRAIN_CONFIG)
    result = api.kernels_push(str(out / "kernel"))
    assert not result.error
    (sent,) = fake.json_bodies("/SaveKernel")
    assert sent["slug"] == "alice/kernel-train"
    assert sent["text"] == (out / "kernel" / "train.py").read_text(encoding="utf-8")
    assert sent["language"] == "python" and sent["kernelType"] == "script"
    assert sent["enableGpu"] is True and sent["enableInternet"] is False
    assert sent["machineShape"] == "NvidiaTeslaT4"
    assert sent["datasetDataSources"] == ["alice/kernel-code", "alice/shapes-png"]
    assert sent["kernelDataSources"] == ["alice/kernel-train"]  # resume: auto reads the previous output
    assert sent["modelDataSources"] == ["alice/resnet/pytorch/default/1"]


def test_official_client_accepts_the_dataset(project, tmp_path, kaggle_api):
    api, fake = kaggle_api
    out = build_into(project, tmp_path / "dist")
    result = api.dataset_create_new(str(out / "dataset"), dir_mode="zip", quiet=True)
    assert not result.error, result.error
    (created,) = fake.json_bodies("/CreateDataset")
    assert (created["ownerSlug"], created["slug"], created["licenseName"]) == ("alice", "kernel-code", "other")
    assert created["isPrivate"] is True
    assert sorted(fake.uploads) == ["README.md", "kernel.zip", "vendor.zip"]
    kernel_zip = zipfile.ZipFile(BytesIO(fake.uploads["kernel.zip"])).namelist()
    assert "train.py" in kernel_zip and "__init__.py" in kernel_zip
    assert all(n.endswith(".py") for n in kernel_zip)
    vendor_zip = zipfile.ZipFile(BytesIO(fake.uploads["vendor.zip"])).namelist()
    assert "imgaug/__init__.py" in vendor_zip and "imgaug/augmenters/geometric.py" in vendor_zip
    assert not [n for n in vendor_zip if "__pycache__" in n or n.endswith(".pyc")]
    # And the next version goes through `datasets version` with the same folder.
    fake.dataset_exists = True
    result = api.dataset_create_version(str(out / "dataset"), "v2", dir_mode="zip", quiet=True)
    assert not result.error, result.error


# ------------------------------------------------------- 2-3. the packed kernel on Kaggle and Colab

SITECUSTOMIZE = r'''
"""Test harness: no network, and the site-packages copies of $TEST_HIDE's packages hidden (as on Kaggle's image)."""
import atexit, importlib.machinery, os, site, socket, sys

def _blocked(*args, **kwargs):
    raise OSError("network access blocked by the test")

socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked

_SITE = {os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()]}


_HIDDEN = [n for n in os.environ.get("TEST_HIDE", "").split(",") if n]


class _HideSitePackages:
    """Find the hidden top-level packages on sys.path minus site-packages; everything else as usual."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in _HIDDEN and path is None:
            path = [p for p in sys.path if os.path.realpath(p or ".") not in _SITE]
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def invalidate_caches(cls):
        importlib.machinery.PathFinder.invalidate_caches()

    @classmethod
    def find_distributions(cls, *args, **kwargs):  # importlib.metadata asks the meta-path finders
        return importlib.machinery.PathFinder.find_distributions(*args, **kwargs)


if _HIDDEN:
    sys.meta_path[:] = [_HideSitePackages if f is importlib.machinery.PathFinder else f for f in sys.meta_path]


@atexit.register
def _report():
    for name in ("imgaug", "segmentation_models_pytorch"):
        mod = sys.modules.get(name)
        sys.stderr.write("%s_FILE=%s\n" % (name.upper(), getattr(mod, "__file__", None)))
'''


def _isolated_env(tmp: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "COLAB_", "KERNEL_", "PYTHON")) and k not in ("HOME", "TMPDIR")}
    for d in ("home", "tmp", "torch-home", "harness"):
        (tmp / d).mkdir(exist_ok=True)
    (tmp / "harness" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env.update(HOME=str(tmp / "home"), TMPDIR=str(tmp / "tmp"), TORCH_HOME=str(tmp / "torch-home"),
               PYTHONPATH=str(tmp / "harness"), PYTHONHASHSEED="0", OMP_NUM_THREADS="2", **extra)
    return env


# Library caches a real Kaggle machine also keeps in HOME (outside /kaggle/working).
ALLOWED_IN_HOME = re.compile(r"^(\.cache/matplotlib|\.config/matplotlib|\.cache/fontconfig)/")


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """dist/ built once from TRAIN_CONFIG (module scope: the runs below share it)."""
    proj = make_project(tmp_path_factory.mktemp("proj"))
    return build_into(proj, proj / "dist", TRAIN_CONFIG)


def _run_on_kaggle(dist: Path, tmp_path: Path, data_slug: str, write_data: Callable[[Path], Any], hide: str, *,
                   layout: str = "new", cwd: Optional[Path] = None, **env: str) -> SimpleNamespace:
    """Run ``dist``'s kernel as Kaggle does: the code dataset and a data dataset (``write_data(folder)``)
    mounted in ``layout``, /kaggle/src/script.py run with no arguments, ``hide`` modules missing from the image.
    Returns the log and the folders, and the inputs' digest before the run; the run must succeed."""
    kaggle = tmp_path / "kaggle"
    inputs, working, src, temp = kaggle / "input", kaggle / "working", kaggle / "src", kaggle / "temp"
    mount = (lambda slug: inputs / "datasets" / OWNER / slug) if layout == "new" else (lambda slug: inputs / slug)
    code_ds, data_ds = mount("kernel-code"), mount(data_slug)
    # What Kaggle mounts for the code dataset: the uploaded files, zips unpacked (no metadata file).
    shutil.copytree(dist / "dataset", code_ds, ignore=shutil.ignore_patterns("dataset-metadata.json"))
    write_data(data_ds)
    for d in (working, src):
        d.mkdir(parents=True)
    shutil.copy(dist / "kernel" / "train.py", src / "script.py")  # Kaggle runs /kaggle/src/script.py
    before = digest(inputs)
    env = _isolated_env(tmp_path, KAGGLE_KERNEL_RUN_TYPE="Batch", KERNEL_KAGGLE_INPUT=str(inputs),
                        KERNEL_KAGGLE_WORKING=str(working), KERNEL_KAGGLE_TEMP=str(temp), TEST_HIDE=hide, **env)
    proc = subprocess.run([sys.executable, str(src / "script.py")], cwd=cwd or tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return SimpleNamespace(log=log, inputs=inputs, inputs_before=before, working=working, src=src, code_ds=code_ds,
                           temp=temp)


@pytest.mark.parametrize("layout", ["new", "old"])
def test_kaggle_run(packed, tmp_path, layout):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    k = _run_on_kaggle(packed, tmp_path, "shapes-png", lambda d: write_png_dataset(d / "train"), "imgaug",
                       layout=layout, cwd=cwd, COLAB_RELEASE_TAG="also-set-on-kaggle")
    log, code_ds, working = k.log, k.code_ds, k.working
    assert "kernel 0.1.0 (packed train.py; sources sha256" in log and "as built" in log
    assert f"using the vendored copy in {code_ds / 'vendor'}" in log
    assert f"IMGAUG_FILE={code_ds / 'vendor' / 'imgaug' / '__init__.py'}" in log
    run_dir = working / "exp"
    assert (run_dir / "last.pt").is_file() and (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("*.log")) or (run_dir / "metrics.csv").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["loss"] == "kernel_user.my_losses:smooth_ce" and saved["aug_backend"] == "imgaug"
    # The decoded-image cache is in scratch space, and nowhere in the kept output
    shards = list(k.temp.glob("kernel-cache-*/v1-*/*.bin"))
    assert shards and all(s.stat().st_size > 0 for s in shards)
    assert json.loads((run_dir / "summary.json").read_text())["cache"]["dir"][0].startswith(str(k.temp))
    assert not [p for p in working.rglob("*") if p.suffix in (".bin", ".idx")]
    # Nothing anywhere else.
    assert digest(k.inputs) == k.inputs_before, "the input tree changed"
    assert not list(cwd.iterdir()), "files were written to the working directory"
    assert [p.name for p in k.src.iterdir()] == ["script.py"]
    # torch may create an empty cache folder (torchinductor_<user>) in TMPDIR; no file may appear.
    assert not [p for p in (tmp_path / "tmp").rglob("*") if not p.is_dir()]
    assert not list((tmp_path / "torch-home").iterdir())
    home = [p.relative_to(tmp_path / "home").as_posix() for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert not [p for p in home if not ALLOWED_IN_HOME.match(p)], home


SEG_CONFIG = {"data": "shapes-seg/train", "model": "tu-test_resnet", "img_size": 32, "epochs": 1, "dry_run": True,
              "device": "cpu", "workers": 0, "batch_size": 8, "aug_backend": "imgaug", "name": "seg",
              "predict": {"inputs": ["shapes-seg/test"], "submission": True}}


def test_kaggle_segmentation_run_with_vendored_smp_and_imgaug(tmp_path):
    from kernel.tasks.segment.shapes_seg import write_shapes_seg
    from kernel.tasks.segment.rle import rle_decode

    def write_data(folder: Path) -> None:
        write_shapes_seg(folder / "train", n=24, seed=0, size=32)
        (folder / "test").mkdir(parents=True)
        for i, (w, h) in enumerate([(45, 70), (37, 29)]):  # not square, not multiples of 32
            Image.new("RGB", (w, h), (20 * i, 90, 160)).save(folder / "test" / f"t{i}.png")

    proj = make_project(tmp_path / "proj")
    k = _run_on_kaggle(build_into(proj, proj / "dist", SEG_CONFIG), tmp_path, "shapes-seg", write_data,
                       "imgaug,segmentation_models_pytorch")
    log, code_ds, working = k.log, k.code_ds, k.working
    vendor = code_ds / "vendor"
    assert f"SEGMENTATION_MODELS_PYTORCH_FILE={vendor / 'segmentation_models_pytorch' / '__init__.py'}" in log
    assert f"IMGAUG_FILE={vendor / 'imgaug' / '__init__.py'}" in log
    run = working / "seg"
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "segment"  # auto: the data has masks
    masks = run / "masks"
    with Image.open(masks / "t0.png") as m0, Image.open(masks / "t1.png") as m1:
        assert m0.size == (45, 70) and m1.size == (37, 29) and m0.mode == "P"
        arrays = {"t0": np.asarray(m0), "t1": np.asarray(m1)}
    rows = list(csv.reader(open(masks / "submission.csv")))
    assert rows[0] == ["ImageId", "ClassId", "EncodedPixels"] and len(rows) == 1 + 2 * 4
    classes = ["background", "circle", "square", "triangle", "cross"]
    for ident, cls, rle in rows[1:]:  # our submission decodes to our masks
        want = (arrays[ident] == classes.index(cls)).astype(np.uint8)
        assert np.array_equal(rle_decode(rle, want.shape), want), (ident, cls)


KFOLD_CONFIG = {"data": "shapes-png/train", "model": "test_resnet", "img_size": 32, "epochs": 1, "device": "cpu",
                "workers": 0, "batch_size": 8, "folds": 3, "fold": "all", "name": "cv",
                "predict": {"inputs": ["shapes-png/test"], "submission": True}}


def test_kaggle_kfold_run_writes_oof_cv_and_an_ensembled_submission(tmp_path):
    """The packed kernel with --folds 3 --fold all and a predict: section, as Kaggle runs it (no arguments)."""
    def write_data(folder: Path) -> None:
        write_png_dataset(folder / "train", per_class=9)
        write_png_dataset(folder / "test", per_class=2)

    proj = make_project(tmp_path / "proj")
    k = _run_on_kaggle(build_into(proj, proj / "dist", KFOLD_CONFIG), tmp_path, "shapes-png", write_data, "imgaug")
    log, working = k.log, k.working
    run = working / "cv"
    oof = list(csv.DictReader(open(run / "oof.csv")))
    assert len(oof) == 27 and sorted(r["fold"] for r in oof) == sorted(["0", "1", "2"] * 9)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["folds"] == 3 and summary["cv_metric_name"] == "cv_acc"
    assert summary["cv_metric"] == pytest.approx(sum(r["label"] == r["pred"] for r in oof) / 27)
    assert "ensemble of 3 folds (fold0, fold1, fold2)" in log
    rows = list(csv.reader(open(run / "submission.csv")))
    assert rows[0] == ["id", "label"] and len(rows) == 1 + 6
    assert (run / "cv.png").is_file() and all((run / f"fold{i}" / "best.pt").is_file() for i in range(3))


REG_CONFIG = {"task": "regress", "data": "reg-data/train", "csv": "targets.csv", "image_dir": "images", "model": "test_resnet",
              "img_size": 32, "epochs": 1, "dry_run": True, "device": "cpu", "workers": 0, "batch_size": 8,
              "name": "reg", "clip_target": True, "predict": {"inputs": ["reg-data/test"], "submission": True}}


def test_kaggle_regression_run_writes_numbers_in_the_targets_units(tmp_path):
    """--task regress from a CSV of numbers, packed and run as Kaggle runs it; the submission holds numbers."""
    def write_data(folder: Path) -> None:
        train = folder / "train"
        write_png_dataset(folder / "by_class", per_class=8)
        (train / "images").mkdir(parents=True)
        rows = ["id,score"]
        for i, f in enumerate(sorted((folder / "by_class").rglob("*.png"))):
            shutil.copy(f, train / "images" / f"{i:03d}.png")
            rows.append(f"{i:03d},{1.5 + 2.25 * ('square' in f.parent.name) + 0.5 * i / 24:.4f}")
        (train / "targets.csv").write_text("\n".join(rows) + "\n")
        (folder / "test").mkdir()
        for i in range(3):
            shutil.copy(train / "images" / f"{i:03d}.png", folder / "test" / f"t{i}.png")

    proj = make_project(tmp_path / "proj")
    k = _run_on_kaggle(build_into(proj, proj / "dist", REG_CONFIG), tmp_path, "reg-data", write_data, "imgaug")
    run = k.working / "reg"
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "regress"
    rows = list(csv.reader(open(run / "submission.csv")))
    assert rows[0] == ["id", "score"] and len(rows) == 4
    assert all(1.5 <= float(r[1]) <= 1.5 + 2.25 + 0.5 for r in rows[1:])  # --clip-target: the training range


USER_TASK = """from kernel.tasks.classify import ClassifyTask


class Doubled(ClassifyTask):
    name = "doubled"

    def step(self, model, batch, loss_fn):
        outputs = 2 * model(batch[0])
        return (None if loss_fn is None else loss_fn(outputs, batch[1])), outputs
"""


def test_kaggle_run_with_a_users_task_file(tmp_path):
    """--task my_task.py:Doubled: the file is embedded (kernel_user.my_task) and the kernel trains with it."""
    proj = make_project(tmp_path / "proj")
    (proj / "configs").mkdir()
    (proj / "configs" / "my_task.py").write_text(USER_TASK)
    config = {**TRAIN_CONFIG, "task": "my_task.py:Doubled", "name": "mine", "aug_backend": "torchvision"}
    k = _run_on_kaggle(build_into(proj, proj / "dist", config), tmp_path, "shapes-png",
                       lambda d: write_png_dataset(d / "train"), "imgaug")
    assert "task doubled" in k.log
    saved = yaml.safe_load((k.working / "mine" / "config.yaml").read_text())
    assert saved["task"] == "kernel_user.my_task:Doubled" and (k.working / "mine" / "best.pt").is_file()


def test_colab_run(packed, tmp_path):
    cwd = tmp_path / "content"
    cwd.mkdir()
    env = _isolated_env(tmp_path, COLAB_RELEASE_TAG="release-colab-20260101")  # imgaug as if pip-installed
    proc = subprocess.run([sys.executable, str(packed / "kernel" / "train.py"), "--amp", "--dry-run", "--data",
                           "shapes"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (cwd / "runs" / "exp" / "last.pt").is_file()
    saved = yaml.safe_load((cwd / "runs" / "exp" / "config.yaml").read_text())
    assert saved["data"] == "shapes" and saved["amp"] is True  # flags override the baked config
    assert saved["model"] == "test_resnet"  # ... which still applies where no flag is given
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]


# --------------------------------------------------------------------------------- 4. tracebacks

def test_tracebacks_name_the_embedded_module_and_line(packed, tmp_path):
    decoy = tmp_path / "kernel"  # an unrelated `kernel` package in the cwd must not be imported
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy kernel package was imported')\n")
    script = packed / "kernel" / "train.py"
    code = textwrap.dedent(f"""
        import runpy, sys
        g = runpy.run_path({str(script)!r}, run_name="packed")   # installs the import hook, runs nothing
        import kernel.registry, kernel_user.my_losses
        print("FILE", kernel.registry.__file__)
        try:
            kernel_user.my_losses.broken()
        except RuntimeError:
            import traceback; traceback.print_exc()
        sys.excepthook = g["_excepthook"]
        kernel.registry.parse_kwargs(123)                        # uncaught ConfigError
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=_isolated_env(tmp_path))
    err = proc.stderr
    assert proc.returncode == 1 and "decoy" not in err, err
    assert "FILE kernel/registry.py" in proc.stdout
    src = (ROOT / "kernel" / "registry.py").read_text().splitlines()
    line = next(i for i, t in enumerate(src, 1) if "expected 'key=value,...' or a mapping" in t)
    assert f'File "kernel/registry.py", line {line}, in parse_kwargs' in err, err
    assert src[line - 1].strip() in err  # the source line itself, from the embedded text
    assert 'File "kernel_user/my_losses.py", line 10, in broken' in err
    assert 'raise RuntimeError("raised in the user module")' in err


# ----------------------------------------------------------------------------- 5. reproducibility

def test_builds_are_byte_identical(tmp_path):
    proj = make_project(tmp_path / "p")
    first = tree(build_into(proj, tmp_path / "a", TRAIN_CONFIG))
    second = tree(build_into(proj, tmp_path / "b" / "dist", TRAIN_CONFIG))
    assert first == second
    (tmp_path / "a" / "kernel" / "stale.txt").write_text("old")  # rebuilding replaces, never merges
    assert tree(build_into(proj, tmp_path / "a", TRAIN_CONFIG)) == first


def test_packed_script_layout_and_size(packed):
    text = (packed / "kernel" / "train.py").read_text(encoding="utf-8")
    assert len(text.encode()) < 1_000_000  # the size budget of BENCHMARKS.md
    head = text[:text.index("BUNDLE_VERSION")]
    baked = yaml.safe_load(re.search(r'CONFIG = r"""(.*?)"""', head, re.S).group(1))
    assert baked["loss"] == "kernel_user.my_losses:smooth_ce"  # the user spec, rewritten
    assert baked["data"] == "shapes-png/train" and "kaggle" not in baked
    for path in sorted((ROOT / "kernel").rglob("*.py")):  # every module but the packer's, as readable source
        rel = path.relative_to(ROOT).as_posix()
        if "__pycache__" not in rel:
            assert (f"# ==== {rel} " in text) != rel.startswith("kernel/packer/"), rel
    assert "base64" not in text and "zipfile" not in text
    meta = json.loads((packed / "kernel" / "kernel-metadata.json").read_text())
    assert meta["code_file"] == "train.py" and meta["kernel_type"] == "script" and meta["language"] == "python"
    names = set(tree(packed / "dataset"))
    assert {"README.md", "dataset-metadata.json", "kernel/__init__.py", "vendor/imgaug/__init__.py",
            "vendor/imgaug/DejaVuSans.ttf", "vendor/imgaug/LICENSE", "vendor/segmentation_models_pytorch/__init__.py",
            "vendor/segmentation_models_pytorch/LICENSE"} <= names
    assert not [n for n in names if "my_losses" in n or "__pycache__" in n or n.endswith(".pyc")]


# ----------------------------------------------------------------------------- 6. refusals

def test_the_code_dataset_names_every_vendored_package_with_its_licence(project, tmp_path):
    """The packages come from packer.VENDORED (what build.py vendors), so a package added there must be named too."""
    import importlib.metadata

    out = build_into(project, tmp_path / "dist")
    bundle = packer.plan(None, project=project)
    readme = (out / "dataset" / "README.md").read_text()
    description = json.loads((out / "dataset" / "dataset-metadata.json").read_text())["description"]
    assert sorted(bundle.vendored) == sorted(packer.VENDORED)  # both are installed here: none is left out
    assert bundle.licenses["segmentation_models_pytorch"] == "MIT" and bundle.licenses["imgaug"] == "MIT"
    for package in packer.VENDORED:
        version, licence = importlib.metadata.version(package.replace("_", "-")), bundle.licenses[package]
        (line,) = [ln for ln in readme.splitlines() if ln.startswith(f"- `vendor/{package}/`: ")]
        assert f"{package} {version}" in line and f"{licence} licence" in line, line
        assert f"`vendor/{package}/LICENSE`" in line and (out / "dataset" / "vendor" / package / "LICENSE").is_file()
        assert f"{package} {version} ({licence})" in description, description
    # The project README's code-dataset row and licence note name them too.
    project_readme = (ROOT / "README.md").read_text()
    row = next(ln for ln in project_readme.splitlines() if ln.startswith("| `dist/dataset/` |"))
    note = project_readme[project_readme.index("`dataset-metadata.json` (top level)"):][:600]
    assert all(package in row and package in note for package in packer.VENDORED), (row, note)


SECRET = "s3cr3t-value-that-must-not-leave"


def test_secrets_are_never_packed(tmp_path):
    proj = make_project(tmp_path / "p")
    for folder in (proj, proj / "kernel", proj / "configs"):
        folder.mkdir(exist_ok=True)
        for name in ("kaggle.json", ".env", "access_token", "key.pem"):
            (folder / name).write_text(json.dumps({"username": "alice", "key": SECRET}))
    out = build_into(proj, tmp_path / "dist", TRAIN_CONFIG)
    for rel, data in tree(out).items():
        assert SECRET.encode() not in data, rel
        assert not packer.is_secret_name(rel.rsplit("/", 1)[-1]), rel


def test_a_module_with_a_pasted_api_key_is_refused(tmp_path):
    proj = make_project(tmp_path / "p")
    (proj / "kernel" / "settings.py").write_text('CREDS = {"username": "alice", "key": "%s"}\n' % ("ab12" * 8))
    proc = run_build(proj, "--out", str(tmp_path / "dist"), "--demo")
    assert proc.returncode == 2 and "kernel/settings.py: contains what looks like a Kaggle API key" in proc.stderr
    assert not (tmp_path / "dist").exists()


@pytest.mark.parametrize("spec, message", [
    ("kaggle.json:x", "names a credentials file"),
    ("configs/.env:x", "names a credentials file"),
    ("missing_module.py:x", "not found"),
    ("../outside.py:x", "outside the project"),
    ("notes.txt:x", "not a Python module"),
])
def test_config_naming_secrets_or_outside_files_is_refused(tmp_path, spec, message):
    proj = make_project(tmp_path / "p")
    (tmp_path / "outside.py").write_text("x = 1\n")
    (proj / "notes.txt").write_text("x\n")
    cfg = write_config(proj / "configs", {"loss": spec})
    proc = run_build(proj, "--config", str(cfg), "--out", str(tmp_path / "dist"))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dist").exists()  # validation happens before anything is written


def _kernel_meta(**changes):
    meta = {"id": "alice/kernel-train", "title": "kernel-train", "is_private": True, "enable_gpu": True,
            "enable_internet": False, "machine_shape": "NvidiaTeslaT4", "dataset_sources": [],
            "competition_sources": [], "kernel_sources": [], "model_sources": []}
    meta.update(changes)
    return meta


KERNEL_CASES = [
    (dict(id="YOUR_KAGGLE_USERNAME/kernel-train"), "id: the owner is still the placeholder"),
    (dict(id="kernel-train"), "id: 'kernel-train' is not of the form owner/kernel-slug"),
    (dict(id="alice/kernel-train/3"), "id: 'alice/kernel-train/3' must not contain a version"),
    (dict(id="alice/a/b/c"), "id: 'alice/a/b/c' is not of the form"),
    (dict(id="alice/knl"), "id: kernel slug 'knl' is shorter than 5 characters"),
    (dict(id="alice/Kernel_Train"), "id: slug 'Kernel_Train' must be lowercase"),
    (dict(id="Alice Smith/kernel-train"), "id: owner 'Alice Smith' is not a Kaggle username"),
    (dict(id=None), "id: missing"),
    (dict(title="abc"), "title: 'abc' is shorter than 5 characters"),
    (dict(title=None), "title: missing"),
    (dict(language="r"), "language: 'r', but build.py writes a Python script"),
    (dict(kernel_type="notebook"), "kernel_type: 'notebook', but build.py writes a Python script"),
    (dict(enable_gpu=1), "enable_gpu: 1 is an integer makes the client raise TypeError"),
    (dict(is_private="yes"), "is_private: 'yes' is not a boolean; write true or false"),
    (dict(enable_internet=0), "enable_internet: 0 is an integer"),
    (dict(machine_shape="NvidiaTeslaT5"), "machine_shape: 'NvidiaTeslaT5' is not a known Kaggle machine"),
    (dict(machine_shape=""), "machine_shape: empty while enable_gpu is true"),
    (dict(enable_gpu=False), "machine_shape: 'NvidiaTeslaT4' is a GPU but enable_gpu is false"),
    (dict(enable_gpu=False, machine_shape="TpuV5E8"), "'TpuV5E8' is a TPU but enable_tpu is not true"),
    (dict(docker_image_pinning_type="newest"), "docker_image_pinning_type: 'newest' is not 'original' or 'latest'"),
    (dict(dataset_sources=["shapes-png"]), "dataset_sources: 'shapes-png' is not of the form owner/dataset-slug"),
    (dict(dataset_sources=["a/b/c/d"]), "dataset_sources: 'a/b/c/d' is not of the form"),
    (dict(dataset_sources=["alice/shapes/latest"]), "the version must be a number"),
    (dict(dataset_sources="alice/shapes"), "dataset_sources: must be a list of strings"),
    (dict(kernel_sources=["alice/abc"]), "kernel_sources: kernel slug 'abc' is shorter than 5"),
    (dict(kernel_sources=["alice/kernel-train/"]), "has an empty version"),
    (dict(kernel_sources=["alice"]), "kernel_sources: 'alice' is not of the form"),
    (dict(model_sources=["alice/resnet/pytorch/default"]), "exactly 4 slashes"),
    (dict(model_sources=["alice/resnet/pytorch/default/v1"]), "the version must be an integer"),
    (dict(competition_sources=["kaggle/titanic"]), "competition_sources: 'kaggle/titanic' is not a competition slug"),
]


@pytest.mark.parametrize("changes, message", KERNEL_CASES, ids=[m[:40] for _, m in KERNEL_CASES])
def test_kernel_metadata_rules(changes, message):
    problems: List[str] = []
    packer.validate_kernel_metadata({k: v for k, v in _kernel_meta(**changes).items() if v is not None}, problems)
    assert any(message in p for p in problems), problems
    assert all(p.startswith("kernel-metadata.json: ") and ";" in p for p in problems)  # field; fix


def test_valid_metadata_passes():
    problems: List[str] = []
    packer.validate_kernel_metadata(_kernel_meta(enable_gpu="true", is_private="False",
                                                dataset_sources=["alice/shapes-png/2"],
                                                kernel_sources=["alice/kernel-train/4"]), problems)
    packer.validate_dataset_metadata({"id": "alice/kernel-code", "title": "kernel code bundle",
                                     "licenses": [{"name": "apache-2.0"}]}, problems)
    assert problems == []


DATASET_CASES = [
    (dict(id="YOUR_KAGGLE_USERNAME/kernel-code"), "id: the owner is still the placeholder"),
    (dict(id="alice/kernel-code/2"), "is not of the form owner/dataset-slug (no version)"),
    (dict(id="alice/code"), "id: slug 'code' has 4 characters; the client needs 6 to 50"),
    (dict(id="alice/" + "x" * 51), "has 51 characters; the client needs 6 to 50"),
    (dict(id="alice/INSERT_SLUG_HERE"), "the slug is the client's placeholder"),
    (dict(id="alice/Kernel_Code"), "must be lowercase"),
    (dict(title="code"), "title: 'code' has 4 characters; the client needs 6 to 50"),
    (dict(title="t" * 51), "has 51 characters; the client needs 6 to 50"),
    (dict(title="INSERT_TITLE_HERE"), "title: the client's placeholder"),
    (dict(licenses=[]), "licenses: the client needs exactly one license"),
    (dict(licenses=[{"name": "MIT"}, {"name": "other"}]), "exactly one license"),
    (dict(licenses=[{"id": "x"}]), "licenses: the license has no name"),
    (dict(licenses=[{"name": "apache2"}]), "is not a Kaggle license name; did you mean 'apache-2.0'"),
    (dict(subtitle="too short"), "subtitle: must be 20 to 80 characters"),
    (dict(resources=[{"path": "x.csv"}]), "resources: not supported"),
]


@pytest.mark.parametrize("changes, message", DATASET_CASES, ids=[m[:40] for _, m in DATASET_CASES])
def test_dataset_metadata_rules(changes, message):
    meta = {"id": "alice/kernel-code", "title": "kernel code bundle", "licenses": [{"name": "other"}], **changes}
    problems: List[str] = []
    packer.validate_dataset_metadata(meta, problems)
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize("config, message", [
    ({"data": "/home/me/data/train"}, "data: '/home/me/data/train' is a local absolute path"),
    ({"val_data": "~/val"}, "val_data: '~/val' is a local absolute path"),
    ({"pretrained": "local-dir:/home/me/weights"}, "pretrained: 'local-dir:/home/me/weights' is a local absolute"),
    ({"epoch": 3}, "unknown option 'epoch'; did you mean 'epochs'?"),
    ({"epochs": "three"}, "--epochs must be an integer, got 'three'"),
    ({"pretrained": "secrets/kaggle.json"}, "names a credentials file"),
    ({"predict": {"inputs": ["test"], "top_k": 3}}, "did you mean 'topk'"),
    ({"pretrained": "hub"}, "pretrained: 'hub' downloads weights, but enable_internet is false"),
    ({"kaggle": {"dataset_source": ["a/b"]}}, "kaggle.dataset_source: not a kernel-metadata field"),
])
def test_config_rules(tmp_path, config, message):
    proj = make_project(tmp_path / "p")
    proc = run_build(proj, "--config", str(write_config(proj, config)), "--out", str(tmp_path / "dist"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_placeholder_owner_fails_with_one_line_each_then_owner_flag_fixes_it(tmp_path):
    proj = make_project(tmp_path / "p", owner="")
    proc = run_build(proj, "--out", str(tmp_path / "dist"), "--demo")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert all(line.startswith("build.py: error: ") and "--owner" in line for line in lines)
    assert not (tmp_path / "dist").exists()
    proc = run_build(proj, "--out", str(tmp_path / "dist"), "--owner", "bob", "--demo")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "dist/kernel/kernel-metadata.json").read_text())["id"] == "bob/kernel-train"
    for cmd in ("kaggle datasets create -p", "--dir-mode zip", "kaggle datasets version -p",
                "kaggle kernels push -p", "kaggle kernels status bob/kernel-train",
                "kaggle kernels output bob/kernel-train -p"):
        assert cmd in proc.stdout


def test_a_build_without_a_config_is_refused_unless_it_asks_for_the_demo(tmp_path, capsys):
    proj = make_project(tmp_path / "p")
    proc = run_build(proj, "--out", str(tmp_path / "dist"))  # a forgotten --config: the kernel would train shapes
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("build.py: error: no --config: ") and "shapes" in lines[0], lines
    assert "--config run.yaml" in lines[0] and "--demo" in lines[0], lines  # how to write one, and the way out
    assert not (tmp_path / "dist").exists()
    cfg = write_config(proj / "configs", {"data": "shapes-png/train"})
    assert build.main(["--config", str(cfg), "--demo", "--out", str(tmp_path / "dist")], project=proj) == 2
    assert "--demo packs the demo without a config" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_out_dir_that_would_overwrite_sources_is_refused(tmp_path):
    proj = make_project(tmp_path / "p")
    proc = run_build(proj, "--out", ".", "--demo")
    assert proc.returncode == 2 and "would overwrite" in proc.stderr
    assert (proj / "kernel" / "train.py").is_file()


def test_kaggle_section_merges_sources(tmp_path):
    proj = make_project(tmp_path / "p")
    cfg = {"data": "shapes-png/train", "kaggle": {"dataset_sources": ["alice/shapes-png"],
                                                  "competition_sources": ["titanic"], "enable_internet": True}}
    build_into(proj, tmp_path / "dist", cfg)
    meta = json.loads((tmp_path / "dist/kernel/kernel-metadata.json").read_text())
    assert meta["dataset_sources"] == ["alice/kernel-code", "alice/shapes-png"]
    assert meta["competition_sources"] == ["titanic"] and meta["enable_internet"] is True
    assert meta["kernel_sources"] == []  # no resume: auto


# ----------------------------------------------------------------------------------- --push

FAKE_CLI = r'''#!{python}
import json, os, sys
state = os.environ["FAKE_STATE"]
calls = json.load(open(state)) if os.path.exists(state) else []
calls.append(sys.argv[1:])
json.dump(calls, open(state, "w"))
if sys.argv[1:3] == ["datasets", "status"]:
    created = any(c[:2] in (["datasets", "create"], ["datasets", "version"]) for c in calls)
    exists = os.environ.get("FAKE_EXISTS") == "1"
    print("ready" if (created or exists) else "404 Client Error: Not Found", file=sys.stdout)
    sys.exit(0 if (created or exists) else 1)
print("ok")
'''


@pytest.mark.parametrize("exists", [False, True])
def test_push_runs_the_cli_steps(tmp_path, monkeypatch, exists):
    proj = make_project(tmp_path / "p")
    cli = tmp_path / "kaggle"
    cli.write_text(FAKE_CLI.format(python=sys.executable))
    cli.chmod(0o755)
    env = dict(KERNEL_KAGGLE_CLI=str(cli), FAKE_STATE=str(tmp_path / "calls.json"), FAKE_EXISTS=str(int(exists)),
               KAGGLE_USERNAME="alice", KAGGLE_KEY="0" * 32)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    proc = run_build(proj, "--out", str(tmp_path / "dist"), "--demo", "--push", "-m", "v2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = json.loads((tmp_path / "calls.json").read_text())
    ds, kn = str(tmp_path / "dist" / "dataset"), str(tmp_path / "dist" / "kernel")
    upload = (["datasets", "version", "-p", ds, "--dir-mode", "zip", "-m", "v2"] if exists
              else ["datasets", "create", "-p", ds, "--dir-mode", "zip"])
    assert calls == [["datasets", "status", "alice/kernel-code"], upload,
                     ["datasets", "status", "alice/kernel-code"], ["kernels", "push", "-p", kn]]


def test_push_without_cli_or_credentials_says_so(tmp_path, monkeypatch, capsys):
    proj = make_project(tmp_path / "p")
    for k in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("KERNEL_KAGGLE_CLI", sys.executable)  # "installed", but no credentials anywhere
    assert build.main(["--out", str(tmp_path / "dist"), "--demo", "--push"], project=proj) == 2
    err = capsys.readouterr().err
    assert "no Kaggle credentials" in err and "kaggle.com/settings/api" in err
    # No CLI at all: not on PATH, not importable.
    monkeypatch.delenv("KERNEL_KAGGLE_CLI")
    monkeypatch.setattr("shutil.which", lambda name: None)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "kaggle" else real_find_spec(n, *a))
    assert build.main(["--out", str(tmp_path / "dist"), "--demo", "--push"], project=proj) == 2
    err = capsys.readouterr().err
    assert "the kaggle CLI is not installed; `pip install kaggle`" in err and "Traceback" not in err


def test_user_module_by_absolute_path_inside_the_project_is_embedded(tmp_path):
    proj = make_project(tmp_path / "p")
    (proj / "losses_dir").mkdir()
    (proj / "losses_dir" / "my_losses.py").write_text(USER_LOSSES)
    cfg = {"loss": f"{proj / 'losses_dir' / 'my_losses.py'}:smooth_ce", "data": "shapes"}
    build_into(proj, tmp_path / "dist", cfg)
    text = (tmp_path / "dist" / "kernel" / "train.py").read_text()
    assert "loss: kernel_user.my_losses:smooth_ce" in text and str(proj) not in text
