"""Planning a build: read the templates and the config, validate everything, compute every output file.

:func:`plan` writes nothing: it returns a :class:`Bundle` (file path -> bytes), so a build with
any problem leaves ``dist/`` as it was, and :func:`write` then replaces ``dist/kernel`` and
``dist/dataset`` in one go. The same inputs always give byte-identical files.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import load_config_file
from ..errors import ConfigError
from ..registry import did_you_mean
from .checks import collect_user_modules, inference_id, validate_config, validate_inference_config
from .metadata import (BOOL_KEYS, KERNEL_DEFAULTS, KERNEL_KEYS, PLACEHOLDER_OWNER, RETIRED_SHAPES, SOURCE_KEYS,
                       BuildError, as_bool, is_secret_name, slugify, validate_dataset_metadata,
                       validate_kernel_metadata)
from .script import NOT_EMBEDDED, Module, package_modules, render_script, sources_sha256

__all__ = ["Bundle", "VENDORED", "plan", "write", "read_config"]

# Pure-Python packages Kaggle's image lacks, copied into the code dataset's vendor/ (the packed
# script's bootstrap puts that folder on sys.path when the package is not installed): name ->
# files besides *.py that the copy needs (imgaug's font draws text on its debug images).
VENDORED: Dict[str, Tuple[str, ...]] = {"imgaug": ("DejaVuSans.ttf", "external/README.md"),
                                        "segmentation_models_pytorch": ()}
_LEAKED_KEY = r"""["']key["']\s*:\s*["'][0-9a-f]{32}["']"""  # a kaggle.json pasted into a module


@dataclass
class Bundle:
    """Everything build.py will write, computed and validated before any file is touched."""

    files: Dict[str, bytes] = field(default_factory=dict)  # path under --out -> content
    kernel_id: str = ""
    dataset_id: str = ""
    version: str = ""
    sha256: str = ""
    module_count: int = 0
    script_bytes: int = 0
    vendored: Dict[str, str] = field(default_factory=dict)  # package -> version
    licenses: Dict[str, str] = field(default_factory=dict)  # vendored package -> its licence, as its metadata says
    warnings: List[str] = field(default_factory=list)
    folder: str = "kernel"      # the kernel's folder under --out: kernel, or inference for an inference kernel
    script: str = "train.py"    # its code_file: train.py, or infer.py


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    if not path.is_file():
        raise BuildError(f"{path}: {what} template not found; restore it from the repository")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); fix the file") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: must hold a JSON object")
    return data


def read_config(path: Optional[Path]) -> Dict[str, Any]:
    """The run config (YAML or JSON) as a dict, read as ``kernel.train --config`` reads it; {} without one."""
    if path is None:
        return {}
    if is_secret_name(path.name):
        raise BuildError(f"--config {path}: names a credentials file; give the run's YAML config")
    try:
        return load_config_file(str(path))
    except ConfigError as e:
        raise BuildError(str(e)) from None


def _set_owner(ref: str, owner: str) -> str:
    parts = ref.split("/")
    return "/".join([owner, *parts[1:]]) if len(parts) > 1 and parts[0] == PLACEHOLDER_OWNER else ref


def _merge_sources(*lists: Sequence[str]) -> List[str]:
    """Concatenate, dropping repeats of the same owner/slug (the first one, with its version, wins)."""
    out, seen = [], set()
    for lst in lists:
        for s in lst:
            key = "/".join(s.split("/")[:2]).lower()
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


def vendor_files(package: str, data: Sequence[str]) -> Tuple[Dict[str, bytes], str, str]:
    """A pure-Python package from site-packages: its *.py, the ``data`` files and its licence; no caches.

    Returns (files under ``vendor/<package>/``, version, licence name); ({}, "", "") when it is not installed here.
    """
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}, "", ""
    pkg = Path(list(spec.submodule_search_locations)[0])
    files: Dict[str, bytes] = {}
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg).as_posix()
        if path.is_file() and "__pycache__" not in rel and not path.name.startswith(".") \
                and (path.suffix == ".py" or rel in data):
            files[f"vendor/{package}/{rel}"] = path.read_bytes()
    version, license_name = "", ""
    dist_name = package.replace("_", "-")
    for dist in sorted(pkg.parent.glob("*.dist-info")):
        name, _, ver = dist.name[:-len(".dist-info")].partition("-")
        if name.lower().replace("_", "-") == dist_name:
            version, license_name = ver, _license_name(dist)
            for lic in ("LICENSE", "LICENSE.txt", "licenses/LICENSE"):
                if (dist / lic).is_file():
                    files[f"vendor/{package}/LICENSE"] = (dist / lic).read_bytes()
    return files, version, license_name


def _license_name(dist_info: Path) -> str:
    """The licence a distribution declares (``License-Expression``, a short ``License`` field, or its
    ``License ::`` classifier), e.g. ``MIT``; "" when it declares none (its LICENSE file still travels)."""
    meta = importlib.metadata.PathDistribution(dist_info).metadata
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and "\n" not in value and len(value) <= 40:  # some packages paste the whole licence text here
            return value
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return classifiers[0] if classifiers else ""


def _read_version(package: Path) -> str:
    """``__version__`` of the package being packed (read, not imported: it may be another checkout)."""
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    return "0+unknown"


def _json_bytes(data: Dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _kernel_meta(template: Dict[str, Any], section: Any, owner: Optional[str], cfg_where: str,
                 problems: List[str]) -> Dict[str, Any]:
    """The template, merged with the config's ``kaggle:`` section and ``--owner``, defaults filled in."""
    if not isinstance(section, dict):
        raise BuildError(f"{cfg_where}: kaggle: must be a mapping of kernel-metadata fields (e.g. dataset_sources)")
    for key in section:
        if key not in KERNEL_KEYS:
            problems.append(f"{cfg_where}: kaggle.{key}: not a kernel-metadata field{did_you_mean(str(key), KERNEL_KEYS)}"
                            "; see kernel-metadata.json")
    kmeta = dict(template)
    for key, value in section.items():
        if key in SOURCE_KEYS and isinstance(value, list) and isinstance(kmeta.get(key, []), list):
            kmeta[key] = list(kmeta.get(key) or []) + value
        else:
            kmeta[key] = value
    if owner:
        if isinstance(kmeta.get("id"), str):
            kmeta["id"] = "/".join([owner, *kmeta["id"].split("/")[1:]])
        for key in SOURCE_KEYS:
            if isinstance(kmeta.get(key), list):
                kmeta[key] = [_set_owner(s, owner) if isinstance(s, str) else s for s in kmeta[key]]
    for key, value in KERNEL_DEFAULTS.items():
        kmeta.setdefault(key, value)
    return kmeta


def _kernel_meta_out(kmeta: Dict[str, Any], dataset_id: str, config: Dict[str, Any], warnings: List[str],
                     code_file: str = "train.py") -> Dict[str, Any]:
    """kernel-metadata.json as written: fixed key order, JSON booleans, the code dataset attached."""
    own = [kmeta["id"]] if str(config.get("resume", "")).strip().lower() == "auto" else []
    out: Dict[str, Any] = {
        "id": kmeta["id"], "title": kmeta["title"], "code_file": code_file, "language": "python",
        "kernel_type": "script", **{k: as_bool(kmeta[k]) for k in BOOL_KEYS},
        "machine_shape": kmeta.get("machine_shape") or "",
        "dataset_sources": _merge_sources([dataset_id], kmeta.get("dataset_sources") or []),
        "competition_sources": _merge_sources(kmeta.get("competition_sources") or []),
        "kernel_sources": _merge_sources(kmeta.get("kernel_sources") or [], own),
        "model_sources": _merge_sources(kmeta.get("model_sources") or []),
    }
    for key in ("id_no", "keywords", "docker_image_pinning_type", "docker_image"):
        if kmeta.get(key):
            out[key] = kmeta[key]
    for key in sorted(set(kmeta) - set(KERNEL_KEYS)):
        warnings.append(f"kernel-metadata.json: {key}: not a field the kaggle client reads; it is dropped")
    if isinstance(kmeta.get("title"), str) and slugify(kmeta["title"]) != kmeta["id"].split("/")[1]:
        warnings.append(f"kernel-metadata.json: title {kmeta['title']!r} does not slugify to the id's slug "
                        f"{kmeta['id'].split('/')[1]!r}; Kaggle may pick a different URL")
    if kmeta.get("machine_shape") in RETIRED_SHAPES:
        warnings.append(f"kernel-metadata.json: machine_shape {kmeta['machine_shape']!r} is retired (it runs "
                        f"on a T4); write {RETIRED_SHAPES[kmeta['machine_shape']]!r}")
    return out


def _check_modules(modules: Sequence[Module]) -> None:
    for m in modules:
        if re.search(_LEAKED_KEY, m.source):
            raise BuildError(f"{m.filename}: contains what looks like a Kaggle API key; remove it (credentials "
                             f"belong in ~/.kaggle, never in code)")


def _add_dataset(bundle: Bundle, dmeta: Dict[str, Any], pkg_modules: Sequence[Module], vendor: bool) -> None:
    """The code dataset: the package (no user modules, no caches), vendored packages, README and metadata
    (its description says what is vendored, with versions and licences)."""
    for m in pkg_modules:
        bundle.files[f"dataset/{m.filename}"] = m.source.encode("utf-8")
    for package, data in (VENDORED.items() if vendor else ()):
        files, version, license_name = vendor_files(package, data)
        if not files:
            bundle.warnings.append(f"{package} is not installed here, so dist/dataset has no vendor/{package} "
                                   f"(pip install {package})")
            continue
        bundle.files.update({f"dataset/{k}": v for k, v in files.items()})
        bundle.vendored[package], bundle.licenses[package] = version, license_name
    if bundle.vendored:
        described = str(dmeta.get("description") or "").strip()
        dmeta = dict(dmeta, description=f"{described} Vendored under vendor/ (Kaggle's image lacks "
                                           f"them): {_vendored_list(bundle)}.".strip())
    bundle.files["dataset/dataset-metadata.json"] = _json_bytes(dmeta)
    bundle.files["dataset/README.md"] = _dataset_readme(bundle).encode("utf-8")


def _vendored_list(b: Bundle) -> str:
    """``imgaug 0.4.0 (MIT), ...``: every vendored package with its version and licence."""
    return ", ".join(f"{p} {v} ({b.licenses[p] or 'licence: see its LICENSE'})" for p, v in sorted(b.vendored.items()))


def plan(config_path: Optional[Path] = None, *, project: Path, owner: Optional[str] = None,
         vendor: bool = True, inference: bool = False) -> Bundle:
    """Read the templates and config, validate everything, and compute every output file.

    ``inference``: the config is an inference config (:class:`kernel.options.InferOptions`) and the kernel a
    predict-only ``inference/infer.py`` for a code competition, with its own id."""
    package, problems, bundle = project / "kernel", [], Bundle()
    kmeta_t = _read_json(project / "kernel-metadata.json", "kernel metadata")
    dmeta = _read_json(project / "dataset-metadata.json", "dataset metadata")
    config = read_config(config_path)
    cfg_where = f"config {config_path.name}" if config_path else "config"
    section = config.pop("kaggle", None) or {}
    training_id = kmeta_t.get("id")  # before an inference kernel takes its own id
    if inference and isinstance(section, dict) and isinstance(kmeta_t.get("id"), str):
        kmeta_t = dict(kmeta_t, id=inference_id(kmeta_t["id"], section))
        if "title" not in section:
            kmeta_t["title"] = kmeta_t["id"].split("/")[-1]
    kmeta = _kernel_meta(kmeta_t, section, owner, cfg_where, problems)
    if owner and isinstance(dmeta.get("id"), str):
        dmeta["id"] = "/".join([owner, *dmeta["id"].split("/")[1:]])
    validate_kernel_metadata(kmeta, problems, "kernel-metadata.json" + (f" (with {cfg_where} kaggle:)" if section else ""))
    validate_dataset_metadata(dmeta, problems)
    if inference and owner and isinstance(training_id, str):
        training_id = "/".join([owner, *training_id.split("/")[1:]])
    if inference and kmeta.get("id") == training_id:
        problems.append(f"{cfg_where}: kaggle: id {training_id!r} is the training kernel's; pushing the inference "
                        "kernel there would add a version to it: give another id or leave id out (-infer is added)")
    if inference:
        config = validate_inference_config(config, kmeta, str(dmeta.get("id")), problems, cfg_where)
    else:
        validate_config(config, problems, cfg_where)
    roots = [project] + ([config_path.resolve().parent] if config_path else [])
    config, user_modules = collect_user_modules(config, roots, problems, cfg_where)
    if str(config.get("pretrained", "")).lower() == "hub" and as_bool(kmeta.get("enable_internet")) is not True:
        problems.append(f"{cfg_where}: pretrained: 'hub' downloads weights, but enable_internet is false; attach "
                        f"the weights as a dataset/model source and give the file path, or set enable_internet true")
    if problems:
        raise BuildError(problems)
    pkg_modules = package_modules(package)  # the code dataset carries the whole package
    modules = package_modules(package, skip=NOT_EMBEDDED) + user_modules
    _check_modules(modules)
    bundle.kernel_id, bundle.dataset_id = kmeta["id"], dmeta["id"]
    bundle.folder, bundle.script = ("inference", "infer.py") if inference else ("kernel", "train.py")
    bundle.version, bundle.sha256, bundle.module_count = _read_version(package), sources_sha256(modules), len(modules)
    out_meta = _kernel_meta_out(kmeta, bundle.dataset_id, config, bundle.warnings, bundle.script)
    script = render_script(modules, config, bundle.version, bundle.dataset_id,
                           "kernel.infer" if inference else "kernel.train").encode("utf-8")
    bundle.script_bytes = len(script)
    bundle.files[f"{bundle.folder}/{bundle.script}"] = script
    bundle.files[f"{bundle.folder}/kernel-metadata.json"] = _json_bytes(out_meta)
    _add_dataset(bundle, dmeta, pkg_modules, vendor)
    leaked = [p for p in bundle.files if any(is_secret_name(part) for part in p.split("/"))]
    if leaked:  # defence in depth: nothing above can add one, and this keeps it that way
        raise BuildError(f"refusing to write credentials-like files: {', '.join(leaked)}")
    return bundle


def _dataset_readme(b: Bundle) -> str:
    owner, slug = b.dataset_id.split("/")
    vendor = "".join(f"- `vendor/{p}/`: {p} {v}, which Kaggle's image lacks; {b.licenses[p] or 'its own'} licence"
                     + (f", in `vendor/{p}/LICENSE`" if f"dataset/vendor/{p}/LICENSE" in b.files else "") + ".\n"
                     for p, v in sorted(b.vendored.items()))
    return f"""# kernel {b.version}: code bundle

Code dataset for the `kernel` fine-tuning bundle, built by `build.py` together with the kernel's
`train.py` (whose embedded sources have sha256 `{b.sha256}`).

- `kernel/`: the Python package.
{vendor}
The pushed kernel ({b.kernel_id}) embeds its own copy of the code and only uses this dataset for
the vendored packages. To use the package from a Kaggle notebook instead:

```python
import glob, sys
root = (glob.glob("/kaggle/input/{slug}") + glob.glob("/kaggle/input/datasets/{owner}/{slug}"))[0]
sys.path.append(root)            # the package
sys.path.append(root + "/vendor")  # vendored packages, when not installed
from kernel.train import main
main(["--data", "shapes", "--dry-run"])
```
"""


def _check_out_dir(out: Path, project: Path) -> None:
    """Refuse an --out that would overwrite the sources (e.g. `--out .` would replace ./kernel)."""
    out_r = out.resolve()
    for protected in (project.resolve(), (project / "kernel").resolve()):
        if out_r == protected or protected.is_relative_to(out_r):
            raise BuildError(f"--out {out}: would overwrite {protected}; use a separate folder such as dist")
    for sub, marker in (("kernel", "kernel-metadata.json"), ("inference", "kernel-metadata.json"),
                        ("dataset", "dataset-metadata.json")):
        d = out / sub
        if d.exists() and any(d.iterdir()) and not (d / marker).is_file():
            raise BuildError(f"--out {out}: {d} exists and was not written by build.py (no {marker}); "
                             f"remove it or pick another --out")


def write(bundle: Bundle, out: Path, project: Path) -> None:
    """Replace out/kernel (or out/inference) and out/dataset with the bundle's files (stale files do not
    survive)."""
    _check_out_dir(out, project)
    for sub in (bundle.folder, "dataset"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for rel in sorted(bundle.files):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.files[rel])
