"""Train an LLM agent with HölderPO (or a baseline) on any registered text env.

    agentrl-train experiment=quickstart                  # CPU: SmolLM2-135M on generated ALFWorld games
    agentrl-train experiment=cuebandit                   # seconds: a tiny model learns CueBandit from scratch
    agentrl-train experiment=alfworld_paper              # the paper's ALFWorld protocol, on a GPU
    agentrl-train experiment=cuebandit algo=grpo trainer.resume=auto
    torchrun --nproc_per_node 8 -m agentrl.trainer experiment=alfworld_paper   # FSDP2 over 8 GPUs (README)

One iteration: sample tasks → rollout (tasks × group) → samples + group advantages → learner update with
p = schedule(iteration) → sync policy weights → log → periodic evaluation on a fixed panel → periodic checkpoint.
Departures from the paper: old log-probs are recomputed by the learner before each update (verl does the same);
evaluation uses one episode per panel game.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import statistics
import sys
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl import distributed
from agentrl.checkpoint import (
    CorruptCheckpoint,
    checkpoint_world_size,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    sharded_state,
    verify_checkpoint,
)
from agentrl.config import Config, config_dict, load_config, resume_changes, validate_config
from agentrl.envs.agents import success_table
from agentrl.errors import ConfigError
from agentrl.evaluation import evaluate_rollout, panel_for
from agentrl.learner import Learner
from agentrl.metrics import MetricsLog
from agentrl.policies.vllm import VllmSpec
from agentrl.rollout import (
    RolloutConfig,
    RolloutManager,
    Task,
    episode_totals,
    stats_from_totals,
    temperature_metrics,
)
from agentrl.rundir import RunLock, default_run_dir, point_latest, prepare_run_dir
from agentrl.samples import build_samples, informative, shared_state_fraction


class TaskSampler:
    """Tasks for iteration i are a pure function of (seed, i): resuming needs no sampler state beyond i."""

    def __init__(self, num_instances: int | None, seed: int):
        self.num_instances, self.seed = num_instances, seed

    def tasks(self, iteration: int, count: int) -> list[Task]:
        rng = np.random.default_rng([self.seed, iteration])
        n = self.num_instances
        picks = rng.choice(n, size=count, replace=count > n).tolist() if n else [None] * count
        return [
            Task(instance=i, seed=int(rng.integers(2**31)), group_id=f"{iteration}-{k}") for k, i in enumerate(picks)
        ]


class Components:
    """Everything a run holds: env pools, panels, model, learner, policy, rollout managers, metrics log."""

    def __init__(self, cfg: Config):
        from agentrl import envs
        from agentrl.envs.pool import EnvPool, env_factory
        from agentrl.policies.models import load_model

        fmt = envs.make_prompt_format(cfg.env.id, cfg.env.prompt_format, **cfg.env.prompt.as_kwargs())
        workers, timeout = cfg.rollout.num_workers, cfg.rollout.env_timeout_s
        # probes, in this process: the task-set size for sampling and the panels (env problems surface here)
        probe = make_probe(cfg.env.id, cfg.env.kwargs)
        self.sampler = TaskSampler(getattr(probe.unwrapped, "num_instances", None), cfg.trainer.seed)
        probe.close()
        limit = {"max_episode_steps": cfg.rollout.max_turns}  # the one step limit: Gymnasium's TimeLimit
        guards = cfg.rollout.pool_options()
        self.pools = [EnvPool(env_factory(cfg.env.id, **cfg.env.kwargs, **limit), workers, timeout, **guards)]
        self.panels: list[tuple[str, list[int], str]] = []  # (eval set name, instances, panel hash)
        eval_pools = []
        for eval_set in cfg.env.eval_sets:
            kwargs = {**cfg.env.kwargs, **eval_set.kwargs}
            probe = make_probe(cfg.env.id, kwargs)
            self.panels.append(
                (eval_set.name, *panel_for(cfg.env.id, kwargs, probe, cfg.env.eval_instances, eval_set.panel))
            )
            probe.close()
            eval_limit = {"max_episode_steps": cfg.rollout.eval_max_turns}
            eval_pools.append(EnvPool(env_factory(cfg.env.id, **kwargs, **eval_limit), workers, timeout, **guards))
        self.pools += eval_pools
        # weights load last: env and data problems surface first, before minutes of model loading
        self.model, self.tokenizer = load_model(cfg.model)
        ref: torch.nn.Module | str | None = None
        if cfg.learner.kl_coef > 0:  # LoRA: the base is the adapter-free model itself, no second copy
            ref = "base" if cfg.model.lora.enabled else copy.deepcopy(self.model).eval().requires_grad_(False)
        # torchrun: the learner's model (and a frozen reference) sharded per decoder layer; generation runs on an
        # unsharded copy, refreshed from the shards after every update (ranks generate different lengths, so
        # generating with the sharded model, whose every forward is a collective, would hang)
        self.generation_model: torch.nn.Module | None = None
        if distributed.current().enabled:
            self.generation_model = copy.deepcopy(self.model).eval()
            distributed.shard_model(self.model, precision=cfg.model.dtype)
            if isinstance(ref, torch.nn.Module):
                distributed.shard_model(ref, precision=cfg.model.dtype)
        self.learner = Learner(
            self.model,
            cfg.learner,
            cfg.algo,
            precision=cfg.model.dtype,
            temperature=cfg.rollout.temperature,
            reply_length=cfg.rollout.max_new_tokens,
            seed=cfg.trainer.seed,
            ref_model=ref,
            backend=cfg.model.backend,
        )
        self.policy = make_policy(
            cfg.model.backend,
            self.generation_model or self.model,
            self.tokenizer,
            cfg.rollout,
            cfg.model.vllm,
            seed=cfg.trainer.seed,
            precision=cfg.model.dtype,
            batch_size=cfg.rollout.generation_batch_size,
            source=self.model if self.generation_model is not None else None,
        )
        seed = cfg.trainer.seed
        # the sampler's log-probs are kept when the learner corrects for them or uses them as π_old, or when they cost
        # nothing (vLLM)
        logprobs = (
            cfg.model.backend == "vllm" or self.learner.correction != "off" or cfg.learner.old_log_probs == "rollout"
        )
        self.rollout = RolloutManager(
            self.pools[0], self.policy, self.tokenizer, fmt, cfg.rollout, seed=seed, logprobs=logprobs
        )
        self.evaluators = [
            RolloutManager(pool, self.policy, self.tokenizer, fmt, cfg.rollout, evaluation=True, seed=seed)
            for pool in eval_pools
        ]

    def save(self, cfg: Config, run_dir: Path, iteration: int) -> None:
        """Checkpoint after `iteration`: HF weights, or under torchrun a Distributed Checkpoint of the shards plus
        rank 0's full-weights export (from the generation copy, already up to date)."""
        sharded = self.generation_model is not None
        state = {"learner": self.learner.state_dict(optimizer=not sharded), "sampler_position": iteration}
        save_checkpoint(
            run_dir,
            iteration,
            self.generation_model or self.model,
            self.tokenizer,
            state,
            cfg.trainer.keep_checkpoints,
            config_dict(cfg),
            sharded=sharded_state(self.model, self.learner.optimizer) if sharded else None,
        )

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
        if hasattr(getattr(self, "policy", None), "close"):
            self.policy.close()


def make_policy(
    backend: str,
    model: torch.nn.Module,
    tokenizer,
    rollout: RolloutConfig,
    vllm: VllmSpec,
    *,
    seed: int = 0,
    precision: str = "fp32",
    batch_size: int = 64,
    source: torch.nn.Module | None = None,
):
    """The generation backend named by model.backend over `model` (the trainer's and agentrl-eval's); `source`:
    the learner's model when `model` is a separate copy that every sync refreshes from it."""
    if backend == "vllm":
        from agentrl.policies.vllm import VLLMPolicy

        length = vllm.max_model_len or rollout.max_prompt_tokens + rollout.max_new_tokens
        return VLLMPolicy(model, tokenizer, vllm, max_model_len=length, seed=seed, precision=precision, source=source)
    from agentrl.policies.hf import HFPolicy

    return HFPolicy(model, tokenizer, batch_size=batch_size, precision=precision, source=source)


def sync_stats(policy) -> dict[str, float]:
    """The generation engine's weight version, sync and canary times (vLLM), and the canary gap after the latest
    sync (vLLM, or a separate transformers copy), for the metrics."""
    row = {}
    if hasattr(policy, "version"):
        row = {"sync/version": float(policy.version), "time/sync_s": policy.timings["sync_s"]}
        if policy.last_canary is not None:
            row["time/canary_s"] = policy.timings["canary_s"]
    if getattr(policy, "last_canary", None) is not None:
        row["sync/canary_gap"] = policy.last_canary
    return row


def make_probe(env_id: str, kwargs: dict[str, Any]):
    """An env built in this process to read its task set; a constructor that rejects the kwargs is a ConfigError."""
    from agentrl import envs

    try:
        return envs.make_env(env_id, **kwargs)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"env {env_id} with kwargs {kwargs}: {err}") from None


def evaluate(c: Components, iteration: int, progress: bool = False) -> tuple[dict[str, Any], dict[str, list]]:
    """One episode per panel game on every eval set: (`eval/<set>/…` metrics, {set: per-game outcomes})."""
    started = time.perf_counter()
    row: dict[str, Any] = {"iteration": iteration, "kind": "eval"}
    games: dict[str, list] = {}
    for (name, panel, digest), evaluator in zip(c.panels, c.evaluators):
        result = evaluate_rollout(evaluator, panel, seed=10_000 + iteration, progress=progress)
        games[name] = result.episodes
        row.update(
            {
                f"eval/{name}/success": result.success,
                f"eval/{name}/panel": digest,
                f"eval/{name}/invalid_rate": result.invalid_rate,
            }
        )
        row.update({f"eval/{name}/success/{t}": v for t, v in result.per_type.items()})
        say(
            f"[eval] iteration {iteration}: {name} success {100 * result.success:.1f}% on {len(panel)} games "
            f"(panel {digest})"
        )
    row["time/eval_s"] = time.perf_counter() - started
    return row, games


def random_baseline(cfg: Config, panels: list[tuple[str, list[int], str]]) -> dict[str, list[float]]:
    """A random-admissible agent on every panel (in this process, eval turn limit): {set: success per seed}."""
    from agentrl.envs.agents import RandomAdmissibleAgent, run_panel

    out = {}
    for eval_set, (name, panel, _) in zip(cfg.env.eval_sets, panels):
        env = make_probe(cfg.env.id, {**cfg.env.kwargs, **eval_set.kwargs})
        seeds = range(cfg.trainer.random_baseline_seeds)
        out[name] = [
            run_panel(env, RandomAdmissibleAgent(seed=s), panel, cfg.rollout.eval_max_turns).success for s in seeds
        ]
        env.close()
    return out


def checkpoints_to_try(cfg: Config, run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Verified checkpoints to resume from, newest first, with their saved configs; damaged ones are skipped
    with a warning naming what is wrong. Raises ConfigError when the config changes something a resumed run must
    keep (listing every difference), or when checkpoints exist and none is usable."""
    if cfg.trainer.resume == "never":
        return []
    found = list_checkpoints(run_dir)[::-1] if cfg.trainer.resume == "auto" else [Path(cfg.trainer.resume)]
    good, damaged = [], []
    for path in found:
        try:
            good.append((path, verify_checkpoint(path)))
        except CorruptCheckpoint as err:
            damaged.append(str(err))
            warnings.warn(f"skipping a damaged checkpoint: {err}", stacklevel=2)
    if found and not good:
        raise ConfigError("no usable checkpoint to resume from:\n  - " + "\n  - ".join(damaged))
    world = distributed.current().world
    if good and checkpoint_world_size(good[0][0]) != world:
        saved = checkpoint_world_size(good[0][0])
        how = f"torchrun --nproc_per_node {saved} -m agentrl.trainer ..." if saved > 1 else "one process"
        raise ConfigError(
            f"{good[0][0]} was written by {saved} rank(s) and this run has {world}: resume it the way it was "
            f"launched ({how}); its model/ folder holds the full weights for agentrl-eval or a new run"
        )
    if good and good[0][1]:
        refused, applied = resume_changes(good[0][1], cfg)
        if refused:
            raise ConfigError(
                f"resuming {good[0][0]} with a config that would mix two runs in one:\n  - "
                + "\n  - ".join(refused)
                + "\nundo these overrides, or start a new run (leave trainer.resume unset)"
            )
        for line in applied:
            if not line.startswith(("trainer.resume", "trainer.run_dir", "trainer.overwrite")):
                say(f"resume: applying {line}")
    return good


def resume(c: Components, candidates: list[tuple[Path, dict[str, Any]]]) -> int:
    """Iterations already completed (0 for a fresh run): restores weights, optimizer and RNGs from the newest
    checkpoint that loads; one that fails to load is skipped with a warning."""
    for path, _ in candidates:
        try:
            state = load_checkpoint(path, c.model, c.learner.optimizer)
        except CorruptCheckpoint as err:
            warnings.warn(f"skipping a checkpoint that does not load: {err}", stacklevel=2)
            continue
        c.learner.load_state_dict(state["learner"])
        c.policy.sync_weights()
        say(f"resumed from {path} after iteration {state['iteration']}")
        return int(state["iteration"])
    if candidates:
        raise ConfigError("no checkpoint could be loaded (see the warnings above)")
    return 0


class TrainingDiverged(RuntimeError):
    """The weights became non-finite; the run stops before writing them anywhere."""


def check_finite_weights(model: torch.nn.Module, iteration: int, cfg: Config, run_dir: Path) -> None:
    bad = distributed.nonfinite_parameters(model)
    if bad:
        last = list_checkpoints(run_dir)
        raise TrainingDiverged(
            f"the weights became non-finite in iteration {iteration} ({len(bad)} tensors, e.g. {bad[0]}); nothing "
            f"was saved from it. Lower learner.lr (now {cfg.learner.lr}) or learner.max_grad_norm and "
            + (f"resume from {last[-1]} with trainer.resume=auto" if last else "start again")
        )


def console_line(row: dict[str, Any]) -> str:
    return (
        f"it {row['iteration']:4d} | p {row['train/p']:+.2f} | success {100 * row['rollout/success']:5.1f}% | "
        f"reward {row['rollout/reward']:+.3f} | invalid {100 * row['rollout/invalid_rate']:4.1f}% | "
        f"clip {row.get('train/clip_frac', 0.0):.3f} | kl {row.get('train/kl', 0.0):.4f} | "
        f"{row['train/tokens_per_s']:.0f} tok/s | rollout {row['time/rollout_s']:.1f}s "
        f"update {row['time/update_s']:.1f}s"
    )


def say(*args: Any, **kwargs: Any) -> None:
    """print on rank 0 only (everything under one process): console output of a torchrun job comes once."""
    if distributed.current().main:
        print(*args, **kwargs)


def train(cfg: Config) -> dict[str, Any]:
    """Run the training loop; returns {"run_dir", "before", "after"} (eval rows) and "random" (the random-admissible
    agent's success per eval set and seed, trainer.random_baseline_seeds; rank 0). Under torchrun every rank calls
    it: rank 0 owns the run directory, the metrics and the console; all ranks train, evaluate and checkpoint."""
    from agentrl.policies.models import resolve_device

    place = distributed.init(resolve_device(cfg.model.device).type if distributed.from_env().enabled else "cpu")
    clean = False
    try:
        result = _launch(cfg, place)
        clean = True
        return result
    finally:
        if place.enabled:
            distributed.shutdown(clean=clean)


_INTERRUPTED = threading.Event()


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C: raise KeyboardInterrupt as Python does, and remember it. Python prints and drops an exception raised
    inside a __del__ (a finished progress bar's, say), so the training loop also checks the flag each iteration."""
    _INTERRUPTED.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_remembered():
    """_on_sigint as the SIGINT handler for the run (main thread only; the previous handler comes back after)."""
    _INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _launch(cfg: Config, place: distributed.Dist) -> dict[str, Any]:
    if not cfg.trainer.run_dir:  # rank 0 names it (a timestamp): every rank uses that name
        cfg.trainer.run_dir = distributed.broadcast(str(default_run_dir(cfg.experiment, cfg.trainer.resume)))
    validate_config(cfg)
    run_dir = Path(cfg.trainer.run_dir)
    distributed.barrier()  # every rank has checked the run directory before rank 0 writes into it
    if place.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"run directory: {run_dir}", flush=True)
    with RunLock(run_dir) if place.main else contextlib.nullcontext():
        candidates = distributed.broadcast(_prepare(cfg, run_dir) if place.main else None)
        if isinstance(candidates, ConfigError):  # rank 0's refusal, raised on every rank
            raise candidates
        try:
            with _ctrl_c_remembered():
                return _train(cfg, run_dir, candidates)
        except KeyboardInterrupt:
            if place.main:
                print(
                    f"\ninterrupted; the newest checkpoint in {run_dir} is kept. Continue with: agentrl-train "
                    f"<same overrides> trainer.run_dir={run_dir} trainer.resume=auto",
                    file=sys.stderr,
                )
            raise SystemExit(130) from None


def _prepare(cfg: Config, run_dir: Path) -> list[tuple[Path, dict[str, Any]]] | ConfigError:
    """Rank 0 (or the one process): the checkpoints to resume from, then the run directory made ready."""
    try:
        candidates = checkpoints_to_try(cfg, run_dir)  # every refusal comes before weights load
    except ConfigError as err:
        if not distributed.current().enabled:
            raise
        return err
    prepare_run_dir(run_dir, cfg.trainer.resume, cfg.trainer.overwrite)
    (run_dir / "config.yaml").write_text(config_yaml(cfg))
    if run_dir.parent.name == (cfg.experiment or "default"):
        point_latest(run_dir)
    return candidates


def _train(cfg: Config, run_dir: Path, candidates: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    place = distributed.current()
    progress = cfg.trainer.progress and place.main  # bars on rank 0 only
    if not progress:  # every bar, including transformers' weight loading and saving bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    torch.manual_seed(cfg.trainer.seed), random.seed(cfg.trainer.seed), np.random.seed(cfg.trainer.seed)
    c = Components(cfg)
    log = None
    try:
        start = resume(c, candidates)
        if place.main:
            log = MetricsLog(
                run_dir,
                tensorboard=cfg.trainer.tensorboard,
                wandb=cfg.trainer.wandb,
                project=cfg.trainer.wandb_project,
                config=asdict(cfg),
                resume_after=start,
            )
        before = after = None
        games: dict[str, dict[str, list]] = {}  # "before" / "after": per-game outcomes, for the paired comparison
        if start == 0 and cfg.trainer.eval_before:
            before, games["before"] = evaluate(c, 0, progress)
            if log:
                log.write(before)
                save_games(run_dir, 0, games["before"])
        for it in range(start, cfg.trainer.iterations):
            if _INTERRUPTED.is_set():  # a Ctrl-C whose KeyboardInterrupt was swallowed (see _on_sigint)
                raise KeyboardInterrupt
            t0 = time.perf_counter()
            # whole groups per rank; each rank samples with its own seed (rank 0's is the one process's)
            tasks = distributed.split(c.sampler.tasks(it, cfg.rollout.tasks_per_iteration))
            temperatures = cfg.rollout.training_temperatures(it, cfg.trainer.iterations)
            episodes = c.rollout.run(
                tasks, seed=it * place.world + place.rank, temperatures=temperatures, progress=progress
            )
            samples = built = build_samples(episodes, cfg.rollout.sample_mode, cfg.algo.advantage)
            if cfg.algo.advantage.filter_groups:
                samples = informative(built)
            t1 = time.perf_counter()
            p = cfg.algo.p_at(it, cfg.trainer.iterations)
            if hasattr(c.policy, "sleep"):  # a GPU engine frees its KV cache while the learner runs
                c.policy.sleep()
            if samples or place.enabled:  # a rank without samples still joins every collective of the update
                update = c.learner.update(samples, p, progress=progress)
            else:
                update = {"train/p": p, "train/skipped_steps": float(c.learner.skipped_steps)}
            check_finite_weights(c.model, it + 1, cfg, run_dir)
            c.policy.sync_weights()
            t2 = time.perf_counter()
            totals = episode_totals(episodes)
            totals = dict(zip(totals, distributed.all_sum(list(totals.values()))))
            rows, tokens, all_rows = distributed.all_sum(
                [len(samples), sum(len(s.input_ids) for s in samples), len(built)]
            )
            update["train/filtered_rows_frac"] = 1.0 - rows / max(all_rows, 1)
            update["train/shared_state_frac"] = shared_state_fraction(episodes)
            row = {
                "iteration": it + 1,
                "kind": "train",
                **stats_from_totals(totals),
                **distributed.mean_metrics(
                    {
                        **temperature_metrics(cfg.rollout, temperatures, episodes),
                        **c.rollout.timings.as_dict(),
                        **update,
                        **sync_stats(c.policy),
                    }
                ),
                "rollout/samples": int(all_rows),
                "time/rollout_s": t1 - t0,
                "time/update_s": t2 - t1,
                "train/tokens_per_s": tokens / max(t2 - t1, 1e-9),
            }
            if log:
                log.write(row)
            say(console_line(row), flush=True)
            if (it + 1) % cfg.trainer.eval_every == 0 or it + 1 == cfg.trainer.iterations:
                after, games["after"] = evaluate(c, it + 1, progress)
                if log:
                    log.write(after)
                    save_games(run_dir, it + 1, games["after"])
            if (it + 1) % cfg.trainer.checkpoint_every == 0 or it + 1 == cfg.trainer.iterations:
                c.save(cfg, run_dir, it + 1)
    finally:
        c.close()
        if log is not None:
            log.close()
    luck: dict[str, list[float]] = {}
    if place.main:
        luck = random_baseline(cfg, c.panels) if cfg.trainer.random_baseline_seeds > 0 else {}
        print_summary(before, after, [name for name, _, _ in c.panels], run_dir, games, luck)
    return {"run_dir": run_dir, "before": before, "after": after, "random": luck}


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


def config_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config_dict(cfg)))


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
        prefix = f"eval/{name}/success"
        columns = {}
        for label, row in (("before", before), ("after", after)):
            cells = {
                k.removeprefix(prefix).lstrip("/") or "All": v
                for k, v in (row or {}).items()
                if k == prefix or k.startswith(prefix + "/")
            }
            columns[label] = {t: f"{100 * v:.1f}%" for t, v in cells.items()}
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


def usage() -> str:
    """`agentrl-train --help`: the config groups and their options, then every key with its default."""
    from agentrl.config import CONFIG_DIR, _flatten

    lines = [
        "usage: agentrl-train [group=option ...] [key=value ...] [--cfg job] [--help]",
        "",
        (__doc__ or "").strip().split("\n\n")[0],
        "",
        "config groups (group=option; experiment= sets a whole run):",
    ]
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")):
        lines.append(f"  {group.name:<11} {', '.join(sorted(f.stem for f in group.glob('*.yaml')))}")
    lines += ["", "keys and their defaults (agentrl-train KEY=VALUE; --cfg job prints a resolved config):"]
    for key, value in _flatten(config_dict(load_config([]))).items():
        lines.append(f"  {key} = {value!r}")
    lines += ["", "docs: README.md (quick start, your own env, runs, evaluation); configs/ holds the YAML options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from agentrl.errors import ConfigError

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
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
