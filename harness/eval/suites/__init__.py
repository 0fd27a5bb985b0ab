"""The evaluation suites users name (`--tasks paper|bbh,drop,...`): one module per suite.

A suite is one file here: a `Suite` subclass registered with `@register_suite("key")` that holds
its lm-eval task definition (the YAML templates, as text, that its `render` fills in for the
run), its prompt data parsing, its few-shot count and cap, the `!function` hooks its YAMLs
name, and the paper's published numbers. No other file names it: importing this package
imports every module in it, which fills the registry (registry.py), and everything else
(rendering, runs, caching, rows, tables, plots) reads the suites from there.

    base.py       Suite, the attributes a suite sets; ExternalSuite, an lm-eval task of the user's
    registry.py   @register_suite, SUITES, ALIASES
    names.py      --tasks text -> suites; lm-eval result names -> (suite, subtask, level)
    bbh.py drop.py gsm8k.py mmlu.py wikitext2.py wiki.py   the suites

To add one, copy the module of the closest suite (gsm8k.py is the smallest) and change it.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.eval.suites.base import PREFIX, TRUNCATION_NOTE, ExternalSuite, Suite
from harness.eval.suites.names import locate, parse_tasks, unknown_task
from harness.eval.suites.registry import (
    ALIASES,
    SUITES,
    register_suite,
    unregister_suite,
)

__all__ = ["ALIASES", "PREFIX", "SUITES", "TRUNCATION_NOTE", "ExternalSuite", "Suite", "locate", "parse_tasks",
           "register_suite", "unknown_task", "unregister_suite"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # a suite module registers itself
