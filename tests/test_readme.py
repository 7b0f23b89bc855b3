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
    for backend, ops in (("imgaug", imgaug_ops), ("torchvision", tv_ops)):
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
