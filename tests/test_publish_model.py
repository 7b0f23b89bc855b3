"""build.py --publish-model RUN --model-slug NAME: a trained run as a Kaggle Model.

The end-to-end tests run the REAL ``kaggle`` CLI (``kaggle_fake``: only ``requests.Session.send`` is
answered by a scripted server), so the metadata build.py writes is read and checked by the client's own
``models create`` / ``models variations create`` code, and the tests assert on the requests it then sent:
the fields, the framework enum it resolved, the licence, the uploaded files (a k-fold run's fold folders
arrive as zips holding each fold's files). The refusals are one line each, before anything is written or sent.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

import build
from kaggle_fake import fake_kaggle, new_model_state, read_state  # noqa: F401 (a fixture)
from kernel import packer
from kernel.packer.kaggle_models import publish as publish_fn
from kernel.packer.kaggle_models import resolve_owner

FILES = ("config.yaml", "classes.json", "summary.json")


def fold_summary(best: float) -> str:
    return json.dumps({"task": "classify", "best_metric": best, "monitor": "val_acc", "best_epoch": 3,
                       "epochs_run": 4, "last_epoch": 4})


def make_run(root: Path, folds: int = 0) -> Path:
    """A finished run folder (any bytes make a best.pt for uploading); ``folds``: a k-fold run with an
    unfinished extra fold (no weights) and root files that prediction does not need."""
    root.mkdir(parents=True)
    members = [root / f"fold{i}" for i in range(folds)] or [root]
    for i, folder in enumerate(members):
        folder.mkdir(exist_ok=True)
        (folder / "best.pt").write_bytes(b"weights of " + folder.name.encode())
        (folder / "last.pt").write_bytes(b"not uploaded")
        (folder / "config.yaml").write_text(f"model: resnet18\nfold: {i}\n")
        (folder / "classes.json").write_text('["cat", "dog"]\n')
        (folder / "summary.json").write_text(fold_summary(0.8 + i / 100))
        (folder / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
    if folds:
        (root / f"fold{folds}").mkdir()
        (root / f"fold{folds}" / "metrics.csv").write_text("epoch\n1\n")  # started, never saved a best.pt
        (root / "folds.csv").write_text("image,fold\na.png,0\n")
        (root / "summary.json").write_text(json.dumps({"task": "classify", "folds": folds, "cv_metric": 0.8125,
                                                       "cv_metric_name": "accuracy"}))
    return root


def make_project(root: Path, owner: str = "alice") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "kernel-metadata.json").write_text(json.dumps({"id": f"{owner}/kernel-train", "title": "kernel-train"}))
    return root


def publish(tmp_path: Path, run: Path, *flags: str) -> int:
    return build.main(["--publish-model", str(run), "--model-slug", "my-model", "--out", str(tmp_path / "dist"),
                       *flags], project=make_project(tmp_path / "project"))


def calls(state_path: Path) -> List[str]:
    return [c["call"] for c in read_state(state_path)["model_calls"]]


def sent(state_path: Path, call: str) -> Dict:
    (body,) = [c["body"] for c in read_state(state_path)["model_calls"] if c["call"] == call]
    return body


def tokens(body: Dict) -> List[str]:
    return sorted(f["token"].removeprefix("tok-") for f in body["files"])


def printed_source(out: str) -> str:
    (line,) = [line for line in out.splitlines() if '"model_sources":' in line]
    return json.loads("{" + line.strip() + "}")["model_sources"][0]


def uploads(state_path: Path) -> Dict[str, List[str]]:
    return {u["name"]: u.get("entries", []) for u in read_state(state_path)["uploads"]}


# ------------------------------------------------------------------ end to end, the real client

def test_first_publish_of_a_kfold_run_creates_the_model_and_variation(tmp_path, monkeypatch, capsys, fake_kaggle):
    state_path = fake_kaggle(new_model_state())
    run = make_run(tmp_path / "runs" / "exp", folds=2)
    assert publish(tmp_path, run) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    folder = tmp_path / "dist" / "model"
    model_meta = json.loads((folder / "model-metadata.json").read_text())
    instance_meta = json.loads((folder / "model-instance-metadata.json").read_text())
    assert calls(state_path) == ["CreateModel", "CreateModelInstance"]
    # What the client read from our model-metadata.json and sent: every field as written.
    assert sent(state_path, "CreateModel") == {k: model_meta[k] for k in ("ownerSlug", "slug", "title", "isPrivate",
                                                                           "description")}
    assert model_meta["ownerSlug"] == "alice" and model_meta["slug"] == "my-model" and model_meta["isPrivate"] is True
    created = sent(state_path, "CreateModelInstance")
    assert (created["ownerSlug"], created["modelSlug"]) == ("alice", "my-model")
    body = created["body"]
    assert body["framework"] == "MODEL_FRAMEWORK_PY_TORCH"  # the client's enum lookup of our "pyTorch"
    assert (body["instanceSlug"], body["licenseName"]) == ("default", "Apache 2.0") == (
        instance_meta["instanceSlug"], instance_meta["licenseName"])
    assert body["usage"] == instance_meta["usage"] and "${PATH}" in body["usage"]  # survives the client's sanitizer
    # The fold folders went up as zips holding each fold's files; last.pt, metrics, folds.csv and the
    # unfinished fold2 did not.
    assert tokens(body) == ["fold0.zip", "fold1.zip", "summary.json"]
    assert uploads(state_path) == {"fold0.zip": ["best.pt", *sorted(FILES)], "fold1.zip": ["best.pt", *sorted(FILES)],
                                   "summary.json": []}
    assert (folder / "fold1" / "best.pt").read_bytes() == b"weights of fold1"
    source = printed_source(out)
    assert source == "alice/my-model/pyTorch/default/1"
    problems: List[str] = []
    packer.validate_kernel_metadata({"id": "alice/my-infer", "title": "my-infer", "model_sources": [source]}, problems)
    assert problems == []


def test_a_second_publish_makes_a_new_version_with_the_message(tmp_path, monkeypatch, capsys, fake_kaggle):
    state_path = fake_kaggle(new_model_state({"alice/my-model": {"pyTorch/default": 3}}))
    run = make_run(tmp_path / "exp", folds=2)
    assert publish(tmp_path, run, "-m", "lr 3e-4, 12 epochs") == 0
    out = capsys.readouterr().out
    assert calls(state_path) == ["CreateModelInstanceVersion"]  # neither the model nor the variation again
    version = sent(state_path, "CreateModelInstanceVersion")
    assert (version["ownerSlug"], version["modelSlug"], version["framework"], version["instanceSlug"]) == (
        "alice", "my-model", "MODEL_FRAMEWORK_PY_TORCH", "default")
    assert version["body"]["versionNotes"] == "lr 3e-4, 12 epochs"
    assert tokens(version["body"]) == ["fold0.zip", "fold1.zip", "summary.json"]  # the folds kept here too
    assert uploads(state_path)["fold1.zip"] == ["best.pt", *sorted(FILES)]
    assert printed_source(out) == "alice/my-model/pyTorch/default/4"


def test_a_new_variation_of_an_existing_model(tmp_path, monkeypatch, capsys, fake_kaggle):
    state_path = fake_kaggle(new_model_state({"alice/my-model": {"pyTorch/default": 2}}))
    run = make_run(tmp_path / "exp")
    assert publish(tmp_path, run, "--variation", "resnet18-fold-all", "--license", "MIT") == 0
    out = capsys.readouterr().out
    assert calls(state_path) == ["CreateModelInstance"]
    body = sent(state_path, "CreateModelInstance")["body"]
    assert (body["instanceSlug"], body["licenseName"]) == ("resnet18-fold-all", "MIT")
    assert tokens(body) == ["best.pt", *sorted(FILES)]
    assert printed_source(out) == "alice/my-model/pyTorch/resnet18-fold-all/1"


def test_the_client_refuses_what_our_validator_refuses(tmp_path, monkeypatch, capsys, fake_kaggle):
    """The validator mirrors the client: metadata it refuses, `kaggle models create` refuses too (exit 1)."""
    state_path = fake_kaggle(new_model_state())
    good = {"ownerSlug": "alice", "slug": "my-model", "title": "my-model", "isPrivate": True, "description": "d"}
    kaggle = packer.kaggle_runner()
    for i, bad in enumerate(({"slug": "My_Model"}, {"isPrivate": "true"}, {"slug": "my--model"},
                             {"ownerSlug": "Alice"}, {"title": "INSERT_TITLE_HERE"})):
        meta = {**good, **bad}
        problems: List[str] = []
        packer.validate_model_metadata(meta, problems)
        assert len(problems) == 1, (bad, problems)
        folder = tmp_path / "models" / str(i)
        folder.mkdir(parents=True)
        (folder / "model-metadata.json").write_text(json.dumps(meta))
        assert kaggle("models", "create", "-p", str(folder), check=False).returncode == 1, bad
    assert "CreateModel" not in " ".join(read_state(state_path)["requests"])
    problems = []
    packer.validate_model_metadata(good, problems)
    assert problems == []


# ------------------------------------------------------------------ refusals: one line, nothing written or sent

@pytest.mark.parametrize("flags, kind, expected", [
    (["--model-slug", "My_Model"], "run", "--model-slug: 'My_Model' must be lowercase letters and digits with single "
                                          "'-' between them; write 'my-model'"),
    (["--license", "apache 2"], "run", "--license: 'apache 2' is not a licence Kaggle lists for models; did you mean "
                                       "'Apache 2.0'?"),
    (["--license", "CC0-1.0"], "run", "is not a licence Kaggle lists for models; did you mean 'CC0: Public Domain'?"),
    (["--variation", "Fold_All"], "run", "--variation: 'Fold_All' must be lowercase"),
    ([], "empty", "has no best.pt or model.safetensors (nor fold0/, fold1/, ... folders with one)"),
    ([], "placeholder", "--owner: no Kaggle username (kernel-metadata.json still has the placeholder "
                        "'YOUR_KAGGLE_USERNAME', and $KAGGLE_USERNAME is unset); pass --owner NAME"),
    (["--owner", "Bob Smith"], "run", "--publish-model: --owner: owner 'Bob Smith' is not a Kaggle username"),
    (["--push"], "run", "--publish-model uploads a trained run and builds no kernel; drop --push"),
])
def test_refusals_are_one_line_before_anything_is_written_or_sent(tmp_path, monkeypatch, capsys, flags, kind,
                                                                  expected):
    marker = tmp_path / "kaggle-was-called"
    cli = tmp_path / "kaggle"
    cli.write_text(f"#!{sys.executable}\nimport pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    cli.chmod(0o755)
    monkeypatch.setenv("KERNEL_KAGGLE_CLI", str(cli))
    monkeypatch.setenv("KAGGLE_API_TOKEN", "x")  # credentials are there: the refusal must come from the check
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    run = tmp_path / "exp"
    if kind == "empty":
        (run / "fold0").mkdir(parents=True)
        (run / "config.yaml").write_text("model: resnet18\n")
    else:
        make_run(run)
    owner = "YOUR_KAGGLE_USERNAME" if kind == "placeholder" else "alice"
    argv = ["--publish-model", str(run), "--model-slug", "my-model", "--out", str(tmp_path / "dist"), *flags]
    assert build.main(argv, project=make_project(tmp_path / "project", owner)) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("build.py: error: ") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "dist").exists() and not marker.exists()


def scripted(answers: Dict[str, subprocess.CompletedProcess]):
    """A kaggle runner answering by subcommand (the words after ``models`` up to the first ref or flag)."""
    seen = []

    def kaggle(*args, check=True, echo=True):
        seen.append(args)
        words = []
        for arg in args[1:]:
            if arg.startswith("-") or "/" in arg:
                break
            words.append(arg)
        return answers.get(" ".join(words), subprocess.CompletedProcess(args, 0, "Your model was created.", ""))
    return kaggle, seen


def test_the_version_number_when_kaggle_answers_without_one(tmp_path):
    """Without ``.../<N>`` in Kaggle's answer: 1 for a new variation, the previous version + 1 for a new one."""
    project = make_project(tmp_path / "project")
    plan = packer.plan_model(make_run(tmp_path / "exp"), "my-model", project=project)
    ok = lambda text: subprocess.CompletedProcess([], 0, text, "")  # noqa: E731
    kaggle, seen = scripted({"get": ok("{}"), "variations get": ok('{"versionNumber": 5, "slug": "default"}'),
                             "variations versions create": ok("Your model instance version was created. Url=")})
    assert publish_fn(plan, tmp_path, kaggle) == 6
    assert [a[:3] for a in seen] == [("models", "get", "alice/my-model"), ("models", "variations", "get"),
                                     ("models", "variations", "versions")]
    missing = subprocess.CompletedProcess([], 1, "", "Not found")
    kaggle, seen = scripted({"get": missing})
    assert publish_fn(plan, tmp_path, kaggle) == 1
    assert [a[:3] for a in seen] == [("models", "get", "alice/my-model"), ("models", "create", "-p"),
                                     ("models", "variations", "create")]


def test_model_slug_needs_publish_model(tmp_path, capsys):
    assert build.main(["--model-slug", "my-model", "--demo"], project=make_project(tmp_path / "p")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--publish-model RUN and --model-slug NAME go together" in err


# ------------------------------------------------------------------ units: validators, owner, the folder

def test_instance_validator_knows_frameworks_and_model_licences():
    good = {"ownerSlug": "alice", "modelSlug": "my-model", "instanceSlug": "default", "framework": "pyTorch",
            "licenseName": "Apache 2.0"}
    problems: List[str] = []
    packer.validate_model_instance_metadata(good, problems)
    assert problems == []
    cases = [({"framework": "pytorch"}, "'pytorch' is not a Kaggle model framework; did you mean 'pyTorch'?"),
             ({"licenseName": ""}, "licenseName: missing"),
             ({"licenseName": "apache-2.0"}, "did you mean 'Apache 2.0'?"),  # the dataset name is not a model licence
             ({"instanceSlug": "INSERT_INSTANCE_SLUG_HERE"}, "instanceSlug: 'INSERT_INSTANCE_SLUG_HERE' is the "
                                                             "client's placeholder"),
             ({"fineTunable": "no"}, "fineTunable: must be a boolean")]
    for change, expected in cases:
        problems = []
        packer.validate_model_instance_metadata({**good, **change}, problems)
        assert len(problems) == 1 and expected in problems[0], (change, problems)
    problems = []
    packer.validate_model_instance_metadata({k: v for k, v in good.items() if k != "framework"}, problems)
    assert problems == ["model-instance-metadata.json: framework: missing; the client refuses the file without it"]


def test_owner_comes_from_the_flag_then_the_template_then_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "erin")
    assert resolve_owner("dave", make_project(tmp_path / "a", "carol")) == "dave"
    assert resolve_owner(None, make_project(tmp_path / "b", "carol")) == "carol"
    assert resolve_owner(None, make_project(tmp_path / "c", "YOUR_KAGGLE_USERNAME")) == "erin"
    monkeypatch.delenv("KAGGLE_USERNAME")
    assert resolve_owner(None, make_project(tmp_path / "d", "YOUR_KAGGLE_USERNAME")) == "YOUR_KAGGLE_USERNAME"


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_upload_folder_is_replaced_whole_and_identically(tmp_path):
    project = make_project(tmp_path / "project")
    folder = tmp_path / "dist" / "model"
    kfold = packer.plan_model(make_run(tmp_path / "kfold", folds=2), "my-model", project=project)
    assert kfold.notes == "kfold: 2-fold CV accuracy 0.8125"  # the version notes without -m
    packer.write_model(kfold, folder, project)
    first = snapshot(folder)
    packer.write_model(kfold, folder, project)
    assert snapshot(folder) == first  # byte-identical
    assert sorted(first) == ["fold0/best.pt", "fold0/classes.json", "fold0/config.yaml", "fold0/summary.json",
                             "fold1/best.pt", "fold1/classes.json", "fold1/config.yaml", "fold1/summary.json",
                             "model-instance-metadata.json", "model-metadata.json", "summary.json"]
    single = packer.plan_model(make_run(tmp_path / "single"), "my-model", project=project)
    assert single.notes == "single: best val_acc 0.8 at epoch 3; 4 epochs run (last epoch 4)"
    packer.write_model(single, folder, project)  # no fold folder of the previous upload survives
    assert sorted(snapshot(folder)) == sorted(["best.pt", *FILES, "model-instance-metadata.json",
                                               "model-metadata.json"])
    assert [p.name for p in folder.parent.iterdir()] == ["model"]  # no temporary folder left behind


def test_a_folder_not_written_by_build_is_not_replaced(tmp_path):
    project = make_project(tmp_path / "project")
    folder = tmp_path / "dist" / "model"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    plan = packer.plan_model(make_run(tmp_path / "exp"), "my-model", project=project)
    with pytest.raises(packer.BuildError) as err:
        packer.write_model(plan, folder, project)
    assert "was not written by build.py (no model-instance-metadata.json)" in str(err.value)
    assert snapshot(folder) == {"notes.txt": b"mine"}
    with pytest.raises(packer.BuildError) as err:  # nor the run it uploads
        packer.write_model(plan, tmp_path / "exp", project)
    assert "would replace" in str(err.value) and (tmp_path / "exp" / "best.pt").is_file()
