"""What a training run holds, built in one place: env pools and panels, the model, the learner, the generation
backend and the rollout managers.

    c = build_components(cfg)      # envs and data first (their problems surface before weights load), then weights
    ...
    save(c, cfg, run_dir, iteration)
    c.close()

Under torchrun the learner's model (and a frozen KL reference) is sharded per decoder layer with FSDP2, and
generation runs on an unsharded copy that every sync refreshes from the shards (ranks generate different lengths,
so generating with the sharded model, whose every forward is a collective, would hang).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agentrl import distributed, envs
from agentrl.checkpoint import save_checkpoint, sharded_state
from agentrl.config import Config, config_dict
from agentrl.envs.pool import EnvPool, env_factory
from agentrl.envs.prompting import PromptFormat
from agentrl.evaluation import panel_for
from agentrl.learner import Learner
from agentrl.policies.backends import make_policy, sampler_matches_learner
from agentrl.policies.base import Policy
from agentrl.policies.models import load_model
from agentrl.rollout import RolloutManager, Task
from agentrl.schedules import FixedSchedule, PController
from agentrl.scoring import shard


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


@dataclass(frozen=True)
class Panel:
    """One fixed evaluation panel: the eval set's name, its instances and their hash."""

    name: str
    instances: list[int]
    digest: str


@dataclass(frozen=True)
class Components:
    """Everything a run holds. `generation_model` is the unsharded copy generation runs on under torchrun (else
    None: generation uses `model`); `pools` are the training pool then one per eval set, in `panels` order."""

    sampler: TaskSampler
    pools: list[EnvPool]
    panels: list[Panel]
    model: torch.nn.Module
    tokenizer: object
    generation_model: torch.nn.Module | None
    learner: Learner
    policy: Policy
    rollout: RolloutManager
    evaluators: list[RolloutManager]
    order: FixedSchedule | PController  # sets p for each update (algo.p_schedule)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
        self.policy.close()


def build_components(cfg: Config) -> Components:
    """Build a run's components from a validated config: env pools and panels first, weights last. Pools made before
    a later failure are closed."""
    fmt = envs.make_prompt_format(cfg.env.id, cfg.env.prompt_format, **cfg.env.prompt_options())
    pools: list[EnvPool] = []
    try:
        sampler, panels = _env_side(cfg, pools)
        return _model_side(cfg, fmt, sampler, panels, pools)
    except BaseException:
        for pool in pools:
            pool.close()
        raise


def _env_side(cfg: Config, pools: list[EnvPool]) -> tuple[TaskSampler, list[Panel]]:
    """The task sampler and the panels, read from envs made in this process (env problems surface here); the
    training pool and one pool per eval set are appended to `pools`."""
    workers, timeout, guards = cfg.rollout.num_workers, cfg.rollout.env_timeout_s, cfg.rollout.pool_options()
    probe = envs.probe_env(cfg.env.id, cfg.env.kwargs, cfg.rollout.env_timeout_s)
    sampler = TaskSampler(getattr(probe.unwrapped, "num_instances", None), cfg.trainer.seed)
    probe.close()
    limit = {"max_episode_steps": cfg.rollout.max_turns}  # the one step limit: Gymnasium's TimeLimit
    pools.append(EnvPool(env_factory(cfg.env.id, **cfg.env.kwargs, **limit), workers, timeout, **guards))
    panels = []
    for eval_set in cfg.env.eval_sets:
        kwargs = {**cfg.env.kwargs, **eval_set.kwargs}
        probe = envs.probe_env(cfg.env.id, kwargs, cfg.rollout.env_timeout_s)
        panels.append(
            Panel(eval_set.name, *panel_for(cfg.env.id, kwargs, probe, cfg.env.eval_instances, eval_set.panel))
        )
        probe.close()
        eval_limit = {"max_episode_steps": cfg.rollout.eval_max_turns}
        pools.append(EnvPool(env_factory(cfg.env.id, **kwargs, **eval_limit), workers, timeout, **guards))
    return sampler, panels


def _model_side(
    cfg: Config, fmt: PromptFormat, sampler: TaskSampler, panels: list[Panel], pools: list[EnvPool]
) -> Components:
    """Weights, the KL reference, the learner, the generation backend and the rollout managers."""
    model, tokenizer = load_model(cfg.model)
    ref: torch.nn.Module | str | None = None
    if cfg.learner.kl_coef > 0:  # LoRA: the base is the adapter-free model itself, no second copy
        ref = "base" if cfg.model.lora.enabled else copy.deepcopy(model).eval().requires_grad_(False)
    generation_model = None
    if distributed.current().enabled:
        generation_model = copy.deepcopy(model).eval()
        shard(model, precision=cfg.model.dtype)
        if isinstance(ref, torch.nn.Module):
            shard(ref, precision=cfg.model.dtype)
    learner = Learner(
        model,
        cfg.learner,
        cfg.algo,
        precision=cfg.model.dtype,
        reply_length=cfg.rollout.max_new_tokens,
        seed=cfg.trainer.seed,
        ref_model=ref,
        sampler_matches_learner=sampler_matches_learner(cfg.model.backend),
        temperature_compensation=cfg.exploration.temperature_compensation,
    )
    policy = make_policy(
        cfg.model.backend,
        generation_model or model,
        tokenizer,
        cfg.model.vllm,
        max_model_len=cfg.rollout.longest_sequence,
        seed=cfg.trainer.seed,
        precision=cfg.model.dtype,
        batch_size=cfg.rollout.generation_batch_size,
        source=model if generation_model is not None else None,
    )
    seed = cfg.trainer.seed
    logprobs = policy.free_logprobs or learner.needs_sampler_logprobs
    rollout = RolloutManager(pools[0], policy, tokenizer, fmt, cfg.rollout, seed=seed, logprobs=logprobs)
    evaluators = [
        RolloutManager(pool, policy, tokenizer, fmt, cfg.rollout, evaluation=True, seed=seed) for pool in pools[1:]
    ]
    order = cfg.algo.order(cfg.trainer.iterations)
    return Components(
        sampler, pools, panels, model, tokenizer, generation_model, learner, policy, rollout, evaluators, order
    )


def save(c: Components, cfg: Config, run_dir: Path, iteration: int) -> None:
    """Checkpoint after `iteration`: HF weights, or under torchrun a Distributed Checkpoint of the shards plus
    rank 0's full-weights export (from the generation copy, already up to date)."""
    sharded = c.generation_model is not None
    state = {
        "learner": c.learner.state_dict(optimizer=not sharded),
        "sampler_position": iteration,
        "p_order": c.order.state_dict(),
    }
    save_checkpoint(
        run_dir,
        iteration,
        c.generation_model or c.model,
        c.tokenizer,
        state,
        cfg.trainer.keep_checkpoints,
        config_dict(cfg),
        sharded=sharded_state(c.model, c.learner.optimizer) if sharded else None,
    )
