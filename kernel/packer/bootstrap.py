"""The packed script's bootstrap: an import hook for the embedded modules, vendored packages, ``main``.

build.py copies this file's text, as it is, into ``dist/kernel/train.py`` between the header (the
baked config and the bundle's version) and the embedded sources, whose ``_add(...)`` calls fill
:data:`_SOURCES`; the script's last lines call :func:`_install` and :func:`_main`. It is also a
normal module, imported and tested like the rest. So it must stay pasteable: no ``from __future__``,
no relative imports, only the standard library at import time.
"""
import hashlib
import importlib
import importlib.abc
import importlib.util
import linecache
import sys

__all__ = ["_SOURCES", "_add", "_EmbeddedModules", "_install", "_sources_sha256", "_vendor_packages", "_main"]

_SOURCES = {}  # module name -> (file name shown in tracebacks, is a package, source text)
_TOPS = ("kernel", "kernel_user")
# Pure-Python packages that Kaggle's and Colab's images lack, shipped in the code dataset's vendor/.
_VENDORED = ("imgaug", "segmentation_models_pytorch")


def _add(name, filename, is_package, source, table=None):
    """Register one embedded module in ``table`` (:data:`_SOURCES`; called once per module by the packed script)."""
    (_SOURCES if table is None else table)[name] = (filename, is_package, source)


class _EmbeddedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader for the modules embedded in this file (first on sys.meta_path)."""

    _kernel_packed = True  # lets a re-run of this file find and replace an older hook

    def __init__(self, sources=None):
        self.sources = _SOURCES if sources is None else sources  # a test's own table

    def find_spec(self, fullname, path=None, target=None):
        entry = self.sources.get(fullname)
        if entry is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=entry[0], is_package=entry[1])
        spec.has_location = True  # __file__ = "kernel/<module>.py", the name tracebacks show
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)  # noqa: S102 - our own embedded sources

    def is_package(self, fullname):
        return self.sources[fullname][1]

    def get_source(self, fullname):
        return self.sources[fullname][2]

    def get_code(self, fullname):
        filename, _, source = self.sources[fullname]
        return compile(source, filename, "exec", dont_inherit=True)


def _install(sources=None, tops=_TOPS):
    """Put the hook first on sys.meta_path, so an installed or dataset `kernel` never shadows ours; the modules of
    the top-level packages ``tops`` imported before are dropped. ``sources``: :data:`_SOURCES` (a test's own)."""
    sources = _SOURCES if sources is None else sources
    for name in [n for n in sys.modules if n.split(".")[0] in tops]:
        del sys.modules[name]  # e.g. `kernel` imported from the code dataset earlier in a notebook
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "_kernel_packed", False)]
    sys.meta_path.insert(0, _EmbeddedModules(sources))
    for filename, _, source in sources.values():
        # mtime None: linecache.checkcache keeps the entry, so tracebacks show these lines.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def _sources_sha256(sources=None):
    """sha256 over (file name, source) of every embedded module (``_SOURCES`` by default), sorted by name.

    build.py computes the same digest over the modules it embeds, so the script can tell whether its
    sources were edited after the build.
    """
    sources = _SOURCES if sources is None else sources
    h = hashlib.sha256()
    for name in sorted(sources):
        filename, _, source = sources[name]
        h.update(filename.encode() + b"\0" + source.encode("utf-8") + b"\0")
    return h.hexdigest()


def _installed(package):
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _vendor_packages(dataset_id, packages=_VENDORED):
    """Put the code dataset's ``vendor/`` folder on sys.path when one of ``packages`` is not installed.

    The folder is searched under the Kaggle inputs in both mount layouts; it is appended, so an
    installed copy always wins. Returns the folder used, or None.
    """
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return None
    from kernel.paths import find_in_inputs, input_root

    owner, _, slug = dataset_id.partition("/")
    candidates = [input_root() / slug / "vendor", input_root() / "datasets" / owner / slug / "vendor"]
    found = find_in_inputs(f"vendor/{missing[0]}/__init__.py")  # any other mount, in both layouts
    if found is not None:
        candidates.append(found.parent.parent)
    for vendor in candidates:
        if all((vendor / p / "__init__.py").is_file() for p in missing):
            sys.dont_write_bytecode = True  # never write __pycache__ into the (read-only) inputs
            sys.path.append(str(vendor))
            importlib.invalidate_caches()
            print(f"{', '.join(missing)}: not installed; using the vendored copy in {vendor}", flush=True)
            return str(vendor)
    if input_root().is_dir():
        print(f"{', '.join(missing)}: not installed and no vendor/ copy under {input_root()}; attach the dataset "
              f"{dataset_id}", flush=True)
    return None


def _excepthook(etype, value, tb):
    """Print uncaught errors with the traceback module: it reads the embedded lines from linecache
    (the interpreter's built-in printer opens files by name and would show no or wrong lines)."""
    import traceback

    traceback.print_exception(etype, value, tb)


def _main(config, version, sha256, dataset_id, entry="kernel.train"):
    """The packed script's entry: report what runs, read the baked config, then ``entry``'s ``main``
    (``kernel.train``, or ``kernel.infer`` for an inference kernel)."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
    sha = _sources_sha256()
    state = "as built" if sha == sha256 else f"EDITED since the build of {sha256[:12]}"
    script = "infer.py" if entry == "kernel.infer" else "train.py"
    print(f"kernel {version} (packed {script}; sources sha256 {sha}, {state})", flush=True)
    import yaml

    try:
        baked = yaml.safe_load(config) or {}
    except yaml.YAMLError as e:
        print(f"{script}: the CONFIG block at the top is not valid YAML: {' '.join(str(e).split())}",
              file=sys.stderr)
        return 2
    if not isinstance(baked, dict):
        print(f"{script}: the CONFIG block at the top must be a mapping of option: value", file=sys.stderr)
        return 2
    _vendor_packages(dataset_id)
    import importlib

    main = importlib.import_module(entry).main

    # Pasted into a notebook cell, sys.argv belongs to Jupyter (`-f kernel.json`): use no flags.
    argv = [] if "ipykernel" in sys.modules else None
    return main(argv, baked)
