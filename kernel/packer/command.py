"""``kernel-build``: the installed command (``pip install -e .``) that runs the checkout's ``build.py``.

``build.py`` packs the checkout it sits in: its ``kernel/`` package and the templates ``kernel-metadata.json``
and ``dataset-metadata.json`` beside it. An editable install keeps this package in that checkout, so the
command loads that very ``build.py`` and runs its ``main``: ``kernel-build ARGS`` from any folder is
``python CHECKOUT/build.py ARGS`` (``--config``, ``--out`` and ``outputs/`` are relative to the current folder;
the templates are the checkout's). A copy installed without ``-e`` has no checkout and says so in one line.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["CHECKOUT", "main"]

CHECKOUT = Path(__file__).resolve().parents[2]  # kernel/packer/command.py -> the folder holding kernel/


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``CHECKOUT/build.py``'s ``main`` with ``argv`` (default: the command line); its exit status."""
    script = CHECKOUT / "build.py"
    if not script.is_file():
        print(f"kernel-build: error: no build.py beside {CHECKOUT / 'kernel'}: kernel-build packs a checkout of the "
              "repository; install it from one with `pip install -e .` (or run `python build.py` there)",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("kernel_build_py", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # an import of the checkout's build.py by its path
    return module.main(sys.argv[1:] if argv is None else list(argv))
