"""The bundle's user error: what is wrong and how to fix it, printed by the entry points as one line.

Every layer raises :class:`ConfigError` for a user's mistake (a bad option, file or combination); the entry
points (:mod:`kernel.cli`) print it without a traceback and exit 2. A bug keeps its traceback.
"""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A user error: printed as one line (what is wrong and how to fix it), exit code 2."""
