"""agentrl environments: registered with Gymnasium (its registry is the only one), and their prompt formats.

Add an env: write one file with a `TextEnv` (or any `gymnasium.Env` with text observations and actions), name its
prompt format in the class metadata, and register it the Gymnasium way:

    class MyEnv(TextEnv):
        metadata = {"render_modes": [], "prompt_format": AgentPromptFormat}
        ...

    gymnasium.register("myorg/MyEnv-v0", entry_point="my_module:MyEnv", max_episode_steps=50)

The prompt format travels with the env class (`metadata["prompt_format"]`, a class or a "module:Name" string); an
env without one gets the generic `AgentPromptFormat`, and `env.prompt_format=module:Name` overrides either. Step
limits are Gymnasium's `TimeLimit` wrapper: the trainer makes every env with `max_episode_steps=rollout.max_turns`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import sys
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from agentrl.envs.prompting import AgentPromptFormat, AnswerPromptFormat, PromptFormat, WordChoicePromptFormat
from agentrl.errors import ConfigError, unknown_name_message

# Optional packages an env module may import, and the extra that installs them (for the error message).
EXTRAS = {
    "alfworld": "alfworld",
    "textworld": "alfworld",
    "jericho": "alfworld",
    "math_verify": "math",
    "uvicorn": "openenv",
    "verifiers": "verifiers",
    "openenv": "openenv",
}
# Envs from the hubs their authors publish to: "verifiers:<module>" is the registered adapter with module=<module>
HUBS = {"verifiers": ("agentrl/Verifiers-v0", "module"), "openenv": ("agentrl/OpenEnv-v0", "target")}
URL_SCHEMES = ("http://", "https://", "ws://", "wss://")
INSTALL_HINT = "pip install 'agentrl-holderpo[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def hub_env(env_id: str) -> tuple[str, dict[str, Any]]:
    """(the registered id, the kwargs it adds) of an env id: "verifiers:<module>" → the verifiers adapter with
    module=<module>; a registered id → itself and no kwargs."""
    hub, sep, name = env_id.partition(":")
    if sep and hub in HUBS and "/" not in hub:
        if not name:
            raise ConfigError(f"env id {env_id!r}: name the module after the colon, e.g. {hub}:my_env")
        registered, key = HUBS[hub]
        return registered, {key: name}
    return env_id, {}


def hub_module(env_id: str) -> str | None:
    """The Python module a hub env id imports when its env is built (None: a registered id or a server's URL)."""
    hub, sep, name = env_id.partition(":")
    if not (sep and hub in HUBS and name) or name.startswith(URL_SCHEMES):
        return None
    return name.partition(":")[0] if hub == "openenv" else name


def env_class(env_id: str) -> Any:
    """The class (or creator) behind a registered id (or a hub id, envs from hubs), imported but not constructed;
    ConfigError when the id is unknown or its module needs an optional package that is missing."""
    env_id = hub_env(env_id)[0]
    if env_id not in gym.registry:
        raise ConfigError(
            unknown_name_message("env id", env_id, gym.registry)
            + "; if a module of yours registers it, did you forget env.imports=[your_module] (agentrl-eval: --imports)?"
        )
    entry = gym.spec(env_id).entry_point
    try:
        creator = load_env_creator(entry) if isinstance(entry, str) else entry
    except ModuleNotFoundError as err:
        missing = [err.name or ""]
    else:  # heavy packages an env imports only when constructed: metadata["requires"]
        requires = getattr(creator, "metadata", {}).get("requires", ())
        missing = [m for m in requires if importlib.util.find_spec(m) is None]
        if not missing:
            return creator
    root = missing[0].split(".")[0]
    if root not in EXTRAS:
        raise ConfigError(f"{env_id}: cannot import its entry point {entry!r} (no module named {root!r})")
    hint = INSTALL_HINT.format(extra=EXTRAS[root])
    raise ConfigError(f"{env_id} needs the {root!r} package; install it with: {hint}")


def check_env_id(env_id: str) -> list[str]:
    """Problems with an env id that can be found without building the env (unknown id, missing optional package)."""
    try:
        env_class(env_id)
    except ConfigError as err:
        return [str(err)]
    return []


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """gymnasium.make with Gymnasium's standard wrappers kept (pass max_episode_steps for a TimeLimit)."""
    env_class(env_id)
    registered, added = hub_env(env_id)
    return gym.make(registered, disable_env_checker=True, **added, **kwargs)


def probe_env(env_id: str, kwargs: dict[str, Any], timeout_s: float = 60.0) -> gym.Env:
    """An env built in this process to read its task set or play a panel; a constructor that rejects the kwargs, or
    runs past `timeout_s`, is a ConfigError."""
    from agentrl.envs.pool import EnvInterrupted, guarded  # (the pool builds its envs with make_env, from here)

    try:
        with guarded(timeout_s, "the env constructor's limit"):
            return make_env(env_id, **kwargs)
    except (TypeError, ValueError, FileNotFoundError, EnvInterrupted) as err:
        raise ConfigError(f"env {env_id} with kwargs {kwargs}: {err}") from None


def make_prompt_format(
    env_id: str, override: str | None = None, *, import_modules: bool = True, **options: Any
) -> PromptFormat:
    """The env's prompt format (override > the env class's metadata > AgentPromptFormat) built with `options`.

    `override` is "module:Name" naming a prompt-format class (one with render and parse; never any other callable).
    `import_modules=False` is for a config read from disk (a run directory someone shared): then a module outside
    agentrl is used only when it is already imported (the user named it on their own command line, e.g.
    `agentrl-eval --imports`), so loading a run never imports or calls code the user did not ask for."""
    source = override or getattr(env_class(env_id), "metadata", {}).get("prompt_format") or AgentPromptFormat
    if isinstance(source, str):  # an env class's own metadata is registered code: its module may always load
        source = _format_class(source, import_modules or override is None)
    if not _is_format_class(source):
        raise ConfigError(
            f"prompt format {override or source!r} is not a prompt-format class (a class with render() and parse(), "
            "e.g. agentrl.envs.prompting:TersePromptFormat); write it as 'module:ClassName'"
        )
    name = getattr(source, "__name__", str(source))
    try:
        takes = [p for p in inspect.signature(source).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        takes = None
    if takes is not None:
        unknown = [k for k in options if k not in takes]
        if unknown:
            hints = [
                f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, takes, 1)) else "")
                for k in unknown
            ]
            raise ConfigError(
                f"env.prompt: {name} (the prompt format of {env_id}) takes no option {', '.join(hints)}; "
                f"its options: {', '.join(takes) or 'none'}"
            )
    try:
        return source(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"env.prompt options {options} do not fit {name}: {err}") from None


def _is_format_class(source: Any) -> bool:
    """A prompt-format class (render and parse), or a functools.partial of one (an env's metadata may preset its
    options); never any other callable."""
    target = source.func if isinstance(source, functools.partial) else source
    return isinstance(target, type) and issubclass(target, PromptFormat)


def _format_class(spec: str, import_modules: bool) -> Any:
    """The object "module:Name" names. Modules of agentrl itself always load; another module only when
    `import_modules` or when it is already imported (ConfigError otherwise, saying how to allow it)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"prompt format {spec!r}: write it as 'module:ClassName'")
    own = module == "agentrl" or module.startswith("agentrl.")
    if not (own or import_modules or module in sys.modules):
        raise ConfigError(
            f"prompt format {spec!r}: a run's config names module {module!r}, and agentrl does not import modules "
            f"named by a run directory (it may come from someone else). If you trust it, name it yourself: "
            f"--imports {module}"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"prompt format {spec!r} cannot be loaded ({err}); write it as 'module:ClassName'") from None


gym.register("agentrl/CueBandit-v0", entry_point="agentrl.envs.cue_bandit:CueBanditEnv", max_episode_steps=50)
gym.register("agentrl/Math-v0", entry_point="agentrl.envs.math_env:MathEnv")  # one step, always
gym.register("agentrl/TextWorld-v0", entry_point="agentrl.envs.textworld_env:TextWorldEnv", max_episode_steps=50)
gym.register("agentrl/ToolCue-v0", entry_point="agentrl.envs.tool_cue:ToolCueEnv", max_episode_steps=50)
gym.register("agentrl/Verifiers-v0", entry_point="agentrl.envs.hub_verifiers:VerifiersEnv")
gym.register("agentrl/OpenEnv-v0", entry_point="agentrl.envs.hub_openenv:OpenEnvEnv")
gym.register("agentrl/ALFWorld-v0", entry_point="agentrl.envs.alfworld.env:ALFWorldEnv", max_episode_steps=50)

__all__ = [
    "AgentPromptFormat",
    "AnswerPromptFormat",
    "PromptFormat",
    "WordChoicePromptFormat",
    "check_env_id",
    "env_class",
    "hub_env",
    "hub_module",
    "make_env",
    "make_prompt_format",
    "probe_env",
]
