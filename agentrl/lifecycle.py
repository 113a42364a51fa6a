"""A run's lifecycle around the training loop: process group, run directory and its lock, which checkpoint to
resume, Ctrl-C and SIGTERM, and the stop when weights diverge.

    with session(cfg) as (run_dir, candidates):      # torchrun's group, run_dir named, checked, locked, prepared
        c = build_components(cfg)
        start = restore(c.model, c.learner, c.policy, candidates)
        for it in range(start, cfg.trainer.iterations):
            stop_if_interrupted()
            ...
            check_finite_weights(c.model, it + 1, cfg, run_dir)

Every refusal (a config that would mix two runs, a run directory that holds another run, no usable checkpoint)
comes before any weights load. Under torchrun rank 0 owns the run directory and the lock; a refusal on rank 0 is
raised on every rank.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from agentrl import distributed
from agentrl.checkpoint import (
    CorruptCheckpoint,
    checkpoint_world_size,
    list_checkpoints,
    load_checkpoint,
    verify_checkpoint,
)
from agentrl.config import Config, config_yaml, resume_changes, validate_config
from agentrl.distributed import say
from agentrl.errors import ConfigError
from agentrl.learner import Learner
from agentrl.policies.base import Policy
from agentrl.policies.models import resolve_device
from agentrl.rundir import RunLock, default_run_dir, point_latest, prepare_run_dir
from agentrl.schedules import FixedSchedule, PController

Candidates = list[tuple[Path, dict[str, Any]]]  # verified checkpoints, newest first, with their saved configs


class TrainingDiverged(RuntimeError):
    """The weights became non-finite; the run stops before writing them anywhere."""


@contextlib.contextmanager
def session(cfg: Config) -> Iterator[tuple[Path, Candidates]]:
    """The run around the loop: torchrun's process group (when launched so), the run directory (named, validated,
    made, locked, config.yaml written, `latest` pointed at it), the checkpoints to resume from, and Ctrl-C (exit
    130 with the command that resumes). Yields (run_dir, candidates)."""
    place = distributed.init(resolve_device(cfg.model.device).type if distributed.from_env().enabled else "cpu")
    clean = False
    try:
        with _run_dir(cfg, place) as opened:
            yield opened
        clean = True
    finally:
        if place.enabled:
            distributed.shutdown(clean=clean)


@contextlib.contextmanager
def _run_dir(cfg: Config, place: distributed.Dist) -> Iterator[tuple[Path, Candidates]]:
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
                yield run_dir, candidates
        except KeyboardInterrupt:
            signum = _STOPPED_BY[0]
            if place.main:
                how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
                print(
                    f"\n{how}; the newest checkpoint in {run_dir} is kept. Continue with: agentrl-train "
                    f"<same overrides> trainer.run_dir={run_dir} trainer.resume=auto",
                    file=sys.stderr,
                )
            raise SystemExit(128 + signum) from None


def _prepare(cfg: Config, run_dir: Path) -> Candidates | ConfigError:
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


def checkpoints_to_try(cfg: Config, run_dir: Path) -> Candidates:
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


def restore(
    model: torch.nn.Module, learner: Learner, policy: Policy, order: FixedSchedule | PController, candidates: Candidates
) -> int:
    """Iterations already completed (0 for a fresh run): restores weights, optimizer, RNGs and the p controller's
    state from the newest checkpoint that loads, then syncs the generation backend; one that fails to load is
    skipped with a warning."""
    for path, _ in candidates:
        try:
            state = load_checkpoint(path, model, learner.optimizer)
        except CorruptCheckpoint as err:
            warnings.warn(f"skipping a checkpoint that does not load: {err}", stacklevel=2)
            continue
        learner.load_state_dict(state["learner"])
        order.load_state_dict(state.get("p_order"))
        policy.sync_weights()
        say(f"resumed from {path} after iteration {state['iteration']}")
        return int(state["iteration"])
    if candidates:
        raise ConfigError("no checkpoint could be loaded (see the warnings above)")
    return 0


def check_finite_weights(model: torch.nn.Module, iteration: int, cfg: Config, run_dir: Path) -> None:
    """Raise TrainingDiverged (naming the checkpoint to resume from) when any weight is no longer finite."""
    bad = distributed.nonfinite_parameters(model)
    if bad:
        last = list_checkpoints(run_dir)
        raise TrainingDiverged(
            f"the weights became non-finite in iteration {iteration} ({len(bad)} tensors, e.g. {bad[0]}); nothing "
            f"was saved from it. Lower learner.lr (now {cfg.learner.lr}) or learner.max_grad_norm and "
            + (f"resume from {last[-1]} with trainer.resume=auto" if last else "start again")
        )


class SamplerNotPolicy(RuntimeError):
    """The sampler's log-probs drifted from the learner's past learner.mismatch.stop_kl; the run stops unsaved."""


def check_sampler(row: dict[str, Any], cfg: Config, iteration: int, run_dir: Path) -> None:
    """Warn when mismatch/kl (the sampler's log-probs against the learner's, on the tokens sampled) says the sampler
    is not the policy — weights changed in the engine after a sync, a different dtype or kernel — and stop the run
    before it saves when it passes learner.mismatch.stop_kl. The vLLM canary only checks right after a sync."""
    kl, limits = row.get("mismatch/kl"), cfg.learner.mismatch
    if kl is None or not kl > limits.warn_kl:
        return
    what = (
        f"iteration {iteration}: mismatch/kl = {kl:.4g} — the sampler does not score as the learner (a stale or "
        f"changed engine, another dtype); checked against learner.mismatch"
    )
    if limits.stop_kl > 0 and kl > limits.stop_kl:
        last = list_checkpoints(run_dir)
        raise SamplerNotPolicy(
            f"{what}.stop_kl={limits.stop_kl}: stopped, nothing saved from this iteration"
            + (f"; resume from {last[-1]} with trainer.resume=auto" if last else "")
        )
    warnings.warn(f"{what}.warn_kl={limits.warn_kl}", stacklevel=2)


_INTERRUPTED = threading.Event()
_STOPPED_BY = [int(signal.SIGINT)]  # the signal that stopped the run: exit code 128 + it (130 Ctrl-C, 143 SIGTERM)


def on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM: raise KeyboardInterrupt as Python does for Ctrl-C, and remember it. Python prints and drops
    an exception raised inside a __del__ (a finished progress bar's, say), so the training loop also checks the flag
    each iteration. SIGTERM (a scheduler's stop, `kill`) takes the same path: env workers closed, lock released."""
    _STOPPED_BY[0] = int(signum)
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def stop_if_interrupted() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that was swallowed (see on_sigint)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def _ctrl_c_remembered() -> Iterator[None]:
    """on_sigint as the SIGINT and SIGTERM handler for the run (main thread only; the previous handlers come back
    after)."""
    _INTERRUPTED.clear()
    _STOPPED_BY[0] = int(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, on_sigint) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
