"""The layering docs/ARCHITECTURE.md promises, read from its layer table and checked over every import in kernel/.

A module imports only from its own row of the table or the rows below it (lazy imports inside functions count),
the imports form no cycle, and no two modules share a name except modules of the same role in sibling task
packages (``tasks/<task>/metrics.py``). The checker runs on a copy of the tree too, with an upward import and a
cycle added, to show that it fails on them.
"""
from __future__ import annotations

import ast
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def layer_table(doc: Path = DOC) -> List[Tuple[str, List[str]]]:
    """The doc's ``| layer | module | owns |`` rows, top first: (layer, [paths under kernel/, e.g. 'run/']).
    Paths outside kernel/ (``../build.py``) are left out."""
    rows, started = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("| layer | module |"):
            started = True
        elif started and line.startswith("|") and not line.startswith("|---"):
            layer, modules = [c.strip() for c in line.strip("|").split("|")][:2]
            rows.append((layer, [m for m in re.findall(r"`([^`]+)`", modules) if not m.startswith("../")]))
        elif started and rows:
            break
    return rows


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(root: Path) -> Dict[str, Set[str]]:
    """``{module: {kernel modules it imports}}`` over every ``.py`` under ``root`` (the ``kernel`` folder), imports
    inside functions included; ``from .x import name`` counts as an import of ``x.name`` when that is a module."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    edges: Dict[str, Set[str]] = defaultdict(set)
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in files and target != mod:
                    edges[mod].add(target)
    return edges


def layer_of(mod: str, table: List[Tuple[str, List[str]]]) -> int:
    """The row (0 = top) of ``mod`` (a dotted name under ``kernel``); KeyError when no row lists it."""
    rel = mod.split(".", 1)[1] if "." in mod else "__init__"
    for i, (_, paths) in enumerate(table):
        for p in paths:
            if (p.endswith("/") and (rel + ".").startswith(p[:-1].replace("/", ".") + ".")) or \
                    rel == p[:-3].replace("/", "."):
                return i
    raise KeyError(f"kernel.{rel}: in no row of the layer table of {DOC.name}")


def upward_imports(root: Path, table: List[Tuple[str, List[str]]]) -> List[str]:
    """Every import of a module from a row above the importer's, as 'importer (row) -> imported (row)'."""
    out = []
    for mod, targets in sorted(import_edges(root).items()):
        for t in sorted(targets):
            if layer_of(t, table) < layer_of(mod, table):
                out.append(f"{mod} ({table[layer_of(mod, table)][0]}) -> {t} ({table[layer_of(t, table)][0]})")
    return out


def cycles(root: Path) -> List[List[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan's algorithm)."""
    edges, index, low, stack, on, found = import_edges(root), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted({*edges, *(w for ws in edges.values() for w in ws)}):
        if v not in index:
            visit(v)
    return found


def shared_names(root: Path) -> Dict[str, List[str]]:
    """Module file names used in more than one place; sibling task packages count as one place (one role, one
    name in each task: ``tasks/*/metrics.py``)."""
    places: Dict[str, Set[str]] = defaultdict(set)
    for p in root.rglob("*.py"):
        if p.name != "__init__.py":
            places[p.name].add(re.sub(r"^tasks/[^/]+/", "tasks/*/", p.relative_to(root).as_posix()))
    return {name: sorted(where) for name, where in places.items() if len(where) > 1}


def test_every_module_is_in_a_row_and_none_imports_upward():
    table = layer_table()
    assert [layer for layer, _ in table][:2] == ["packing", "entry points"] and table[-1][0] == "base", table
    assert upward_imports(ROOT / "kernel", table) == []


def test_no_import_cycles():
    assert cycles(ROOT / "kernel") == []


def test_no_two_modules_share_a_name():
    assert shared_names(ROOT / "kernel") == {}


def test_the_checks_fail_on_an_upward_import_a_cycle_and_a_shared_name(tmp_path):
    tree = tmp_path / "kernel"
    shutil.copytree(ROOT / "kernel", tree, ignore=shutil.ignore_patterns("__pycache__"))
    images = tree / "data" / "images.py"
    images.write_text(images.read_text() + "\n\ndef _late():\n    from ..run import fit\n")
    (tree / "errors.py").write_text((tree / "errors.py").read_text() + "\nfrom .paths import atomic_write\n")
    (tree / "run" / "shapes.py").write_text('"""a second shapes module"""\n')
    table = layer_table()
    assert upward_imports(tree, table) == ["kernel.data.images (stacks) -> kernel.run.fit (a run)"]
    assert ["kernel.errors", "kernel.paths"] in cycles(tree)
    assert shared_names(tree) == {"shapes.py": ["data/shapes.py", "run/shapes.py"]}


def test_options_is_data_only():
    """options.py names its registries' choices (FromRegistry) instead of importing them."""
    assert import_edges(ROOT / "kernel").get("kernel.options", set()) == set()


def kernel_attributes_replaced(tests: Path) -> List[str]:
    """``monkeypatch.setattr``/``setattr`` calls in ``tests`` whose target is a kernel module or class (a name bound
    by importing from ``kernel``, or a ``"kernel...."`` string): a seam replaced from outside instead of declared."""
    found = []
    for path in sorted(tests.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        from_kernel = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kernel":
                from_kernel.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.Import):
                from_kernel.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("kernel"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "setattr" \
                    and node.args:
                target = node.args[0]
                while isinstance(target, ast.Attribute):
                    target = target.value
                if (isinstance(target, ast.Name) and target.id in from_kernel) or \
                        (isinstance(target, ast.Constant) and str(target.value).startswith("kernel.")):
                    found.append(f"{path.relative_to(tests.parent)}:{node.lineno}")
    return found


def test_no_test_replaces_a_kernel_attribute(tmp_path):
    """Tests use the declared seams (kernel.run.seams, parameters); the check itself catches both spellings."""
    assert kernel_attributes_replaced(ROOT / "tests") == []
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "from kernel.run import budget\n\ndef test(monkeypatch):\n    monkeypatch.setattr(budget, 'time', None)\n"
        "    monkeypatch.setattr('kernel.predict.os.access', None)\n")
    assert kernel_attributes_replaced(tmp_path / "tests") == ["tests/test_x.py:4", "tests/test_x.py:5"]


def wide_functions(root: Path, most: int = 8) -> List[str]:
    """Functions (lambdas too) under ``root`` taking more than ``most`` parameters, ``self``/``cls`` not counted."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None]
                if len([n for n in names if n not in ("self", "cls")]) > most:
                    out.append(f"{path.relative_to(root.parent)}:{node.lineno} {getattr(node, 'name', 'lambda')}")
    return out


def test_engine_and_run_functions_take_at_most_8_parameters():
    assert wide_functions(ROOT / "kernel" / "engine") == [] and wide_functions(ROOT / "kernel" / "run") == []


def test_every_forward_pass_opens_autocast_in_one_place():
    """engine/amp.py's forward() is the one autocast site; the only other call is the losses' fp32 guard
    (autocast switched off around the loss maths)."""
    calls = []
    for path in sorted((ROOT / "kernel").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "autocast":
                calls.append((path.relative_to(ROOT / "kernel").as_posix(), ast.unparse(node)))
    outside = [c for c in calls if c[0] != "engine/amp.py"]
    assert outside == [("losses/modules.py", "torch.autocast(device_type, enabled=False)")], outside
    assert [c for c in calls if c[0] == "engine/amp.py"] == [
        ("engine/amp.py", "torch.autocast(device_type=device.type, dtype=dtype)"), ("engine/amp.py", "autocast(device, amp_dtype)")]


def test_the_architecture_docs_task_table_lists_the_task_interface():
    """Every public method and attribute of kernel.tasks.Task is in docs/ARCHITECTURE.md's task table, and the
    starred methods are exactly the abstract ones."""
    import inspect

    from kernel.tasks import Task

    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("| method | returns |"):]
    table = table[:table.index("\n\n")]
    named = {m.split("(")[0] for m in re.findall(r"`(\w+)(?:\([^`]*\))?`", table)}
    starred = {m for m in re.findall(r"`(\w+)\([^`]*\)` \*", table)}
    public = {n for n, _ in inspect.getmembers(Task) if not n.startswith("_")}
    assert public - named == set(), sorted(public - named)
    assert starred == set(Task.__abstractmethods__), (sorted(starred ^ set(Task.__abstractmethods__)))
