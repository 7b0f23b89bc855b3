"""The README's examples work: its augmentation YAML builds and runs on both backends."""
import re

import numpy as np
import yaml

from conftest import ROOT
from kernel.augment import build_transform


def _aug_yaml():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\naug_backend: imgaug\n(.*?)```", text, re.S).group(1)
    imgaug_cfg = yaml.safe_load("aug_backend: imgaug\n" + block)
    tv_lines = [l.replace("#", "", 1) for l in block.splitlines() if l.startswith("#  -")]
    return imgaug_cfg["aug"], yaml.safe_load("\n".join(tv_lines))


def test_readme_augmentation_examples_run():
    imgaug_ops, tv_ops = _aug_yaml()
    assert len(imgaug_ops) >= 4 and len(tv_ops) >= 3
    img = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = (img[..., 0] > 127).astype(np.int64)
    text = (ROOT / "README.md").read_text()
    albu_ops = yaml.safe_load(re.search(r"```yaml\n(aug_backend: albumentations\n.*?)```", text, re.S).group(1))["aug"]
    assert len(albu_ops) >= 4
    for backend, ops in (("imgaug", imgaug_ops), ("torchvision", tv_ops), ("albumentations", albu_ops)):
        t = build_transform(ops, train=True, backend=backend, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
        t.strict = True
        x, m = t(img, mask)
        assert x.shape == (3, 32, 32) and m.shape == (32, 32)


def test_readme_layout_table_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):]
    named = set(re.findall(r"`(kernel/[\w.]+/?)`", table))
    tree = {f"kernel/{p.name}/" if p.is_dir() else f"kernel/{p.name}" for p in (ROOT / "kernel").iterdir()
            if not p.name.startswith(("_", ".")) and (p.is_dir() or p.suffix == ".py")}
    assert named == tree, (sorted(named - tree), sorted(tree - named))
    for path in re.findall(r"\| `([\w./-]+)`", table):  # every other path the table names exists
        assert (ROOT / path).exists(), path


def _commands(prog: str) -> list:
    """Every `python -m <prog> ...` command of the README, continuation lines joined, comments dropped."""
    import shlex

    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith(f"python -m {prog} ") or line.startswith(f"!python -m {prog} "):
            out.append(shlex.split(line.split(f"-m {prog}", 1)[1]))
    return out


def test_readme_train_and_predict_commands_parse(tmp_path, monkeypatch):
    """Every training and prediction command the README shows is accepted by the option parsers."""
    from kernel.config import parse_options
    from kernel.predict import build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("epochs: 1\n")  # the README's --config example names run.yaml
    train, predict = _commands("kernel.train"), _commands("kernel.predict")
    assert len(train) >= 8 and len(predict) >= 4
    for argv in train:
        parse_options(argv)
    for argv in predict:
        build_parser().parse_args(argv)
