"""Options: one dataclass of defaults; precedence defaults < baked < file < flags; one-line errors."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env

from kernel.config import build_parser, parse_options, save_config
from kernel.options import Options
from kernel.errors import ConfigError


def test_defaults_come_from_the_dataclass():
    assert parse_options([]) == Options()


def test_precedence_defaults_baked_file_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 7\nlr: 0.05\nbatch-size: 12\n")
    baked = {"epochs": 3, "lr": 0.2, "name": "baked", "model": "resnet10t"}
    o = parse_options(["--config", str(cfg), "--lr", "0.01"], baked=baked)
    assert o.lr == 0.01            # flag beats file
    assert o.epochs == 7           # file beats baked
    assert o.batch_size == 12      # file beats default
    assert o.name == "baked"       # baked beats default
    assert o.model == "resnet10t"
    assert o.seed == Options().seed  # untouched default


def test_json_config_and_aliases(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"workers": 0, "amp": True}))
    o = parse_options(["--config", str(cfg), "--niter", "4", "--cuda"])
    assert (o.workers, o.amp, o.epochs, o.device) == (0, True, 4, "cuda")
    assert parse_options(["--config", str(cfg), "--no-amp"]).amp is False


def test_resolved_config_round_trips(tmp_path):
    o = parse_options(["--epochs", "3", "--loss", "focal", "--loss-kwargs", "gamma=2"])
    save_config(o, tmp_path / "config.yaml")
    again = parse_options(["--config", str(tmp_path / "config.yaml")])
    assert again.epochs == 3 and again.loss == "focal" and again.loss_kwargs == "gamma=2"


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "x"], ["--epochs", "invalid int value"]),
    (["--sched", "cosin"], ["--sched", "did you mean 'cosine'"]),
    (["--opt", "adamw2"], ["--opt", "adamw"]),
    (["--epochs", "0"], ["--epochs", ">= 1"]),
    (["--val-split", "1.5"], ["--val-split"]),
    (["--bogus"], ["unknown option '--bogus'"]),
    (["--epoch", "3"], ["unknown option '--epoch'", "did you mean '--epochs'"]),  # no silent abbreviation
])
def test_bad_flags_are_one_clear_line(argv, words):
    with pytest.raises(ConfigError) as e:
        parse_options(argv)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("text, words", [
    ("epoch: 3\n", ["unknown option 'epoch'", "did you mean 'epochs'"]),
    ("epochs: three\n", ["--epochs must be an integer"]),
    ("amp: 1\n", ["--amp must be true or false"]),
    ("sched: cosin\n", ["did you mean 'cosine'"]),
    ("- a\n- b\n", ["must hold a mapping"]),
    ("epochs: [\n", ["cannot parse"]),
])
def test_bad_config_files(tmp_path, text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse_options(["--config", str(cfg)])
    for w in words:
        assert w in str(e.value)


def test_choices_come_from_registries():
    from kernel.augment import BACKENDS, PRESETS
    from kernel.schedule import SCHEDULERS
    from kernel.tasks import TASKS

    actions = {a.dest: a for a in build_parser()._actions}
    assert list(actions["sched"].choices) == SCHEDULERS.names()
    assert list(actions["aug"].choices) == list(PRESETS)
    assert list(actions["aug_backend"].choices) == list(BACKENDS) == ["auto", "torchvision", "imgaug", "albumentations"]
    assert list(actions["task"].choices) == ["auto", *TASKS.names()]


def test_every_registry_named_by_an_option_lists_its_flag_choices():
    """options.py names registries (FromRegistry); config.py lists each one, and every listed one is named."""
    import dataclasses

    from kernel.config import REGISTRY_CHOICES, field_choices
    from kernel.options import FromRegistry, Options

    named = {f.name: f for f in dataclasses.fields(Options) if isinstance(f.metadata.get("choices"), FromRegistry)}
    assert {f.metadata["choices"].name for f in named.values()} == set(REGISTRY_CHOICES)
    actions = {a.dest: a for a in build_parser()._actions}
    for name, f in named.items():
        reg = f.metadata["choices"]
        assert list(actions[name].choices) == [*reg.first, *REGISTRY_CHOICES[reg.name]()] == field_choices(f), name
        assert REGISTRY_CHOICES[reg.name](), name  # a registry with names in it


def test_help_lists_groups():
    out = subprocess.run([sys.executable, "-m", "kernel.train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for group in ("data:", "model:", "optimization:", "--list-models"):
        assert group in out.stdout


def _help_entries(text: str) -> list:
    """``--help`` text -> its entries, each on one line; an entry is a line indented by two spaces and the more
    deeply indented lines that continue it (argparse wraps long help texts)."""
    body = text.split("\n\n", 1)[1]  # after the usage lines, which repeat the flags without help
    indented = "\n".join(line for line in body.splitlines() if line.startswith("  "))  # no group titles
    return [" ".join(chunk.split()) for chunk in re.split(r"\n(?=  \S)", indented) if not chunk.startswith("   ")]


@pytest.mark.parametrize("command", [["-m", "kernel.train"], ["-m", "kernel.predict"], ["build.py"]],
                         ids=["kernel.train", "kernel.predict", "build.py"])
def test_help_states_each_default_once_and_never_an_empty_one(command):
    out = subprocess.run([sys.executable, *command, "--help"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    entries = _help_entries(out.stdout)
    assert len(entries) > 8 and any(e.startswith("-h, --help ") for e in entries), entries  # the parse found them
    bad = [e for e in entries
           if "(default: '')" in e or "(default: None)" in e or "(default: [])" in e or e.count("(default:") > 1]
    assert not bad, "\n".join(bad)
    if command[-1] == "kernel.train":  # a default the help states in words is kept, a plain one still shown
        by_flag = {e.split()[0]: e for e in entries}
        assert "(default: the model's config" in by_flag["--img-size"]
        assert by_flag["--epochs"].endswith("(default: 10)")
