"""The lm-eval tasks of one `mhc-bench eval` call, built once and reused by each of its runs.

Building a task is reading its data (the datasets json/text builders, the MMLU CSVs, DROP's
9.5k-row conversion) and parsing its YAMLs: seconds per run, and the same for every run of an
experiment. A TaskSet renders the task YAMLs once per distinct set of held-out files (a copy
goes into each run's `eval/tasks/` as the record of what it used), keeps one lm-eval
TaskManager per rendering and the Task/Group objects it built, and hands the same objects to
every run's `simple_evaluate`. lm-eval builds each run's requests from them afresh; the only
state it sets on them is num_fewshot and the few-shot seed, the same for all runs of a call.

The Hugging Face datasets cache the YAMLs name is the experiment's (`<experiment>/eval-cache/
hf-datasets`), so a later call reads the prepared Arrow files instead of building them again.

External suites (lm-eval tasks of the user's) come from a TaskManager over lm-eval's own tasks
and the user's `--include-path` folders, indexed once (about 5 s) and only when one is named.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import shutil
from pathlib import Path

from harness.eval.heldout import heldout_file
from harness.eval.render import render_tasks
from harness.eval.suites import Suite

SHARED_DIR = "eval-cache"  # in the experiment folder: what the runs of an experiment share
HF_DATASETS = "hf-datasets"


def search_path(include_path=()) -> tuple[str, ...]:
    """The user's --include-path folders, absolute."""
    return tuple(str(Path(p).expanduser().resolve()) for p in include_path)


@functools.lru_cache(maxsize=4)
def lm_eval_index(include_path: tuple[str, ...]):
    """lm-eval's TaskManager over its own tasks and the user's folders: ~15k names indexed in
    about 5 s, so once per process and search path (validation and loading share it)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_path) or None, include_defaults=True)


def suite_source(suite: Suite) -> bytes:
    """The source of the module that defines `suite`: its one file (harness/eval/suites/)."""
    path = inspect.getsourcefile(type(suite))
    return Path(path).read_bytes() if path else b""


def shared_dir(run_dir: Path) -> Path:
    """The experiment folder's shared evaluation cache (the folder that holds the run)."""
    return Path(run_dir).resolve().parent / SHARED_DIR


class TaskSet:
    """Rendered task YAMLs and built lm-eval tasks of `suites`, shared by the runs of one call."""

    def __init__(self, suites: list[Suite], *, data_dir: Path, hf_cache: Path, include_path=()):
        self.suites = suites
        self.own = [s for s in suites if not s.external]
        self.data_dir, self.hf_cache = Path(data_dir), Path(hf_cache).resolve()
        self.include_path = search_path(include_path)
        self._rendered: dict[Path | None, Path] = {}  # held-out documents -> the first folder rendered for them
        self._managers: dict[str, object] = {}  # rendering's content hash -> TaskManager
        self._objects: dict[tuple[str, str], list] = {}  # (content hash, suite key) -> lm-eval objects
        self.builds: dict[str, int] = {}  # suite key -> times its tasks were built (tests read it)

    # ------------------------------------------------------------------ names
    def external_manager(self):
        """lm-eval's TaskManager over its own tasks and the user's include paths."""
        return lm_eval_index(self.include_path)

    # ------------------------------------------------------------------ YAMLs
    def render(self, run_dir: Path, cfg, limit: int | None = None) -> Path:
        """Write the YAMLs of our suites into <run>/eval/tasks; the run's held-out documents
        are the only run-dependent input, so runs that share them get a copy of one rendering."""
        out = Path(run_dir) / "eval" / "tasks"
        heldout = heldout_file(cfg, run_dir, shared_dir(run_dir), limit) if any(s.uses_heldout for s in self.own) else None
        first = self._rendered.get(heldout)
        if not self.own:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
        elif first is None or not first.is_dir():
            render_tasks(self.own, out, data_dir=self.data_dir, cache_dir=self.hf_cache, heldout=heldout)
            self._rendered[heldout] = out
        elif first != out:
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(first, tmp)
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        return out

    def _files(self, rendered: Path, suite: Suite) -> list[Path]:
        name = suite.lm_eval_name
        return sorted(p for p in rendered.rglob("*.yaml") if p.stem == name or p.stem.startswith(name + "_"))

    def definitions(self, rendered: Path) -> dict[str, str]:
        """Suite key -> hash of what defines its tasks: its YAMLs' text (the datasets cache's
        location left out: it changes no result) and its module's source (the hooks and file
        parsing its YAMLs use), or an external task's name, search path and the YAML that
        defines it."""
        out = {}
        for suite in self.suites:
            h = hashlib.sha256()
            if suite.external:
                h.update(repr((suite.lm_eval_name, self.include_path)).encode())
                entry = self.external_manager().task_index.get(suite.lm_eval_name)
                if entry is not None and entry.yaml_path and Path(entry.yaml_path).is_file():
                    h.update(Path(entry.yaml_path).read_bytes())
            else:
                h.update(suite_source(suite) + b"\0")
                for path in self._files(rendered, suite):
                    h.update(str(path.relative_to(rendered)).encode() + b"\0")
                    h.update(path.read_text(encoding="utf-8").replace(str(self.hf_cache), "${CACHE}").encode() + b"\0")
            out[suite.key] = h.hexdigest()
        return out

    # ------------------------------------------------------------------ lm-eval objects
    def _content(self, rendered: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(rendered.rglob("*.yaml")):
            h.update(str(path.relative_to(rendered)).encode() + b"\0" + path.read_bytes() + b"\0")
        return h.hexdigest()

    def manager(self, rendered: Path):
        """The TaskManager of a rendering (one per distinct content)."""
        from lm_eval.tasks import TaskManager

        content = self._content(rendered)
        if content not in self._managers:
            self._managers[content] = TaskManager(include_path=str(rendered), include_defaults=False)
        return self._managers[content]

    def objects(self, rendered: Path, suites: list[Suite]) -> tuple[list, dict]:
        """The lm-eval Task/Group objects of `suites` (built on first use, then reused), and
        the owner map of the external ones (object name -> suite) for results.rows_from_results."""
        from lm_eval.api.task import Task

        content = self._content(rendered)
        objects, owners = [], {}
        for suite in suites:
            key = (content if not suite.external else "external", suite.key)
            if key not in self._objects:
                manager = self.external_manager() if suite.external else self.manager(rendered)
                loaded = manager.load([suite.lm_eval_name])
                name = suite.lm_eval_name
                top = loaded.get("groups", {}).get(name) or loaded["tasks"].get(name)
                self._objects[key] = [top] if top is not None else list(loaded["tasks"].values())  # a tag: its tasks
                self.builds[suite.key] = self.builds.get(suite.key, 0) + 1
            for obj in self._objects[key]:
                objects.append(obj)
                if suite.external:
                    owners[obj.task_name if isinstance(obj, Task) else obj.name] = suite
        return objects, owners
