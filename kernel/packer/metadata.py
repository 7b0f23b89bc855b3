"""Kaggle's metadata files: the official client's validation rules, plus ours, and credential names.

Every check appends one line (``"<where>: <field>: <problem>; <fix>"``) to ``problems``, so a build
reports all its problems at once. The rules follow the ``kaggle`` client 2.x (see
``shared/kaggle-notes.md``): what it refuses locally, we refuse first, with the fix.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Sequence

from ..registry import did_you_mean

__all__ = ["BuildError", "PLACEHOLDER_OWNER", "KERNEL_KEYS", "SOURCE_KEYS", "BOOL_KEYS", "KERNEL_DEFAULTS",
           "GPU_SHAPES", "TPU_SHAPES", "KNOWN_MACHINE_SHAPES", "RETIRED_SHAPES", "KNOWN_LICENSES", "is_secret_name",
           "slugify", "as_bool", "validate_kernel_metadata", "validate_dataset_metadata"]

PLACEHOLDER_OWNER = "YOUR_KAGGLE_USERNAME"

# Keys the official client reads from kernel-metadata.json; anything else it ignores.
KERNEL_KEYS = (
    "id", "id_no", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
    "enable_tpu", "enable_internet", "dataset_sources", "competition_sources", "kernel_sources",
    "model_sources", "keywords", "docker_image_pinning_type", "docker_image", "machine_shape",
)
SOURCE_KEYS = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources")
BOOL_KEYS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
# Defaults written when the template leaves a key out. The client's own defaults differ on purpose:
# it turns internet ON and the GPU OFF, and enable_gpu without machine_shape could land on a P100.
KERNEL_DEFAULTS: Dict[str, Any] = {
    "is_private": True, "enable_gpu": True, "enable_tpu": False, "enable_internet": False,
    "machine_shape": "NvidiaTeslaT4",
}
# machine_shape values Kaggle documents (kagglesdk docstrings, kaggle-cli docs).
GPU_SHAPES = ("NvidiaTeslaT4", "NvidiaL4", "NvidiaTeslaP100")
TPU_SHAPES = ("TpuV5E8", "Tpu1VmV38")
KNOWN_MACHINE_SHAPES = GPU_SHAPES + TPU_SHAPES
RETIRED_SHAPES = {"NvidiaTeslaP100": "NvidiaTeslaT4"}
# License names Kaggle accepts for datasets (kaggle-cli docs/datasets_metadata.md).
KNOWN_LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)
_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OWNER = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
# Files that hold credentials: never packed, and a config naming one is refused.
_SECRET_NAMES = {
    "kaggle.json", "access_token", "access_token.txt", "credentials.json", ".env", ".netrc",
    ".git-credentials", ".pypirc", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
}
_SECRET_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".env")


class BuildError(Exception):
    """User errors: one line each, printed without a traceback; the exit status is 2."""

    def __init__(self, problems: Sequence[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def is_secret_name(name: str) -> bool:
    """True for file names that usually hold credentials (kaggle.json, .env, *.pem, access_token...)."""
    base = os.path.basename(name.rstrip("/")).lower()
    return (base in _SECRET_NAMES or base.startswith(".env.") or base.endswith(_SECRET_SUFFIXES)
            or base.startswith("id_rsa"))


def slugify(text: str) -> str:
    """Kaggle's title -> slug rule, near enough for a warning: lowercase, runs of other chars -> '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def as_bool(value: Any) -> Any:
    """"true"/"false" strings as booleans (the client accepts both); anything else unchanged."""
    return value.lower() == "true" if isinstance(value, str) and value.lower() in ("true", "false") else value



def _check_owner(where: str, key: str, owner: str, problems: List[str]) -> None:
    if owner == PLACEHOLDER_OWNER:
        problems.append(f"{where}: {key}: the owner is still the placeholder {PLACEHOLDER_OWNER!r}; "
                        f"put your Kaggle username there, or pass --owner NAME")
    elif not _OWNER.match(owner):
        problems.append(f"{where}: {key}: owner {owner!r} is not a Kaggle username (lowercase letters, digits, "
                        f"'-' or '_'); use your username as it appears in kaggle.com/<username>")


def _check_bool(where: str, meta: Dict[str, Any], key: str, problems: List[str]) -> None:
    if key not in meta:
        return
    value = meta[key]
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return
    why = "an integer makes the client raise TypeError" if isinstance(value, (int, float)) else "not a boolean"
    problems.append(f"{where}: {key}: {value!r} is {why}; write true or false")


def _check_string_list(where: str, meta: Dict[str, Any], key: str, problems: List[str]) -> List[str]:
    value = meta.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: {key}: must be a list of strings, got {value!r}; write e.g. [\"owner/slug\"]")
        return []
    return value


def _check_kernel_ref(where: str, key: str, ref: str, problems: List[str], *, allow_version: bool) -> None:
    """The client's kernel-string rules: owner/slug[/version], slug of 5+ characters."""
    parts = ref.split("/")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        form = "owner/kernel-slug or owner/kernel-slug/version" if allow_version else "owner/kernel-slug"
        problems.append(f"{where}: {key}: {ref!r} is not of the form {form}; fix the value")
        return
    if len(parts) == 3 and not allow_version:
        problems.append(f"{where}: {key}: {ref!r} must not contain a version; write {parts[0]}/{parts[1]}")
    if len(parts) == 3 and allow_version and not parts[2]:
        problems.append(f"{where}: {key}: {ref!r} has an empty version; drop the trailing '/' or add a number")
    if len(parts[1]) < 5:
        problems.append(f"{where}: {key}: kernel slug {parts[1]!r} is shorter than 5 characters; use a longer slug")


def validate_kernel_metadata(meta: Any, problems: List[str], where: str = "kernel-metadata.json") -> None:
    """Check a kernel-metadata.json mapping with the official client's rules, plus ours."""
    if not isinstance(meta, dict):
        problems.append(f"{where}: must be a JSON object with id, title, ...; see the template")
        return
    kid = meta.get("id")
    if not isinstance(kid, str) or not kid:
        problems.append(f"{where}: id: missing; write \"<your-username>/<kernel-slug>\" (id_no alone is not enough "
                        f"for build.py, which needs the slug for kernel_sources and the next-step commands)")
    else:
        before = len(problems)
        _check_kernel_ref(where, "id", kid, problems, allow_version=False)
        if len(problems) == before:
            owner, slug = kid.split("/")
            _check_owner(where, "id", owner, problems)
            if not _SLUG.match(slug):
                problems.append(f"{where}: id: slug {slug!r} must be lowercase letters, digits and single '-'; "
                                f"write {slugify(slug) or 'my-kernel'!r}")
    title = meta.get("title")
    if title is None:
        problems.append(f"{where}: title: missing (a new kernel needs one); write a title that slugifies to the id")
    elif not isinstance(title, str) or len(title) < 5:
        problems.append(f"{where}: title: {title!r} is shorter than 5 characters; write a longer title")
    for key, want in (("language", "python"), ("kernel_type", "script"), ("code_file", "train.py")):
        if key in meta and meta[key] != want:
            problems.append(f"{where}: {key}: {meta[key]!r}, but build.py writes a Python script {want!r}; "
                            f"remove the key (build.py sets it)")
    for key in BOOL_KEYS:
        _check_bool(where, meta, key, problems)
    for key in ("dataset_sources",):
        for src in _check_string_list(where, meta, key, problems):
            parts = src.split("/")
            if "/" not in src or len(parts) > 3 or not parts[0] or not parts[1]:
                problems.append(f"{where}: {key}: {src!r} is not of the form owner/dataset-slug[/version]; fix it")
            elif len(parts) == 3 and not parts[2].isdigit():
                problems.append(f"{where}: {key}: {src!r}: the version must be a number; write "
                                f"{parts[0]}/{parts[1]} for the latest")
            elif parts[0] == PLACEHOLDER_OWNER:
                _check_owner(where, key, parts[0], problems)
    for src in _check_string_list(where, meta, "kernel_sources", problems):
        _check_kernel_ref(where, "kernel_sources", src, problems, allow_version=True)
    for src in _check_string_list(where, meta, "model_sources", problems):
        parts = src.split("/")
        if src.count("/") != 4 or not all(parts):
            problems.append(f"{where}: model_sources: {src!r} is not owner/model/framework/variation/version "
                            f"(exactly 4 slashes); copy the path from the model's page")
        elif not parts[4].isdigit():
            problems.append(f"{where}: model_sources: {src!r}: the version must be an integer; e.g. .../1")
    for src in _check_string_list(where, meta, "competition_sources", problems):
        if not src or "/" in src:
            problems.append(f"{where}: competition_sources: {src!r} is not a competition slug; write e.g. \"titanic\"")
    _check_string_list(where, meta, "keywords", problems)
    pin = meta.get("docker_image_pinning_type")
    if pin is not None and pin not in ("original", "latest"):
        problems.append(f"{where}: docker_image_pinning_type: {pin!r} is not 'original' or 'latest'; "
                        f"pick one or remove it")
    _check_machine(where, meta, problems)


def _check_machine(where: str, meta: Dict[str, Any], problems: List[str]) -> None:
    shape = meta.get("machine_shape")
    gpu, tpu = as_bool(meta.get("enable_gpu")), as_bool(meta.get("enable_tpu"))
    if shape in (None, ""):
        if gpu is True:
            problems.append(f"{where}: machine_shape: empty while enable_gpu is true, which can land on a retired "
                            f"P100; write \"NvidiaTeslaT4\"")
        return
    if not isinstance(shape, str) or shape not in KNOWN_MACHINE_SHAPES:
        hint = did_you_mean(str(shape), KNOWN_MACHINE_SHAPES)
        problems.append(f"{where}: machine_shape: {shape!r} is not a known Kaggle machine{hint}; use one of "
                        f"{', '.join(KNOWN_MACHINE_SHAPES)}, or \"\" for CPU")
        return
    if shape in GPU_SHAPES and gpu is False:
        problems.append(f"{where}: machine_shape: {shape!r} is a GPU but enable_gpu is false; set enable_gpu true "
                        f"or machine_shape \"\"")
    if shape in TPU_SHAPES and tpu is not True:
        problems.append(f"{where}: machine_shape: {shape!r} is a TPU but enable_tpu is not true; set enable_tpu true")
    if gpu is True and tpu is True:
        problems.append(f"{where}: enable_gpu and enable_tpu are both true; keep one")


def validate_dataset_metadata(meta: Any, problems: List[str], where: str = "dataset-metadata.json") -> None:
    """Check a dataset-metadata.json mapping with the client's ``datasets create`` rules, plus ours."""
    if not isinstance(meta, dict):
        problems.append(f"{where}: must be a JSON object with id, title and licenses; see the template")
        return
    did = meta.get("id")
    if not isinstance(did, str) or not did:
        problems.append(f"{where}: id: missing; write \"<your-username>/<dataset-slug>\"")
    else:
        parts = did.split("/")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            problems.append(f"{where}: id: {did!r} is not of the form owner/dataset-slug (no version); fix it")
        else:
            owner, slug = parts
            _check_owner(where, "id", owner, problems)
            if slug == "INSERT_SLUG_HERE":
                problems.append(f"{where}: id: the slug is the client's placeholder; write e.g. \"kernel-code\"")
            elif not 6 <= len(slug) <= 50:
                problems.append(f"{where}: id: slug {slug!r} has {len(slug)} characters; the client needs 6 to 50")
            elif not _SLUG.match(slug):
                problems.append(f"{where}: id: slug {slug!r} must be lowercase letters, digits and single '-'; "
                                f"write {slugify(slug)!r}")
    title = meta.get("title")
    if not isinstance(title, str) or not title:
        problems.append(f"{where}: title: missing; write a title of 6 to 50 characters")
    elif title == "INSERT_TITLE_HERE":
        problems.append(f"{where}: title: the client's placeholder; write a title of 6 to 50 characters")
    elif not 6 <= len(title) <= 50:
        problems.append(f"{where}: title: {title!r} has {len(title)} characters; the client needs 6 to 50")
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1:
        problems.append(f"{where}: licenses: the client needs exactly one license; write [{{\"name\": \"other\"}}]")
    elif not isinstance(licenses[0], dict) or not isinstance(licenses[0].get("name"), str) or not licenses[0]["name"]:
        problems.append(f"{where}: licenses: the license has no name; write [{{\"name\": \"other\"}}]")
    elif licenses[0]["name"] not in KNOWN_LICENSES:
        name = licenses[0]["name"]
        hint = did_you_mean(name, KNOWN_LICENSES) or "; e.g. 'other' or 'apache-2.0'"
        problems.append(f"{where}: licenses: {name!r} is not a Kaggle license name{hint}")
    subtitle = meta.get("subtitle")
    if subtitle and (not isinstance(subtitle, str) or not 20 <= len(subtitle) <= 80):
        problems.append(f"{where}: subtitle: must be 20 to 80 characters; shorten, lengthen or remove it")
    if meta.get("resources"):
        problems.append(f"{where}: resources: not supported (build.py decides the files); remove the key")
    _check_string_list(where, meta, "keywords", problems)
