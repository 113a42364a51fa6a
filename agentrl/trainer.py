"""Train an LLM agent with HölderPO (or a baseline) on any registered text env.

    agentrl-train experiment=quickstart                  # CPU: SmolLM2-135M on generated ALFWorld games
    agentrl-train experiment=cuebandit                   # seconds: a tiny model learns CueBandit from scratch
    agentrl-train experiment=alfworld_paper              # the paper's ALFWorld protocol, on a GPU
    agentrl-train experiment=cuebandit algo=grpo trainer.resume=auto
    torchrun --nproc_per_node 8 -m agentrl.trainer experiment=alfworld_paper   # FSDP2 over 8 GPUs (README)

One iteration: sample tasks → rollout (tasks × group) → samples + group advantages → learner update with
p = schedule(iteration) or the adaptive controller → sync policy weights → log → periodic evaluation on a fixed panel → periodic checkpoint.
The run around it (run directory, lock, resume, Ctrl-C) is agentrl/lifecycle.py; what it builds is
agentrl/components.py; what it reports is agentrl/report.py.
Departures from the paper: π_old comes from a no-grad pass of the learner before each update
(learner.old_log_probs=recompute, verl's default) or from the sampler's own log-probs (=rollout, verl's bypass
mode: the quickstart); evaluation uses one episode per panel game.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl import distributed
from agentrl.components import Components, build_components, save
from agentrl.config import CONFIG_DIR, Config, config_dict, config_yaml, field_facts, flatten, load_config
from agentrl.distributed import say
from agentrl.errors import ConfigError
from agentrl.lifecycle import (
    Candidates,
    TrainingDiverged,
    check_finite_weights,
    check_sampler,
    restore,
    session,
    stop_if_interrupted,
)
from agentrl.metrics import MetricsLog
from agentrl.report import console_line, evaluate, iteration_row, print_summary, random_baseline, save_games
from agentrl.samples import build_samples, informative

__all__ = ["TrainingDiverged", "main", "train"]


def train(cfg: Config) -> dict[str, Any]:
    """Run the training loop; returns {"run_dir", "before", "after"} (eval rows) and "random" (the random-admissible
    agent's success per eval set and seed, trainer.random_baseline_seeds; rank 0). Under torchrun every rank calls
    it: rank 0 owns the run directory, the metrics and the console; all ranks train, evaluate and checkpoint."""
    with session(cfg) as (run_dir, candidates):
        return _train(cfg, run_dir, candidates)


def _train(cfg: Config, run_dir: Path, candidates: Candidates) -> dict[str, Any]:
    place = distributed.current()
    progress = cfg.trainer.progress and place.main  # bars on rank 0 only
    if not progress:  # every bar, including transformers' weight loading and saving bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.manual_seed(cfg.trainer.seed), random.seed(cfg.trainer.seed), np.random.seed(cfg.trainer.seed)
    c = build_components(cfg)
    log = None
    try:
        start = restore(c.model, c.learner, c.policy, c.order, candidates)
        log = _metrics_log(cfg, run_dir, start) if place.main else None
        evals: dict[str, tuple[dict[str, Any], dict[str, list]]] = {}  # "before" / "after": (eval row, games)
        if start == 0 and cfg.trainer.eval_before:
            evals["before"] = _evaluate(c, 0, log, run_dir, progress)
        for it in range(start, cfg.trainer.iterations):
            stop_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt was swallowed (lifecycle.on_sigint)
            t0 = time.perf_counter()
            # whole groups per rank; each rank samples with its own seed (rank 0's is the one process's)
            tasks = distributed.split(c.sampler.tasks(it, cfg.rollout.tasks_per_iteration))
            temperatures = cfg.exploration.training_temperatures(it, cfg.trainer.iterations)
            episodes = c.rollout.run(
                tasks, seed=it * place.world + place.rank, temperatures=temperatures, progress=progress
            )
            built = build_samples(episodes, cfg.rollout.sample_mode, cfg.algo.advantage)
            samples = informative(built) if cfg.algo.advantage.filter_groups else built
            t1 = time.perf_counter()
            p = c.order.p(it)
            c.policy.sleep()  # a GPU engine frees its KV cache while the learner runs
            update = c.learner.update(samples, p, progress=progress)
            check_finite_weights(c.model, it + 1, cfg, run_dir)
            c.policy.sync_weights()
            row = iteration_row(
                it + 1, cfg, c, episodes, (built, samples), update, temperatures, (t0, t1, time.perf_counter())
            )
            row.update(c.order.observe(row))  # the adaptive p controller sets the next update's p
            if log:
                log.write(row)
            say(console_line(row), flush=True)
            check_sampler(row, cfg, it + 1, run_dir)
            if _due(it + 1, cfg.trainer.eval_every, cfg):
                evals["after"] = _evaluate(c, it + 1, log, run_dir, progress)
            if _due(it + 1, cfg.trainer.checkpoint_every, cfg):
                save(c, cfg, run_dir, it + 1)
    finally:
        c.close()
        if log is not None:
            log.close()
    return _finish(cfg, c, run_dir, evals)


def _due(done: int, every: int, cfg: Config) -> bool:
    """Whether an evaluation or checkpoint every `every` iterations falls after iteration `done` (always the last)."""
    return done % every == 0 or done == cfg.trainer.iterations


def _metrics_log(cfg: Config, run_dir: Path, start: int) -> MetricsLog:
    t = cfg.trainer
    return MetricsLog(
        run_dir,
        tensorboard=t.tensorboard,
        wandb=t.wandb,
        project=t.wandb_project,
        config=asdict(cfg),
        resume_after=start,
    )


def _evaluate(
    c: Components, iteration: int, log: MetricsLog | None, run_dir: Path, progress: bool
) -> tuple[dict[str, Any], dict[str, list]]:
    """evaluate() on every panel, logged with its per-game outcomes (rank 0)."""
    row, games = evaluate(c, iteration, progress)
    if log:
        log.write(row)
        save_games(run_dir, iteration, games)
    return row, games


def _finish(cfg: Config, c: Components, run_dir: Path, evals: dict[str, tuple]) -> dict[str, Any]:
    """Rank 0: the random-admissible baseline (when asked) and the before/after summary. The run's result."""
    before, after = (evals[k][0] if k in evals else None for k in ("before", "after"))
    luck: dict[str, list[float]] = {}
    if distributed.current().main:
        luck = random_baseline(cfg, c.panels) if cfg.trainer.random_baseline_seeds > 0 else {}
        games = {k: games for k, (_, games) in evals.items()}
        print_summary(before, after, [panel.name for panel in c.panels], run_dir, games, luck)
    return {"run_dir": run_dir, "before": before, "after": after, "random": luck}


def usage() -> str:
    """`agentrl-train --help`: the config groups and their options, then every key with its default."""
    lines = [
        "usage: agentrl-train [group=option ...] [key=value ...] [--cfg job] [--help]",
        "",
        (__doc__ or "").strip().split("\n\n")[0],
        "",
        "config groups (group=option; experiment= sets a whole run):",
    ]
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")):
        lines.append(f"  {group.name:<11} {', '.join(sorted(f.stem for f in group.glob('*.yaml')))}")
    lines += ["", "keys, their defaults and what they do (KEY=VALUE; * = may change when a run resumes):"]
    facts = field_facts()
    for key, value in flatten(config_dict(load_config([]))).items():
        fact = facts.get(key, {})
        mark = "*" if fact.get("resume") else " "
        lines.append(f" {mark}{key} = {value!r}  # {fact.get('help', '')}")
    lines += ["", "docs: README.md (quick start, your own env, runs, evaluation); configs/ holds the YAML options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(usage())
        return
    show = None
    if "--cfg" in args:  # Hydra's flag: print the resolved config (job) instead of running
        k = args.index("--cfg")
        show = args[k + 1] if k + 1 < len(args) else "job"
        del args[k : k + 2]
    try:
        cfg = load_config(args)
        if show is not None:
            if show not in ("job", "all"):
                raise ConfigError(f"--cfg {show}: use --cfg job")
            print(config_yaml(cfg), end="")
            return
        train(cfg)
    except ConfigError as err:
        report_error(err)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        report_error(err)
        raise SystemExit(3) from None


def report_error(err: Exception) -> None:
    """The error in full from rank 0 (or a single process); under torchrun every other rank, which usually stops
    on the same config and files, says it in one line, so a refusal is not printed once per rank."""
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank == 0:
        print(f"error: {err}", file=sys.stderr)
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error (rank {rank}): {first} [in full on rank 0's output]", file=sys.stderr)


if __name__ == "__main__":
    main()
