# One way in: `make test` and `make demo` set everything up themselves.
# pip (not uv/poetry): on the project's machines torch/torchvision come from a local wheel cache pip sees.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cgmed-installed
DEMO_DIR ?= outputs/demo

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check cgmed tests benchmarks experiments
	$(BIN)/ruff format --check cgmed tests benchmarks experiments

demo: setup
	@echo "make demo: the CG protocol end to end (splits, Baseline, Trained and Baseline+ trainings, evaluations, report)"; \
	echo "  on a synthetic MAT world with a tiny model, 2 held-out targets x 1 seed: about 4-5 minutes on 2 CPU cores"; \
	start=$$(date +%s); \
	$(BIN)/cgmed-cg experiment=demo hydra.run.dir=$(DEMO_DIR) && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; report: $(DEMO_DIR)/cg_report.md"

bench: setup
	$(BIN)/python benchmarks/catalog_scale.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/eval_speed.py
	$(BIN)/python benchmarks/collate_speed.py
	$(BIN)/python benchmarks/hf_index.py
	$(BIN)/python benchmarks/study_cache.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
