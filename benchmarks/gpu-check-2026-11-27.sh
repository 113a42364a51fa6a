#!/bin/bash
# GPU checks for agentrl (device tool): benchmark GPU section + a few alfworld_paper iterations on a random-init
# SmolLM2-135M (the pretrained weights cannot travel: 64 MiB limit). Wheels carried in .whl, games in .gpu/alfworld.
set -x
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))"
STAGE=${1:-all}
if [ "$STAGE" = all ] || [ "$STAGE" = bench ]; then
  timeout 200 python3 scripts/benchmark.py --gpu --out $OUT/gpu-bench.json 2>&1 | tail -40
fi
if [ "$STAGE" = all ] || [ "$STAGE" = paper ]; then
  python3 - <<'PY'
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
torch.manual_seed(0)
m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(".gpu/smol"))
m.save_pretrained("/tmp/smol-random"); AutoTokenizer.from_pretrained(".gpu/smol").save_pretrained("/tmp/smol-random")
PY
  timeout 300 python3 -m agentrl.trainer experiment=alfworld_paper model.name=/tmp/smol-random model.device=cuda \
    env.kwargs.data_path=.gpu/alfworld env.eval_instances=8 trainer.iterations=3 trainer.eval_before=false \
    trainer.eval_every=3 trainer.checkpoint_every=3 trainer.progress=false rollout.max_turns=4 rollout.eval_max_turns=4 \
    trainer.run_dir=$OUT/paper 2>&1 | tail -40
  cp $OUT/paper/metrics.jsonl $OUT/paper-metrics.jsonl 2>/dev/null
  rm -rf $OUT/paper
fi
nvidia-smi --query-gpu=memory.used --format=csv
