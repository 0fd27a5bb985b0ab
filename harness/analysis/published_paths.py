"""Published files name paths relative to the project, never a machine's folders.

results/ lives in git and is read on other machines: an absolute path there (a run folder, the
data root, a temporary folder) means nothing on them and names the author's machine. `relative`
rewrites every absolute path in a text to one relative to the project root (the checkout this code
runs from: `/home/me/mhc-bench/runs/depth` becomes `runs/depth`, the shared data root beside the
checkout `../shared/data`); `sanitize_folder` applies it to every text file and to every string
cell of every Parquet table of a folder, in place and atomically; `publish` runs it over what it
copies, and `find_absolute` is what the test over results/ looks for.

An absolute path here is a `/` that does not continue a word, a URL or a base64 run, followed by
at least two `/`-separated names (`/s` in "tokens /s" or the `/td` of HTML are not paths).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness import PROJECT_ROOT
from harness.core.atomic import write_parquet, write_text

ABSOLUTE = re.compile(r"(?<![\w+/=.~:-])/[\w.+@=,-]+(?:/[\w.+@=,-]+)+/?")
TEXT_SUFFIXES = (".md", ".html", ".csv", ".tex", ".txt", ".json", ".log")


def _relative_match(m: re.Match, root: Path) -> str:
    path = m.group(0)
    tail = len(path) - len(path.rstrip(".,"))  # sentence punctuation stays outside the path
    core = path[: len(path) - tail] if tail else path
    return os.path.relpath(core, root) + (os.sep if core.endswith("/") and core != "/" else "") + path[len(core):]


def relative(text: str, root: Path = PROJECT_ROOT) -> str:
    """`text` with every absolute path made relative to `root` (module doc)."""
    return ABSOLUTE.sub(lambda m: _relative_match(m, root), text)


def find_absolute(text: str) -> list[str]:
    """The absolute paths in `text` (module doc's definition)."""
    return [m.group(0).rstrip(".,") for m in ABSOLUTE.finditer(text)]


def sanitize_folder(folder, root: Path = PROJECT_ROOT) -> list[Path]:
    """Rewrite the absolute paths of every text file and Parquet string cell under `folder` (in
    place, each file atomically, only those that change); returns the files rewritten."""
    import pandas as pd


    changed = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="surrogateescape")
            new = relative(text, root)
            if new != text:
                write_text(path, new)
                changed.append(path)
        elif path.suffix == ".parquet":
            df = pd.read_parquet(path)
            touched = False
            for col in df.columns:
                if df[col].dtype == object or str(df[col].dtype) in ("string", "str"):
                    new = df[col].map(lambda v: relative(v, root) if isinstance(v, str) else v)
                    if not new.equals(df[col]):
                        df[col], touched = new, True
            if touched:
                write_parquet(path, df)
                changed.append(path)
    return changed
