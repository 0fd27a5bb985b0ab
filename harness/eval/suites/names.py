"""Names in and out of the registry: what users type (`--tasks paper|bbh,drop,...`) -> suites,
and lm-eval's task and group names in its results -> the suite, subtask and level they belong to.

Any name that is not ours is an lm-eval task, group or tag the user has locally (lm-eval's own,
or one under `--include-path`): it runs as lm-eval defines it (an ExternalSuite).
"""

from __future__ import annotations

import difflib
from typing import Callable, Collection

from harness.core.errors import UserError
from harness.eval.suites.base import ExternalSuite, Suite
from harness.eval.suites.registry import ALIASES, SUITES


def parse_tasks(text: str, lm_eval_names: Callable[[], Collection[str]] | None = None) -> list[Suite]:
    """'paper,wiki' -> the suites, in order, each once; unknown names are one clear error.

    A name that is not ours is looked up among `lm_eval_names()` (the tasks, groups and tags
    lm-eval finds locally; asked only when such a name occurs, since indexing them takes
    seconds) and becomes an external suite; without it, or when lm-eval lacks it too, the error
    suggests the closest names of both.
    """
    keys: list[str] = []
    external: dict[str, Suite] = {}
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise UserError(f"--tasks is empty; choose from {', '.join([*ALIASES, *SUITES])}")
    ours = [*ALIASES, *SUITES]
    known: Collection[str] | None = None
    for name in names:
        low = name.lower()
        if low in ALIASES:
            keys += ALIASES[low]
        elif low in SUITES:
            keys.append(low)
        else:
            if known is None and lm_eval_names is not None:
                known = lm_eval_names()
            if known is None or name not in known:
                raise UserError(unknown_task(name, ours, known or ()))
            external[name] = ExternalSuite(name)
            keys.append(name)
    return [SUITES[k] if k in SUITES else external[k] for k in dict.fromkeys(keys)]


def unknown_task(name: str, ours, theirs) -> str:
    """The one-line error for a task name neither we nor lm-eval know, with the closest names."""
    close = difflib.get_close_matches(name.lower(), list(dict.fromkeys([*ours, *theirs])), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    where = (f"mhc-bench's {', '.join(ours)}, or one of the {len(theirs)} lm-eval tasks found locally "
             "(`lm_eval ls tasks`; your own YAMLs with --include-path)") if theirs else f"{', '.join(ours)}"
    return f"unknown task {name!r}{hint}; choose from {where}"


def locate(lm_eval_name: str) -> tuple[Suite, str, str] | None:
    """lm-eval task/group name -> (suite, subtask, level); level is 'task' (the suite's own
    number, subtask ""), 'group' (an intermediate group, e.g. MMLU's stem) or 'subtask'."""
    for suite in SUITES.values():
        base = suite.lm_eval_name
        if lm_eval_name == base:
            return suite, "", "task"
        if lm_eval_name.startswith(base + "_"):
            sub = lm_eval_name[len(base) + 1:]
            return suite, sub, "group" if sub in suite.groups else "subtask"
    return None
