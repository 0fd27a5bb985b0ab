"""Write the task YAMLs of the requested suites, with absolute paths, into a run's folder.

Each YAML `include:`s lm-eval's built-in task by absolute path (so its prompt, filters and
metrics are used as they are) and overrides only the dataset: local files instead of the
Hugging Face Hub, and a datasets cache inside the run folder. Those paths are known only at
run time (where lm-eval is installed, `--data-dir`, the run folder), so each suite's templates
(text in its module, harness/eval/suites/<key>.py) carry `${NAME}` placeholders, each filled
with a JSON string (valid YAML in any position). A suite's `render(out)` fills them through
the Renderer here, which knows where everything is.

Every file a suite needs is checked first: a missing one is one error naming it.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness import PROJECT_ROOT
from harness.core.errors import UserError
from harness.eval.suites import Suite

_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def default_data_dir() -> Path:
    """../shared/data/eval beside the project, or $MHC_BENCH_DATA/eval."""
    import os

    root = os.environ.get("MHC_BENCH_DATA") or PROJECT_ROOT.parent / "shared" / "data"
    return (Path(root).expanduser() / "eval").resolve()


def fill(template: str, values: dict[str, object]) -> str:
    """Replace each ${NAME} by json.dumps(values[NAME]); an unfilled name is a bug here."""

    def one(m):
        if m.group(1) not in values:
            raise KeyError(f"template placeholder ${{{m.group(1)}}} has no value")
        return json.dumps(values[m.group(1)], ensure_ascii=False)

    return _PLACEHOLDER.sub(one, template)


class _Loader(yaml.SafeLoader):
    """Reads lm-eval YAMLs for their plain keys; `!function` tags stay strings."""


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def read_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_Loader)


@dataclass
class Rendered:
    dir: Path  # the folder to give lm-eval's TaskManager as include_path
    files: list[Path]


class Renderer:
    """What a suite's `render(out)` writes through: the data folder (`data`), lm-eval's built-in
    tasks (`builtin`), the corpus folder, the run's held-out documents, and the YAMLs written."""

    def __init__(self, out_dir: Path, data_dir: Path, cache_dir: Path, corpus_dir: Path | None, heldout: Path | None):
        self.out, self.data, self.cache = Path(out_dir), Path(data_dir), Path(cache_dir)
        self.corpus_dir, self.heldout = corpus_dir, heldout
        self.builtin = lm_eval_tasks_dir()
        self.files: list[Path] = []

    def write(self, template: str, name: str, **values) -> None:
        """`template` (YAML text) with its placeholders filled, as <out>/<name>.yaml."""
        text = fill(template, {"CACHE": str(self.cache), **values})
        path = self.out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files.append(path)

    def need(self, *paths: Path) -> None:
        """One error naming the first data file that is missing."""
        for p in paths:
            if not p.is_file():
                raise UserError(f"evaluation data file not found: {p} (point --data-dir at the folder holding "
                                "bbh/, drop/, gsm8k/, mmlu/; the default is ../shared/data/eval)")

    def read(self, path: Path) -> dict:
        """An lm-eval YAML's plain keys (`!function` tags stay strings)."""
        return read_yaml(path)


def render_tasks(suites: list[Suite], out_dir, *, data_dir, cache_dir, heldout=None, corpus_dir=None) -> Rendered:
    """Write the YAMLs of `suites` into a fresh `out_dir` (stale task files would be indexed
    too). `heldout` is the run's validation documents as JSONL (harness.eval.heldout)."""
    data_dir = Path(data_dir).expanduser().resolve()
    if not data_dir.is_dir():
        raise UserError(f"evaluation data folder not found: {data_dir} (give --data-dir; the default is ../shared/data/eval)")
    out_dir = Path(out_dir)
    renderer = Renderer(out_dir.with_name(out_dir.name + ".tmp"), data_dir, Path(cache_dir).resolve(),
                        Path(corpus_dir).resolve() if corpus_dir else None, Path(heldout) if heldout else None)
    shutil.rmtree(renderer.out, ignore_errors=True)
    for suite in suites:
        suite.render(renderer)  # checks its files before writing anything of its own
    for path in renderer.files:
        read_yaml(path)  # a template bug shows here, naming the file, not deep inside lm-eval
    shutil.rmtree(out_dir, ignore_errors=True)
    renderer.out.rename(out_dir)
    return Rendered(out_dir, [out_dir / p.relative_to(renderer.out) for p in renderer.files])
