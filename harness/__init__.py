"""mhc-bench: a benchmark and ablation harness for residual-connection variants."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout (or snapshot) this code runs from
