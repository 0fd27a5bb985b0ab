# Two set-up commands, both idempotent: `make demo` (the main job) and `make test`.
# Each creates .venv on first use and reinstalls only when pyproject.toml/constraints.txt change.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean-runs smoke cluster-up cluster-down gpu-check gpu-bundle

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,peers]'
	$(BIN)/mhc-bench lm-eval-model install  # lets `lm_eval --model mhc-bench` find our model
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mhc-bench demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Static checks CI runs before the tests: pyflakes and import order (ruff), and the one-way
# layers and absence of import circles of pyproject.toml's import-linter contracts.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean-runs:
	rm -rf runs

# The smoke grid (7 tiny runs, a few minutes on 2 cores) through the same dispatch as SLURM grids.
smoke: $(STAMP)
	$(BIN)/mhc-bench grid submit slurm/grids/smoke.toml

# A single-node SLURM on this machine (apt-get installs it when run as root); state in /tmp.
cluster-up:
	bash slurm/cluster.sh up

cluster-down:
	bash slurm/cluster.sh down

# On a GPU machine, from a plain checkout with that machine's own Python (no venv, no install):
# kernel tests on CUDA, tf32 accuracy, `bench kernels` and `bench model` at gpt-s, <= ~8 min
# (harness/bench/gpu_check.py; results in $OUT or runs/gpu-check/). `make gpu-bundle` first, here,
# puts Liger-Kernel's wheel and a few corpus shards where the run can use them offline.
gpu-check:
	PYTHONPATH=. $(PYTHON) -m harness.bench.gpu_check

gpu-bundle: $(STAMP)
	mkdir -p .gpu-wheels .gpu-data/corpus/wikipedia_en_2015
	$(BIN)/python -m pip download --quiet --no-deps -c constraints.txt liger-kernel -d .gpu-wheels
	cp ../shared/data/corpus/wikipedia_en_2015/wiki_0[0-3].gz ../shared/data/corpus/wikipedia_en_2015/wiki_4[89].gz \
	   .gpu-data/corpus/wikipedia_en_2015/
