"""Small shared helpers: name registries that fail loudly, literal kwargs, user objects.

Every registry in the bundle (losses, schedulers, augmentation ops, optimizers)
uses :class:`Registry`, so an unknown name always gets the same clear message:
the known names and the closest match, raised as :class:`kernel.errors.ConfigError`.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import sys
from typing import Any, Dict, Generic, Iterable, List, Optional, TypeVar

from .errors import ConfigError

__all__ = ["Registry", "closest", "did_you_mean", "parse_kwargs", "parse_literal", "load_user_object", "is_user_spec"]

T = TypeVar("T")


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """Return the known name closest to ``name``, or None when nothing is close."""
    known = list(known)
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    if not match:  # case-insensitive / prefix fallback for short typos
        low = name.lower()
        match = [k for k in known if k.lower() == low or k.lower().startswith(low[:3])][:1]
    return match[0] if match else None


def did_you_mean(name: str, known: Iterable[str], sentence: bool = False) -> str:
    """The closest-match hint for an error message: ``"; did you mean 'x'?"`` (or, after a full
    stop, ``" Did you mean 'x'?"``), or ``""`` when nothing is close."""
    hint = closest(name, known)
    if hint is None:
        return ""
    return f" Did you mean {hint!r}?" if sentence else f"; did you mean {hint!r}?"


class Registry(Generic[T]):
    """A name -> object mapping whose lookups fail with the known names and the closest match."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: str, obj: Optional[T] = None, *, aliases: Iterable[str] = ()) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(o: T) -> T:
            if name in self._items or name in self._aliases:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            for a in aliases:
                self._aliases[a] = name
            return o

        return add if obj is None else add(obj)

    def names(self, with_aliases: bool = False) -> List[str]:
        """The registered names, in registration order (aliases last when asked for)."""
        return list(self._items) + (list(self._aliases) if with_aliases else [])

    def canonical(self, name: str) -> str:
        """Map an alias to its registered name; raise ConfigError for an unknown name."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = self.names(with_aliases=True)
        hint = did_you_mean(name, known, sentence=True)
        raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def parse_literal(text: str) -> Any:
    """Parse one value as a Python literal (number, bool, None, list, dict, str); never ``eval``.

    Bare words that are not literals stay strings, so ``mode=max`` works without quotes.
    """
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_top_level(text: str, sep: str = ",") -> List[str]:
    """Split on ``sep`` outside brackets and quotes: ``a=[1,2],b=3`` -> ``['a=[1,2]', 'b=3']``."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]


def parse_kwargs(spec: Any, option: str = "kwargs") -> Dict[str, Any]:
    """Parse ``"gamma=2,alpha=0.25,milestones=[3,6]"`` (or pass a YAML mapping through) into a dict."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    if not isinstance(spec, str):
        raise ConfigError(f"--{option}: expected 'key=value,...' or a mapping, got {spec!r}")
    out: Dict[str, Any] = {}
    for part in _split_top_level(spec):
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ConfigError(f"--{option}: {part!r} is not key=value; write e.g. --{option} gamma=2,alpha=0.25")
        out[key.strip()] = parse_literal(value)
    return out


def load_user_object(spec: str, what: str = "object") -> Any:
    """Load ``path/to/file.py:name`` or ``package.module:name`` without executing user strings.

    The file is imported as a module (the same as ``import``), then ``name`` is looked up.
    """
    path, colon, attr = spec.rpartition(":")
    if not colon or not path or not attr.isidentifier():
        raise ConfigError(f"{what} {spec!r}: expected 'file.py:name' or 'package.module:name'")
    if path.endswith(".py") or os.sep in path or "/" in path:
        if not os.path.isfile(path):
            raise ConfigError(f"{what} {spec!r}: file {path!r} not found; give a path relative to the working directory")
        mod_name = "kernel_user_" + os.path.splitext(os.path.basename(path))[0]
        module = sys.modules.get(mod_name)
        if module is None or getattr(module, "__file__", None) != os.path.abspath(path):
            file_spec = importlib.util.spec_from_file_location(mod_name, os.path.abspath(path))
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[mod_name] = module
            try:
                file_spec.loader.exec_module(module)
            except Exception as e:  # the user's module failed at import: say where, in one line
                del sys.modules[mod_name]
                raise ConfigError(f"{what} {spec!r}: importing {path!r} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(path)
        except ImportError as e:
            raise ConfigError(f"{what} {spec!r}: cannot import module {path!r} ({e})") from e
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        hint = did_you_mean(attr, public, sentence=True)
        raise ConfigError(f"{what} {spec!r}: {path!r} has no attribute {attr!r}.{hint}")
    return getattr(module, attr)


def is_user_spec(name: Any) -> bool:
    """True for ``file.py:name`` / ``pkg.mod:name`` strings (user code), False for registry names."""
    return isinstance(name, str) and ":" in name and not name.startswith(("http:", "https:"))
