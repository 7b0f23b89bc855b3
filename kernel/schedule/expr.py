"""A tiny, whitelisted arithmetic evaluator for ``lr_lambda`` expressions such as ``"0.95 ** epoch"``.

Scheduler kwargs come from the command line and config files, so they are user strings:
they are parsed with :mod:`ast` and only numbers, the names ``epoch``/``step``/``pi``,
``+ - * / ** // %``, unary ``-``/``+`` and calls to ``min``, ``max`` and ``cos`` are accepted.
Nothing is ever passed to ``eval``; attribute access, subscripts, other names and other calls
are refused with a :class:`~kernel.registry.ConfigError` that says what is allowed.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Callable, Dict, Mapping, Sequence

from ..errors import ConfigError

__all__ = ["ALLOWED_FUNCS", "ALLOWED_CONSTS", "compile_lr_expr", "eval_lr_expr"]

_BINOPS: Dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY: Dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
ALLOWED_FUNCS: Dict[str, Callable[..., float]] = {"min": min, "max": max, "cos": math.cos}
ALLOWED_CONSTS: Dict[str, float] = {"pi": math.pi}
_MAX_LEN = 500  # a schedule formula is short; the cap also bounds parse depth and work
_HELP = ("allowed: numbers, the names {vars} and pi, + - * / ** // %, unary -, "
         "and calls to min(), max(), cos()")


def _check(node: ast.AST, variables: Sequence[str], text: str, option: str) -> None:
    """Walk the parsed tree and refuse anything outside the whitelist (before any evaluation)."""
    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{option}: {what} is not allowed in {text!r}; "
                           + _HELP.format(vars="/".join(variables)))

    if isinstance(node, ast.Expression):
        _check(node.body, variables, text, option)
    elif isinstance(node, ast.Constant):
        # bool is an int subclass and str/bytes/None are not arithmetic: refuse them by type.
        if type(node.value) not in (int, float):
            raise refuse(f"the constant {node.value!r}")
    elif isinstance(node, ast.Name):
        if node.id not in variables and node.id not in ALLOWED_CONSTS:
            raise refuse(f"the name {node.id!r}")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise refuse(f"the operator {type(node.op).__name__}")
        _check(node.left, variables, text, option)
        _check(node.right, variables, text, option)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise refuse(f"the operator {type(node.op).__name__}")
        _check(node.operand, variables, text, option)
    elif isinstance(node, ast.Call):
        # Only a bare whitelisted name may be called: no attributes (os.system), no keywords.
        if not isinstance(node.func, ast.Name) or node.func.id not in ALLOWED_FUNCS:
            what = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise refuse(f"calling {what!r}")
        if node.keywords or not node.args or any(isinstance(a, ast.Starred) for a in node.args):
            raise refuse(f"this call to {node.func.id}()")
        for arg in node.args:
            _check(arg, variables, text, option)
    elif isinstance(node, ast.Attribute):
        raise refuse(f"attribute access ({ast.unparse(node)!r})")
    else:
        raise refuse(f"the syntax {type(node).__name__}")


def _eval(node: ast.AST, env: Mapping[str, float]) -> float:
    """Evaluate a checked tree. Numbers are floats, so ``10 ** 10 ** 10`` overflows instead of hanging."""
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(env[node.id]) if node.id in env else ALLOWED_CONSTS[node.id]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.Call):
        return float(ALLOWED_FUNCS[node.func.id](*[_eval(a, env) for a in node.args]))
    raise TypeError(f"unchecked node {type(node).__name__}")  # unreachable after _check


def compile_lr_expr(text: str, variables: Sequence[str] = ("epoch", "step"),
                    option: str = "lr_lambda") -> ast.Expression:
    """Parse and whitelist-check ``text``; return the tree for :func:`eval_lr_expr`.

    Raises ConfigError for syntax errors, over-long formulas and anything outside the whitelist.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{option}: expected a formula such as '0.95 ** epoch', got {text!r}")
    if len(text) > _MAX_LEN:
        raise ConfigError(f"{option}: formula longer than {_MAX_LEN} characters; use a file.py:fn instead")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConfigError(f"{option}: {text!r} is not a valid formula ({type(e).__name__}); "
                          f"write e.g. '0.95 ** epoch'") from None
    _check(tree, tuple(variables), text, option)
    return tree


def eval_lr_expr(tree: ast.Expression, env: Mapping[str, float], text: str = "",
                 option: str = "lr_lambda") -> float:
    """Evaluate a compiled formula with ``env`` (e.g. ``{"epoch": 3.0, "step": 300.0}``).

    Arithmetic errors (division by zero, overflow) and non-finite results become ConfigError,
    naming the formula and the values, because they are mistakes in the user's formula.
    """
    try:
        value = _eval(tree, env)
    except (ArithmeticError, ValueError, TypeError) as e:
        raise ConfigError(f"{option}: {text!r} failed at {dict(env)}: {type(e).__name__}: {e}") from None
    if isinstance(value, complex) or not math.isfinite(value):  # (-1) ** 0.5 is complex in Python
        raise ConfigError(f"{option}: {text!r} gave {value!r} at {dict(env)}; an LR factor must be a finite number")
    return value
