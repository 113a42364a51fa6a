"""`agentrl-eval`: evaluate a training run, a checkpoint, a HF model or a scripted agent on a fixed panel.

    agentrl-eval --run runs/quickstart/latest                     # the run's newest good checkpoint, its own prompt
    agentrl-eval --run runs/mygame/latest --imports mygame --seeds 0 1 2
    agentrl-eval --env agentrl/CueBandit-v0 --agent oracle --instances 32
    agentrl-eval --env agentrl/ALFWorld-v0 --env-kwargs '{"data_path": "data/alfworld", "split": "valid_unseen"}' \\
        --model path/to/model --instances 12 --temperature 0.4 --seeds 0 1 2

With --run, everything that shapes what the model sees and may say comes from the run's config.yaml: env id and
kwargs (with the chosen eval set's), prompt format and its options, history window, sample mode, stop strings,
reply length, evaluation temperature and turn limit; explicit flags override. Reports success overall ("All",
micro average over games) and per task type, as a table and as eval.json (panel hash, prompt format and options,
sampling, seeds); several seeds give mean ± std. Every argument is checked before any weights load. With --run,
checkpoints are verified against their checksums as resume does: a damaged newest one is skipped with a warning for
the newest good one, and results go under the run (<run>/evals/<time>/) unless --out says where.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from agentrl import envs
from agentrl.checkpoint import CKPT_RE, MANIFEST, CorruptCheckpoint, usable_checkpoints, verify_checkpoint
from agentrl.config import import_modules, load_run_config
from agentrl.envs.agents import SCRIPTED_AGENTS, run_panel
from agentrl.envs.pool import EnvInterrupted, EnvPool, env_factory, guarded
from agentrl.errors import ConfigError
from agentrl.evaluation import evaluate_rollout, markdown, panel_for, seeds_table
from agentrl.policies.backends import make_policy
from agentrl.policies.models import ModelSpec, check_model_name, load_model
from agentrl.policies.vllm import VllmSpec, vllm_missing
from agentrl.rollout import RolloutConfig, RolloutManager
from agentrl.rundir import writable_location


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="agentrl-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, help="a run directory: evaluate it as it was trained (reads config.yaml)")
    ap.add_argument("--eval-set", help="with --run: which of the run's env.eval_sets (default: the first)")
    ap.add_argument("--imports", nargs="+", default=[], help="modules to import first (they register your envs)")
    ap.add_argument("--env", help="a registered env id (default with --run: the run's)")
    ap.add_argument("--env-kwargs", help="JSON object of env constructor arguments (replaces the run's)")
    ap.add_argument(
        "--model",
        help="model folder, HF name, smollm2-135m-instruct or tiny-qwen2 (default with --run: "
        "the newest checkpoint's model/)",
    )
    ap.add_argument("--agent", help="a scripted agent instead of a model (random, oracle, …)")
    ap.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        help="generation backend (default with --run: the run's model.backend and model.vllm settings, else hf)",
    )
    ap.add_argument("--instances", type=int, help="panel size: the first N instances (default: the run's, else 32)")
    ap.add_argument("--panel", help="panel file (fixed list of instances)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--temperature", type=float, help="sampling temperature, 0 = greedy (default: run's, else 0.4)")
    ap.add_argument("--max-new-tokens", type=int, help="reply length limit (default: run's, else 512)")
    ap.add_argument("--max-turns", type=int, help="turn limit (default: run's eval_max_turns, else 50)")
    ap.add_argument("--workers", type=int, default=2, help="env worker processes (0: in-process)")
    ap.add_argument(
        "--env-timeout", type=float, help="seconds an env call may take (default: the run's env_timeout_s, else 60)"
    )
    ap.add_argument(
        "--out",
        help="folder for eval.json and eval.md, checked first (default with --run: <run>/evals/<time>; else required)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _checkpoint_models(run_dir: Path, problems: list[str]) -> list[str]:
    """The model/ folders of the run's checkpoints that verify against their manifests, newest first (the same check
    as resume); a damaged one is skipped with a warning, and none usable is a problem naming why."""
    good, damaged = usable_checkpoints(run_dir)
    for reason in damaged:
        warnings.warn(f"skipping a damaged checkpoint: {reason}", stacklevel=2)
    if not good:
        why = ":\n    " + "\n    ".join(damaged) if damaged else " yet"
        problems.append(f"--run {run_dir} has no usable checkpoint{why}; give --model")
    return [str(path / "model") for path in good]


def _verified_model(model: str, problems: list[str]) -> None:
    """A --model that is a checkpoint's model/ folder is verified against that checkpoint's manifest first."""
    folder = Path(model).expanduser()
    if folder.name == "model" and ((folder.parent / MANIFEST).exists() or CKPT_RE.match(folder.parent.name)):
        try:
            verify_checkpoint(folder.parent)
        except CorruptCheckpoint as err:
            problems.append(f"--model {model}: {err}")


def load_first(models: list[str]) -> tuple[Any, Any, str]:
    """(model, tokenizer, folder) of the first of `models` that loads; one that does not (truncated weights, a
    folder that is not a model) is skipped with a warning, as resume does. Raises CorruptCheckpoint if none loads."""
    reasons = []
    for name in models:
        try:
            model, tok = load_model(ModelSpec(name=name, device="auto"))
            return model, tok, name
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
            reasons.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}")
            if len(models) > 1:
                warnings.warn(f"skipping a checkpoint that does not load: {reasons[-1]}", stacklevel=2)
    raise CorruptCheckpoint("no model could be loaded:\n  - " + "\n  - ".join(reasons))


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The evaluation settings and every problem with them (all at once; nothing loaded yet)."""
    problems: list[str] = []
    problems += import_modules(args.imports, "--imports")
    s: dict[str, Any] = {
        "rollout": RolloutConfig(),
        "prompt_format": None,
        "prompt": {},
        "instances": 32,
        "panel": args.panel,
        "env": args.env,
        "env_kwargs": {},
        "model": args.model,
        "backend": args.backend or "hf",
        "vllm": None,
        "models": [args.model] if args.model else [],  # to try in order: a run's verified checkpoints, newest first
    }
    if args.run is not None:
        problems += _from_run(args, s)
    if args.env_kwargs is not None:
        try:
            s["env_kwargs"] = json.loads(args.env_kwargs)
        except ValueError:
            s["env_kwargs"] = None
        if not isinstance(s["env_kwargs"], dict):
            problems.append(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
            s["env_kwargs"] = {}
    overrides = {
        "eval_temperature": args.temperature,
        "eval_max_new_tokens": args.max_new_tokens,
        "eval_max_turns": args.max_turns,
        "env_timeout_s": args.env_timeout,
    }
    rollout = replace(s["rollout"], num_workers=args.workers, **{k: v for k, v in overrides.items() if v is not None})
    if args.run is None and args.temperature is None:
        rollout = replace(rollout, eval_temperature=0.4)
    s["rollout"] = rollout
    if args.instances is not None:
        s["instances"] = args.instances
    return s, problems + _problems(args, s)


def _from_run(args: argparse.Namespace, s: dict[str, Any]) -> list[str]:
    """Fill `s` from the run's config.yaml (what shapes what the model sees and says); the problems found. Nothing
    the config names is imported: its env.imports load only when the user passes them again with --imports."""
    try:
        cfg = load_run_config(args.run)
    except (OSError, ValueError) as err:
        return [f"--run {args.run}: {err}"]
    problems = []
    # a hub env id ("verifiers:<module>") imports its module when the env is built: the same rule as env.imports
    named = [*cfg.env.imports, *([] if args.env else filter(None, [envs.hub_module(cfg.env.id)]))]
    untrusted = [m for m in named if m not in args.imports]
    if untrusted:
        problems.append(
            f"the run's env.imports names {', '.join(map(repr, untrusted))}: agentrl does not import modules named by "
            f"a run directory (it may come from someone else); if you trust them, pass --imports {' '.join(untrusted)}"
        )
    sets = {e.name: e for e in cfg.env.eval_sets}
    chosen = sets.get(args.eval_set) if args.eval_set else cfg.env.eval_sets[0]
    if chosen is None:
        problems.append(f"--eval-set {args.eval_set!r}: the run has {', '.join(sets)}")
    else:
        s["env_kwargs"] = {**cfg.env.kwargs, **chosen.kwargs}
        s["panel"] = args.panel or chosen.panel
    s.update(rollout=cfg.rollout, prompt_format=cfg.env.prompt_format, prompt=cfg.env.prompt_options())
    s["env"], s["instances"] = args.env or cfg.env.id, cfg.env.eval_instances
    s["backend"], s["vllm"] = args.backend or str(cfg.model.backend), cfg.model.vllm
    if not args.model and not args.agent:
        s["models"] = _checkpoint_models(args.run, problems)
        s["model"] = s["models"][0] if s["models"] else None
    return problems


def _problems(args: argparse.Namespace, s: dict[str, Any]) -> list[str]:
    """What is wrong with the resolved settings: env id, model or agent, backend, numbers, output folder."""
    problems = []
    rollout: RolloutConfig = s["rollout"]
    if s["env"] is None:
        problems.append("give --env (or --run)")
    elif env_problems := envs.check_env_id(s["env"]):
        problems += env_problems
    if (s["model"] is None) == (args.agent is None):
        problems.append("give exactly one of --model or --agent (with --run, --model defaults to its checkpoint)")
    if args.agent is not None and args.agent not in SCRIPTED_AGENTS:
        problems.append(f"--agent {args.agent!r}: choose from {', '.join(sorted(SCRIPTED_AGENTS))}")
    if s["model"] is not None:
        problems += check_model_name(s["model"])
        if args.model:
            _verified_model(args.model, problems)
    if s["backend"] == "vllm" and args.agent is None:
        problems += [m for m in [vllm_missing("--backend")] if m]
    if s["instances"] < 1:
        problems.append(f"--instances must be >= 1, got {s['instances']}")
    if args.workers < 0:
        problems.append(f"--workers must be >= 0, got {args.workers}")
    if not math.isfinite(rollout.eval_temperature) or rollout.eval_temperature < 0:
        problems.append(f"--temperature must be a finite number >= 0, got {rollout.eval_temperature}")
    problems += [p.replace("rollout.", "--") for p in rollout.validate() if "temperature" not in p]
    if args.out is None and args.run is None:
        problems.append("give --out (the folder for eval.json and eval.md)")
    elif not writable_location(Path(args.out or args.run)):
        problems.append(f"--out {args.out or args.run}: not a writable location; choose another folder")
    return problems


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    s, problems = resolve(args)
    rollout: RolloutConfig = s["rollout"]
    env_id, env_kwargs, max_turns = s["env"], s["env_kwargs"], rollout.eval_max_turns
    fmt = None
    if not problems:
        try:
            # a prompt format named by a run's config loads only from agentrl or from modules the user imported
            fmt = envs.make_prompt_format(env_id, s["prompt_format"], import_modules=args.run is None, **s["prompt"])
            probe = envs.probe_env(env_id, {"max_episode_steps": max_turns, **env_kwargs}, rollout.env_timeout_s)
            with guarded(rollout.env_timeout_s):
                indices, panel_hash = panel_for(env_id, env_kwargs, probe, s["instances"], s["panel"])
        except (ConfigError, OSError, TypeError, ValueError, EnvInterrupted) as err:
            problems.append(f"{env_id} with {env_kwargs}: {type(err).__name__}: {err}")
    if problems:
        ap.exit(2, "agentrl-eval: error: invalid arguments:\n  - " + "\n  - ".join(problems) + "\n")
    results = []
    if args.agent:
        for seed in args.seeds:
            agent = SCRIPTED_AGENTS[args.agent](seed=seed) if args.agent == "random" else SCRIPTED_AGENTS[args.agent]()
            results.append(run_panel(probe, agent, indices, max_turns, timeout_s=rollout.env_timeout_s))
    else:
        try:
            model, tok, s["model"] = load_first(s["models"])
        except CorruptCheckpoint as err:
            ap.exit(1, f"agentrl-eval: error: {err}\n")
        factory = env_factory(env_id, max_episode_steps=max_turns, **env_kwargs)
        with EnvPool(factory, num_workers=args.workers, **rollout.pool_options()) as pool:
            length = rollout.longest_sequence
            policy = make_policy(s["backend"], model, tok, s["vllm"] or VllmSpec(), max_model_len=length)
            manager = RolloutManager(pool, policy, tok, fmt, rollout, evaluation=True)
            for seed in args.seeds:
                sampling = replace(manager.sampling, seed=seed)
                results.append(evaluate_rollout(manager, indices, seed, sampling, progress=not args.no_progress))
    probe.close()
    summary = seeds_table(results)
    table = markdown(summary, results[0].counts)
    report = {
        "env": env_id,
        "env_kwargs": env_kwargs,
        "run": str(args.run) if args.run else None,
        "panel_hash": panel_hash,
        "instances": indices,
        "model": s["model"],
        "agent": args.agent,
        "backend": None if args.agent else s["backend"],
        "seeds": args.seeds,
        "prompt_format": f"{type(fmt).__module__}:{type(fmt).__name__}",
        "prompt_options": s["prompt"],
        "sampling": {
            "temperature": rollout.eval_temperature,
            "max_new_tokens": rollout.eval_reply_tokens,
            "max_turns": max_turns,
            "stop": list(rollout.stop),
            "history_length": rollout.history_length,
            "sample_mode": str(rollout.sample_mode),
        },
        "summary": summary,
        "per_seed": [asdict(r) for r in results],
    }
    out = Path(args.out) if args.out else args.run / "evals" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "eval.md").write_text(f"panel {panel_hash}, seeds {args.seeds}\n\n{table}\n")
    print(f"{env_id} panel {panel_hash} ({len(indices)} instances), seeds {args.seeds}\n{table}\nwritten to {out}/")


if __name__ == "__main__":
    main()
