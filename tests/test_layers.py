"""The import-linter layers contract (pyproject.toml) places every module of harness/: a module
it does not name would be checked against nothing. `make lint` runs the contracts themselves."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layered_modules() -> set[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    return {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}


def test_every_harness_module_is_in_a_layer():
    modules = set()
    for path in (ROOT / "harness").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue  # a package's __init__ belongs with its package
        modules.add(".".join(parts))
    layered = layered_modules()
    covered = {m for m in modules if m in layered or any(m.startswith(p + ".") for p in layered)}
    assert covered == modules, f"not in any layer of pyproject.toml's contract: {sorted(modules - covered)}"
    assert {"kernels", "variants", "slurm"} <= layered


def test_layers_below_the_cli_name_packages_not_modules():
    """A layer that lists modules lets them all import each other; packages show the cut in the folders."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    for layer in layers[1:]:
        for name in (m.strip() for m in layer.replace("|", ":").split(":")):
            assert (ROOT / name.replace(".", "/") / "__init__.py").is_file(), f"{name} is a module, not a package"


MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_a_screen():
    """A function over ~80 lines hides its steps; ruff's statement and branch limits (make lint)
    bound the same thing by statements, this by lines."""
    long = []
    for package in ("harness", "variants", "kernels", "slurm", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over the limit: " + "; ".join(long)
