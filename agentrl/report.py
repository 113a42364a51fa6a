"""What a run reports: each iteration's metrics row (summed and averaged over ranks), panel evaluations with their
per-game outcomes, and the final before / after / random-admissible summary with the paired difference.

    row = iteration_row(it + 1, cfg, episodes, built, samples, update, c, temperatures, times)
    before, games = evaluate(c, 0)
    print_summary(before, after, ["valid_unseen"], run_dir, {"before": …, "after": …}, random_baseline(cfg, c.panels))

The paired difference compares the same panel games before and after: se = sample std of the per-game
differences / √n (the per-game outcomes are in <run>/eval/iter-NNNNNN.json).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from agentrl import distributed, envs
from agentrl.components import Components, Panel
from agentrl.config import Config
from agentrl.distributed import say
from agentrl.envs.agents import RandomAdmissibleAgent, run_panel, success_table
from agentrl.evaluation import evaluate_rollout
from agentrl.rollout import env_metrics, episode_totals, stats_from_totals, temperature_metrics
from agentrl.samples import shared_state_fraction
from agentrl.types import Episode, Sample


def iteration_row(
    iteration: int,
    cfg: Config,
    c: Components,
    episodes: list[Episode],
    samples: tuple[list[Sample], list[Sample]],
    update: dict[str, float],
    temperatures: list[float],
    times: tuple[float, float, float],
) -> dict[str, Any]:
    """One training iteration's metrics row, over every rank: episode totals and row counts summed, the rest
    averaged. `samples`: (all built rows, the rows trained on); `times`: perf_counter at the rollout's start, the
    update's start and the sync's end."""
    built, kept = samples
    totals = episode_totals(episodes)
    totals = dict(zip(totals, distributed.all_sum(list(totals.values()))))
    rows, tokens, all_rows = distributed.all_sum([len(kept), sum(len(s.input_ids) for s in kept), len(built)])
    update = {
        **update,
        "train/filtered_rows_frac": 1.0 - rows / max(all_rows, 1),
        "train/shared_state_frac": shared_state_fraction(episodes, cfg.algo.advantage.step_credit),
    }
    averaged = {
        **temperature_metrics(cfg.exploration, temperatures, episodes),
        **env_metrics(episodes),
        **c.rollout.timings.as_dict(),
        **update,
        **c.policy.stats(),
    }
    t0, t1, t2 = times
    return {
        "iteration": iteration,
        "kind": "train",
        **stats_from_totals(totals),
        **distributed.mean_metrics(averaged),
        "rollout/samples": int(all_rows),
        "time/rollout_s": t1 - t0,
        "time/update_s": t2 - t1,
        "train/tokens_per_s": tokens / max(t2 - t1, 1e-9),
    }


def console_line(row: dict[str, Any]) -> str:
    return (
        f"it {row['iteration']:4d} | p {row['train/p']:+.2f} | success {100 * row['rollout/success']:5.1f}% | "
        f"reward {row['rollout/reward']:+.3f} | invalid {100 * row['rollout/invalid_rate']:4.1f}% | "
        f"clip {row.get('train/clip_frac', 0.0):.3f} | kl {row.get('train/kl', 0.0):.4f} | "
        f"{row['train/tokens_per_s']:.0f} tok/s | rollout {row['time/rollout_s']:.1f}s "
        f"update {row['time/update_s']:.1f}s"
    )


def evaluate(c: Components, iteration: int, progress: bool = False) -> tuple[dict[str, Any], dict[str, list]]:
    """One episode per panel game on every eval set: (`eval/<set>/…` metrics, {set: per-game outcomes})."""
    started = time.perf_counter()
    row: dict[str, Any] = {"iteration": iteration, "kind": "eval"}
    games: dict[str, list] = {}
    for panel, evaluator in zip(c.panels, c.evaluators):
        result = evaluate_rollout(evaluator, panel.instances, seed=10_000 + iteration, progress=progress)
        games[panel.name] = result.episodes
        prefix = f"eval/{panel.name}"
        row.update(
            {
                f"{prefix}/success": result.success,
                f"{prefix}/panel": panel.digest,
                f"{prefix}/invalid_rate": result.invalid_rate,
            }
        )
        row.update({f"{prefix}/success/{t}": v for t, v in result.per_type.items()})
        say(
            f"[eval] iteration {iteration}: {panel.name} success {100 * result.success:.1f}% on "
            f"{len(panel.instances)} games (panel {panel.digest})"
        )
    row["time/eval_s"] = time.perf_counter() - started
    return row, games


def random_baseline(cfg: Config, panels: list[Panel]) -> dict[str, list[float]]:
    """A random-admissible agent on every panel (in this process, eval turn limit): {set: success per seed}."""
    out = {}
    for eval_set, panel in zip(cfg.env.eval_sets, panels):
        env = envs.probe_env(cfg.env.id, {**cfg.env.kwargs, **eval_set.kwargs}, cfg.rollout.env_timeout_s)
        seeds = range(cfg.trainer.random_baseline_seeds)
        limit = cfg.rollout.env_timeout_s
        out[panel.name] = [
            run_panel(env, RandomAdmissibleAgent(seed=s), panel.instances, cfg.rollout.eval_max_turns, limit).success
            for s in seeds
        ]
        env.close()
    return out


def save_games(run_dir: Path, iteration: int, games: dict[str, list]) -> None:
    """Per-game evaluation outcomes, eval/iter-<N>.json: what a paired comparison of two evaluations reads."""
    folder = run_dir / "eval"
    folder.mkdir(exist_ok=True)
    (folder / f"iter-{iteration:06d}.json").write_text(json.dumps(games, indent=1))


def load_games(run_dir: Path, iteration: int) -> dict[str, list]:
    """The per-game outcomes save_games wrote for `iteration` ({eval set: [game, …]})."""
    return json.loads((Path(run_dir) / "eval" / f"iter-{iteration:06d}.json").read_text())


def paired_difference(before: list[dict], after: list[dict]) -> tuple[float, float, int]:
    """(mean after−before success, its standard error, games) over the games both evaluations played: a paired
    comparison on the same panel, se = sample std of the per-game differences / √n."""
    won = {g["instance"]: float(g["won"]) for g in before}
    diffs = [float(g["won"]) - won[g["instance"]] for g in after if g["instance"] in won]
    n = len(diffs)
    if n < 2:
        return (diffs[0] if diffs else 0.0), float("nan"), n
    mean = sum(diffs) / n
    return mean, math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n), n


def in_standard_errors(diff: float, se: float) -> float:
    """diff / se; 0 for no difference with no spread (every game unchanged), inf for a difference with no spread."""
    if se > 0:
        return diff / se
    return 0.0 if diff == 0 else math.inf


def print_summary(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    eval_sets: list[str],
    run_dir: Path,
    games: dict[str, dict[str, list]] | None = None,
    luck: dict[str, list[float]] | None = None,
) -> None:
    """Before/after success per task type, one table per eval set (and a random-admissible column when measured),
    then the invalid-reply rates and the paired after−before difference with its standard error."""
    games, luck = games or {}, luck or {}
    for name in eval_sets:
        columns = {label: _success_cells(row, name) for label, row in (("before", before), ("after", after))}
        if name in luck:
            columns[f"random ({len(luck[name])} seeds)"] = {"All": f"{100 * statistics.fmean(luck[name]):.1f}%"}
        print(f"\n{name}:\n" + success_table(columns))
        rates = [
            f"{label} {100 * row[f'eval/{name}/invalid_rate']:.1f}%"
            for label, row in (("before", before), ("after", after))
            if row
        ]
        print("invalid-reply rate: " + ", ".join(rates))
        if name in games.get("before", {}) and name in games.get("after", {}):
            diff, se, n = paired_difference(games["before"][name], games["after"][name])
            print(
                f"after - before: {100 * diff:+.1f} points ± {100 * se:.1f} (standard error of the paired per-game "
                f"difference, {n} games): {in_standard_errors(diff, se):.1f} standard errors"
            )
    print(f"\nrun directory: {run_dir.resolve()}")


def _success_cells(row: dict[str, Any] | None, name: str) -> dict[str, str]:
    """{task type or "All": "NN.N%"} from an eval row's eval/<name>/success[/<type>] entries."""
    prefix = f"eval/{name}/success"
    cells = {
        k.removeprefix(prefix).lstrip("/") or "All": v
        for k, v in (row or {}).items()
        if k == prefix or k.startswith(prefix + "/")
    }
    return {t: f"{100 * v:.1f}%" for t, v in cells.items()}
