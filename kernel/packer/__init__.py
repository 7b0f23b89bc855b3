"""Packing the bundle for Kaggle (used by ``build.py``; not embedded in the packed kernel).

:mod:`.metadata` (the kaggle client's rules for kernel-metadata.json and dataset-metadata.json),
:mod:`.config` (the run config: options, Kaggle paths, credentials, user modules), :mod:`.script`
(the one-file kernel: header, bootstrap, embedded sources), :mod:`.bootstrap` (the packed script's
import hook and entry, copied as text), :mod:`.bundle` (plan everything, then write), :mod:`.push`
(the kaggle CLI). Standard library and PyYAML only: a build takes a fraction of a second.
"""
from .bundle import VENDORED, Bundle, plan, read_config, write
from .metadata import (KNOWN_LICENSES, KNOWN_MACHINE_SHAPES, PLACEHOLDER_OWNER, BuildError, is_secret_name,
                       validate_dataset_metadata, validate_kernel_metadata)
from .push import have_credentials, kaggle_cli, next_steps, push
from .script import Module, package_modules, py_literal, render_script, sources_sha256

__all__ = ["VENDORED", "Bundle", "plan", "read_config", "write", "KNOWN_LICENSES", "KNOWN_MACHINE_SHAPES",
           "PLACEHOLDER_OWNER", "BuildError", "is_secret_name", "validate_dataset_metadata",
           "validate_kernel_metadata", "have_credentials", "kaggle_cli", "next_steps", "push", "Module",
           "package_modules", "py_literal", "render_script", "sources_sha256"]
