"""One rank of a learner update under torchrun (tests/test_distributed.py launches it with 1 and 2 processes).

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py SCENARIO OUT_DIR

equal   each rank trains on its share (rows rank::world) of 8 fixed samples: 2 optimizer steps (1 mini-batch, 2
        epochs, so the second step is off-policy); rank 0 writes the full weights and metrics
uneven  rank 0 has 7 samples, rank 1 one; 4 rows per optimizer step over both ranks, so 2 per rank (4 steps vs 1),
        small micro-batches
kl_stop as uneven at lr 0.5 with learner.target_kl=1e-9: the KL read after the first step stops the update on
        both ranks alike (rank 1 has no rows then, and still joins the decision)
nan     rank 1's advantages are NaN: every step must be skipped on both ranks
lora    as equal, on a model with LoRA adapters (rank 4): only adapters train, sharded with the frozen base
eval    the trainer's components for experiment=cuebandit (sharded learner, unsharded generation copy): greedy
        evaluation of the panel split across ranks and gathered; rank 0 writes every game's outcome
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentrl import distributed
from agentrl.learner import Learner, LearnerConfig
from agentrl.policies.lora import LoraSpec
from agentrl.policies.models import ModelSpec, load_model
from agentrl.scoring import shard
from agentrl.types import Sample


def samples(count: int, seed: int = 0) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        prompt = torch.randint(3, 300, (int(torch.randint(4, 20, (1,), generator=gen)),), generator=gen).tolist()
        reply = torch.randint(3, 300, (int(torch.randint(2, 9, (1,), generator=gen)),), generator=gen).tolist()
        s = Sample(prompt + reply, [0] * len(prompt) + [1] * len(reply), group_id=str(k // 4), episode_id=k)
        s.advantage = float(torch.randn(1, generator=gen))
        out.append(s)
    return out


def evaluate_panel(out: Path) -> None:
    from agentrl.components import build_components
    from agentrl.config import load_config
    from agentrl.evaluation import evaluate_rollout

    place = distributed.init("cpu")
    torch.manual_seed(0)
    c = build_components(load_config(["experiment=cuebandit", "env.eval_instances=24"]))
    try:
        result = evaluate_rollout(c.evaluators[0], c.panels[0].instances, seed=10_000)
    finally:
        c.close()
    summary = {"success": result.success, "invalid_rate": result.invalid_rate, "games": result.episodes}
    (out / f"eval-{place.world}-rank{place.rank}.json").write_text(json.dumps(summary))
    distributed.shutdown()  # a barrier first: a rank that exits early would abort its peer's gloo threads


def main(scenario: str, out: Path) -> None:
    if scenario == "eval":
        return evaluate_panel(out)
    place = distributed.init("cpu")
    torch.manual_seed(0)
    spec = ModelSpec(name="tiny-qwen2", lora=LoraSpec(rank=4) if scenario == "lora" else LoraSpec())
    model, _ = load_model(spec)
    if place.enabled:
        shard(model)
    every = samples(8)
    if scenario in ("equal", "lora"):
        cfg = LearnerConfig(lr=1e-2, mini_batches=1, epochs=2, micro_batch_tokens=48)
        mine = every[place.rank :: place.world]
    elif scenario in ("uneven", "kl_stop"):
        stop = scenario == "kl_stop"
        cfg = LearnerConfig(
            lr=0.5 if stop else 1e-2, mini_batch_size=4, micro_batch_tokens=24, target_kl=1e-9 if stop else None
        )
        mine = every[:7] if place.rank == 0 else every[7:]
    else:
        cfg = LearnerConfig(lr=1e-2, mini_batches=1, epochs=2)
        mine = every[place.rank :: place.world]
        if place.rank == 1:
            for s in mine:
                s.advantage = float("nan")
    learner = Learner(model, cfg, seed=0)
    before = {n: distributed.full_value(p.detach()).clone() for n, p in model.named_parameters()}
    metrics = learner.update(mine, p=0.5)
    weights = {n: distributed.full_value(p.detach()).clone() for n, p in model.named_parameters()}
    result = {
        "loss": metrics.get("train/loss"),
        "grad_norm": metrics.get("train/grad_norm"),
        "skipped_steps": learner.skipped_steps,
        "optimizer_steps": learner.optimizer_steps,
        "kl_stopped_steps": metrics.get("train/kl_stopped_steps"),
        "moved": max(float((weights[n] - before[n]).abs().max()) for n in weights),
        "base_moved": max(float((weights[n] - before[n]).abs().max()) for n in weights if ".lora_" not in n),
    }
    (out / f"{scenario}-{place.world}-rank{place.rank}.json").write_text(json.dumps(result))
    if place.main:
        torch.save(weights, out / f"{scenario}-{place.world}.pt")
    distributed.shutdown()  # a barrier first: a rank that exits early would abort its peer's gloo threads


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
