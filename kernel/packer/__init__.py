"""Packing the bundle for Kaggle (used by ``build.py``; not embedded in the packed kernel).

:mod:`.metadata` (the kaggle client's rules for kernel-metadata.json and dataset-metadata.json),
:mod:`.config` (the run config: options, Kaggle paths, credentials, user modules), :mod:`.script`
(the one-file kernel: header, bootstrap, embedded sources), :mod:`.bootstrap` (the packed script's
import hook and entry, copied as text), :mod:`.bundle` (plan everything, then write), :mod:`.push`
(the kaggle CLI), :mod:`.watch` (following a pushed kernel: status, outputs, the next version after
a time-limit stop), :mod:`.kaggle_models` (``--publish-model``: a run's weights as a Kaggle Model),
:mod:`.submit` (``--submit``: limits, submit, wait for the score), :mod:`.ledger` (CV beside LB per
submission), :mod:`.command` (``kernel-build``, the installed command: runs the checkout's build.py).
Standard library and PyYAML only: a build takes a fraction of a second.
"""
from .bundle import VENDORED, Bundle, plan, read_config, write
from .kaggle_models import (MODEL_LICENSES, ModelPlan, plan_model, publish_model, validate_model_instance_metadata,
                            validate_model_metadata, write_model)
from .metadata import (KNOWN_LICENSES, KNOWN_MACHINE_SHAPES, PLACEHOLDER_OWNER, BuildError, is_secret_name,
                       validate_dataset_metadata, validate_kernel_metadata)
from .push import (KaggleRun, follow_hint, have_credentials, kaggle_cli, kaggle_runner, next_steps, push, push_kernel,
                   pushed_version)
from .ledger import Ledger, changed_options, run_facts
from .script import Module, package_modules, py_literal, render_script, sources_sha256
from .submit import (Submitted, check_limits, error_text, find_submission, latest_version_folder, list_submissions,
                     show_ledger, submit, submit_and_score, wait_for_score)
from .watch import (FINISHED, download_outputs, elapsed_text, find_log, follow, log_lines, main_files, parse_status,
                    read_summaries, summary_line, version_folder, wait_for_kernel)

__all__ = ["VENDORED", "Bundle", "plan", "read_config", "write", "KNOWN_LICENSES", "KNOWN_MACHINE_SHAPES",
           "PLACEHOLDER_OWNER", "BuildError", "is_secret_name", "validate_dataset_metadata",
           "validate_kernel_metadata", "KaggleRun", "follow_hint", "have_credentials", "kaggle_cli", "kaggle_runner",
           "next_steps", "push", "push_kernel", "pushed_version", "Module", "package_modules", "py_literal",
           "render_script", "sources_sha256", "FINISHED", "download_outputs", "elapsed_text", "find_log", "follow",
           "log_lines", "main_files", "parse_status", "read_summaries", "summary_line", "version_folder",
           "wait_for_kernel", "MODEL_LICENSES", "ModelPlan", "plan_model", "publish_model",
           "validate_model_instance_metadata", "validate_model_metadata", "write_model", "Ledger", "changed_options",
           "run_facts", "Submitted", "check_limits", "error_text", "find_submission", "latest_version_folder",
           "list_submissions", "show_ledger", "submit", "submit_and_score", "wait_for_score"]
