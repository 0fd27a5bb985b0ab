"""The suite registry: `@register_suite("key")` on a Suite subclass (lm-eval's own
`@register_model` / `@register_task` pattern), and the views the rest of mhc-bench reads.

    SUITES    key -> the suite's instance, in `order` (then key): what `all` runs, in that order
    ALIASES   the --tasks groups the suites declare (`aliases`), each listing its suites by key
              (as the paper's Table 4 orders its benchmarks), then `all`; a group stands where
              the first suite (in SUITES) that declares it stands

Both are filled in place as suite modules are imported (harness/eval/suites/__init__.py imports
every module of the package), so `from harness.eval.suites import SUITES` sees every suite,
including one registered later from elsewhere (a test's throwaway suite). A key registered twice
(the error names both classes), or a class that lacks what every suite sets, is one line and
registers nothing.
"""

from __future__ import annotations

import re
from types import MappingProxyType

from harness.core.errors import UserError
from harness.eval.suites.base import REQUIRED, Suite

SUITES: dict[str, Suite] = {}
ALIASES: dict[str, tuple[str, ...]] = {}
ALL = "all"  # the alias of every suite
_KEY = re.compile(r"[a-z0-9][a-z0-9_]*")  # lower case: --tasks names are matched lower-cased


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _problems(key: str, cls: type) -> list[str]:
    """What keeps `cls` from being registered as `key` (empty when nothing does)."""
    problems = []
    if not _KEY.fullmatch(key):
        problems.append(f"key {key!r} is not lower-case letters, digits and '_'")
    if key in ALIASES or key == ALL:
        problems.append(f"key {key!r} is already the name of a --tasks alias")
    if not (isinstance(cls, type) and issubclass(cls, Suite)):
        problems.append("it is not a subclass of harness.eval.suites.base.Suite")
        return problems
    missing = [a for a in REQUIRED if not hasattr(cls, a)] + ([] if callable(getattr(cls, "render", None)) else ["render()"])
    if missing:
        problems.append(f"it does not set {', '.join(missing)}")
    clash = [a for a in cls.aliases if a in SUITES or a in (key, ALL)]
    if clash:
        problems.append(f"its alias {clash[0]!r} is a suite's key or 'all'")
    return problems


def register_suite(key: str):
    """Class decorator: make the Suite subclass one of the suites users name as `key`."""

    def add(cls: type) -> type:
        if key in SUITES:
            raise UserError(f"suite {key!r} is registered twice: by {_where(type(SUITES[key]))} and by {_where(cls)}")
        problems = _problems(key, cls)
        if problems:
            raise UserError(f"cannot register suite {key!r} ({_where(cls)}): {'; '.join(problems)}")
        cls.key = key
        cls.paper = MappingProxyType(dict(cls.paper))  # read-only: the tables share it
        SUITES[key] = cls()
        _reorder()
        return cls

    return add


def unregister_suite(key: str) -> None:
    """Remove a suite (a temporary one: a test's); an unknown key is one error."""
    if key not in SUITES:
        raise UserError(f"no suite {key!r} is registered; registered: {', '.join(SUITES)}")
    del SUITES[key]
    _reorder()


def _reorder() -> None:
    """SUITES in `order`, ALIASES from the suites' declarations (both updated in place)."""
    suites = sorted(SUITES.values(), key=lambda s: (s.order, s.key))
    SUITES.clear()
    SUITES.update((s.key, s) for s in suites)
    members: dict[str, list[str]] = {}
    for suite in suites:
        for alias in suite.aliases:
            members.setdefault(alias, []).append(suite.key)
    ALIASES.clear()
    ALIASES.update((alias, tuple(sorted(keys))) for alias, keys in members.items())
    ALIASES[ALL] = tuple(SUITES)
