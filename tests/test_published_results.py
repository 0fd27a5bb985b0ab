"""results/ lives in git and is read on other machines: no published file names a machine's folders.

Every file under results/ is read: text files whole, Parquet tables cell by cell (string cells),
and an absolute path (harness/analysis/published_paths.py's definition) anywhere fails the test with the
file and the path. `publish` makes paths relative to the project as it copies; the files published
before it did were rewritten once the same way.
"""

from pathlib import Path

import pandas as pd
import pytest

from harness.analysis.published_paths import (
    TEXT_SUFFIXES,
    find_absolute,
    relative,
    sanitize_folder,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"


def absolute_paths_in(path: Path) -> list[str]:
    if path.suffix in TEXT_SUFFIXES:
        return find_absolute(path.read_text(errors="surrogateescape"))
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        return [p for col in df.columns for v in df[col] if isinstance(v, str) for p in find_absolute(v)]
    return []


def test_no_published_file_contains_an_absolute_path():
    files = [p for p in sorted(RESULTS.rglob("*")) if p.is_file()]
    assert len(files) > 50  # the published experiments are there to be read
    found = {str(p.relative_to(RESULTS)): hits[:3] for p in files if (hits := absolute_paths_in(p))}
    assert not found, f"absolute paths in published files: {found}"


@pytest.mark.parametrize("text, expected", [
    ("from /home/me/mhc-bench/runs/depth.", "from runs/depth."),
    ("data_root='/home/me/shared/data'", "data_root='../shared/data'"),
    ("1/n tokens/s https://arxiv.org/abs/2512.24880 </td> ab+/cd/ef", "1/n tokens/s https://arxiv.org/abs/2512.24880 </td> ab+/cd/ef"),
])
def test_paths_become_relative_to_the_project(text, expected):
    assert relative(text, Path("/home/me/mhc-bench")) == expected


def test_sanitize_rewrites_text_and_parquet_cells(tmp_path):
    (tmp_path / "report.md").write_text("written from /proj/runs/x\n")
    pd.DataFrame({"path": ["/proj/runs/x/run-1", None], "loss": [2.3, 2.4]}).to_parquet(tmp_path / "runs.parquet")
    (tmp_path / "same.md").write_text("nothing to change, 1/n\n")
    changed = sanitize_folder(tmp_path, Path("/proj"))
    assert sorted(p.name for p in changed) == ["report.md", "runs.parquet"]
    assert (tmp_path / "report.md").read_text() == "written from runs/x\n"
    df = pd.read_parquet(tmp_path / "runs.parquet")
    assert df["path"].iloc[0] == "runs/x/run-1" and df["loss"].tolist() == [2.3, 2.4]
