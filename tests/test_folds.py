"""K-fold assignment: coverage, stratification, group safety, seeding, and the folds CSV."""
import os
import warnings

import numpy as np
import pytest

from kernel.data.folds import fold_indices, make_folds, read_folds_csv, write_folds_csv
from kernel.errors import ConfigError

K = 5


def _labels() -> np.ndarray:
    """103 single-label samples, classes of 50/30/15/8, in a shuffled order."""
    y = np.repeat(np.arange(4), [50, 30, 15, 8])
    return np.random.default_rng(0).permutation(y)


def _multilabel(n: int = 300) -> np.ndarray:
    """A realistic multi-hot matrix: 7 independent labels from common (40%) to rare (2%)."""
    prevalence = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.02])
    return (np.random.default_rng(1).random((n, len(prevalence))) < prevalence).astype(np.int64)


def _groups(n: int = 103) -> np.ndarray:
    """Group (patient) id per sample: 30 groups of uneven size, ids as strings."""
    return np.array([f"p{g}" for g in np.random.default_rng(2).integers(0, 30, n)])


KINDS = {
    "labels": lambda: dict(n=103, labels=_labels()),
    "multilabel": lambda: dict(n=300, multilabel=_multilabel()),
    "groups": lambda: dict(n=103, groups=_groups()),
    "groups+labels": lambda: dict(n=103, groups=_groups(), labels=_labels()),
    "groups+multilabel": lambda: dict(n=300, groups=_groups(300), multilabel=_multilabel()),
    "by image": lambda: dict(n=103),
}


def _fold(kind: str, seed: int = 0, k: int = K) -> np.ndarray:
    kw = KINDS[kind]()
    return make_folds(kw.pop("n"), k, seed, **kw)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_sample_in_exactly_one_fold(kind):
    folds = _fold(kind)
    n = KINDS[kind]()["n"]
    assert folds.shape == (n,) and folds.dtype == np.int64
    assert set(folds.tolist()) == set(range(K))  # every sample got a fold in range, none left at -1
    vals = [fold_indices(folds, f)[1] for f in range(K)]
    assert sorted(np.concatenate(vals).tolist()) == list(range(n))  # the val sets partition 0..n-1


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_seed_same_folds_other_seed_differs(kind):
    np.testing.assert_array_equal(_fold(kind, seed=0), _fold(kind, seed=0))
    assert not np.array_equal(_fold(kind, seed=0), _fold(kind, seed=1))


def _worst_deviation(folds: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Per label: max over folds of |count in fold - total / K|."""
    per_fold = np.stack([onehot[folds == f].sum(axis=0) for f in range(K)])
    return np.abs(per_fold - onehot.sum(axis=0) / K).max(axis=0)


def test_single_label_within_one_image_of_the_proportion():
    y = _labels()
    onehot = np.eye(4, dtype=np.int64)[y]
    assert (_worst_deviation(make_folds(103, K, 0, labels=y), onehot) < 1).all()
    # the bound is not automatic: unstratified folds of the same data break it
    assert (_worst_deviation(make_folds(103, K, 0), onehot) >= 1).any()


def test_multilabel_counts_near_the_proportion():
    y = _multilabel()
    dev = _worst_deviation(make_folds(len(y), K, 0, multilabel=y), y)
    # Iterative stratification gives no bound in general (a sample with several labels is
    # placed for its rarest one, shifting the others). What it does guarantee: the rarest
    # label is dealt out first to the fold that needs it most, so it lands within one image.
    assert dev[np.argmin(y.sum(axis=0))] < 1
    # For the other labels 2 images is an empirical tolerance on independent labels like
    # these (the library reaches <= 0.8 here); random folds miss it by far.
    assert (dev <= 2).all()
    assert (_worst_deviation(make_folds(len(y), K, 0), y) > 2).any()


@pytest.mark.parametrize("kind", ["groups", "groups+labels", "groups+multilabel"])
@pytest.mark.parametrize("shuffles", [True, False])
def test_no_group_in_two_folds(kind, shuffles):
    # shuffles=False takes the path for scikit-learn < 1.6, whose GroupKFold has no seed
    kw = KINDS[kind]()
    folds = make_folds(kw.pop("n"), K, 0, group_shuffle=shuffles, **kw)
    groups = kw["groups"]
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1, g
    per_fold = [set(groups[folds == f]) for f in range(K)]
    assert all(per_fold) and set().union(*per_fold) == set(groups)
    if not shuffles:
        assert not np.array_equal(folds, make_folds(len(groups), K, 1, groups=groups))


def test_grouped_labels_stay_roughly_stratified():
    y, groups = _labels(), _groups()
    folds = make_folds(103, K, 0, labels=y, groups=groups)
    # Whole groups move together, so only approximate balance is possible: the largest class
    # (50 images) should still be spread, never a fold without it
    assert all((y[folds == f] == 0).any() for f in range(K))


def test_fold_indices_sorted_disjoint():
    folds = _fold("labels")
    train, val = fold_indices(folds, 2)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 103
    assert (folds[val] == 2).all() and (folds[train] != 2).all()
    with pytest.raises(ConfigError, match="fold 7"):
        fold_indices(folds, 7)


def test_rare_class_warns_naming_it():
    y = np.array([0] * 20 + [1] * 3)
    with pytest.warns(UserWarning, match=r"class 1 has only 3 images, fewer than --folds 5") as rec:
        folds = make_folds(len(y), K, 0, labels=y)
    assert len(rec) == 1  # ours only, the library's duplicate is silenced
    assert len(set(folds[y == 1].tolist())) == 3  # each rare image in a different fold
    groups = np.arange(23) // 2  # class 1 (images 20..22) spans groups 10 and 11
    with pytest.warns(UserWarning, match=r"class 1 has only 2 groups"):
        make_folds(len(y), K, 0, labels=y, groups=groups)
    with pytest.warns(UserWarning, match=r"label 1 has only 2 positive images"):
        make_folds(23, K, 0, multilabel=np.stack([y == 0, np.arange(23) < 2], axis=1))


def _one_line_config_error(call, *match):
    with pytest.raises(ConfigError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, (m, msg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=10, k=1), ["--folds 1"]),
    (dict(n=3, k=4), ["--folds 4", "3 images"]),
    (dict(n=10, k=2, labels=[0, 1] * 4), ["labels", "10 images"]),
    (dict(n=10, k=2, labels=[0, 1] * 5, multilabel=np.zeros((10, 2))), ["both"]),
    (dict(n=10, k=2, multilabel=np.zeros((9, 2))), ["multilabel", "(9, 2)"]),
    (dict(n=10, k=2, multilabel=np.full((10, 2), 2)), ["0 and 1"]),
    (dict(n=10, k=2, groups=list(range(9))), ["groups", "10 images"]),
    (dict(n=10, k=3, groups=[0, 1] * 5), ["3 distinct groups", "there are 2"]),
    (dict(n=10, k=3, labels=[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]), ["every class", "largest: 2"]),
])
def test_make_folds_errors(kwargs, match):
    _one_line_config_error(lambda: make_folds(seed=0, **kwargs), *match)


IDS = [f"img_{i:03d}.png" for i in range(103)]


def test_csv_round_trip_and_realign(tmp_path):
    folds = _fold("labels")
    path = tmp_path / "sub" / "folds.csv"
    write_folds_csv(path, IDS, folds)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,fold" and lines[1] == f"{IDS[0]},{folds[0]}" and len(lines) == 104
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp file left behind
    np.testing.assert_array_equal(read_folds_csv(path, IDS), folds)
    np.testing.assert_array_equal(read_folds_csv(path, IDS, k=K), folds)
    order = np.random.default_rng(3).permutation(len(IDS))
    np.testing.assert_array_equal(read_folds_csv(path, [IDS[i] for i in order]), folds[order])


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "folds.csv"
    write_folds_csv(path, ["a", "b"], np.array([0, 1]))
    with pytest.raises(ConfigError, match="'a'"):
        write_folds_csv(path, ["a", "a"], np.array([0, 1]))
    with pytest.raises(ConfigError, match="dtype float"):
        write_folds_csv(path, ["a", "b"], np.array([0.0, 1.0]))

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)  # dies after the temp file is written
    with pytest.raises(OSError, match="disk gone"):
        write_folds_csv(path, ["b", "a"], np.array([1, 0]))
    monkeypatch.undo()
    assert path.read_text().splitlines() == ["image,fold", "a,0", "b,1"]
    assert [p.name for p in tmp_path.iterdir()] == ["folds.csv"]


BAD_CSV = {
    "missing column": ("image,split\na,0\nb,1\n", None, ["'image' and 'fold'"]),
    "empty file": ("", None, ["'image' and 'fold'"]),
    "id not in file": ("image,fold\na,0\n", None, ["1 images have no fold", "'b'"]),
    "id not in data": ("image,fold\na,0\nb,1\nz,0\ny,1\n", None, ["2 images are not in the data", "'z'"]),
    "duplicate": ("image,fold\na,0\nb,1\na,1\n", None, ["duplicate", "'a'"]),
    "non-integer": ("image,fold\na,0\nb,1.5\n", None, ["'1.5'", "line 3"]),
    "blank fold": ("image,fold\na,0\nb\n", None, ["''", "not an integer"]),
    "negative": ("image,fold\na,-1\nb,1\n", None, ["fold -1 is outside"]),
    "above k": ("image,fold\na,0\nb,3\n", 3, ["fold 3 is outside 0..2", "--folds 3"]),
    "gap": ("image,fold\na,0\nb,2\n", None, ["fold 1 of 0..2 has no images"]),
    "fewer than k": ("image,fold\na,0\nb,1\n", 3, ["fold 2 of 0..2 has no images"]),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_read_errors_one_line_naming_the_file(tmp_path, case):
    text, k, match = BAD_CSV[case]
    path = tmp_path / "my_folds.csv"
    path.write_text(text)
    _one_line_config_error(lambda: read_folds_csv(path, ["a", "b"], k=k), str(path), *match)


def test_read_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    _one_line_config_error(lambda: read_folds_csv(path, ["a"]), str(path), "does not exist")


def test_read_tolerates_bom_spaces_and_extra_columns(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("\ufeffimage, fold ,note\n b ,1,x\na, 0 ,y\n", encoding="utf-8")
    np.testing.assert_array_equal(read_folds_csv(path, ["a", "b"]), [0, 1])


def test_no_warning_without_rare_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_folds(103, K, 0, labels=_labels())
        make_folds(300, K, 0, multilabel=_multilabel())
