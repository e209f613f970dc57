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
	$(BIN)/ruff format --check cgmed tests benchmarks

demo: setup
	$(BIN)/cgmed-data synth out=$(DEMO_DIR)/world
	$(BIN)/cgmed-data catalog data.root=$(DEMO_DIR)/world hydra.run.dir=$(DEMO_DIR)/catalog
	$(BIN)/cgmed-data build experiment=demo_data data.root=$(DEMO_DIR)/world hydra.run.dir=$(DEMO_DIR)/split

bench: setup
	$(BIN)/python benchmarks/catalog_scale.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
