"""The run config as build.py sees it: option checks, paths that cannot exist on Kaggle, credentials,
and the user modules (``file.py:name``) it names, which get embedded into the packed script.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..config import check_infer_config, check_predict_spec, check_values
from ..errors import ConfigError
from .metadata import BuildError, is_secret_name
from .script import Module

__all__ = ["validate_config", "validate_inference_config", "inference_id", "collect_user_modules"]

_USER_SPEC = re.compile(r"^(?P<path>[^:\s][^:]*):(?P<attr>[A-Za-z_]\w*)$")


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


def validate_config(config: Dict[str, Any], problems: List[str], where: str) -> None:
    """Names and types (with :mod:`kernel.config`), the ``predict:`` section, credentials files named
    anywhere, and paths that cannot exist on Kaggle (absolute local paths).

    Choices that come from registries (scheduler names...) are checked when the kernel starts: checking
    them here would import torch and make every build take seconds.
    """
    for key, value in config.items():
        try:
            check_values({key: value}, where, choices=False)
            if str(key).replace("-", "_") == "predict" and value not in (None, False):
                check_predict_spec(value)
        except ConfigError as e:
            problems.append(str(e))
    for opt, text in _walk_strings(config, ""):
        name = text.split(":", 1)[0] if _USER_SPEC.match(text) else text
        if is_secret_name(name):
            problems.append(f"{where}: {opt.lstrip('.')}: {text!r} names a credentials file; it is never packed "
                            "and must not be read by a kernel. Remove it from the config")
            continue
        spec = _USER_SPEC.match(text)
        if spec and spec.group("path").endswith(".py"):
            continue  # a user module: embedded, so its local path is fine (checked when collected)
        value = text.split("local-dir:", 1)[1] if text.startswith("local-dir:") else text
        if _looks_absolute(value) and not value.startswith("/kaggle/"):
            problems.append(f"{where}: {opt.lstrip('.')}: {text!r} is a local absolute path that cannot exist on "
                            f"Kaggle; give it relative to the attached dataset (e.g. 'my-data/train', found "
                            f"under /kaggle/input) or as /kaggle/input/...")


def inference_id(template_id: str, section: Dict[str, Any]) -> str:
    """The inference kernel's id: the config's ``kaggle: {id: ...}``, else the template's with ``-infer`` appended
    (pushing to the training kernel's id would add a version to the training kernel)."""
    given = section.get("id")
    return given if isinstance(given, str) and given else f"{template_id}-infer"


def _source_names(kmeta: Dict[str, Any], code_dataset: str) -> List[str]:
    """The slugs a checkpoint path can start with: each kernel's and dataset's slug, each model's name."""
    names: List[str] = []
    for key in ("kernel_sources", "model_sources", "dataset_sources"):
        for ref in kmeta.get(key) or []:
            parts = str(ref).split("/")
            if len(parts) >= 2 and ref != code_dataset:
                names.append(parts[1])
    return names


def validate_inference_config(config: Dict[str, Any], kmeta: Dict[str, Any], code_dataset: str,
                              problems: List[str], where: str) -> Dict[str, Any]:
    """The inference config's schema, and what a code competition needs: internet off, a competition attached,
    and a trained run (``checkpoint:``) inside one of the attached sources. Returns the config to bake, with
    ``competition`` from the first competition source unless given."""
    try:
        baked = check_infer_config(config, where)
    except ConfigError as e:
        problems.append(str(e))
        return {}
    if kmeta.get("enable_internet") in (True, "true", "True"):
        problems.append(f"{where}: kaggle: enable_internet is true, but code competitions run their kernels "
                        "offline and refuse one with internet on; set enable_internet: false")
    comps = [c for c in kmeta.get("competition_sources") or [] if isinstance(c, str) and c]
    if not comps:
        problems.append(f"{where}: kaggle: no competition_sources; an inference kernel reads the competition's test "
                        "images: add competition_sources: [<competition-slug>]")
    checkpoint = str(baked.get("checkpoint") or "")
    names = _source_names(kmeta, code_dataset)
    if not checkpoint:
        problems.append(f"{where}: checkpoint: missing; name the trained run inside an attached source, e.g. "
                        "checkpoint: kernel-train/exp (kaggle: kernel_sources: [<you>/kernel-train])")
    elif not set(Path(checkpoint).parts) & set(names):
        attached = ", ".join(names) or "none"
        problems.append(f"{where}: checkpoint: {checkpoint!r} is in none of the attached sources (attached: "
                        f"{attached}); attach the training kernel (kaggle: kernel_sources: [<you>/<kernel-slug>]) or "
                        "the Kaggle Model (model_sources: [<you>/<model>/pyTorch/<variation>/<version>]) and start "
                        "the path with its slug")
    if comps and not baked.get("competition"):
        baked["competition"] = comps[0]
    return baked


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
            return None  # validate_config reported it
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
