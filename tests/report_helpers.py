"""Helpers shared by the report tests: a small experiment with every table a report lays out,
and the figures the plot functions draw, kept for inspection."""

from pathlib import Path

# headline value per suite (fractions; bits/byte as is), nudged per variant and seed below
EVAL_BASE = {"bbh": 0.10, "drop": 0.20, "gsm8k": 0.02, "mmlu": 0.25, "wiki": 2.40}


def train_runs(root: Path, data_cache, variants=("identity", "mhc"), seeds=(0, 1)) -> Path:
    """Tiny runs of `variants` x `seeds` (8 steps) under root; returns root."""
    from harness.core.config import apply_overrides
    from harness.core.presets import get_preset
    from harness.train.loop import train

    for variant in variants:
        for seed in seeds:
            cfg = get_preset("tiny")
            cfg.run.runs_dir, cfg.run.progress, cfg.data.cache_dir = str(root), "off", str(data_cache)
            train(apply_overrides(cfg, [f"variant.name={variant}", f"train.seed={seed}", "train.steps=8", "train.eval_every=4",
                                        "train.diag_every=4", "train.checkpoint_every=8"]))
    return root


def write_evals(root: Path) -> None:
    """An evals.parquet in each run folder with the headline rows of the four benchmarks and the
    held-out bits/byte, as `mhc-bench eval` writes them (lm-eval itself is too slow for these tests)."""
    import json

    from harness.eval.results import frame
    from harness.eval.suites import SUITES

    for i, run in enumerate(sorted(p for p in root.iterdir() if (p / "config.json").is_file())):
        cfg = json.loads((run / "config.json").read_text())
        rows = []
        for key, value in EVAL_BASE.items():
            s = SUITES[key]
            rows.append({"run": run.name, "run_dir": str(run), "preset": "tiny", "variant": cfg["variant"]["name"],
                         "variant_fixed": cfg["variant"].get("fixed", ""), "n_streams": 4, "seed": cfg["train"]["seed"], "step": 8,
                         "seq_len": 64, "task": key, "subtask": "", "level": "task", "lm_eval_task": s.lm_eval_name,
                         "metric": s.metric, "filter": s.filter, "value": value + 0.01 * i, "stderr": 0.01,
                         "higher_is_better": s.metric != "bits_per_byte", "samples": 20, "num_fewshot": s.shots, "limit": 20,
                         "context_truncated": 0.0, "task_version": "1", "task_hash": "h", "lm_eval_version": "0.4.13",
                         "device": "cpu", "evaluated_at": "t", "notes": s.note})
        frame(rows).to_parquet(run / "evals.parquet")


def bench(root: Path) -> None:
    """A real `bench model` table (identity, HC and mHC, one round of one step) under root/bench/."""
    from harness.cli import main

    assert main(["bench", "model", "--preset", "tiny", "--variants", "identity,hc,mhc", "--streams", "2", "--backends", "torch",
                 "--rounds", "1", "--steps", "1", "--warmup", "1", "--device", "cpu", "--set", "model.seq_len=16",
                 "--set", "train.batch_size=2", "--out", str(root / "bench" / "model.parquet")]) == 0


def full_report(root: Path, data_cache, seeds=(0, 1)) -> Path:
    """An experiment with runs, evaluations and a cost table, reported; returns its report folder."""
    from harness.cli import main

    train_runs(root, data_cache, seeds=seeds)
    write_evals(root)
    bench(root)
    assert main(["report", str(root)]) == 0
    return root / "report"


def keep_figures(monkeypatch) -> dict:
    """{file name: matplotlib Figure} of every figure the plot functions save from now on
    (the body of the `drawn` fixture of the report tests)."""
    from harness.analysis import plots
    figures = {}
    save = plots._save

    def keep(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def legend_colours(ax) -> dict:
    """{legend label: hex colour} of an axes' legend (or of its figure's legend)."""
    from matplotlib.colors import to_hex

    legend = ax.get_legend() or (ax.figure.legends[0] if ax.figure.legends else None)
    assert legend is not None, "no legend"
    out = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        colour = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
        out[text.get_text()] = to_hex(colour[0] if hasattr(colour, "ndim") and colour.ndim == 2 else colour)
    return out


def tick_labels(ax, axis="y") -> list[str]:
    """The labels of the major ticks shown inside the axes' limits (after a draw)."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = ax.yaxis.get_major_ticks() if axis == "y" else ax.xaxis.get_major_ticks()
    locs = ax.get_yticks() if axis == "y" else ax.get_xticks()
    return [t.label1.get_text() for t, v in zip(ticks, locs) if lo <= v <= hi and t.label1.get_text()]
