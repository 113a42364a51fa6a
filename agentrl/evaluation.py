"""Evaluation on fixed panels: which games (panel_for), playing them (evaluate_rollout) and summarising seeds.

The command line (`agentrl-eval`) lives in agentrl/eval_cli.py; the trainer's periodic evaluation uses the same
functions, so a checkpoint scores the same in both.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl import distributed
from agentrl.envs.agents import PanelResult, success_table, summarize
from agentrl.policies.base import SamplingParams
from agentrl.rollout import RolloutManager, Task


def load_panel(path: str) -> dict[str, Any]:
    """A panel file: {"instances": [int, …], optional "games": [name, …]}; errors name the file and the fault."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"panel file {path} does not exist (scripts/generate_alfworld.py writes panels)")
    try:
        data = json.loads(file.read_text())
    except ValueError as err:
        raise ValueError(f"panel file {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("instances"), list) or not data["instances"]:
        raise ValueError(f"panel file {path} needs a non-empty 'instances' list")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in data["instances"]):
        raise ValueError(f"panel file {path}: 'instances' must be integers")
    return data


def panel_for(env_id: str, env_kwargs: dict[str, Any], probe: Any, size: int, panel_file: str | None):
    """(instance indices, content hash). A panel file wins (its game names are looked up in the env, so adding
    games never changes what a panel means); else the first `size` instances in the env's order."""
    probe = probe.unwrapped
    num_instances = getattr(probe, "num_instances", None)
    if panel_file:
        panel = load_panel(panel_file)
        indices = [int(i) for i in panel["instances"]]
        if "games" in panel and hasattr(probe, "instance_name"):
            index_of = {probe.instance_name(i): i for i in range(num_instances)}
            missing = [g for g in panel["games"] if g not in index_of]
            if missing:
                raise ValueError(f"panel {panel_file}: {len(missing)} games are not in this data, e.g. {missing[0]}")
            indices = [index_of[g] for g in panel["games"]]
    else:
        indices = list(range(min(size, num_instances))) if num_instances else list(range(size))
    outside = [i for i in indices if i < 0 or (num_instances is not None and i >= num_instances)]
    if outside:
        raise ValueError(
            f"panel {panel_file}: instances {outside[:5]} are outside this task set (0..{num_instances - 1})"
            if num_instances
            else f"panel {panel_file}: negative instances {outside[:5]}"
        )
    blob = json.dumps({"env": env_id, "kwargs": env_kwargs, "instances": indices}, sort_keys=True, default=str)
    return indices, hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_rollout(
    rollout: RolloutManager,
    instances: Sequence[int],
    seed: int,
    sampling: SamplingParams | None = None,
    *,
    progress: bool = False,
) -> PanelResult:
    """One episode per panel instance (env seed = instance index, so every run sees the same games), sampled with
    the manager's own sampling unless `sampling` is given; `seed` varies the sampling between evaluations.

    Under torchrun every rank plays its share of the panel and the per-game outcomes are gathered in panel order,
    so every rank returns the whole panel's result (with greedy decoding, the numbers one process gets)."""
    mine = distributed.split(list(instances))
    tasks = [Task(instance=i, seed=i, group_id=f"eval-{i}") for i in mine]
    episodes = rollout.run(tasks, group_size=1, seed=seed, sampling=sampling, progress=progress, desc="eval")
    games = [
        {
            "instance": e.instance,
            "task_type": e.task_type,
            "won": e.won,
            "turns": len(e.turns),
            "reward": e.total_reward,
            "invalid": e.num_invalid,
            "truncation": e.truncation_reason,
            "actions": [t.action for t in e.turns],  # what the agent did, turn by turn (<run>/eval/iter-N.json)
        }
        for e in episodes
    ]
    games = distributed.merge(distributed.gather(games))
    result = summarize([(g["task_type"], g["won"]) for g in games])
    result.invalid_rate = sum(g["invalid"] for g in games) / max(sum(g["turns"] for g in games), 1)
    result.episodes = games
    return result


def seeds_table(results: list[PanelResult]) -> dict[str, Any]:
    """Mean ± std over seeds for All and each task type."""
    types = sorted({t for r in results for t in r.per_type})
    out = {}
    for name, values in [("All", [r.success for r in results])] + [
        (t, [r.per_type.get(t, 0.0) for r in results]) for t in types
    ]:
        out[name] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}
    return out


def markdown(summary: dict[str, Any], counts: dict[str, int]) -> str:
    """The seeds table: success mean ± std per task type and All."""
    cells = {name: f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" for name, v in summary.items()}
    return success_table({"success (%)": cells}, counts)
