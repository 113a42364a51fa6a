"""Scripted agents that act on (observation, info), and a panel runner that measures success rates."""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym

from agentrl.envs.pool import EnvInterrupted, guarded


class ScriptedAgent(Protocol):
    def reset(self, observation: str, info: dict[str, Any]) -> None: ...

    def act(self, observation: str, info: dict[str, Any]) -> str: ...


class RandomAdmissibleAgent:
    """Picks a random admissible action (or a fixed fallback when the env lists none)."""

    def __init__(self, seed: int = 0, fallback: str = "look"):
        self.rng = random.Random(seed)
        self.fallback = fallback

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        pass

    def act(self, observation: str, info: dict[str, Any]) -> str:
        choices = info.get("admissible_actions") or []
        return self.rng.choice(choices) if choices else self.fallback


class OracleAgent:
    """Follows the walkthrough / planner plan that the env put in info at reset."""

    def __init__(self, fallback: str = "look"):
        self.plan: list[str] = []
        self.fallback = fallback

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        self.plan = list(info.get("walkthrough") or [])

    def act(self, observation: str, info: dict[str, Any]) -> str:
        return self.plan.pop(0) if self.plan else self.fallback


SCRIPTED_AGENTS: dict[str, Callable[..., ScriptedAgent]] = {"random": RandomAdmissibleAgent, "oracle": OracleAgent}


@dataclass
class PanelResult:
    success: float
    per_type: dict[str, float]
    counts: dict[str, int]
    episodes: list[dict[str, Any]] = field(default_factory=list)
    invalid_rate: float = 0.0  # fraction of turns with an invalid reply (model agents)

    def table(self) -> str:
        cells = {"All": f"{100 * self.success:.1f}%", **{t: f"{100 * v:.1f}%" for t, v in self.per_type.items()}}
        return success_table({"success": cells}, self.counts)


def success_table(columns: dict[str, dict[str, str]], counts: dict[str, int] | None = None) -> str:
    """The one per-task-type success table (markdown): a row per task type, then "All"; one column per entry of
    `columns` (name → {task type or "All": formatted cell}); a games column when `counts` is given."""
    types = sorted({t for cells in columns.values() for t in cells if t != "All"})
    head = ["task type", *(["games"] if counts is not None else []), *columns]
    rows = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name in [*types, "All"]:
        games = [str(sum(counts.values()) if name == "All" else counts.get(name, 0))] if counts is not None else []
        rows.append("| " + " | ".join([name, *games, *(cells.get(name, "—") for cells in columns.values())]) + " |")
    return "\n".join(rows)


def summarize(outcomes: Sequence[tuple[str, bool]]) -> PanelResult:
    """Micro-average success overall and per task type from (task_type, won) pairs."""
    wins: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for task_type, won in outcomes:
        counts[task_type] += 1
        wins[task_type] += int(won)
    total = max(sum(counts.values()), 1)
    return PanelResult(
        success=sum(wins.values()) / total,
        per_type={t: wins[t] / counts[t] for t in counts},
        counts=dict(counts),
    )


def run_panel(
    env: gym.Env, agent: ScriptedAgent, instances: Sequence[int], max_steps: int = 50, timeout_s: float | None = None
) -> PanelResult:
    """Play `agent` once on each instance (in order) and report success overall and per task type. `timeout_s`:
    each reset and step under that time limit (EnvPool's in-process guard); one that runs past it, or calls
    os._exit, loses its episode (recorded with the reason) and the panel goes on."""

    def call(fn: Any, *args: Any) -> Any:
        if timeout_s is None:
            return fn(*args)
        with guarded(timeout_s):
            return fn(*args)

    outcomes, episodes = [], []
    for index in instances:
        won, steps, total, error, task_type, info = False, 0, 0.0, None, "", {"instance": index}
        try:
            obs, info = call(functools.partial(env.reset, options={"instance": index}))
            agent.reset(obs, info)
            won, task_type = bool(info.get("won")), info.get("task_type", "")
            while not won and steps < max_steps:
                obs, reward, terminated, truncated, info = call(env.step, agent.act(obs, info))
                steps, total, won = steps + 1, total + reward, bool(info.get("won"))
                if terminated or truncated:
                    break
        except EnvInterrupted as stop:
            won, error = False, f"env {stop}"
        outcomes.append((task_type, won))
        episode = {"instance": info.get("instance"), "task_type": task_type, "won": won, "steps": steps}
        episodes.append({**episode, "reward": total, **({"error": error} if error else {})})
    result = summarize(outcomes)
    result.episodes = episodes
    return result
