"""The packed script: the package's modules as readable source, the header, the bootstrap, the footer.

``dist/kernel/train.py`` = header (baked config, version, sha256) + :mod:`kernel.packer.bootstrap`
(copied as text) + one ``_add(name, file, is_package, source)`` per module + a footer that installs
the import hook and calls ``_main``. Every embedded source is checked to round-trip exactly.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from .bootstrap import _sources_sha256
from .metadata import BuildError, is_secret_name

__all__ = ["Module", "ENTRIES", "package_modules", "sources_sha256", "py_literal", "render_script", "NOT_EMBEDDED"]

NOT_EMBEDDED = ("packer",)  # subpackages of kernel/ that only build.py uses: not needed in the kernel


@dataclass
class Module:
    """One embedded module: import name, traceback file name, package flag, source text."""

    name: str
    filename: str
    is_package: bool
    source: str


def package_modules(package: Path, skip: Sequence[str] = ()) -> List[Module]:
    """Every ``*.py`` of the package, sorted; caches, hidden files, non-Python files and the top-level
    subpackages named in ``skip`` never go in."""
    modules: List[Module] = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts) or is_secret_name(path.name) \
                or rel.parts[0] in skip:
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


def sources_sha256(modules: Sequence[Module]) -> str:
    """sha256 over (file name, source) of every embedded module, sorted by module name (the packed
    script recomputes it at start with the same function)."""
    return _sources_sha256({m.name: (m.filename, m.is_package, m.source) for m in modules})


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





_HEADER = '''\
#!/usr/bin/env python3
"""{what}: kernel {version}, packed by build.py into one self-contained file.

Kaggle runs this file with no arguments, so the {config_is} below is what it {does}.
Anywhere else, command-line flags override it:  python {file} {example}
All options:  python {file} --help

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
CODE_DATASET = {dataset!r}  # the Kaggle dataset whose vendor/ holds the packages Kaggle's image lacks
ENTRY = {entry!r}  # the module whose main(argv, config) runs
'''

_BOOTSTRAP_TITLE = """
# ---------------------------------------------------------------------------------------------
# Bootstrap (kernel/packer/bootstrap.py): an import hook for the embedded modules, vendored packages.
# ---------------------------------------------------------------------------------------------
"""

_FOOTER = '''

_install()

if __name__ == "__main__":
    sys.exit(_main(CONFIG, BUNDLE_VERSION, BUNDLE_SHA256, CODE_DATASET, ENTRY))
'''


# What the packed script runs: its entry module, file name, and the header's words.
ENTRIES = {
    "kernel.train": dict(what="Fine-tuning kernel", config_is="run config", does="trains", file="train.py",
                         example="--epochs 3 --amp"),
    "kernel.infer": dict(what="Inference kernel (code competitions)", config_is="inference config",
                         does="predicts into /kaggle/working/submission.csv", file="infer.py",
                         example="--checkpoint RUN --competition SLUG"),
}


def render_script(modules: Sequence[Module], config: Dict[str, Any], version: str, dataset_id: str,
                  entry: str = "kernel.train") -> str:
    """The text of dist/kernel/train.py (``entry`` kernel.infer: dist/inference/infer.py)."""
    sha = sources_sha256(modules)
    config_text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    if not config:
        config_text = "# (empty: the defaults of `python train.py --help`)\n"
    bootstrap = (Path(__file__).parent / "bootstrap.py").read_text(encoding="utf-8")
    parts = [_HEADER.format(version=version, count=len(modules), sha=sha, dataset=dataset_id, entry=entry,
                            config=py_literal("\n" + config_text, prefer='"""'), **ENTRIES[entry]),
             _BOOTSTRAP_TITLE, bootstrap]
    for m in sorted(modules, key=lambda m: m.name):
        parts.append(f"\n\n# ==== {m.filename} {'=' * max(4, 90 - len(m.filename))}\n"
                     f"_add({m.name!r}, {m.filename!r}, {m.is_package!r}, {py_literal(m.source)})\n")
    parts.append(_FOOTER)
    text = "".join(parts)
    _verify_script(text, modules)
    return text


def _verify_script(text: str, modules: Sequence[Module]) -> None:
    """Parse the generated script and check every embedded source round-trips exactly."""
    tree = ast.parse(text, "packed script")
    seen = {}
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_add":
            seen[call.args[0].value] = call.args[3].value
    for m in modules:
        if seen.get(m.name) != m.source:
            raise BuildError(f"internal: module {m.filename} does not round-trip through the packed script")
