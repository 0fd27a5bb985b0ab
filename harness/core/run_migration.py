"""Published tables keyed by legacy run ids, re-keyed by the current ones (harness/core/run_id.py).

A published experiment folder (results/<name>/) has no manifest: its runs.parquet, one row per
run with the run's config flattened into columns, gives each run's config back, hence both ids.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.atomic import write_parquet
from harness.core.config import from_dict
from harness.core.run_id import legacy_hash, run_id


def migrate_tables(folder) -> dict[str, str]:
    """Re-key a published experiment folder's tables from legacy ids to current ones, in place
    (atomically, file by file): its runs.parquet (each run's config flattened into columns) gives
    the mapping, and every Parquet table with a `run_id` column is rewritten. Idempotent.
    Returns {legacy id: current id}."""
    import pandas as pd


    folder = Path(folder)
    mapping = id_map_from_runs_table(pd.read_parquet(folder / "runs.parquet"))
    for path in sorted(folder.glob("*.parquet")):
        df = pd.read_parquet(path)
        if "run_id" in df.columns and df["run_id"].isin(list(mapping)).any():
            df["run_id"] = df["run_id"].map(lambda r: mapping.get(r, r))
            write_parquet(path, df)
    return mapping


def id_map_from_runs_table(runs) -> dict[str, str]:
    """{legacy id: current id} from a runs table whose columns hold each run's flattened config."""

    sections = ("model", "variant", "data", "optim", "train")
    mapping = {}
    for _, row in runs.iterrows():
        nested: dict = {}
        for col, val in row.items():
            section, _, key = str(col).partition(".")
            if section in sections and key and not _missing(val):
                nested.setdefault(section, {})[key] = _scalar(val)
        cfg = from_dict(nested)
        if row["run_id"] not in (legacy_hash(cfg), legacy_hash(cfg, machine_paths=False), run_id(cfg)):
            raise ValueError(f"run {row['run_id']}: its config columns do not give its id back")
        mapping[row["run_id"]] = run_id(cfg)
    return mapping


def _scalar(val):
    """A table cell as the config value it was: an integral float back to int, since a column that
    other variants' runs leave empty (NaN) turns its ints into floats (the config takes an int
    where it wants a float, not the other way round)."""
    val = val.item() if hasattr(val, "item") else val
    return int(val) if isinstance(val, float) and val.is_integer() else val


def _missing(val) -> bool:
    try:
        return val != val  # NaN (a column another variant's options left empty)
    except (TypeError, ValueError):
        return False
