"""Command lines: parsers generated from the option dataclasses, one-line errors, running a file as a module.

Every entry point (``kernel.train``, ``kernel.predict``, ``build.py``) reports a user error as one line
(what is wrong, how to fix it) and exits 2, without a traceback: :class:`OneLineParser` turns argparse's
usage dump into a :class:`~kernel.registry.ConfigError`, and :func:`one_line` flattens what reaches the
entry point.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import ConfigError
from .registry import did_you_mean, is_user_spec

__all__ = ["OneLineParser", "parser_from_dataclass", "one_line", "run_file"]


class OneLineParser(argparse.ArgumentParser):
    """Argparse that reports a bad flag or value in one line, with the closest valid choice.

    Abbreviations are off: ``--epoch 3`` must not silently become ``--epochs``; the unknown-flag
    error names the closest real one instead. ``groups`` maps group names to argument groups.
    """

    groups: Dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if getattr(action, "user_code", False) and is_user_spec(value):
            return  # file.py:Name beside the registry's names (a user's Task class)
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(str(value), [str(c) for c in action.choices])
            raise argparse.ArgumentError(
                action, f"invalid choice {value!r}{hint} (choose from {', '.join(map(str, action.choices))})")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extra = super().parse_known_args(args, namespace)
        flags = [o for a in self._actions for o in a.option_strings]
        for item in extra:  # argparse would say "unrecognized arguments: --epoch 3"; name the closest flag
            if item.startswith("--"):
                raise ConfigError(f"unknown option {item.split('=')[0]!r}{did_you_mean(item.split('=')[0], flags)}"
                                  f" (see --help)")
        return parsed, extra

    def error(self, message: str) -> None:  # one line, no usage dump
        raise ConfigError(f"{message} (see --help)")


def _type(f: dataclasses.Field) -> Callable[[str], Any]:
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return {"int": int, "float": float, "Optional[int]": int, "Optional[float]": float}.get(name, str)


def _with_default(help_: str, default: Any, show: bool) -> str:
    """``help_`` with ``(default: X)`` appended, unless it would say nothing or say it twice: an empty or
    unset default (the help says what that means), or a help that already states its default."""
    if not show or default is dataclasses.MISSING or default in ("", None, [], ()) or "default:" in help_:
        return help_
    return f"{help_} (default: {default!r})"


def parser_from_dataclass(cls: type, prog: str, description: str, groups: Sequence[str],
                          choices: Callable[[dataclasses.Field], Optional[List[str]]]) -> OneLineParser:
    """An argparse parser with one flag per field of ``cls`` that has ``metadata['cli']`` true; ``choices(field)``
    lists a field's allowed values (None: any), from :func:`kernel.config.field_choices`.

    Every default is SUPPRESS, so the caller can tell flags given on the command line from defaults
    (a config file sits between the two); help texts show the dataclass default where it means something
    (see :func:`_with_default`).
    """
    p = OneLineParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    made = p.groups = {g: p.add_argument_group(g) for g in groups}
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli", True):
            continue
        grp = made[m.get("group", groups[0])]
        if m.get("positional"):
            grp.add_argument(f.name, nargs="+", help=m["help"])
            continue
        flags = m.get("flags") or ("--" + f.name.replace("_", "-"),)
        help_ = _with_default(m["help"], f.default, m.get("show_default", True))
        if f.type in ("bool", bool, "Optional[bool]"):
            grp.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_)
        else:
            extra = {"nargs": m["nargs"]} if m.get("nargs") else {}
            action = grp.add_argument(*flags, dest=f.name, type=_type(f), choices=choices(f), help=help_,
                                      metavar=m.get("metavar"), required=m.get("required", False), **extra)
            action.user_code = m.get("user_code", False)  # type: ignore[attr-defined]
    return p


def one_line(e: BaseException) -> str:
    """The message of a user error as one line; a ConfigError raised in a DataLoader worker comes back
    wrapped with the worker's traceback, whose last line holds the original message."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and "ConfigError: " in lines[-1]:
        return lines[-1].split("ConfigError: ", 1)[1]
    return " ".join(lines) if lines else type(e).__name__


def run_file(path: str, init_globals: Optional[Dict[str, Any]] = None) -> None:
    """Run ``kernel/<name>.py`` (started as ``python kernel/<name>.py``) as the module ``kernel.<name>``.

    Started as a file, the module has no package, so its relative imports would fail; the entry
    module's prelude puts the project root first on ``sys.path`` and calls this.
    """
    name = os.path.splitext(os.path.basename(path))[0]
    runpy.run_module(f"kernel.{name}", init_globals=init_globals, run_name="__main__", alter_sys=True)
    sys.exit(0)
