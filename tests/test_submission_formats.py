"""Submissions in the formats real competitions score, each checked by a rule table of that competition.

Every competition below gets a tiny model trained on data of its own shape (its CSV or folder layout, its label
spelling, its id spelling), then ``kernel.predict`` with the competition's sample submission. Each rule table is
built from the competition's real header and value types (probabilities in [0, 1], integer labels, K labels from
the training set, tags, RLE within the image) and also rejects a deliberately broken copy of the file, so a checker
that accepts everything fails here. The probabilities written equal the ones ``kernel.predict`` puts in
``predictions.csv`` (1e-6).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from kernel.data.shapes import draw_shape
from kernel.errors import ConfigError
from kernel.predict import main as predict_main
from kernel.tasks.classify.submission import SubmitChoice, choose_format, format_prob, read_sample_submission
from kernel.tasks.segment.shapes_seg import write_shapes_rle
from kernel.train import main as train_main

Check = Callable[[str], bool]


# ---- the rule tables ---------------------------------------------------------------------------------------------
def prob(text: str) -> bool:
    try:
        x = float(text)
    except ValueError:
        return False
    return text.strip() != "" and math.isfinite(x) and 0.0 <= x <= 1.0


def one_of(values: Sequence[str]) -> Check:
    return lambda text: text in set(values)


def k_labels(values: Sequence[str], k: int) -> Check:
    return lambda text: len(text.split()) == k == len(set(text.split())) and set(text.split()) <= set(values)


def tags(values: Sequence[str]) -> Check:
    return lambda text: bool(text.split()) and len(set(text.split())) == len(text.split()) and \
        set(text.split()) <= set(values)


def rle(pixels: int) -> Check:
    """Kaggle's RLE: pairs of positive integers, starts 1-based, increasing, runs inside the image, not touching."""
    def ok(text: str) -> bool:
        parts = text.split()
        if len(parts) % 2 or not all(p.isdigit() for p in parts):
            return False
        nums, end = [int(p) for p in parts], 0
        for start, length in zip(nums[::2], nums[1::2]):
            if start <= end or length < 1 or start + length - 1 > pixels:
                return False
            end = start + length - 1
        return True
    return ok


@dataclass
class Rules:
    """A competition's submission rules: the exact header, the key columns (one row per key, in the sample's
    order and spelling) and a check per value column."""

    header: List[str]
    values: Dict[str, Check]
    keys: Tuple[str, ...] = ()

    def problems(self, path: Path, sample: Path) -> List[str]:
        rows, expected = _dicts(path), _dicts(sample)
        found: List[str] = []
        if _header(path) != self.header:
            return [f"header {_header(path)} is not {self.header}"]
        keys = self.keys or (self.header[0],)
        got, want = [tuple(r[k] for k in keys) for r in rows], [tuple(r[k] for k in keys) for r in expected]
        if len(set(got)) != len(got):
            found.append("a key given twice")
        if got != want:
            found.append(f"keys differ from the sample's ({len(got)} rows, {len(want)} expected)")
        for n, r in enumerate(rows):
            for col, check in self.values.items():
                if not check(r[col] or ""):
                    found.append(f"row {n + 1}: {col}={r[col]!r}")
        return found


def _header(path: Path) -> List[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def _dicts(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([list(header), *map(list, rows)])
    return path


# ---- the competitions' data --------------------------------------------------------------------------------------
def _image(path: Path, label: int, index: int, size: Tuple[int, int] = (32, 32)) -> None:
    img, _ = draw_shape(label % 4, 7, index, 32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize(size).save(path)


@dataclass
class Competition:
    """Training flags and files, the test images (file names) and the sample submission of one competition."""

    name: str
    train_flags: List[str]
    test: List[str]
    sample_header: List[str]
    sample_rows: List[List[str]]
    rules: Callable[[Path], Rules]
    predict_flags: List[str] = field(default_factory=list)
    probs: Optional[Callable[[Dict[str, Dict[str, float]], str], List[float]]] = None  # expected values per id
    broken: Callable[[List[Dict[str, str]]], None] = lambda rows: rows.pop()


def _dogs(root: Path) -> Competition:
    for n in range(16):
        _image(root / "train" / ("cat" if n % 2 else "dog") / f"{n}.jpg", n % 2, n)
    test = [f"{i}.jpg" for i in range(1, 7)]
    return Competition("dogs-vs-cats-redux", ["--data", str(root / "train")], test, ["id", "label"],
                       [[str(i), "0.5"] for i in range(1, 7)], lambda _: Rules(["id", "label"], {"label": prob}),
                       probs=lambda p, i: [p[i]["dog"]], broken=lambda rows: rows[0].update(label="dog"))


def _siim(root: Path) -> Competition:
    names = [f"ISIC_{n:07d}" for n in range(16)]
    for n, name in enumerate(names):
        _image(root / "jpeg" / "train" / f"{name}.jpg", n % 2, n)
    _write_rows(root / "train.csv", ["image_name", "patient_id", "target"],
                [[name, f"IP_{n // 2}", str(int(n % 4 == 0))] for n, name in enumerate(names)])
    test = [f"ISIC_{n:07d}.jpg" for n in range(100, 107)]
    return Competition("siim-isic-melanoma-classification",
                       ["--data", str(root), "--csv", "train.csv", "--image-dir", "jpeg/train", "--label-col",
                        "target"], test, ["image_name", "target"], [[Path(t).stem, "0"] for t in test],
                       lambda _: Rules(["image_name", "target"], {"target": prob}),
                       probs=lambda p, i: [p[i]["1"]], broken=lambda rows: rows[1].update(target="1.2"))


PLANT = ["healthy", "multiple_diseases", "rust", "scab"]


def _plant(root: Path) -> Competition:
    for n in range(16):
        _image(root / "images" / "train" / PLANT[n % 4] / f"Train_{n}.jpg", n % 4, n)
    test = [f"Test_{n}.jpg" for n in range(5)]
    header = ["image_id", *PLANT]
    return Competition("plant-pathology-2020-fgvc7", ["--data", str(root / "images" / "train")], test, header,
                       [[Path(t).stem, "0.25", "0.25", "0.25", "0.25"] for t in test],
                       lambda _: Rules(header, {c: prob for c in PLANT}),
                       probs=lambda p, i: [p[i][c] for c in PLANT], broken=lambda rows: rows[2].update(rust=""))


def _cassava(root: Path) -> Competition:
    ids = [f"{1000 + n}.jpg" for n in range(20)]
    for n, name in enumerate(ids):
        _image(root / "train_images" / name, n % 5, n)
    _write_rows(root / "train.csv", ["image_id", "label"], [[name, str(n % 5)] for n, name in enumerate(ids)])
    test = ["2216849948.jpg", "3008154843.jpg"]
    return Competition("cassava-leaf-disease-classification",
                       ["--data", str(root), "--csv", "train.csv", "--image-dir", "train_images"], test,
                       ["image_id", "label"], [[t, "4"] for t in test],
                       lambda _: Rules(["image_id", "label"], {"label": one_of([str(k) for k in range(5)])}),
                       broken=lambda rows: rows[0].update(image_id=rows[0]["image_id"][:-4]))


WHALES = ["new_whale", "w_0369a5c", "w_1287fbc", "w_23a388d", "w_7554f44", "w_9b5109b"]


def _whale(root: Path) -> Competition:
    for n in range(24):
        _image(root / "train" / f"{n:08x}.jpg", n % 6, n)
    _write_rows(root / "train.csv", ["Image", "Id"], [[f"{n:08x}.jpg", WHALES[n % 6]] for n in range(24)])
    test = ["00028a005.jpg", "000dcf7d8.jpg", "000e7c7df.jpg"]
    return Competition("humpback-whale-identification",
                       ["--data", str(root), "--csv", "train.csv", "--image-dir", "train"], test, ["Image", "Id"],
                       [[t, "new_whale w_23a388d w_9b5109b w_9c506f6 w_0369a5c"] for t in test],
                       lambda _: Rules(["Image", "Id"], {"Id": k_labels(WHALES, 5)}),
                       broken=lambda rows: rows[0].update(Id=" ".join(rows[0]["Id"].split()[:4])))


PLANET = ["agriculture", "clear", "haze", "primary", "road", "water"]


def _planet(root: Path) -> Competition:
    sets = [["clear", "primary"], ["haze", "primary", "water"], ["agriculture", "clear", "road"], ["haze"]]
    for n in range(20):
        _image(root / "train-jpg" / f"train_{n}.jpg", n % 4, n)
    _write_rows(root / "train_v2.csv", ["image_name", "tags"],
                [[f"train_{n}", " ".join(sets[n % 4])] for n in range(20)])
    test = [f"test_{n}.jpg" for n in range(3)] + ["file_0.jpg"]
    return Competition("planet-understanding-the-amazon-from-space",
                       ["--data", str(root), "--csv", "train_v2.csv", "--image-dir", "train-jpg"], test,
                       ["image_name", "tags"], [[Path(t).stem, "primary clear agriculture road water"] for t in test],
                       lambda _: Rules(["image_name", "tags"], {"tags": tags(PLANET)}),
                       broken=lambda rows: rows[0].update(tags="primary cloudy"))


def _severstal(root: Path) -> Competition:
    write_shapes_rle(root, n=16, seed=0, size=32)
    test = ["0000f269f.jpg", "000ccc2ac.jpg"]
    header = ["ImageId", "ClassId", "EncodedPixels"]
    return Competition("severstal-steel-defect-detection",
                       ["--data", str(root), "--csv", "train.csv", "--image-dir", "train_images",
                        "--model", "tu-test_resnet"], test, header,
                       [[t, str(k), "1 1"] for t in test for k in range(1, 5)],
                       lambda size: Rules(header, {"ClassId": one_of(["1", "2", "3", "4"]),
                                                   "EncodedPixels": lambda s: s == "" or rle(size)(s)},
                                          keys=("ImageId", "ClassId")),
                       predict_flags=["--threshold", "0.3"],
                       broken=lambda rows: rows[0].update(EncodedPixels="5 3 6 2"))


def _salt(root: Path) -> Competition:
    for n in range(16):
        img, mask = draw_shape(n % 4, 3, n, 32)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / f"{n:010x}.png")
        Image.fromarray(((mask > 0) * 255).astype(np.uint8)).save(root / "masks" / f"{n:010x}.png")
    test = ["155410d6fa.png", "1e7c5d1b9a.png"]
    return Competition("tgs-salt-identification-challenge", ["--data", str(root), "--model", "tu-test_resnet"], test,
                       ["id", "rle_mask"], [[Path(t).stem, "1 1"] for t in test],
                       lambda size: Rules(["id", "rle_mask"], {"rle_mask": lambda s: s == "" or rle(size)(s)}),
                       predict_flags=["--threshold", "0.3"],
                       broken=lambda rows: rows[1].update(rle_mask="1 2 3"))


COMPETITIONS = {"dogs": _dogs, "siim": _siim, "plant": _plant, "cassava": _cassava, "whale": _whale,
                "planet": _planet, "severstal": _severstal, "salt": _salt}
TEST_SIZE = (48, 40)  # test images (W, H) unlike the training size: RLE runs must fit the original image


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """name -> (competition, its submission.csv, its sample, predictions.csv probabilities by id), made lazily."""
    made: Dict[str, Tuple[Competition, Path, Path, Dict[str, Dict[str, float]]]] = {}

    def make(name: str):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            comp = COMPETITIONS[name](root / "data")
            for n, file in enumerate(comp.test):
                _image(root / "test" / file, n, 100 + n, TEST_SIZE)
            assert train_main(["--model", "test_resnet", "--img-size", "32", "--epochs", "1", "--workers", "0",
                               "--device", "cpu", "--batch-size", "8", "--no-plots", "--no-tensorboard", "--aug",
                               "none", "--output", str(root / "runs"), "--name", "r", *comp.train_flags]) == 0
            sample = _write_rows(root / "sample_submission.csv", comp.sample_header, comp.sample_rows)
            out = root / "pred" / ("masks" if "tu-test_resnet" in comp.train_flags else "predictions.csv")
            sub = root / "pred" / "submission.csv"
            assert predict_main(["--checkpoint", str(root / "runs" / "r"), str(root / "test"), "--workers", "0",
                                 "--device", "cpu", "--out", str(out), *(["--topk", "99"] if comp.probs else []),
                                 "--sample-submission",
                                 str(sample), "--submission-file", str(sub), *comp.predict_flags]) == 0
            made[name] = comp, sub, sample, {} if out.name == "masks" else _predicted(out)
        return made[name]

    return make


def _predicted(path: Path) -> Dict[str, Dict[str, float]]:
    """{image stem: {label: probability}} from predictions.csv."""
    out = {}
    for r in list(csv.reader(open(path, newline="")))[1:]:
        out[Path(r[0]).stem] = {r[i]: float(r[i + 1]) for i in range(1, len(r), 2)}
    return out


@pytest.mark.parametrize("name", list(COMPETITIONS))
def test_the_submission_passes_the_competitions_rules(name, submitted):
    comp, sub, sample, predicted = submitted(name)
    assert comp.rules(TEST_SIZE[0] * TEST_SIZE[1]).problems(sub, sample) == []
    if comp.probs is not None:  # the probabilities are kernel.predict's
        for row in _dicts(sub):
            ident = row[comp.sample_header[0]]
            got = [float(row[c]) for c in comp.sample_header[1:]]
            assert got == pytest.approx(comp.probs(predicted, Path(ident).stem), abs=1e-6)


@pytest.mark.parametrize("name", list(COMPETITIONS))
def test_each_rule_table_rejects_a_broken_file(name, submitted, tmp_path):
    comp, sub, sample, _ = submitted(name)
    rules = comp.rules(TEST_SIZE[0] * TEST_SIZE[1])
    for breaking in (comp.broken, lambda rows: rows.append(dict(rows[0])), lambda rows: rows.reverse()):
        rows = _dicts(sub)
        breaking(rows)
        broken = _write_rows(tmp_path / "broken.csv", comp.sample_header,
                             [[r[c] for c in comp.sample_header] for r in rows])
        assert rules.problems(broken, sample), f"{name}: the checker accepted a broken file"


def test_the_labels_of_a_whale_submission_are_the_best_first(submitted):
    comp, sub, _, predicted = submitted("whale")
    for row in _dicts(sub):
        probs = predicted[Path(row["Image"]).stem]
        best = sorted(probs, key=lambda c: -probs[c])[:5]
        assert row["Id"].split() == best


def test_multi_label_tags_are_the_labels_above_the_threshold(submitted):
    comp, sub, _, predicted = submitted("planet")
    for row in _dicts(sub):
        probs = predicted[Path(row["image_name"]).stem]
        above = sorted(c for c, p in probs.items() if p > 0.5) or [max(probs, key=probs.get)]
        assert sorted(row["tags"].split()) == above


# ---- the choice of format, the ids and the values ----------------------------------------------------------------
CAT_DOG = ["cat", "dog"]
FIVE = ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("header, values, classes, multilabel, choice, mode, k, positive", [
    (["id", "label"], ["0.5"], CAT_DOG, False, SubmitChoice(), "prob", 1, 1),
    (["id", "label"], ["0"], ["benign", "malignant"], False, SubmitChoice(), "prob", 1, 1),
    (["id", "label"], ["0"], CAT_DOG, False, SubmitChoice(positive_class="cat"), "prob", 1, 0),
    (["id", "label"], ["0"], CAT_DOG, False, SubmitChoice("label"), "label", 1, -1),
    (["id", "label"], ["4"], FIVE, False, SubmitChoice(), "label", 1, -1),
    (["Image", "Id"], ["a b c"], FIVE, False, SubmitChoice(), "topk", 3, -1),
    (["Image", "Id"], ["a b c"], FIVE, False, SubmitChoice(topk=2), "topk", 2, -1),
    (["Image", "Id"], ["a"], FIVE, False, SubmitChoice("topk", topk=9), "topk", 5, -1),
    (["image_name", "tags"], ["a b c"], FIVE, True, SubmitChoice(), "label", 1, -1),
    (["image_id", *FIVE], ["0.2"], FIVE, False, SubmitChoice(), "probs", 1, -1),
    (["id", "label"], [], FIVE, False, SubmitChoice("prob"), "probs", 1, -1),
])
def test_auto_and_explicit_formats(header, values, classes, multilabel, choice, mode, k, positive):
    fmt = choose_format(header, values, classes, multilabel, choice)
    assert (fmt.mode, fmt.k, fmt.positive) == (mode, k, positive) and fmt.why


@pytest.mark.parametrize("header, values, classes, choice, says", [
    (["id", "label"], ["0.5"], FIVE, SubmitChoice(), "holds one probability"),
    (["id", "a", "b"], ["0.5"], FIVE, SubmitChoice(), "neither one target column nor the classes"),
    (["image_id", *FIVE], ["0.5"], FIVE, SubmitChoice("label"), "a column per class"),
    (["id", "label"], ["0"], CAT_DOG, SubmitChoice(positive_class="dgo"), "did you mean 'dog'"),
])
def test_formats_that_cannot_be_written_are_one_line(header, values, classes, choice, says):
    with pytest.raises(ConfigError, match=says):
        choose_format(header, values, classes, False, choice)


def test_probabilities_keep_every_float32_digit_and_no_exponent():
    for x in (0.123456789, 1.2e-7, 0.99999994, 0.0, 1.0):
        text = format_prob(x)
        assert "e" not in text and np.float32(float(text)) == np.float32(x)
    assert format_prob(0.5000001) != format_prob(0.5000002)  # ties a 6-digit format would make stay broken


def test_a_sample_with_an_id_twice_or_without_a_target_column_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="more than once"):
        read_sample_submission(str(_write_rows(tmp_path / "a.csv", ["id", "label"], [["1", "0"], ["1", "0"]])))
    with pytest.raises(ConfigError, match="needs a header with an id column and a target column"):
        read_sample_submission(str(_write_rows(tmp_path / "b.csv", ["id"], [["1"]])))
    header, ids, values = read_sample_submission(str(_write_rows(tmp_path / "c.csv", ["id", "label"],
                                                                 [["b", "0.5"], ["a", "0.5"]])))
    assert (header, ids, values) == (["id", "label"], ["b", "a"], ["0.5", "0.5"])


def test_non_finite_probabilities_get_the_prior_and_values_stay_in_range(tmp_path):
    import torch

    from kernel.tasks.classify.submission import write_submission

    probs = torch.tensor([[float("nan"), 0.5], [1.0000001, -1e-9], [0.25, 0.75]])
    out = write_submission(["a", "b", "c"], probs, CAT_DOG, tmp_path / "s.csv", header=["id", "label"],
                           prior=[0.9, 0.1])
    assert _dicts(Path(out)) == [{"id": "a", "label": "0.1"}, {"id": "b", "label": "0"},
                                 {"id": "c", "label": "0.75"}]
