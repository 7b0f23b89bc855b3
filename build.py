#!/usr/bin/env python3
"""Pack the ``kernel`` bundle for Kaggle: a code dataset and a one-file kernel, validated and pushed.

``python build.py [--config run.yaml] [--out dist] [--owner NAME] [--push]`` writes::

    dist/kernel/train.py              one self-contained script: the run config baked in at the top,
                                      every module of kernel/ (and the user modules the config names)
                                      embedded as readable source and served by an import hook
    dist/kernel/kernel-metadata.json  from ./kernel-metadata.json: code_file, sources, GPU, internet
    dist/dataset/dataset-metadata.json
    dist/dataset/kernel/...           the package itself, importable from a notebook
    dist/dataset/vendor/imgaug/...    imgaug's pure-Python package (Kaggle's image lacks it)
    dist/dataset/README.md

Everything is checked before anything is written, with the same rules as the official ``kaggle``
client plus a few of our own (placeholder owner, local absolute paths, secrets). Each problem is
one line naming the field, the problem and the fix; the exit status is then 2. Identical inputs
give byte-identical output. Standard library and PyYAML only, so building takes a fraction of a
second (no torch import).
"""
from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

__all__ = [
    "BuildError", "Bundle", "PLACEHOLDER_OWNER", "KNOWN_MACHINE_SHAPES", "KNOWN_LICENSES",
    "is_secret_name", "validate_kernel_metadata", "validate_dataset_metadata", "validate_config",
    "plan", "write", "push", "main",
]

PROJECT = Path(__file__).resolve().parent
PLACEHOLDER_OWNER = "YOUR_KAGGLE_USERNAME"

# Keys the official client reads from kernel-metadata.json; anything else it ignores.
KERNEL_KEYS = (
    "id", "id_no", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
    "enable_tpu", "enable_internet", "dataset_sources", "competition_sources", "kernel_sources",
    "model_sources", "keywords", "docker_image_pinning_type", "docker_image", "machine_shape",
)
SOURCE_KEYS = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources")
BOOL_KEYS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
# Defaults written when the template leaves a key out. The client's own defaults differ on purpose:
# it turns internet ON and the GPU OFF, and enable_gpu without machine_shape could land on a P100.
KERNEL_DEFAULTS: Dict[str, Any] = {
    "is_private": True, "enable_gpu": True, "enable_tpu": False, "enable_internet": False,
    "machine_shape": "NvidiaTeslaT4",
}
# machine_shape values Kaggle documents (kagglesdk docstrings, kaggle-cli docs).
GPU_SHAPES = ("NvidiaTeslaT4", "NvidiaL4", "NvidiaTeslaP100")
TPU_SHAPES = ("TpuV5E8", "Tpu1VmV38")
KNOWN_MACHINE_SHAPES = GPU_SHAPES + TPU_SHAPES
RETIRED_SHAPES = {"NvidiaTeslaP100": "NvidiaTeslaT4"}
# License names Kaggle accepts for datasets (kaggle-cli docs/datasets_metadata.md).
KNOWN_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OWNER = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
_USER_SPEC = re.compile(r"^(?P<path>[^:\s][^:]*):(?P<attr>[A-Za-z_]\w*)$")
# Files that hold credentials: never packed, and a config naming one is refused.
_SECRET_NAMES = {
    "kaggle.json", "access_token", "access_token.txt", "credentials.json", ".env", ".netrc",
    ".git-credentials", ".pypirc", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
}
_SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".env")
# A kaggle.json pasted into a module: {"username": "...", "key": "<32 hex>"}.
_LEAKED_KEY = re.compile(r"""["']key["']\s*:\s*["'][0-9a-f]{32}["']""")
# imgaug files besides *.py that the vendored copy needs (the font draws text on debug images).
_IMGAUG_DATA = ("DejaVuSans.ttf", "external/README.md")


class BuildError(Exception):
    """User errors: one line each, printed without a traceback; the exit status is 2."""

    def __init__(self, problems: Sequence[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def is_secret_name(name: str) -> bool:
    """True for file names that usually hold credentials (kaggle.json, .env, *.pem, access_token...)."""
    base = os.path.basename(name.rstrip("/")).lower()
    return (base in _SECRET_NAMES or base.startswith(".env.") or base.endswith(_SECRET_SUFFIXES)
            or base.startswith("id_rsa"))


def _slugify(text: str) -> str:
    """Kaggle's title -> slug rule, near enough for a warning: lowercase, runs of other chars -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --------------------------------------------------------------------------------------------
# Validation: every check appends one line ("<where>: <field>: <problem>; <fix>") to `problems`.
# --------------------------------------------------------------------------------------------

def _check_owner(where: str, key: str, owner: str, problems: List[str]) -> None:
    if owner == PLACEHOLDER_OWNER:
        problems.append(f"{where}: {key}: the owner is still the placeholder {PLACEHOLDER_OWNER!r}; "
                        f"put your Kaggle username there, or pass --owner NAME")
    elif not _OWNER.match(owner):
        problems.append(f"{where}: {key}: owner {owner!r} is not a Kaggle username (lowercase letters, digits, "
                        f"'-' or '_'); use your username as it appears in kaggle.com/<username>")


def _check_bool(where: str, meta: Dict[str, Any], key: str, problems: List[str]) -> None:
    if key not in meta:
        return
    value = meta[key]
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return
    why = "an integer makes the client raise TypeError" if isinstance(value, (int, float)) else "not a boolean"
    problems.append(f"{where}: {key}: {value!r} is {why}; write true or false")


def _check_string_list(where: str, meta: Dict[str, Any], key: str, problems: List[str]) -> List[str]:
    value = meta.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: {key}: must be a list of strings, got {value!r}; write e.g. [\"owner/slug\"]")
        return []
    return value


def _check_kernel_ref(where: str, key: str, ref: str, problems: List[str], *, allow_version: bool) -> None:
    """The client's kernel-string rules: owner/slug[/version], slug of 5+ characters."""
    parts = ref.split("/")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        form = "owner/kernel-slug or owner/kernel-slug/version" if allow_version else "owner/kernel-slug"
        problems.append(f"{where}: {key}: {ref!r} is not of the form {form}; fix the value")
        return
    if len(parts) == 3 and not allow_version:
        problems.append(f"{where}: {key}: {ref!r} must not contain a version; write {parts[0]}/{parts[1]}")
    if len(parts) == 3 and allow_version and not parts[2]:
        problems.append(f"{where}: {key}: {ref!r} has an empty version; drop the trailing '/' or add a number")
    if len(parts[1]) < 5:
        problems.append(f"{where}: {key}: kernel slug {parts[1]!r} is shorter than 5 characters; use a longer slug")


def validate_kernel_metadata(meta: Any, problems: List[str], where: str = "kernel-metadata.json") -> None:
    """Check a kernel-metadata.json mapping with the official client's rules, plus ours."""
    if not isinstance(meta, dict):
        problems.append(f"{where}: must be a JSON object with id, title, ...; see the template")
        return
    kid = meta.get("id")
    if not isinstance(kid, str) or not kid:
        problems.append(f"{where}: id: missing; write \"<your-username>/<kernel-slug>\" (id_no alone is not enough "
                        f"for build.py, which needs the slug for kernel_sources and the next-step commands)")
    else:
        before = len(problems)
        _check_kernel_ref(where, "id", kid, problems, allow_version=False)
        if len(problems) == before:
            owner, slug = kid.split("/")
            _check_owner(where, "id", owner, problems)
            if not _SLUG.match(slug):
                problems.append(f"{where}: id: slug {slug!r} must be lowercase letters, digits and single '-'; "
                                f"write {_slugify(slug) or 'my-kernel'!r}")
    title = meta.get("title")
    if title is None:
        problems.append(f"{where}: title: missing (a new kernel needs one); write a title that slugifies to the id")
    elif not isinstance(title, str) or len(title) < 5:
        problems.append(f"{where}: title: {title!r} is shorter than 5 characters; write a longer title")
    for key, want in (("language", "python"), ("kernel_type", "script"), ("code_file", "train.py")):
        if key in meta and meta[key] != want:
            problems.append(f"{where}: {key}: {meta[key]!r}, but build.py writes a Python script {want!r}; "
                            f"remove the key (build.py sets it)")
    for key in BOOL_KEYS:
        _check_bool(where, meta, key, problems)
    for key in ("dataset_sources",):
        for src in _check_string_list(where, meta, key, problems):
            parts = src.split("/")
            if "/" not in src or len(parts) > 3 or not parts[0] or not parts[1]:
                problems.append(f"{where}: {key}: {src!r} is not of the form owner/dataset-slug[/version]; fix it")
            elif len(parts) == 3 and not parts[2].isdigit():
                problems.append(f"{where}: {key}: {src!r}: the version must be a number; write "
                                f"{parts[0]}/{parts[1]} for the latest")
            elif parts[0] == PLACEHOLDER_OWNER:
                _check_owner(where, key, parts[0], problems)
    for src in _check_string_list(where, meta, "kernel_sources", problems):
        _check_kernel_ref(where, "kernel_sources", src, problems, allow_version=True)
    for src in _check_string_list(where, meta, "model_sources", problems):
        parts = src.split("/")
        if src.count("/") != 4 or not all(parts):
            problems.append(f"{where}: model_sources: {src!r} is not owner/model/framework/variation/version "
                            f"(exactly 4 slashes); copy the path from the model's page")
        elif not parts[4].isdigit():
            problems.append(f"{where}: model_sources: {src!r}: the version must be an integer; e.g. .../1")
    for src in _check_string_list(where, meta, "competition_sources", problems):
        if not src or "/" in src:
            problems.append(f"{where}: competition_sources: {src!r} is not a competition slug; write e.g. \"titanic\"")
    _check_string_list(where, meta, "keywords", problems)
    pin = meta.get("docker_image_pinning_type")
    if pin is not None and pin not in ("original", "latest"):
        problems.append(f"{where}: docker_image_pinning_type: {pin!r} is not 'original' or 'latest'; "
                        f"pick one or remove it")
    _check_machine(where, meta, problems)


def _as_bool(value: Any) -> Any:
    return value.lower() == "true" if isinstance(value, str) and value.lower() in ("true", "false") else value


def _check_machine(where: str, meta: Dict[str, Any], problems: List[str]) -> None:
    shape = meta.get("machine_shape")
    gpu, tpu = _as_bool(meta.get("enable_gpu")), _as_bool(meta.get("enable_tpu"))
    if shape in (None, ""):
        if gpu is True:
            problems.append(f"{where}: machine_shape: empty while enable_gpu is true, which can land on a retired "
                            f"P100; write \"NvidiaTeslaT4\"")
        return
    if not isinstance(shape, str) or shape not in KNOWN_MACHINE_SHAPES:
        hint = difflib.get_close_matches(str(shape), KNOWN_MACHINE_SHAPES, n=1)
        hint = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.append(f"{where}: machine_shape: {shape!r} is not a known Kaggle machine{hint}; use one of "
                        f"{', '.join(KNOWN_MACHINE_SHAPES)}, or \"\" for CPU")
        return
    if shape in GPU_SHAPES and gpu is False:
        problems.append(f"{where}: machine_shape: {shape!r} is a GPU but enable_gpu is false; set enable_gpu true "
                        f"or machine_shape \"\"")
    if shape in TPU_SHAPES and tpu is not True:
        problems.append(f"{where}: machine_shape: {shape!r} is a TPU but enable_tpu is not true; set enable_tpu true")
    if gpu is True and tpu is True:
        problems.append(f"{where}: enable_gpu and enable_tpu are both true; keep one")


def validate_dataset_metadata(meta: Any, problems: List[str], where: str = "dataset-metadata.json") -> None:
    """Check a dataset-metadata.json mapping with the client's ``datasets create`` rules, plus ours."""
    if not isinstance(meta, dict):
        problems.append(f"{where}: must be a JSON object with id, title and licenses; see the template")
        return
    did = meta.get("id")
    if not isinstance(did, str) or not did:
        problems.append(f"{where}: id: missing; write \"<your-username>/<dataset-slug>\"")
    else:
        parts = did.split("/")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            problems.append(f"{where}: id: {did!r} is not of the form owner/dataset-slug (no version); fix it")
        else:
            owner, slug = parts
            _check_owner(where, "id", owner, problems)
            if slug == "INSERT_SLUG_HERE":
                problems.append(f"{where}: id: the slug is the client's placeholder; write e.g. \"kernel-code\"")
            elif not 6 <= len(slug) <= 50:
                problems.append(f"{where}: id: slug {slug!r} has {len(slug)} characters; the client needs 6 to 50")
            elif not _SLUG.match(slug):
                problems.append(f"{where}: id: slug {slug!r} must be lowercase letters, digits and single '-'; "
                                f"write {_slugify(slug)!r}")
    title = meta.get("title")
    if not isinstance(title, str) or not title:
        problems.append(f"{where}: title: missing; write a title of 6 to 50 characters")
    elif title == "INSERT_TITLE_HERE":
        problems.append(f"{where}: title: the client's placeholder; write a title of 6 to 50 characters")
    elif not 6 <= len(title) <= 50:
        problems.append(f"{where}: title: {title!r} has {len(title)} characters; the client needs 6 to 50")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        problems.append(f"{where}: licenses: the client needs exactly one license; write [{{\"name\": \"other\"}}]")
    elif not isinstance(licenses[0], dict) or not isinstance(licenses[0].get("name"), str) or not licenses[0]["name"]:
        problems.append(f"{where}: licenses: the license has no name; write [{{\"name\": \"other\"}}]")
    elif licenses[0]["name"] not in KNOWN_LICENSES:
        name = licenses[0]["name"]
        hint = difflib.get_close_matches(name, KNOWN_LICENSES, n=1)
        hint = f"; did you mean {hint[0]!r}?" if hint else "; e.g. 'other' or 'apache-2.0'"
        problems.append(f"{where}: licenses: {name!r} is not a Kaggle license name{hint}")
    subtitle = meta.get("subtitle")
    if subtitle and (not isinstance(subtitle, str) or not 20 <= len(subtitle) <= 80):
        problems.append(f"{where}: subtitle: must be 20 to 80 characters; shorten, lengthen or remove it")
    if meta.get("resources"):
        problems.append(f"{where}: resources: not supported (build.py decides the files); remove the key")
    _check_string_list(where, meta, "keywords", problems)


def _option_names(package: Path) -> Optional[List[str]]:
    """The option names of ``kernel.options.Options``, read from its source (no import, no torch)."""
    path = package / "options.py"
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Options":
            return [n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    return None


def _walk_strings(value: Any, where: str) -> Iterator[Tuple[str, str]]:
    """Yield (option path, string) for every string (and mapping key) in a config value."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                yield where, k
            yield from _walk_strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, f"{where}[{i}]")


def _looks_absolute(text: str) -> bool:
    return text.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def validate_config(config: Dict[str, Any], package: Path, problems: List[str], where: str) -> None:
    """Option names, and paths that cannot exist on Kaggle (absolute local paths)."""
    names = _option_names(package)
    for key in config:
        name = str(key).replace("-", "_")
        if names is not None and (name not in names or name == "config"):
            hint = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {hint[0]!r}?)" if hint else ""
            problems.append(f"{where}: {key}: unknown option{hint}; see `python -m kernel.train --help`")
    for opt, text in _walk_strings(config, ""):
        spec = _USER_SPEC.match(text)
        if spec and spec.group("path").endswith(".py"):
            continue  # a user module: embedded, so its local path is fine (checked when collected)
        value = text.split("local-dir:", 1)[1] if text.startswith("local-dir:") else text
        if _looks_absolute(value) and not value.startswith("/kaggle/"):
            problems.append(f"{where}: {opt.lstrip('.')}: {text!r} is a local absolute path that cannot exist on "
                            f"Kaggle; give it relative to the attached dataset (e.g. 'my-data/train', found "
                            f"under /kaggle/input) or as /kaggle/input/...")


# --------------------------------------------------------------------------------------------
# Sources: the package, user modules named by the config, and their embedding.
# --------------------------------------------------------------------------------------------

@dataclass
class Module:
    """One embedded module: import name, traceback file name, package flag, source text."""

    name: str
    filename: str
    is_package: bool
    source: str


def package_modules(package: Path) -> List[Module]:
    """Every ``*.py`` of the package, sorted; caches, hidden files and non-Python files never go in."""
    modules: List[Module] = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts) or is_secret_name(path.name):
            continue
        parts = [package.name, *rel.with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        modules.append(Module(".".join(parts), f"{package.name}/{rel.as_posix()}", is_pkg,
                              path.read_text(encoding="utf-8")))
    if not any(m.name == package.name for m in modules):
        raise BuildError(f"{package}: not a package (no __init__.py); run build.py from the project checkout")
    return modules


def _module_ident(stem: str) -> str:
    ident = re.sub(r"\W", "_", stem)
    return ident if ident and not ident[0].isdigit() else "m_" + ident


def collect_user_modules(config: Dict[str, Any], roots: Sequence[Path], problems: List[str],
                         where: str) -> Tuple[Dict[str, Any], List[Module]]:
    """Find ``file.py:name`` specs in the config, embed those files as ``kernel_user.<stem>``.

    Returns the config with the specs rewritten to ``kernel_user.<stem>:name`` (importable through
    the embedded importer) and the modules. Secrets, files outside the project and non-Python
    files are refused: only the named modules leave the machine.
    """
    by_path: Dict[Path, Module] = {}
    taken = set()

    def resolve(opt: str, text: str) -> Optional[str]:
        m = _USER_SPEC.match(text)
        if not m or text.startswith(("http:", "https:", "local-dir:")):
            return None
        raw, attr = m.group("path"), m.group("attr")
        if is_secret_name(raw):
            problems.append(f"{where}: {opt}: {text!r} names a credentials file; it is never packed. Name a .py "
                            f"module instead (e.g. my_losses.py:focal)")
            return None
        candidates = [Path(raw)] if Path(raw).is_absolute() else [Path.cwd() / raw] + [r / raw for r in roots]
        found = next((c for c in candidates if c.is_file()), None)
        if not raw.endswith(".py"):
            if found is not None:
                problems.append(f"{where}: {opt}: {text!r} names a file that is not a Python module; only .py "
                                f"files can be embedded")
            return None  # package.module:name, imported as is (e.g. torch.nn:CrossEntropyLoss)
        if found is None:
            problems.append(f"{where}: {opt}: {raw!r} not found (looked in the working directory and "
                            f"{', '.join(str(r) for r in roots)}); fix the path")
            return None
        real = found.resolve()
        inside = [r for r in roots if real.is_relative_to(r.resolve())]
        if not inside:
            problems.append(f"{where}: {opt}: {raw!r} is outside the project ({', '.join(str(r) for r in roots)}); "
                            f"move it next to the config or into the project")
            return None
        rel_parts = real.relative_to(inside[0].resolve()).parts
        if any(p.startswith(".") for p in rel_parts) or any(is_secret_name(p) for p in rel_parts):
            problems.append(f"{where}: {opt}: {raw!r} is in a hidden folder; move it to a visible one")
            return None
        module = by_path.get(real)
        if module is None:
            ident, n = _module_ident(real.stem), 2
            base = ident
            while ident in taken:
                ident, n = f"{base}_{n}", n + 1
            taken.add(ident)
            source = real.read_text(encoding="utf-8")
            module = Module(f"kernel_user.{ident}", f"kernel_user/{ident}.py", False, source)
            by_path[real] = module
            _warn_local_imports(real, source)
        return f"{module.name}:{attr}"

    def rewrite(value: Any, opt: str) -> Any:
        if isinstance(value, str):
            return resolve(opt, value) or value
        if isinstance(value, dict):
            return {(rewrite(k, opt) if isinstance(k, str) else k): rewrite(v, f"{opt}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v, f"{opt}[{i}]") for i, v in enumerate(value)]
        return value

    out = {k: rewrite(v, str(k)) for k, v in config.items()}
    modules = list(by_path.values())
    if modules:
        modules.insert(0, Module("kernel_user", "kernel_user/__init__.py", True, ""))
    return out, modules


def _warn_local_imports(path: Path, source: str) -> None:
    """Warn when a user module imports a sibling .py file: only the named module is embedded."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise BuildError(f"{path}: line {e.lineno}: syntax error ({e.msg}); fix the module") from None
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            top = name.split(".")[0]
            if (path.parent / f"{top}.py").is_file() or (path.parent / top / "__init__.py").is_file():
                print(f"build.py: warning: {path.name} imports {top!r}, a local module that is not packed "
                      f"(only the files the config names are); merge what it needs into {path.name}",
                      file=sys.stderr)


def sources_sha256(modules: Sequence[Module]) -> str:
    """sha256 over (file name, source) of every embedded module, sorted by module name."""
    h = hashlib.sha256()
    for m in sorted(modules, key=lambda m: m.name):
        h.update(m.filename.encode() + b"\0" + m.source.encode("utf-8") + b"\0")
    return h.hexdigest()


def py_literal(text: str, prefer: str = "'''") -> str:
    """A readable Python literal for ``text``: a raw triple-quoted string when that round-trips.

    Falls back to an escaped triple-quoted string (still one source line per line) for text that
    contains both quote styles, control characters or a trailing backslash.
    """
    order = (prefer, '"""' if prefer == "'''" else "'''")
    clean = not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text)
    for q in order:
        if clean and q not in text and not text.endswith((q[0], "\\")):
            lit = f"r{q}{text}{q}"
            if ast.literal_eval(lit) == text:
                return lit
    esc = text.replace("\\", "\\\\").replace("'''", "\\'\\'\\'")
    esc = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", esc)
    if esc.endswith("'"):
        esc = esc[:-1] + "\\'"
    lit = f"'''{esc}'''"
    if ast.literal_eval(lit) != text:  # cannot happen; guards the escaping above
        raise BuildError("internal: could not encode a module as a string literal")
    return lit


# --------------------------------------------------------------------------------------------
# The packed script. The bootstrap below is copied verbatim into dist/kernel/train.py.
# --------------------------------------------------------------------------------------------

_HEADER = '''\
#!/usr/bin/env python3
"""Fine-tuning kernel: kernel {version}, packed by build.py into one self-contained file.

Kaggle runs this file with no arguments, so the run config below is what it trains.
Anywhere else, command-line flags override it:  python train.py --epochs 3 --amp
All options:  python train.py --help

The bundle's modules ({count}) are embedded below as readable source and served by an import
hook, so tracebacks name kernel/<module>.py with its real line numbers; search for
"# ==== kernel/" to read one. Nothing is unpacked to disk.
Sources sha256: {sha}
"""

# Run config: the same keys as a --config YAML file. Edit it here (e.g. in Kaggle's editor);
# command-line flags still override it.
CONFIG = {config}

BUNDLE_VERSION = {version!r}
BUNDLE_SHA256 = {sha!r}
CODE_DATASET = {dataset!r}  # the Kaggle dataset that carries vendor/imgaug
'''

_BOOTSTRAP = r'''
# ---------------------------------------------------------------------------------------------
# Bootstrap: an import hook for the embedded modules, and imgaug from the code dataset.
# ---------------------------------------------------------------------------------------------
import hashlib
import importlib
import importlib.abc
import importlib.util
import linecache
import os
import sys

_SOURCES = {}  # module name -> (file name shown in tracebacks, is a package, source text)
_TOPS = ("kernel", "kernel_user")


def _add(name, filename, is_package, source):
    _SOURCES[name] = (filename, is_package, source)


class _EmbeddedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader for the modules embedded in this file (first on sys.meta_path)."""

    _kernel_packed = True  # lets a re-run of this file find and replace an older hook

    def find_spec(self, fullname, path=None, target=None):
        entry = _SOURCES.get(fullname)
        if entry is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=entry[0], is_package=entry[1])
        spec.has_location = True  # __file__ = "kernel/<module>.py", the name tracebacks show
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)

    def is_package(self, fullname):
        return _SOURCES[fullname][1]

    def get_source(self, fullname):
        return _SOURCES[fullname][2]

    def get_code(self, fullname):
        filename, _, source = _SOURCES[fullname]
        return compile(source, filename, "exec", dont_inherit=True)


def _install():
    """Put the hook first on sys.meta_path, so an installed or dataset `kernel` never shadows ours."""
    for name in [n for n in sys.modules if n.split(".")[0] in _TOPS]:
        del sys.modules[name]  # e.g. `kernel` imported from the code dataset earlier in a notebook
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_kernel_packed", False)]
    sys.meta_path.insert(0, _EmbeddedModules())
    for filename, _, source in _SOURCES.values():
        # mtime None: linecache.checkcache keeps the entry, so tracebacks show these lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _sources_sha256():
    h = hashlib.sha256()
    for name in sorted(_SOURCES):
        filename, _, source = _SOURCES[name]
        h.update(filename.encode() + b"\0" + source.encode("utf-8") + b"\0")
    return h.hexdigest()


def _vendor_imgaug():
    """When imgaug is not installed (Kaggle's and Colab's images lack it), use the code dataset's copy.

    Only the folder is put on sys.path; kernel.imgaug_compat imports and patches it later.
    Returns the folder used, or None.
    """
    try:
        if importlib.util.find_spec("imgaug") is not None:
            return None
    except (ImportError, ValueError):
        pass
    root = os.environ.get("KERNEL_KAGGLE_INPUT", "/kaggle/input")
    owner, _, slug = CODE_DATASET.partition("/")
    candidates = [os.path.join(root, slug, "vendor"), os.path.join(root, "datasets", owner, slug, "vendor")]
    try:  # any other mount, in both layouts
        from kernel.platform import find_in_inputs
        found = find_in_inputs("vendor/imgaug/__init__.py")
        if found is not None:
            candidates.append(str(found.parent.parent))
    except Exception as e:  # the search is a convenience; say why it failed and go on
        print(f"imgaug: searching the inputs failed ({type(e).__name__}: {e})", flush=True)
    for vendor in candidates:
        if os.path.isfile(os.path.join(vendor, "imgaug", "__init__.py")):
            sys.dont_write_bytecode = True  # never write __pycache__ into the (read-only) inputs
            sys.path.append(vendor)
            importlib.invalidate_caches()
            print(f"imgaug: not installed; using the vendored copy in {vendor}", flush=True)
            return vendor
    if os.path.isdir(root):
        print(f"imgaug: not installed and no vendor/imgaug under {root}; attach the dataset "
              f"{CODE_DATASET} for the imgaug backend", flush=True)
    return None


def _excepthook(etype, value, tb):
    """Print uncaught errors with the traceback module: it reads the embedded lines from linecache
    (the interpreter's built-in printer opens files by name and would show no or wrong lines)."""
    import traceback

    traceback.print_exception(etype, value, tb)


def _main():
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    sha = _sources_sha256()
    state = "as built" if sha == BUNDLE_SHA256 else f"EDITED since the build of {BUNDLE_SHA256[:12]}"
    print(f"kernel {BUNDLE_VERSION} (packed train.py; sources sha256 {sha}, {state})", flush=True)
    import yaml

    try:
        baked = yaml.safe_load(CONFIG) or {}
    except yaml.YAMLError as e:
        print(f"train.py: the CONFIG block at the top is not valid YAML: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 2
    if not isinstance(baked, dict):
        print("train.py: the CONFIG block at the top must be a mapping of option: value", file=sys.stderr)
        return 2
    _vendor_imgaug()
    from kernel.train import main

    # Pasted into a notebook cell, sys.argv belongs to Jupyter (`-f kernel.json`): use no flags.
    argv = [] if "ipykernel" in sys.modules else None
    return main(argv, baked)
'''

_FOOTER = '''

_install()

if __name__ == "__main__":
    sys.exit(_main())
'''


def render_script(modules: Sequence[Module], config: Dict[str, Any], version: str, dataset_id: str) -> str:
    """The text of dist/kernel/train.py."""
    sha = sources_sha256(modules)
    config_text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    if not config:
        config_text = "# (empty: the defaults of `python train.py --help`)\n"
    parts = [_HEADER.format(version=version, count=len(modules), sha=sha, dataset=dataset_id,
                            config=py_literal("\n" + config_text, prefer='"""')), _BOOTSTRAP]
    for m in sorted(modules, key=lambda m: m.name):
        parts.append(f"\n\n# ==== {m.filename} {'=' * max(4, 90 - len(m.filename))}\n"
                     f"_add({m.name!r}, {m.filename!r}, {m.is_package!r}, {py_literal(m.source)})\n")
    parts.append(_FOOTER)
    text = "".join(parts)
    _verify_script(text, modules)
    return text


def _verify_script(text: str, modules: Sequence[Module]) -> None:
    """Parse the generated script and check every embedded source round-trips exactly."""
    tree = ast.parse(text, "train.py")
    seen = {}
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_add":
            seen[call.args[0].value] = call.args[3].value
    for m in modules:
        if seen.get(m.name) != m.source:
            raise BuildError(f"internal: module {m.filename} does not round-trip through the packed script")


# --------------------------------------------------------------------------------------------
# Planning (everything validated, nothing written) and writing.
# --------------------------------------------------------------------------------------------

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
    vendored_imgaug: bool = False
    imgaug_version: str = ""
    warnings: List[str] = field(default_factory=list)


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
    """The run config (YAML or JSON) as a dict; {} without --config."""
    if path is None:
        return {}
    if is_secret_name(path.name):
        raise BuildError(f"--config {path}: names a credentials file; give the run's YAML config")
    # The same reader as `python -m kernel.train --config` (kernel.options imports no torch).
    from kernel.options import load_config_file
    from kernel.registry import ConfigError

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


def _imgaug_files() -> Tuple[Dict[str, bytes], str, Optional[str]]:
    """imgaug's pure-Python package from site-packages: *.py, the font, and its license. No caches.

    Returns (files under vendor/, imgaug's version, a warning or None).
    """
    import importlib.util

    spec = importlib.util.find_spec("imgaug")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}, "", "imgaug is not installed here, so dist/dataset has no vendor/imgaug (pip install imgaug)"
    pkg = Path(list(spec.submodule_search_locations)[0])
    files: Dict[str, bytes] = {}
    for path in sorted(pkg.rglob("*")):
        rel = path.relative_to(pkg).as_posix()
        if not path.is_file() or "__pycache__" in rel or path.name.startswith("."):
            continue
        if path.suffix == ".py" or rel in _IMGAUG_DATA:
            files[f"vendor/imgaug/{rel}"] = path.read_bytes()
    version = ""
    for dist in sorted(pkg.parent.glob("imgaug-*.dist-info")):
        version = dist.name[len("imgaug-"):-len(".dist-info")]
        if (dist / "LICENSE").is_file():
            files["vendor/imgaug/LICENSE"] = (dist / "LICENSE").read_bytes()
    return files, version, None


def _read_version(package: Path) -> str:
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    return "0+unknown"


def _json_bytes(data: Dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def plan(config_path: Optional[Path] = None, *, project: Path = PROJECT, owner: Optional[str] = None,
         vendor_imgaug: bool = True) -> Bundle:
    """Read the templates and config, validate everything, and compute every output file."""
    package = project / "kernel"
    problems: List[str] = []
    bundle = Bundle()
    kmeta_t = _read_json(project / "kernel-metadata.json", "kernel metadata")
    dmeta_t = _read_json(project / "dataset-metadata.json", "dataset metadata")
    config = read_config(config_path)
    cfg_where = f"config {config_path.name}" if config_path else "config"

    # A `kaggle:` section in the config overrides/extends the kernel template (it is not a run option).
    section = config.pop("kaggle", None) or {}
    if not isinstance(section, dict):
        raise BuildError(f"{cfg_where}: kaggle: must be a mapping of kernel-metadata fields (e.g. dataset_sources)")
    for key in section:
        if key not in KERNEL_KEYS:
            hint = difflib.get_close_matches(str(key), KERNEL_KEYS, n=1)
            problems.append(f"{cfg_where}: kaggle.{key}: not a kernel-metadata field"
                            f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; see kernel-metadata.json")
    kmeta = {k: v for k, v in kmeta_t.items()}
    for key, value in section.items():
        if key in SOURCE_KEYS and isinstance(value, list) and isinstance(kmeta.get(key, []), list):
            kmeta[key] = list(kmeta.get(key) or []) + value
        else:
            kmeta[key] = value
    dmeta = dict(dmeta_t)
    if owner:
        for meta in (kmeta, dmeta):
            if isinstance(meta.get("id"), str):
                meta["id"] = "/".join([owner, *meta["id"].split("/")[1:]])
        for key in SOURCE_KEYS:
            if isinstance(kmeta.get(key), list):
                kmeta[key] = [_set_owner(s, owner) if isinstance(s, str) else s for s in kmeta[key]]
    for key, value in KERNEL_DEFAULTS.items():
        kmeta.setdefault(key, value)

    kwhere = "kernel-metadata.json" + (f" (with {cfg_where} kaggle:)" if section else "")
    validate_kernel_metadata(kmeta, problems, kwhere)
    validate_dataset_metadata(dmeta, problems)
    validate_config(config, package, problems, cfg_where)
    roots = [project] + ([config_path.resolve().parent] if config_path else [])
    config, user_modules = collect_user_modules(config, roots, problems, cfg_where)
    if str(config.get("pretrained", "")).lower() == "hub" and _as_bool(kmeta.get("enable_internet")) is not True:
        problems.append(f"{cfg_where}: pretrained: 'hub' downloads weights, but enable_internet is false; attach "
                        f"the weights as a dataset/model source and give the file path, or set enable_internet true")
    if problems:
        raise BuildError(problems)

    if isinstance(kmeta.get("title"), str) and _slugify(kmeta["title"]) != kmeta["id"].split("/")[1]:
        bundle.warnings.append(f"kernel-metadata.json: title {kmeta['title']!r} does not slugify to the id's slug "
                               f"{kmeta['id'].split('/')[1]!r}; Kaggle may pick a different URL")
    if kmeta.get("machine_shape") in RETIRED_SHAPES:
        bundle.warnings.append(f"kernel-metadata.json: machine_shape {kmeta['machine_shape']!r} is retired (it runs "
                               f"on a T4); write {RETIRED_SHAPES[kmeta['machine_shape']]!r}")

    pkg_modules = package_modules(package)
    modules = pkg_modules + user_modules
    for m in modules:
        if _LEAKED_KEY.search(m.source):
            raise BuildError(f"{m.filename}: contains what looks like a Kaggle API key; remove it (credentials "
                             f"belong in ~/.kaggle, never in code)")
    bundle.kernel_id, bundle.dataset_id = kmeta["id"], dmeta["id"]
    bundle.version, bundle.sha256, bundle.module_count = _read_version(package), sources_sha256(modules), len(modules)

    # kernel-metadata.json: fixed key order; booleans normalised to JSON booleans.
    own = [bundle.kernel_id] if str(config.get("resume", "")).strip().lower() == "auto" else []
    out_meta: Dict[str, Any] = {
        "id": kmeta["id"], "title": kmeta["title"], "code_file": "train.py", "language": "python",
        "kernel_type": "script",
        **{k: _as_bool(kmeta[k]) for k in BOOL_KEYS},
        "machine_shape": kmeta.get("machine_shape") or "",
        "dataset_sources": _merge_sources([bundle.dataset_id], kmeta.get("dataset_sources") or []),
        "competition_sources": _merge_sources(kmeta.get("competition_sources") or []),
        "kernel_sources": _merge_sources(kmeta.get("kernel_sources") or [], own),
        "model_sources": _merge_sources(kmeta.get("model_sources") or []),
    }
    for key in ("id_no", "keywords", "docker_image_pinning_type", "docker_image"):
        if kmeta.get(key):
            out_meta[key] = kmeta[key]
    for key in sorted(set(kmeta) - set(KERNEL_KEYS)):
        bundle.warnings.append(f"kernel-metadata.json: {key}: not a field the kaggle client reads; it is dropped")
    script = render_script(modules, config, bundle.version, bundle.dataset_id).encode("utf-8")
    bundle.script_bytes = len(script)
    bundle.files["kernel/train.py"] = script
    bundle.files["kernel/kernel-metadata.json"] = _json_bytes(out_meta)

    # The code dataset: metadata, the package (no user modules, no caches), vendored imgaug, README.
    bundle.files["dataset/dataset-metadata.json"] = _json_bytes(dmeta)
    for m in pkg_modules:
        bundle.files[f"dataset/{m.filename}"] = m.source.encode("utf-8")
    if vendor_imgaug:
        vendored, bundle.imgaug_version, warning = _imgaug_files()
        bundle.files.update({f"dataset/{k}": v for k, v in vendored.items()})
        bundle.vendored_imgaug = bool(vendored)
        if warning:
            bundle.warnings.append(warning)
    bundle.files["dataset/README.md"] = _dataset_readme(bundle).encode("utf-8")
    leaked = [p for p in bundle.files if any(is_secret_name(part) for part in p.split("/"))]
    if leaked:  # defence in depth: nothing above can add one, and this keeps it that way
        raise BuildError(f"refusing to write credentials-like files: {', '.join(leaked)}")
    return bundle


def _dataset_readme(b: Bundle) -> str:
    owner, slug = b.dataset_id.split("/")
    vendor = (f"- `vendor/imgaug/`: imgaug {b.imgaug_version} (MIT, see its LICENSE), which Kaggle's image "
              "lacks; `kernel.imgaug_compat` patches it for NumPy 2 at import.\n") if b.vendored_imgaug else ""
    return f"""# kernel {b.version}: code bundle

Code dataset for the `kernel` fine-tuning bundle, built by `build.py` together with the kernel's
`train.py` (whose embedded sources have sha256 `{b.sha256}`).

- `kernel/`: the Python package.
{vendor}
The pushed kernel ({b.kernel_id}) embeds its own copy of the code and only uses this dataset for
imgaug. To use the package from a Kaggle notebook instead:

```python
import glob, sys
root = (glob.glob("/kaggle/input/{slug}") + glob.glob("/kaggle/input/datasets/{owner}/{slug}"))[0]
sys.path.append(root)            # the package
sys.path.append(root + "/vendor")  # imgaug, when not installed
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
    for sub, marker in (("kernel", "kernel-metadata.json"), ("dataset", "dataset-metadata.json")):
        d = out / sub
        if d.exists() and any(d.iterdir()) and not (d / marker).is_file():
            raise BuildError(f"--out {out}: {d} exists and was not written by build.py (no {marker}); "
                             f"remove it or pick another --out")


def write(bundle: Bundle, out: Path, project: Path = PROJECT) -> None:
    """Replace out/kernel and out/dataset with the bundle's files (stale files do not survive)."""
    _check_out_dir(out, project)
    for sub in ("kernel", "dataset"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for rel in sorted(bundle.files):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bundle.files[rel])


# --------------------------------------------------------------------------------------------
# Next steps and --push.
# --------------------------------------------------------------------------------------------

def _q(path: Path | str) -> str:
    text = str(path)
    return text if re.fullmatch(r"[\w./-]+", text) else "'" + text.replace("'", "'\\''") + "'"


def next_steps(bundle: Bundle, out: Path) -> List[str]:
    """The kaggle CLI commands that upload and run this build, in order."""
    msg = f"kernel {bundle.version} {bundle.sha256[:12]}"
    slug = bundle.kernel_id.split("/")[1]
    return [
        f"kaggle datasets create -p {_q(out / 'dataset')} --dir-mode zip        # first time only",
        f"kaggle datasets version -p {_q(out / 'dataset')} --dir-mode zip -m \"{msg}\"   # afterwards",
        f"kaggle kernels push -p {_q(out / 'kernel')}",
        f"kaggle kernels status {bundle.kernel_id}",
        f"kaggle kernels output {bundle.kernel_id} -p {_q(Path('outputs') / slug)}",
    ]


def _kaggle_cli() -> Optional[List[str]]:
    """The kaggle command: $KERNEL_KAGGLE_CLI, `kaggle` on PATH, or `python -m kaggle`."""
    override = os.environ.get("KERNEL_KAGGLE_CLI")
    if override:
        return [override]
    exe = shutil.which("kaggle")
    if exe:
        return [exe]
    import importlib.util

    if importlib.util.find_spec("kaggle") is not None:
        return [sys.executable, "-m", "kaggle"]
    return None


def _have_credentials() -> bool:
    """Whether any credential the kaggle CLI reads is present (checks existence only, reads nothing)."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    home = Path(os.path.expanduser("~"))
    dirs = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    dirs += [home / ".kaggle", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    names = ("kaggle.json", "access_token", "access_token.txt", "credentials.json")
    return any((d / n).is_file() for d in dirs for n in names)


def push(bundle: Bundle, out: Path, message: Optional[str] = None, wait_s: float = 600.0,
         run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    """Upload the code dataset (create or new version), wait until it is ready, push the kernel."""
    cli = _kaggle_cli()
    if cli is None:
        raise BuildError("--push: the kaggle CLI is not installed; `pip install kaggle`, or run the printed "
                         "commands yourself")
    if not _have_credentials():
        raise BuildError("--push: no Kaggle credentials; create a token at https://www.kaggle.com/settings/api and "
                         "set KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token), or run `kaggle auth login`")

    def kaggle(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        print("$ kaggle " + " ".join(_q(a) for a in args), flush=True)
        proc = run([*cli, *args], capture_output=True, text=True)
        text = (proc.stdout or "") + (proc.stderr or "")
        if text.strip():
            print(text.rstrip(), flush=True)
        failed = proc.returncode != 0 or re.search(r"(push|creation|version) error", text, re.I)
        if check and failed:
            raise BuildError(f"--push: `kaggle {' '.join(args)}` failed (exit {proc.returncode}); see its output "
                             f"above")
        return proc

    ds = str(out / "dataset")
    exists = kaggle("datasets", "status", bundle.dataset_id, check=False).returncode == 0
    if exists:
        kaggle("datasets", "version", "-p", ds, "--dir-mode", "zip", "-m",
               message or f"kernel {bundle.version} {bundle.sha256[:12]}")
    else:
        kaggle("datasets", "create", "-p", ds, "--dir-mode", "zip")
    deadline = time.monotonic() + wait_s
    while True:  # the kernel must not start before the new dataset version is unpacked
        status = kaggle("datasets", "status", bundle.dataset_id, check=False)
        if "ready" in (status.stdout or "").lower():
            break
        if "error" in (status.stdout or "").lower() or time.monotonic() > deadline:
            raise BuildError(f"--push: dataset {bundle.dataset_id} is not ready ({(status.stdout or '').strip()}); "
                             f"check it on kaggle.com, then run `kaggle kernels push -p {out / 'kernel'}`")
        time.sleep(10)
    kaggle("kernels", "push", "-p", str(out / "kernel"))
    print(f"Pushed. Follow it with:\n  kaggle kernels status {bundle.kernel_id}\n  "
          f"kaggle kernels output {bundle.kernel_id} -p {_q(Path('outputs') / bundle.kernel_id.split('/')[1])}")
    return 0


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python build.py", description="Pack the bundle into a Kaggle code dataset and a one-file kernel.")
    p.add_argument("--config", type=Path, help="run config (YAML/JSON) to bake into train.py; "
                   "an optional `kaggle:` section adds kernel-metadata fields such as dataset_sources")
    p.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    p.add_argument("--owner", help="your Kaggle username: replaces the owner in both ids (instead of editing "
                   "the templates)")
    p.add_argument("--push", action="store_true", help="then upload the dataset and push the kernel with the "
                   "kaggle CLI")
    p.add_argument("-m", "--message", help="dataset version message for --push")
    p.add_argument("--no-vendor", action="store_true", help="do not vendor imgaug into the dataset")
    return p


def main(argv: Optional[Sequence[str]] = None, project: Path = PROJECT) -> int:
    """Build (and optionally push); user errors print one line each and return 2."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        bundle = plan(args.config, project=project, owner=args.owner, vendor_imgaug=not args.no_vendor)
        write(bundle, args.out, project)
    except BuildError as e:
        for line in e.problems:
            print(f"build.py: error: {line}", file=sys.stderr)
        return 2
    for w in bundle.warnings:
        print(f"build.py: warning: {w}", file=sys.stderr)
    elapsed = time.perf_counter() - start
    print(f"Built kernel {bundle.version} in {elapsed:.2f} s (sources sha256 {bundle.sha256[:12]}):\n"
          f"  {args.out / 'kernel' / 'train.py'}  {bundle.script_bytes / 1024:.0f} KB, {bundle.module_count} "
          f"embedded modules; kernel {bundle.kernel_id}\n"
          f"  {args.out / 'dataset'}  code dataset {bundle.dataset_id}"
          f"{' (with vendor/imgaug)' if bundle.vendored_imgaug else ''}")
    if not args.push:
        print("Next steps:\n  " + "\n  ".join(next_steps(bundle, args.out)))
        return 0
    try:
        return push(bundle, args.out, args.message)
    except BuildError as e:
        for line in e.problems:
            print(f"build.py: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
