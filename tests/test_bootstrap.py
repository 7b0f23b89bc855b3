"""The packed script's bootstrap as a module: the import hook, the sources digest, vendored packages."""
from __future__ import annotations

import sys
import types

import pytest

from kernel.packer import Module, sources_sha256
from kernel.packer import bootstrap


@pytest.fixture
def sources(monkeypatch):
    """A private sources table (the bootstrap's ``table``/``sources`` parameters) and meta_path, restored afterwards."""
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    yield {}
    for name in [n for n in sys.modules if n.startswith("kernel_user")]:
        del sys.modules[name]


def test_embedded_modules_import_with_real_file_names_and_lines(sources, monkeypatch):
    bootstrap._add("kernel_user", "kernel_user/__init__.py", True, "", table=sources)
    bootstrap._add("kernel_user.maths", "kernel_user/maths.py", False, "X = 41\n\ndef boom():\n    raise ValueError(X + 1)\n",
                   table=sources)
    finder = bootstrap._EmbeddedModules(sources)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    import kernel_user.maths as maths

    assert maths.X == 41 and maths.__file__ == "kernel_user/maths.py"
    assert finder.get_source("kernel_user.maths").startswith("X = 41") and finder.is_package("kernel_user")
    with pytest.raises(ValueError) as err:
        maths.boom()
    frame = err.traceback[-1]
    assert str(frame.path).endswith("kernel_user/maths.py") and frame.lineno + 1 == 4


def test_install_puts_the_hook_first_and_replaces_an_older_one(sources, monkeypatch):
    # Only kernel_user is dropped from sys.modules here: dropping this process's `kernel` would leave
    # later tests with two copies of every class (ConfigError included).
    bootstrap._add("kernel_user", "kernel_user/__init__.py", True, "VALUE = 'embedded'\n", table=sources)
    sys.modules["kernel_user"] = types.ModuleType("kernel_user")  # e.g. imported from a dataset earlier
    bootstrap._install(sources, tops=("kernel_user",))
    bootstrap._install(sources, tops=("kernel_user",))  # a re-run of the script must not stack hooks
    assert isinstance(sys.meta_path[0], bootstrap._EmbeddedModules)
    assert sum(getattr(f, "_kernel_packed", False) for f in sys.meta_path) == 1
    import kernel_user

    assert kernel_user.VALUE == "embedded"


def test_digest_is_the_one_build_computes():
    modules = [Module("kernel", "kernel/__init__.py", True, "A = 1\n"), Module("kernel.b", "kernel/b.py", False, "é\n")]
    table = {m.name: (m.filename, m.is_package, m.source) for m in modules}
    assert bootstrap._sources_sha256(table) == sources_sha256(modules)
    table["kernel.b"] = ("kernel/b.py", False, "edited\n")
    assert bootstrap._sources_sha256(table) != sources_sha256(modules)


@pytest.mark.parametrize("layout", ["old", "new"])
def test_vendored_package_is_found_in_either_mount_layout(tmp_path, monkeypatch, layout, capsys):
    root = tmp_path / "input"
    base = root / "kernel-code" if layout == "old" else root / "datasets" / "alice" / "kernel-code"
    (base / "vendor" / "fakepkg_xyz").mkdir(parents=True)
    (base / "vendor" / "fakepkg_xyz" / "__init__.py").write_text("NAME = 'vendored'\n")
    monkeypatch.setenv("KERNEL_KAGGLE_INPUT", str(root))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    used = bootstrap._vendor_packages("alice/kernel-code", packages=("fakepkg_xyz",))
    assert used == str(base / "vendor") and sys.path[-1] == used
    assert "fakepkg_xyz: not installed; using the vendored copy" in capsys.readouterr().out
    assert bootstrap._vendor_packages("alice/kernel-code", packages=("yaml",)) is None  # installed: untouched


def test_missing_vendored_package_says_which_dataset_to_attach(tmp_path, monkeypatch, capsys):
    (tmp_path / "input").mkdir()
    monkeypatch.setenv("KERNEL_KAGGLE_INPUT", str(tmp_path / "input"))
    assert bootstrap._vendor_packages("alice/kernel-code", packages=("fakepkg_xyz",)) is None
    assert "attach the dataset alice/kernel-code" in capsys.readouterr().out
