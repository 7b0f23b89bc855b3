"""Platform detection and Kaggle path rewriting, on fake /kaggle trees in both mount layouts."""
from pathlib import Path

import pytest

from kernel.paths import default_output_dir, detect_platform, find_in_inputs, mounted_roots, resolve_path
from kernel.errors import ConfigError


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab")  # Kaggle's image sets it too
    monkeypatch.setenv("KERNEL_KAGGLE_INPUT", str(tmp_path / "input"))
    monkeypatch.setenv("KERNEL_KAGGLE_WORKING", str(tmp_path / "working"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "input"


def test_detection_order(monkeypatch):
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    assert detect_platform() == "local"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    assert detect_platform() == "colab"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert detect_platform() == "kaggle"


@pytest.mark.parametrize("layout", [
    "my-data",                                   # old: /kaggle/input/<slug>
    "datasets/someone/my-data",                  # new: datasets/<owner>/<slug>
    "competitions/my-data",                      # new: competitions/<slug>
    "notebooks/someone/my-data",                 # new: a kernel's output
    "models/someone/my-data/pytorch/default/1",  # new: models/<owner>/<model>/<fw>/<var>/<ver>
])
def test_relative_paths_are_found_in_both_layouts(kaggle, layout):
    mount = kaggle / layout
    (mount / "train" / "cat").mkdir(parents=True)
    assert mount in mounted_roots()
    assert find_in_inputs("train") == mount / "train"
    assert resolve_path("train/cat", "data") == str(mount / "train" / "cat")
    # A path written for the other layout resolves too: "<slug>/train", or for models
    # "<model>/<framework>/<variation>/<version>/train".
    other = "my-data/pytorch/default/1/train" if layout.startswith("models") else "my-data/train"
    assert resolve_path(other, "data") == str(mount / "train")


def test_not_found_lists_the_mounts(kaggle):
    (kaggle / "datasets" / "someone" / "other").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        resolve_path("train", "data")
    assert "--data" in str(e.value) and "datasets/someone/other" in str(e.value)


def test_existing_paths_and_output_roots(kaggle, tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    assert resolve_path("here", "data") == "here"
    assert default_output_dir("exp") == tmp_path / "working" / "exp"
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert default_output_dir("exp") == Path("runs") / "exp"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_path("missing", "data")
