"""Publishing a trained run as a Kaggle Model: ``build.py --publish-model RUN --model-slug NAME``.

The upload folder (``<out>/model/``) holds the run's weights as :mod:`kernel.predict` reads them: ``best.pt``
(else ``model.safetensors``) with ``config.yaml``, ``classes.json`` and ``summary.json``, or for a k-fold run
its ``fold<i>/`` folders, each with its own weights and files (uploaded with ``--dir-mode zip``: the client
skips sub-folders otherwise, and Kaggle unpacks each zip back into its folder). Beside them
``model-metadata.json`` and ``model-instance-metadata.json``, checked with the client's rules (kaggle 2.2,
``model_create_new`` and ``model_instance_create``; see ``shared/kaggle-notes.md``), plus ours: the client
only checks that a licence is non-empty, Kaggle refuses names it does not list, so we refuse them first.
Then the model, the variation or a new version of it is created with the kaggle CLI, and the
``model_sources`` entry of the inference kernel is printed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..registry import did_you_mean
from .metadata import PLACEHOLDER_OWNER, BuildError, _check_owner, slugify
from .push import KaggleRun, kaggle_runner
from .watch import summary_line

__all__ = ["MODEL_FRAMEWORKS", "MODEL_LICENSES", "DEFAULT_MODEL_LICENSE", "MODEL_META", "INSTANCE_META",
           "resolve_owner", "ModelPlan", "validate_model_metadata", "validate_model_instance_metadata", "plan_model",
           "write_model", "publish", "publish_model"]

# ModelFramework (kagglesdk models/types/model_enums.py) as the client's lookup_enum accepts it: camelCase.
MODEL_FRAMEWORKS = ("tensorFlow1", "tensorFlow2", "tfLite", "tfJs", "pyTorch", "jax", "flax", "pax", "maxText",
                    "gemmaCpp", "ggml", "gguf", "coral", "scikitLearn", "mxnet", "onnx", "keras", "transformers",
                    "api", "other", "tensorRtLlm", "triton", "vllm")
# The licences Kaggle lists for models (kaggle-api docs/models_metadata.md): not the dataset names.
MODEL_LICENSES = (
    "Apache 2.0", "Attribution 3.0 IGO (CC BY 3.0 IGO)", "Attribution 3.0 Unported (CC BY 3.0)",
    "Attribution 4.0 International (CC BY 4.0)", "Attribution-NoDerivatives 4.0 International (CC BY-ND 4.0)",
    "Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)",
    "Attribution-NonCommercial-NoDerivatives 4.0 International (CC BY-NC-ND 4.0)",
    "Attribution-NonCommercial-ShareAlike 3.0 IGO (CC BY-NC-SA 3.0 IGO)", "BSD-3-Clause", "CC BY-NC-SA 4.0",
    "CC BY-SA 3.0", "CC BY-SA 4.0", "CC0: Public Domain", "Community Data License Agreement - Permissive - Version 1.0",
    "Community Data License Agreement - Sharing - Version 1.0", "GNU Affero General Public License 3.0",
    "GNU Free Documentation License 1.3", "GNU Lesser General Public License 3.0", "GPL 2", "MIT",
    "ODC Attribution License (ODC-By)", "ODC Public Domain Dedication and Licence (PDDL)", "GPL 3")
DEFAULT_MODEL_LICENSE = "Apache 2.0"
# SPDX-style ids (what datasets and most repositories use) -> Kaggle's model licence name, for the hint:
# string similarity alone would offer 'CC BY-SA 4.0' for 'CC0-1.0'.
_SPDX = dict(zip(
    ("apache-2.0", "cc-by-3.0-igo", "cc-by-3.0", "cc-by-4.0", "cc-by-nd-4.0", "cc-by-nc-4.0", "cc-by-nc-nd-4.0",
     "cc-by-nc-sa-3.0-igo", "bsd-3-clause", "cc-by-nc-sa-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc0-1.0",
     "cdla-permissive-1.0", "cdla-sharing-1.0", "agpl-3.0", "fdl-1.3", "lgpl-3.0", "gpl-2.0", "mit", "odc-by-1.0",
     "pddl", "gpl-3.0"), MODEL_LICENSES))  # in MODEL_LICENSES' order
MODEL_META, INSTANCE_META = "model-metadata.json", "model-instance-metadata.json"
FRAMEWORK = "pyTorch"
WEIGHTS = ("best.pt", "model.safetensors")  # kernel.predict's order: the first one found is the run's model
SIDECARS = ("config.yaml", "classes.json", "summary.json")
# The client's slug rules (_validate_slug_syntax): no length limits for models.
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass
class ModelPlan:
    """What ``--publish-model`` uploads: the metadata and the files (upload path -> source file)."""

    owner: str
    slug: str
    variation: str
    notes: str
    model_meta: Dict[str, Any]
    instance_meta: Dict[str, Any]
    files: Dict[str, Path] = field(default_factory=dict)

    @property
    def instance_ref(self) -> str:
        """``owner/model/framework/variation``, as ``kaggle models variations`` commands take it."""
        return f"{self.owner}/{self.slug}/{FRAMEWORK}/{self.variation}"


def _check_slug(label: str, slug: Any, example: str, problems: List[str]) -> None:
    if not isinstance(slug, str) or not slug:
        problems.append(f"{label}: missing; write a slug such as {example!r}")
    elif slug.startswith("INSERT_"):
        problems.append(f"{label}: {slug!r} is the client's placeholder; write a slug such as {example!r}")
    elif not _SLUG.match(slug):
        problems.append(f"{label}: {slug!r} must be lowercase letters and digits with single '-' between them; "
                        f"write {slugify(slug) or example!r}")


def _check_license(label: str, name: Any, problems: List[str]) -> None:
    if not isinstance(name, str) or not name:
        problems.append(f"{label}: missing; the client needs a licence, e.g. {DEFAULT_MODEL_LICENSE!r}")
    elif name not in MODEL_LICENSES:
        spdx = _SPDX.get(re.sub(r"[\s_]+", "-", name.strip().lower()).removesuffix("-only"))
        hint = (f"; did you mean {spdx!r}?" if spdx else did_you_mean(name, MODEL_LICENSES)) or (
            f"; e.g. {DEFAULT_MODEL_LICENSE!r}, 'MIT' or 'CC0: Public Domain'")
        problems.append(f"{label}: {name!r} is not a licence Kaggle lists for models{hint} (see --help for the list)")


def _check_required(where: str, meta: Dict[str, Any], keys: Tuple[str, ...], problems: List[str]) -> None:
    problems += [f"{where}: {key}: missing; the client refuses the file without it" for key in keys if key not in meta]


def _check_owner_slug(where: str, meta: Dict[str, Any], problems: List[str]) -> None:
    owner = meta.get("ownerSlug")
    if not isinstance(owner, str) or not owner or owner.startswith("INSERT_"):
        problems.append(f"{where}: ownerSlug: {owner!r} is missing or the client's placeholder; pass --owner NAME")
    else:
        _check_owner(where, "ownerSlug", owner, problems)


def validate_model_metadata(meta: Any, problems: List[str], where: str = MODEL_META) -> None:
    """Check a model-metadata.json mapping with the client's ``models create`` rules."""
    if not isinstance(meta, dict):
        problems.append(f"{where}: must be a JSON object with ownerSlug, slug, title, isPrivate, description")
        return
    _check_required(where, meta, ("ownerSlug", "slug", "title", "isPrivate", "description"), problems)
    _check_owner_slug(where, meta, problems)
    if "slug" in meta:
        _check_slug(f"{where}: slug", meta["slug"], "my-model", problems)
    title = meta.get("title")
    if "title" in meta and (not isinstance(title, str) or not title or title == "INSERT_TITLE_HERE"):
        problems.append(f"{where}: title: {title!r} is empty or the client's placeholder; write a title")
    if "isPrivate" in meta and not isinstance(meta["isPrivate"], bool):
        problems.append(f"{where}: isPrivate: {meta['isPrivate']!r} is not a boolean (the client refuses "
                        f"\"true\" strings here); write true or false")
    if "description" in meta and not isinstance(meta["description"], str):
        problems.append(f"{where}: description: must be a string (markdown)")
    publish = meta.get("publishTime")
    if publish and not (isinstance(publish, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", publish)):
        problems.append(f"{where}: publishTime: {publish!r} is not a YYYY-MM-DD date; fix or remove it")


def validate_model_instance_metadata(meta: Any, problems: List[str], where: str = INSTANCE_META) -> None:
    """Check a model-instance-metadata.json mapping with the client's ``models variations create`` rules,
    and the licence against Kaggle's list (the client checks only that it is non-empty)."""
    if not isinstance(meta, dict):
        problems.append(f"{where}: must be a JSON object with ownerSlug, modelSlug, instanceSlug, framework, "
                        f"licenseName")
        return
    _check_required(where, meta, ("ownerSlug", "modelSlug", "instanceSlug", "framework", "licenseName"), problems)
    _check_owner_slug(where, meta, problems)
    for key, example in (("modelSlug", "my-model"), ("instanceSlug", "default")):
        if key in meta:
            _check_slug(f"{where}: {key}", meta[key], example, problems)
    framework = meta.get("framework")
    if "framework" in meta and framework not in MODEL_FRAMEWORKS:
        problems.append(f"{where}: framework: {framework!r} is not a Kaggle model framework"
                        f"{did_you_mean(str(framework), MODEL_FRAMEWORKS)}; build.py publishes {FRAMEWORK!r}")
    if "licenseName" in meta:
        _check_license(f"{where}: licenseName", meta["licenseName"], problems)
    if not isinstance(meta.get("fineTunable", False), bool):
        problems.append(f"{where}: fineTunable: must be a boolean")
    if not isinstance(meta.get("trainingData", []), list):
        problems.append(f"{where}: trainingData: must be a list")


def _weights(folder: Path) -> Optional[Path]:
    return next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)


def _run_files(run: Path, problems: List[str]) -> Dict[str, Path]:
    """Upload path -> file: the run's weights and sidecars, or each trained fold's in its ``fold<i>/``."""
    if not run.is_dir():
        problems.append(f"--publish-model: {str(run)!r} is not a folder; give a training run's folder (RUN)")
        return {}
    weights = _weights(run)
    folds = [] if weights else sorted((d for d in run.iterdir() if d.is_dir() and re.fullmatch(r"fold\d+", d.name)
                                       and _weights(d)), key=lambda d: int(d.name[4:]))
    if weights is None and not folds:
        problems.append(f"--publish-model: {str(run)!r} has no {' or '.join(WEIGHTS)} (nor fold0/, fold1/, ... "
                        f"folders with one); give the folder of a run that saved its best model")
        return {}
    files = {weights.name: weights} if weights else {}
    files.update({name: run / name for name in SIDECARS if (run / name).is_file()})
    for fold in folds:
        files[f"{fold.name}/{_weights(fold).name}"] = _weights(fold)
        files.update({f"{fold.name}/{n}": fold / n for n in SIDECARS if (fold / n).is_file()})
    return dict(sorted(files.items()))


def _summary_text(run: Path) -> str:
    """The run's result in words, for the version notes and the model card ("" without a summary.json)."""
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(summary, dict):
        return ""
    if isinstance(summary.get("cv_metric"), (int, float)):  # a k-fold run's CV summary
        name = summary.get("cv_metric_name", "score")
        return f"{summary.get('folds', '?')}-fold CV {name} {summary['cv_metric']:.4g}"
    return summary_line(summary)


def resolve_owner(owner: Optional[str], project: Path) -> str:
    """--owner, else the kernel-metadata template's owner (unless the placeholder), else $KAGGLE_USERNAME."""
    if owner:
        return owner
    try:
        template_id = json.loads((project / "kernel-metadata.json").read_text(encoding="utf-8")).get("id", "")
    except (OSError, ValueError, AttributeError):
        template_id = ""
    template_owner = template_id.split("/")[0] if isinstance(template_id, str) else ""
    if template_owner and template_owner != PLACEHOLDER_OWNER:
        return template_owner
    return os.environ.get("KAGGLE_USERNAME") or template_owner or PLACEHOLDER_OWNER


def _card(plan_owner: str, slug: str, variation: str, name: str, result: str, folds: int) -> Dict[str, str]:
    """The model card (description) and the variation's usage text, markdown; nothing machine-specific."""
    # No "<...>" in the text: the client sanitizes the markdown as HTML and would close the "tag".
    what = f"a {folds}-fold ensemble (a folder per fold: fold0/, fold1/, ...)" if folds else "one model"
    description = (f"# {slug}\n\nPyTorch weights of the training run `{name}`, {what}"
                   + (f": {result}" if result else "") + ".\n\nPublished with `python build.py --publish-model`.\n")
    usage = (f"# Model Usage\n\nAttach it to a kernel with `\"model_sources\": [\"{plan_owner}/{slug}/{FRAMEWORK}/"
             f"{variation}/${{VERSION_NUMBER}}\"]` and predict with "
             f"`python -m kernel.predict IMAGES --checkpoint ${{PATH}}`.\n")
    return {"description": description, "usage": usage}


def plan_model(run: Path, slug: str, *, project: Path, owner: Optional[str] = None, variation: str = "default",
               license_name: str = DEFAULT_MODEL_LICENSE, public: bool = False,
               notes: Optional[str] = None) -> ModelPlan:
    """Check the flags and the run, then compute the metadata and the files; nothing is written or sent."""
    owner, problems = resolve_owner(owner, project), []
    if owner == PLACEHOLDER_OWNER:
        problems.append(f"--owner: no Kaggle username (kernel-metadata.json still has the placeholder "
                        f"{PLACEHOLDER_OWNER!r}, and $KAGGLE_USERNAME is unset); pass --owner NAME")
    else:
        _check_owner("--publish-model", "--owner", owner, problems)
    _check_slug("--model-slug", slug, "my-model", problems)
    _check_slug("--variation", variation, "default", problems)
    _check_license("--license", license_name, problems)
    files = _run_files(run, problems)
    if problems:
        raise BuildError(problems)
    result, name = _summary_text(run), run.resolve().name  # resolved: "." has no name
    folds = len({rel.split("/")[0] for rel in files if "/" in rel})
    card = _card(owner, slug, variation, name, result, folds)
    overview = f"Trained run {name}" + (f": {result}" if result else "")
    model_meta = {"ownerSlug": owner, "slug": slug, "title": slug, "isPrivate": not public,
                  "description": card["description"]}
    instance_meta = {"ownerSlug": owner, "modelSlug": slug, "instanceSlug": variation, "framework": FRAMEWORK,
                     "licenseName": license_name, "overview": overview, "usage": card["usage"],
                     "fineTunable": False, "trainingData": []}
    validate_model_metadata(model_meta, problems)
    validate_model_instance_metadata(instance_meta, problems)
    if problems:
        raise BuildError(problems)
    notes = notes or (f"{name}: {result}" if result else f"run {name}")  # the version notes without -m
    return ModelPlan(owner, slug, variation, notes, model_meta, instance_meta, files)


def _check_target(folder: Path, plan: ModelPlan, project: Path) -> None:
    """Refuse an upload folder that would replace something build.py did not write (or the run itself)."""
    target = folder.resolve()
    for source in [project.resolve(), *(p.resolve().parent for p in plan.files.values())]:
        if target == source or source.is_relative_to(target):
            raise BuildError(f"--out: the upload folder {folder} would replace {source}; pick another --out")
    if folder.exists() and not (folder / INSTANCE_META).is_file() and (not folder.is_dir() or any(folder.iterdir())):
        raise BuildError(f"--out: {folder} exists and was not written by build.py (no {INSTANCE_META}); remove it "
                         f"or pick another --out")


def _place(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (checkpoints are large; training replaces files, never edits
    them in place), else a copy; both keep the source's time stamp, so a rebuild zips identically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_model(plan: ModelPlan, folder: Path, project: Path) -> None:
    """Replace ``folder`` with the plan's files and metadata in one step: built beside it, then swapped in."""
    _check_target(folder, plan, project)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for rel, src in plan.files.items():
            _place(src, tmp / rel)
        for name, meta in ((MODEL_META, plan.model_meta), (INSTANCE_META, plan.instance_meta)):
            (tmp / name).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        old = folder.parent / f".{folder.name}.old.tmp"
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _published_version(text: str, plan: ModelPlan, expected: Optional[int]) -> Optional[int]:
    """The version Kaggle's answer names (``Url=.../pyTorch/<variation>/<N>``), else the one expected."""
    match = re.search(rf"/{FRAMEWORK}/{re.escape(plan.variation)}/(\d+)/?\s*$", text.strip(), re.I | re.M)
    return int(match.group(1)) if match else expected


def publish(plan: ModelPlan, folder: Path, kaggle: KaggleRun) -> Optional[int]:
    """Create the model, the variation or a new version of it from ``folder``; the variation's version number
    (None when neither Kaggle's answer nor the previous version tells it)."""
    model_ref, ref = f"{plan.owner}/{plan.slug}", plan.instance_ref
    model_exists = kaggle("models", "get", model_ref, check=False).returncode == 0
    if not model_exists:
        print(f"(no model {model_ref} yet: creating it)")
        kaggle("models", "create", "-p", str(folder))
    got = kaggle("models", "variations", "get", ref, check=False) if model_exists else None
    if got is not None and got.returncode == 0:
        match = re.search(r'"versionNumber":\s*(\d+)', got.stdout or "")  # the client prints the variation as JSON
        previous = int(match.group(1)) if match else None
        proc = kaggle("models", "variations", "versions", "create", ref, "-p", str(folder), "-n", plan.notes,
                      "-r", "zip")
        expected = previous + 1 if previous is not None else None
    else:
        proc = kaggle("models", "variations", "create", "-p", str(folder), "-r", "zip")
        expected = 1
    return _published_version((proc.stdout or "") + (proc.stderr or ""), plan, expected)


def publish_model(run: Path, slug: str, *, project: Path, out: Path, owner: Optional[str] = None,
                  variation: str = "default", license_name: str = DEFAULT_MODEL_LICENSE, public: bool = False,
                  message: Optional[str] = None,
                  runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """``build.py --publish-model``: check, write ``out/model``, publish, print the ``model_sources`` line; 0."""
    plan = plan_model(run, slug, project=project, owner=owner, variation=variation, license_name=license_name,
                      public=public, notes=message)
    folder = out / "model"
    try:
        kaggle = kaggle_runner(runner)  # the CLI and credentials are checked before anything is written
        write_model(plan, folder, project)
        print(f"Wrote {folder}: {', '.join(plan.files)} and the two metadata files")
        version = publish(plan, folder, kaggle)
    except BuildError as e:  # kaggle_runner's lines start "--push:"; here the flag is --publish-model
        raise BuildError([p.replace("--push:", "--publish-model:", 1) for p in e.problems]) from None
    if version is None:
        print(f"Published {plan.instance_ref}; see its version with `kaggle models variations versions list "
              f"{plan.instance_ref}`; then in the inference kernel:\n  \"model_sources\": [\"{plan.instance_ref}/N\"]")
        return 0
    mount = f"{plan.slug}/{FRAMEWORK.lower()}/{plan.variation}/{version}"  # Kaggle lowercases the framework
    print(f"Published {plan.instance_ref} version {version}. For the inference kernel (kernel-metadata.json, or "
          f"the run config's kaggle: section):\n  \"model_sources\": [\"{plan.instance_ref}/{version}\"]\n"
          f"It mounts at /kaggle/input/models/{plan.owner}/{mount}/ (new layout) or /kaggle/input/{mount}/ (old).")
    return 0
