"""`lm_eval --model mhc-bench --model_args run=RUN_DIR ...`: our model in lm-eval's own CLI.

lm-eval (0.4.13, the newest release) resolves `--model` in its model registry only, before any
code of the user's runs; the registry holds lm-eval's own models and whatever imported code
registered. Its CLI imports nothing of ours, reads no entry points and has no option to import
a module (`--include_path` adds task YAMLs, whose `!function`s are imported only after the model
is built). What does run before its CLI is the interpreter's start-up, which executes the
`import` lines of the `.pth` files in site-packages. So:

- `install()` (`mhc-bench lm-eval-model install`, which `make` runs) writes PTH_NAME into
  site-packages: one line that puts a tiny finder (HOOK) on `sys.meta_path` and imports
  nothing. It must not import `harness`: a grid job imports the code frozen at submit time,
  which only works if no `harness` from the live checkout is in `sys.modules` already.
- When `lm_eval.api.registry` is about to be imported, the finder imports this module
  (silently doing nothing when the project is not importable) and wraps the registry's loader
  so that, right after it has been executed, "mhc-bench" is registered as a lazy
  "module:Class" entry, which lm-eval resolves (importing the adapter) only when that model
  is asked for.

The tasks are those `mhc-bench eval` rendered for the run: `--include_path RUN_DIR/eval/tasks
--tasks mhc_gsm8k`, with HF_DATASETS_OFFLINE=1 as everything here is offline.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

from harness.core.atomic import write_text

REGISTRY_MODULE = "lm_eval.api.registry"
MODEL_NAME = "mhc-bench"
TARGET = "harness.eval.adapter:MhcBenchLM"  # what @register_model on the class also registers
PTH_NAME = "mhc_bench_lm_eval.pth"  # sorts after setuptools' __editable__ hook, which makes `harness` importable
HOOK = """
class _MhcBenchLmEval:
    def find_spec(self, name, path=None, target=None):
        if name != "lm_eval.api.registry":
            return None
        sys.meta_path.remove(self)
        try:
            import harness.eval.lm_eval_plugin as plugin
        except Exception:
            return None
        return plugin.registry_spec(name, path)
sys.meta_path.insert(0, _MhcBenchLmEval())
"""
PTH_LINE = f"import sys; exec({HOOK!r})\n"  # a .pth runs only lines that start with `import`


def register() -> None:
    """Add "mhc-bench" to lm-eval's model registry (lazily: nothing is imported for it yet)."""
    registry = sys.modules[REGISTRY_MODULE]
    # lm-eval registers its own models only when it finds the registry empty: fill it first
    import lm_eval.models  # noqa: F401

    if MODEL_NAME not in registry.model_registry:
        registry.model_registry.register(MODEL_NAME, target=TARGET)


class _RegisterAfter(importlib.abc.Loader):
    """The registry module's own loader, then register()."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register()

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self.loader, name)


def registry_spec(name: str, path=None):
    """The spec of lm-eval's registry module with its loader wrapped to register() after it."""
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        return None
    spec.loader = _RegisterAfter(spec.loader)
    return spec


class _Finder(importlib.abc.MetaPathFinder):
    """Sees lm-eval's registry module being imported, once, and wraps its loader."""

    def find_spec(self, name, path=None, target=None):
        if name != REGISTRY_MODULE:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
        return registry_spec(name, path)


def activate() -> None:
    """Register now if lm-eval's registry is loaded, else as soon as it is."""
    if REGISTRY_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def site_dir(where: str | None = None) -> Path:
    import sysconfig

    return Path(where).expanduser().resolve() if where else Path(sysconfig.get_paths()["purelib"])


def install(where: str | None = None) -> Path:
    """Write the start-up hook into `where` (default: this interpreter's site-packages)."""
    path = site_dir(where) / PTH_NAME
    write_text(path, PTH_LINE)
    return path


def remove(where: str | None = None) -> Path | None:
    path = site_dir(where) / PTH_NAME
    if path.is_file():
        path.unlink()
        return path
    return None
