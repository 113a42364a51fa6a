"""Typed configuration: dataclasses are the single home of every default; YAML in configs/ only composes.

    agentrl-train experiment=quickstart trainer.iterations=3 algo=grpo

`load_config(overrides)` composes configs/config.yaml with Hydra's compose API over these schemas (registered in
Hydra's ConfigStore), then `validate_config` checks every name before any weights load and reports all problems
at once, with close matches and how to fix them.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
import inspect
import json
import os
import traceback
import warnings
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

import agentrl.configs
from agentrl import distributed, envs
from agentrl.algo import AlgoConfig
from agentrl.envs.pool import EnvInterrupted, guarded
from agentrl.envs.prompting import PromptFormat, constrained_problems
from agentrl.errors import ConfigError
from agentrl.evaluation import panel_for
from agentrl.learner import LearnerConfig, check_correction
from agentrl.policies.backends import sampler_matches_learner
from agentrl.policies.models import TINY_HEADS, TINY_NAMES, ModelSpec, check_model_spec, resolve_precision
from agentrl.policies.vllm import setting_problems as vllm_setting_problems
from agentrl.rollout import ExplorationConfig, RolloutConfig
from agentrl.rundir import check_run_dir
from agentrl.types import option

CONFIG_DIR = Path(agentrl.configs.__file__).resolve().parent  # the repository's configs/, shipped as agentrl.configs


@dataclass
class EvalSet:
    """One fixed evaluation panel: the env made with env.kwargs updated by `kwargs` (e.g. another split)."""

    name: str = option("panel", "metrics are eval/<name>/success[/<task type>]")
    kwargs: dict[str, Any] = option(
        help="env.kwargs updated with these for this set (e.g. another split)", factory=dict
    )
    panel: str | None = option(
        None, "a panel file (scripts/generate_alfworld.py writes them); else the first instances"
    )


@dataclass
class EnvConfig:
    id: str = option("agentrl/CueBandit-v0", "a registered Gymnasium env id (agentrl/ALFWorld-v0, your own, ...)")
    kwargs: dict[str, Any] = option(
        help="the env constructor's arguments (training; eval sets update them)", factory=dict
    )
    eval_sets: list[EvalSet] = option(
        help="fixed evaluation panels: [{name, kwargs, panel}]", resume=True, factory=lambda: [EvalSet()]
    )
    eval_instances: int = option(32, "panel size: the first N instances of each eval set, in order", resume=True)
    # AgentPromptFormat (ALFWorld, TextWorld, your own envs) takes environment, reasoning, lenient; AnswerPromptFormat
    # (math) and WordChoicePromptFormat take system; your own format (env.prompt_format) its own. The format checks
    # them (a misspelt one fails with a close match); set like a field: env.prompt.reasoning=false
    prompt: dict[str, Any] = option(
        help="options of the env's prompt format (env.prompt.<option>=...; unset: the format's default)", factory=dict
    )
    prompt_format: str | None = option(None, '"module:ClassName" of a prompt-format class replacing the env\'s own')
    imports: list[str] = option(help="modules that register your own envs (imported first)", resume=True, factory=list)

    def prompt_options(self) -> dict[str, Any]:
        """The options passed to the prompt format (a null one keeps the format's default)."""
        return {key: value for key, value in self.prompt.items() if value is not None}


@dataclass
class TrainerConfig:
    """The run: its length, seed, directory, checkpoints, evaluation cadence and logging."""

    iterations: int = option(150, "training iterations (rollout + update each)", resume=True)
    seed: int = option(0, "seeds task sampling, generation and shuffling")
    run_dir: str = option("", '"": runs/<experiment>/<date_time> (resume=auto: runs/<experiment>/latest)', resume=True)
    overwrite: bool = option(False, "a fresh run may replace a run already in run_dir (else refused)", resume=True)
    checkpoint_every: int = option(10, "checkpoint every N iterations (and after the last)", resume=True)
    keep_checkpoints: int = option(2, "newest checkpoints kept", resume=True)
    eval_every: int = option(5, "evaluate the panels every N iterations (and after the last)", resume=True)
    eval_before: bool = option(True, "evaluate the panels before training", resume=True)
    random_baseline_seeds: int = option(
        0, "> 0: after training, a random-admissible agent plays every panel with this many seeds", resume=True
    )
    resume: str = option("never", "never | auto (the newest checkpoint in run_dir) | a checkpoint folder", resume=True)
    tensorboard: bool = option(False, "also log to <run_dir>/tensorboard", resume=True)
    wandb: bool = option(False, "also log to Weights & Biases", resume=True)
    wandb_project: str = option("agentrl", "the W&B project", resume=True)
    progress: bool = option(True, "progress bars (false: none, transformers' included)", resume=True)


@dataclass
class Config:
    """Every group is the library's own dataclass: what the YAML sets is what the code reads."""

    experiment: str = option("default", "the run's name: runs/<experiment>/...", resume=True)
    env: EnvConfig = option(help="the environment", factory=EnvConfig)
    model: ModelSpec = option(help="the model", factory=lambda: ModelSpec(device="auto"))
    algo: AlgoConfig = option(help="the loss and its schedule", factory=AlgoConfig)
    rollout: RolloutConfig = option(help="how episodes are played", factory=RolloutConfig)
    exploration: ExplorationConfig = option(
        help="training temperatures: members, annealing, compensation", factory=ExplorationConfig
    )
    learner: LearnerConfig = option(help="how updates are made", factory=LearnerConfig)
    trainer: TrainerConfig = option(help="the run", factory=TrainerConfig)


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="agentrl_schema", node=Config)
    groups = {
        "env": EnvConfig,
        "model": ModelSpec,
        "algo": AlgoConfig,
        "rollout": RolloutConfig,
        "learner": LearnerConfig,
        "trainer": TrainerConfig,
    }
    for group, node in groups.items():
        cs.store(group=group, name=f"{group}_schema", node=node)


def load_config(overrides: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> Config:
    """Compose configs/config.yaml with `overrides` into a typed Config (raises ConfigError on bad keys)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schemas()
    GlobalHydra.instance().clear()
    # a key inside a free-form dict (env.kwargs, env.prompt, algo.loss_kwargs) is set like a field, no + needed;
    # what it names is checked by its owner (the env's signature, the prompt format, the loss) before weights load
    free_form = tuple(f"{key}." for key, fact in field_facts().items() if isinstance(fact["default"], dict))
    given = [f"++{o}" if o.startswith(free_form) else o for o in overrides or []]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            composed = compose(config_name="config", overrides=given)
        obj = OmegaConf.to_object(composed)
    except Exception as err:
        if isinstance(err, OmegaConfBaseException) or type(err).__module__.startswith("hydra"):
            detail = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
            raise ConfigError(f"bad configuration: {detail}{override_hint(detail, overrides or [])}") from None
        raise
    if not isinstance(obj, Config):
        raise ConfigError("configs/config.yaml must compose onto the agentrl schema")
    dropped = sorted(set(flatten(OmegaConf.to_container(composed))) - set(flatten(config_dict(obj))))
    if dropped:  # a `+key` the schema has no field for was accepted by Hydra and then silently dropped
        known = sorted(flatten(config_dict(Config())))
        hints = [
            f"{key} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, known, 1)) else key
            for key in dropped
        ]
        raise ConfigError(
            f"unknown config keys: {', '.join(hints)}; a + adds keys only to free-form dicts (env.kwargs, "
            "env.prompt, algo.loss_kwargs); agentrl-train --help lists the keys"
        )
    obj.model.dtype = resolve_precision(obj.model)  # model.dtype=auto: bf16 or fp32 for this machine, saved as such
    return obj


def override_hint(detail: str, overrides: list[str]) -> str:
    """How to fix the usual override mistakes: a misspelt key (close match), list syntax, quoting."""
    import re

    hints = []
    missing = re.search(r"Key '([^']+)' is not in struct\s+full_key: (\S+)", detail) or re.search(
        r"Could not override '([^']+)'", detail
    )
    if missing:
        full = missing.group(2) if missing.lastindex == 2 else missing.group(1)
        defaults = flatten(config_dict(Config()))
        if full in MOVED_KEYS:
            hints.append(f"{full} is now {MOVED_KEYS[full]} (the exploration group)")
        else:
            close = difflib.get_close_matches(full, sorted(defaults), n=1, cutoff=0.6)
            if close and close[0] != full:
                hints.append(f"did you mean {close[0]}?")
            hints.append("agentrl-train --help lists the keys")
    if any(o.startswith(("env.imports=", "rollout.stop=")) and "[" not in o for o in overrides):
        hints.append("lists are written in brackets: env.imports=[my_module], rollout.stop=['</action>']")
    if any(ch in o for o in overrides for ch in "<>") or "token recognition error" in detail:
        hints.append("quote values with < or > for the shell and Hydra: 'rollout.stop=[\"</action>\"]'")
    return "\nhint: " + "; ".join(hints) if hints else ""


# keys that moved to the exploration group (2026-12-04): a config saved before (a run directory's config.yaml, a
# checkpoint's config.json) is read with them in their new place
MOVED_KEYS = {
    "rollout.temperature": "exploration.temperature",
    "rollout.member_temperatures": "exploration.member_temperatures",
    "rollout.temperature_end": "exploration.temperature_end",
    "learner.temperature_compensation": "exploration.temperature_compensation",
}
OLD_PROMPT_FIELDS = {"environment", "reasoning", "lenient", "system", "extra"}  # env.prompt before it was one dict


def upgrade_saved(tree: dict[str, Any]) -> dict[str, Any]:
    """A saved config (nested dict) in today's layout: keys moved since it was written in their new place, and
    env.prompt's old fields (`extra` for a format's own options) as the one dict of options. Nothing else changes:
    the schema then rejects what it does not know."""
    tree = copy.deepcopy(tree)
    for old, new in MOVED_KEYS.items():
        (group, key), (new_group, new_key) = old.split("."), new.split(".")
        if isinstance(tree.get(group), dict) and key in tree[group]:
            value = tree[group].pop(key)
            if isinstance(tree.setdefault(new_group, {}), dict):
                tree[new_group].setdefault(new_key, value)
    env = tree.get("env")
    prompt = env.get("prompt") if isinstance(env, dict) else None
    if isinstance(prompt, dict) and set(prompt) == OLD_PROMPT_FIELDS and isinstance(prompt["extra"] or {}, dict):
        named = {key: value for key, value in prompt.items() if key != "extra" and value is not None}
        env["prompt"] = {**named, **(prompt["extra"] or {})}
    return tree


def load_run_config(run_dir: Path) -> Config:
    """The typed config a run was trained with (its config.yaml, in today's layout), checked against today's
    schema. Plain YAML values only: nothing in it is imported or called."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; is {run_dir} a run directory?")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if not isinstance(saved, dict):
            raise ValueError("it is not a mapping of config groups")
        merged = OmegaConf.merge(OmegaConf.structured(Config), upgrade_saved(saved))
        cfg = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"{path} does not fit the config schema: {err}") from None
    assert isinstance(cfg, Config)
    return cfg


def import_modules(modules: list[str], flag: str) -> list[str]:
    """Import the user's modules (they register envs); the problems, naming the module and why (not a traceback)."""
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            problems.append(f"{flag}: cannot import {module!r} ({err}); is its folder on PYTHONPATH?")
        except Exception as err:  # the module itself failed while it ran
            where = traceback.extract_tb(err.__traceback__)[-1]
            problems.append(
                f"{flag}: importing {module!r} raised {type(err).__name__}: {err} "
                f"({Path(where.filename).name}, line {where.lineno})"
            )
    return problems


def validate_config(cfg: Config, *, resources: bool = True) -> None:
    """Check every name and number that can be checked without loading weights; report all problems at once.

    `resources=False` skips what depends on this machine (model weights present or downloadable, devices, data
    and panel files, run_dir): for checking a GPU or paper config on a machine that will not run it."""
    problems: list[str] = []
    problems += import_modules(cfg.env.imports, "env.imports")
    env_problems = envs.check_env_id(cfg.env.id)
    problems += env_problems
    if not env_problems:
        kwarg_problems = check_env_kwargs(cfg)
        problems += kwarg_problems
        try:
            fmt = envs.make_prompt_format(cfg.env.id, cfg.env.prompt_format, **cfg.env.prompt_options())
        except ConfigError as err:
            problems.append(str(err))
        else:
            problems += check_constrained(cfg, fmt)
        if resources and not kwarg_problems:
            problems += check_env_data(cfg)
    problems += cfg.algo.validate(cfg.trainer.iterations, cfg.rollout.max_new_tokens)
    problems += cfg.rollout.validate() + cfg.learner.validate() + check_backend(cfg)
    problems += check_world(cfg, distributed.from_env(), resources=resources)
    problems += cfg.exploration.validate(cfg.rollout.group_size)
    if cfg.algo.advantage.step_weight and cfg.rollout.sample_mode != "window":
        problems.append(
            f"algo.advantage.step_weight={cfg.algo.advantage.step_weight} credits each turn's own row: it needs "
            "rollout.sample_mode=window (or set algo.advantage.step_weight=0)"
        )
    if cfg.rollout.group_size < 2:  # the coupling of group-relative advantages (algo) and the group (rollout)
        problems.append(
            f"rollout.group_size={cfg.rollout.group_size}: group-relative advantages ({cfg.algo.name}) need at least "
            "2 samples per task, or every advantage is 0; set rollout.group_size=8"
        )
    for name, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")) if resources else ():
        if getattr(cfg.trainer, name) and importlib.util.find_spec(package) is None:
            problems.append(
                f"trainer.{name}=true needs {package}: pip install -e '.[logging]' (in a checkout) or "
                f"pip install {package}"
            )
    if cfg.trainer.run_dir and resources:
        problems += check_run_dir(Path(cfg.trainer.run_dir), cfg.trainer.resume, cfg.trainer.overwrite)
    if cfg.trainer.resume not in ("never", "auto") and not Path(cfg.trainer.resume).exists():
        problems.append(f"trainer.resume={cfg.trainer.resume!r} is neither 'never', 'auto' nor an existing checkpoint")
    if not 0 <= cfg.trainer.seed < 2**32:  # numpy's and torch's seeding take [0, 2**32)
        problems.append(f"trainer.seed must be in [0, 2**32), got {cfg.trainer.seed}")
    for name in ("iterations", "checkpoint_every", "eval_every", "keep_checkpoints"):
        if getattr(cfg.trainer, name) < 1:
            problems.append(f"trainer.{name} must be >= 1, got {getattr(cfg.trainer, name)}")
    if cfg.env.eval_instances < 1:
        problems.append(f"env.eval_instances must be >= 1, got {cfg.env.eval_instances}")
    names = [s.name for s in cfg.env.eval_sets]
    if len(set(names)) != len(names):
        problems.append(f"env.eval_sets: names must be distinct, got {names}")
    if resources:
        problems += check_model_spec(cfg.model)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def check_world(cfg: Config, place: distributed.Dist, *, resources: bool = True) -> list[str]:
    """Under torchrun: each rank plays whole groups, so the tasks of an iteration divide evenly; one GPU per rank."""
    if not place.enabled:
        return []
    problems = []
    if cfg.rollout.tasks_per_iteration % place.world:
        good = place.world * max(1, round(cfg.rollout.tasks_per_iteration / place.world))
        problems.append(
            f"rollout.tasks_per_iteration={cfg.rollout.tasks_per_iteration} does not divide among the {place.world} "
            f"ranks torchrun launched (WORLD_SIZE={place.world}): each rank plays whole groups. Set "
            f"rollout.tasks_per_iteration={good} (a multiple of {place.world}), or launch a number of ranks that "
            f"divides {cfg.rollout.tasks_per_iteration}"
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", place.world))
    on_gpu = cfg.model.device.startswith("cuda") or (cfg.model.device == "auto" and torch.cuda.is_available())
    if resources and on_gpu and torch.cuda.device_count() < local:
        problems.append(
            f"torchrun started {local} processes on this node and it has {torch.cuda.device_count()} GPU(s): "
            f"use --nproc_per_node {torch.cuda.device_count()} (one rank per GPU)"
        )
    return problems


def check_backend(cfg: Config) -> list[str]:
    """The generation backend's settings and what it cannot do; the mismatch correction's loss."""
    matches = sampler_matches_learner(cfg.model.backend)
    problems = check_correction(cfg.learner.mismatch.resolve(matches), cfg.algo.loss)
    if cfg.model.backend != "vllm":
        return problems
    x = cfg.exploration  # every temperature the run samples at: the configured ones, at the start and end of annealing
    sampled = x.training_temperatures(0, 2) + x.training_temperatures(1, 2)
    tiny_on_cpu = cfg.model.name in TINY_NAMES and not cfg.model.device.startswith("cuda")
    return (
        problems
        + cfg.model.vllm.validate()
        + vllm_setting_problems(
            hottest=max([*sampled, cfg.rollout.eval_temperature]),
            constrained=cfg.rollout.constrained_actions,
            head_size=cfg.model.hidden_size // TINY_HEADS if tiny_on_cpu else None,
        )
    )


def check_constrained(cfg: Config, fmt: PromptFormat) -> list[str]:
    """rollout.constrained_actions needs a prompt format that can spell a reply naming an action."""
    return constrained_problems(fmt) if cfg.rollout.constrained_actions else []


def check_env_data(cfg: Config) -> list[str]:
    """Make the env once for training and once per eval set, in this process, so missing or malformed data files
    and bad panel files are reported with the other problems (the env's message names the file and line)."""
    problems = []
    sets = [("env.kwargs", cfg.env.kwargs, None)]
    sets += [(f"env.eval_sets[{s.name}]", {**cfg.env.kwargs, **s.kwargs}, s) for s in cfg.env.eval_sets]
    limit = cfg.rollout.env_timeout_s  # a constructor or close() that hangs (a FIFO as data file) is a problem
    for where, kwargs, eval_set in sets:
        try:
            with guarded(limit):
                probe = envs.make_env(cfg.env.id, **kwargs)
        except (Exception, EnvInterrupted) as err:  # a config problem: the env's own message, never swallowed
            problems.append(f"{where}: {cfg.env.id} cannot be made with {kwargs}: {type(err).__name__}: {err}")
            continue
        try:
            with guarded(limit):
                if eval_set is not None:
                    panel_for(cfg.env.id, kwargs, probe, cfg.env.eval_instances, eval_set.panel)
        except (OSError, ValueError) as err:
            problems.append(f"{where}.panel: {err}")
        except EnvInterrupted as err:
            problems.append(f"{where}: reading {cfg.env.id}'s panel {err}")
        try:
            with guarded(limit):
                probe.close()
        except EnvInterrupted as err:
            problems.append(f"{where}: {cfg.env.id}'s close() {err}")
        except Exception as err:  # a close() that raises is the env's bug, not a reason to refuse the run: said once
            warnings.warn(f"{cfg.env.id}: close() raised {type(err).__name__}: {err}"[:500], stacklevel=2)
    return problems


def check_env_kwargs(cfg: Config) -> list[str]:
    """Unknown env constructor arguments (training and every eval set), with a close match from its signature."""
    creator = envs.env_class(cfg.env.id)
    params = inspect.signature(creator).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    takes = [n for n in params if n != "self"]
    given = [("env.kwargs", k) for k in cfg.env.kwargs]
    given += [(f"env.eval_sets[{s.name}].kwargs", k) for s in cfg.env.eval_sets for k in s.kwargs]
    return [
        f"{where}.{key}: {cfg.env.id} takes no argument {key!r}; its arguments: {', '.join(takes) or 'none'}"
        + (f"; did you mean {close[0]!r}?" if (close := difflib.get_close_matches(key, takes, n=1)) else "")
        for where, key in given
        if key not in takes
    ]


def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON values (what a checkpoint stores)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def config_yaml(cfg: Config) -> str:
    """The config as YAML (a run directory's config.yaml, `agentrl-train --cfg job`)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config_dict(cfg)))


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} for a nested dict (an empty dict is a leaf)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def field_facts(schema: type = Config, prefix: str = "") -> dict[str, dict[str, Any]]:
    """{"learner.lr": {"default": …, "help": …, "resume": …}} for every key of the schema: the facts each dataclass
    field carries (agentrl.types.option). Nested groups are walked; dicts and lists are single keys."""
    facts: dict[str, dict[str, Any]] = {}
    for f in fields(schema):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = None
        if is_dataclass(default):
            facts.update(field_facts(type(default), f"{prefix}{f.name}."))
        else:
            facts[prefix + f.name] = {"default": default, **f.metadata}
    return facts


def resumable(key: str, facts: dict[str, dict[str, Any]]) -> bool:
    """Whether a resumed run may change `key` (a flattened config key; keys inside a dict or list field follow
    that field), from the field's metadata. A key the schema does not know is not."""
    while key:
        if key in facts:
            return bool(facts[key].get("resume"))
        key = key.rpartition(".")[0]
    return False


def resume_changes(saved: dict[str, Any], cfg: Config) -> tuple[list[str], list[str]]:
    """(refused, applied) differences between a checkpoint's config and the config resuming it.

    Refused: a change to a field whose metadata says it may not change on resume (model, loss, seed, sampling,
    env, …: it would silently mix two runs in one), and trainer.iterations when the p schedule or the temperature
    annealing spans the run (it would re-time it mid-run).
    """
    old, new = flatten(upgrade_saved(saved)), flatten(config_dict(cfg))
    for flat in (old, new):  # compare the schedule's effective length (0 means trainer.iterations; adaptive: none)
        if not flat.get("algo.p_schedule_steps") and flat.get("algo.p_schedule") != "adaptive":
            flat["algo.p_schedule_steps"] = flat.get("trainer.iterations")
    schedule_spans_run = (
        cfg.algo.p_schedule != "adaptive" and not cfg.algo.p_schedule_steps and cfg.algo.p_start != cfg.algo.p_end
    )
    annealing = cfg.exploration.temperature_end is not None  # its schedule spans trainer.iterations too
    facts = field_facts()
    refused, applied = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        if key not in old and key in facts and new[key] == facts[key]["default"]:
            continue  # a setting added since the checkpoint was written, at its default (which keeps old behaviour)
        line = f"{key}: {old.get(key, '<unset>')!r} → {new.get(key, '<unset>')!r}"
        if key == "trainer.iterations" and schedule_spans_run:
            hint = f"the p schedule spans trainer.iterations; set algo.p_schedule_steps={old.get(key)} to keep it"
            refused.append(f"{line} ({hint})")
        elif key == "trainer.iterations" and annealing:
            refused.append(f"{line} (exploration.temperature_end anneals the temperatures over trainer.iterations)")
        elif resumable(key, facts):
            applied.append(line)
        else:
            refused.append(line)
    return refused, applied
