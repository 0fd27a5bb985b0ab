"""Write the task YAMLs of the requested suites, with absolute paths, into a run's folder.

Each YAML `include:`s lm-eval's built-in task by absolute path (so its prompt, filters and
metrics are used as they are) and overrides only the dataset: local files instead of the
Hugging Face Hub, and a datasets cache inside the run folder. Those paths are known only at
run time (where lm-eval is installed, `--data-dir`, the run folder), so the templates in
`tasks/` carry `${NAME}` placeholders, each filled with a JSON string (valid YAML in any
position). BBH's few-shot examples are parsed from the shipped cot-prompts files here.

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
from harness.eval.suites import MMLU_CATEGORIES, Suite

TEMPLATES = Path(__file__).resolve().parent / "tasks"
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")
COT_SEPARATOR = "\n-----\n"  # ends the canary header of a cot-prompts file
COT_ANSWER = "\nA: Let's think step by step."  # then a newline (a space in sports_understanding)


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


def need(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            raise UserError(f"evaluation data file not found: {p} (point --data-dir at the folder holding "
                            "bbh/, drop/, gsm8k/, mmlu/; the default is ../shared/data/eval)")


def parse_cot_prompt(path: Path) -> tuple[str, list[dict]]:
    """A BBH cot-prompts file -> (description, [{input, target}] x 3).

    After the canary header, paragraphs before the first "Q: " are the task description
    (snarks has two), each "Q: ..." paragraph opens a worked example. lm-eval's built-in
    YAMLs were generated from the same upstream files; the prompt-fidelity test checks that
    both render identically.
    """
    text = path.read_text(encoding="utf-8").split(COT_SEPARATOR)[-1]
    intro: list[str] = []
    shots: list[str] = []
    for block in text.split("\n\n"):
        if block.startswith("Q: "):
            shots.append(block)
        elif shots:
            shots[-1] += "\n\n" + block
        else:
            intro.append(block)
    samples = []
    for shot in shots:
        question, sep, target = shot.partition(COT_ANSWER)
        if not sep or target[:1] not in ("\n", " "):
            raise UserError(f"{path}: a worked example does not look like 'Q: ...\\nA: Let's think step by step.\\n...'")
        samples.append({"input": question[len("Q: "):], "target": target[1:]})
    if len(samples) != 3 or not intro:
        raise UserError(f"{path}: expected a description and 3 worked examples, found {len(samples)} examples")
    return "\n\n".join(intro) + "\n\n", samples


@dataclass
class Rendered:
    dir: Path  # the folder to give lm-eval's TaskManager as include_path
    files: list[Path]


class Renderer:
    """Writes YAMLs into `out_dir`; one method per suite."""

    def __init__(self, out_dir: Path, data_dir: Path, cache_dir: Path, corpus_dir: Path | None, heldout: Path | None):
        self.out, self.data, self.cache = Path(out_dir), Path(data_dir), Path(cache_dir)
        self.corpus_dir, self.heldout = corpus_dir, heldout
        self.builtin = lm_eval_tasks_dir()
        self.files: list[Path] = []

    def write(self, template: str, name: str, **values) -> None:
        text = fill((TEMPLATES / template).read_text(encoding="utf-8"), {"CACHE": str(self.cache), **values})
        path = self.out / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files.append(path)

    def gsm8k(self, suite: Suite) -> None:
        train, test = self.data / "gsm8k" / "train.jsonl", self.data / "gsm8k" / "test.jsonl"
        need(train, test)
        self.write("gsm8k.yaml", suite.lm_eval_name, BUILTIN=str(self.builtin / "gsm8k" / "gsm8k.yaml"),
                   TASK=suite.lm_eval_name, GSM8K_TRAIN=str(train), GSM8K_TEST=str(test))

    def drop(self, suite: Suite) -> None:
        dev = self.data / "drop" / "drop_v0_dev.jsonl.gz"
        need(dev)
        self.write("drop.yaml", suite.lm_eval_name, BUILTIN=str(self.builtin / "drop" / "default.yaml"),
                   TASK=suite.lm_eval_name, DROP_DEV=str(dev))

    def bbh(self, suite: Suite) -> None:
        folder = self.builtin / "bbh" / "cot_fewshot"
        group = read_yaml(folder / "_bbh_cot_fewshot.yaml")
        subtasks = [t.removeprefix("bbh_cot_fewshot_") for t in group["task"]]
        names = []
        for sub in subtasks:
            examples, prompt = self.data / "bbh" / "bbh" / f"{sub}.json", self.data / "bbh" / "cot-prompts" / f"{sub}.txt"
            need(examples, prompt)
            description, samples = parse_cot_prompt(prompt)
            name = f"{suite.lm_eval_name}_{sub}"
            self.write("bbh.yaml", f"bbh/{name}", BUILTIN=str(folder / f"{sub}.yaml"), TASK=name,
                       BBH_EXAMPLES=str(examples), BBH_DESCRIPTION=description, BBH_SAMPLES=samples)
            names.append(name)
        self.write("bbh_group.yaml", f"bbh/{suite.lm_eval_name}", BUILTIN=str(folder / "_bbh_cot_fewshot.yaml"),
                   GROUP=suite.lm_eval_name, SUBTASKS=names)

    def mmlu(self, suite: Suite) -> None:
        folder = self.builtin / "mmlu" / "default"
        subjects = sorted(p.stem.removeprefix("mmlu_") for p in folder.glob("mmlu_*.yaml"))
        by_category: dict[str, list[str]] = {c: [] for c in MMLU_CATEGORIES}
        for subject in subjects:
            test, dev = self.data / "mmlu" / "test" / f"{subject}_test.csv", self.data / "mmlu" / "dev" / f"{subject}_dev.csv"
            need(test, dev)
            builtin = folder / f"mmlu_{subject}.yaml"
            category = str(read_yaml(builtin)["tag"]).removeprefix("mmlu_").removesuffix("_tasks")
            name = f"{suite.lm_eval_name}_{subject}"
            self.write("mmlu.yaml", f"mmlu/{name}", BUILTIN=str(builtin), TASK=name, TAG=f"{suite.lm_eval_name}_{category}_tasks",
                       MMLU_TEST=str(test), MMLU_DEV=str(dev))
            by_category[category].append(name)
        for category in MMLU_CATEGORIES:
            self.write("mmlu_group.yaml", f"mmlu/{suite.lm_eval_name}_{category}", BUILTIN=str(folder / f"_mmlu_{category}.yaml"),
                       GROUP=f"{suite.lm_eval_name}_{category}", SUBTASKS=[f"{suite.lm_eval_name}_{category}_tasks"])
        self.write("mmlu_group.yaml", f"mmlu/{suite.lm_eval_name}", BUILTIN=str(folder / "_mmlu.yaml"), GROUP=suite.lm_eval_name,
                   SUBTASKS=[f"{suite.lm_eval_name}_{c}" for c in MMLU_CATEGORIES])

    def wikitext2(self, suite: Suite) -> None:
        folder = (self.corpus_dir or self.data.parent / "corpus") / "wikitext-2"
        valid, test = folder / "valid.txt", folder / "test.txt"
        need(valid, test)
        self.write("wikitext2.yaml", suite.lm_eval_name, BUILTIN=str(self.builtin / "wikitext" / "wikitext.yaml"),
                   TASK=suite.lm_eval_name, WIKITEXT_VALID=str(valid), WIKITEXT_TEST=str(test))

    def wiki(self, suite: Suite) -> None:
        if self.heldout is None:
            raise UserError("task 'wiki' scores a run's held-out validation documents; render it for a run "
                            "(mhc-bench eval RUN_DIR --tasks wiki)")
        need(self.heldout)
        self.write("wiki.yaml", suite.lm_eval_name, BUILTIN=str(self.builtin / "wikitext" / "wikitext.yaml"),
                   TASK=suite.lm_eval_name, HELDOUT=str(self.heldout))


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
        getattr(renderer, suite.key)(suite)  # checks its files before writing anything of its own
    for path in renderer.files:
        read_yaml(path)  # a template bug shows here, naming the file, not deep inside lm-eval
    shutil.rmtree(out_dir, ignore_errors=True)
    renderer.out.rename(out_dir)
    return Rendered(out_dir, [out_dir / p.relative_to(renderer.out) for p in renderer.files])
