"""Environments published with verifiers (the Prime environments hub), played as agentrl text envs.

    env.id=verifiers:<module>   env.kwargs={...}   (the kwargs go to the module's load_environment)

Supported: the *classic* verifiers API — a module exporting `load_environment(**kwargs)` that returns a
`vf.SingleTurnEnv`, `vf.MultiTurnEnv`, `vf.ToolEnv` or `vf.StatefulToolEnv` with a dataset of chat prompts and a
`vf.Rubric` of (sync or async) reward functions — as verifiers 0.3.x ships it (`pip install 'agentrl-holderpo
[verifiers]'` pins >=0.3.1,<0.4). verifiers 0.4 removed that API (its `v1` harnesses reach the model over HTTP
from a sandbox); `v1` environments are not supported yet.

How an episode runs. The dataset's rows are the task set (`split="train"`: `get_dataset()`, `"eval"`:
`get_eval_dataset()`, instance i = row i). agentrl runs the env's public turn protocol itself, with its own tokenizer
and sampler producing every token (so the action masks stay exact): `init_state` → `setup_state` → the prompt
messages (shown to the model as they are, envs/tools.py) → the model's reply, given to `add_model_response` as an
assistant message (its `<tool_call>` blocks as tool calls) → the env's stop conditions; if it goes on, its
`env_response` is the next observation. When it stops: `cleanup`, then `rubric.score_rollout`, whose weighted
reward is the episode's reward (given on its last step; the env's named reward functions and metrics are in
`info["metrics"]` and logged as `rollout/metric/<name>`). `won` is reward >= the env's `pass_threshold` (0.5 unless
the env sets it).

What agentrl adds around it: scoring runs under `reward_timeout_s` (a hanging reward function scores the episode 0
with the reason in `info["reward_error"]`, never stalls the run); a reward function that raises (which verifiers
logs and scores 0.0 for that function) scores the whole episode 0 with the error in `info["reward_error"]`; an env
whose turn raises a verifiers error ends its episode as an env error. Loading an env installs verifiers' own
SIGINT/SIGTERM handlers: agentrl puts its own back right after, so Ctrl-C and SIGTERM clean up as always.
Set rollout.max_turns at least to the env's `max_turns`: an episode cut by agentrl's step limit is not scored.
Group-level reward functions (scored over a group of rollouts) are not supported.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

from agentrl.envs.base import TextEnv, clean_text, empty_info
from agentrl.envs.prompting import ChatPromptFormat
from agentrl.envs.tools import ToolCallError, openai_tool, parse_tool_calls

SPLITS = ("train", "eval")


class _RewardErrors(logging.Handler):
    """Collects the errors verifiers logs while it scores (it turns a raising reward function into 0.0 and a log)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:500])


def load_environment(module: str, env_args: dict[str, Any]) -> Any:
    """The module's environment, loaded with verifiers' classic `load_environment`, with this process's SIGINT and
    SIGTERM handlers as they were before (verifiers installs its own when an env is built). ValueError when the
    module cannot be loaded or does not give a classic environment."""
    import verifiers as vf

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        env = vf.load_environment(module, **env_args)
    except Exception as err:  # its import or its load_environment failed: say which and why, in one line
        raise ValueError(f"verifiers env {module!r}: {type(err).__name__}: {err}") from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    if not isinstance(env, vf.MultiTurnEnv):
        raise ValueError(
            f"verifiers env {module!r}: load_environment returned a {type(env).__name__}; agentrl plays classic "
            "verifiers environments (SingleTurnEnv, MultiTurnEnv, ToolEnv, StatefulToolEnv)"
        )
    if env.rubric.has_group_rewards:
        raise ValueError(f"verifiers env {module!r}: group-level reward functions are not supported")
    return env


def _text(content: Any) -> str:
    """A verifiers message content as text (a str, or a list of text parts; other parts are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
        if kind != "text" or not isinstance(text, str):
            raise ValueError(f"a message has a {kind!r} content part; agentrl envs are text only")
        parts.append(text)
    return "\n".join(parts)


def as_chat(messages: list[Any]) -> list[dict[str, Any]]:
    """verifiers messages (pydantic models or dicts) as agentrl's env messages (role, content[, tool_call_id])."""
    out = []
    for m in messages:
        data = m.model_dump(exclude_none=True) if hasattr(m, "model_dump") else dict(m)
        message = {"role": data.get("role"), "content": _text(data.get("content"))}
        if data.get("tool_call_id"):
            message["tool_call_id"] = str(data["tool_call_id"])
        out.append(message)
    return out


class VerifiersEnv(TextEnv):
    """A classic verifiers environment as an agentrl text env (module docstring). `module`: what
    `vf.load_environment` imports; `split`: the dataset to play; `reward_timeout_s`: the limit on scoring one
    episode; every other keyword argument goes to the module's `load_environment`."""

    metadata = {"render_modes": [], "prompt_format": ChatPromptFormat, "requires": ("verifiers",)}

    def __init__(self, module: str, split: str = "train", reward_timeout_s: float = 30.0, **env_args: Any) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not reward_timeout_s > 0:
            raise ValueError(f"reward_timeout_s must be > 0, got {reward_timeout_s}")
        self.module, self.split, self.reward_timeout_s = module, split, float(reward_timeout_s)
        self.env = load_environment(module, env_args)
        try:
            dataset = self.env.get_dataset() if split == "train" else self.env.get_eval_dataset()
        except ValueError as err:
            raise ValueError(f"verifiers env {module!r} has no {split} dataset: {err}") from None
        self.rows = [dict(row) for row in dataset]
        self._loop = asyncio.new_event_loop()
        self._state: Any = None
        self._prompt: list[Any] = []
        self._instance, self._task = 0, ""

    @property
    def num_instances(self) -> int:
        return len(self.rows)

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def _info(self, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        row = self.rows[self._instance]
        return empty_info(
            task=self._task,
            task_type=str(row.get("task") or "default"),
            instance=str(row.get("example_id", self._instance)),
            messages=messages,
            **extra,
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        import verifiers as vf

        super().reset(seed=seed)
        self._instance = self.pick_instance(options)
        state = self._run(self.env.init_state(self.rows[self._instance], _no_model(), "agentrl", {}))
        try:
            state = self._run(self.env.setup_state(state)) or state
        except vf.Error as err:
            raise RuntimeError(f"verifiers env {self.module!r}: setup_state failed: {err!r}") from None
        self._state = state
        self._prompt = self._run(self.env.get_prompt_messages(state))
        messages = as_chat(self._prompt)
        self._task = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        info = self._info(messages)
        tools = state.get("tool_defs") or []
        if tools:
            info["tools"] = [openai_tool(t) for t in tools]
        return messages[-1]["content"] if messages else "", info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        import verifiers as vf
        from verifiers.types import Response, ResponseMessage, ToolCall

        state = self._state
        if state is None:
            raise RuntimeError("step() called after the episode ended; call reset()")
        reply = clean_text(action)
        try:
            text, calls = parse_tool_calls(reply)
        except ToolCallError:
            text, calls = reply, []  # a malformed call: a reply without a call (the rollout marked it invalid)
        message = ResponseMessage(
            content=text if calls else reply,
            tool_calls=[ToolCall(id=c.id, name=c.name, arguments=c.arguments_json()) for c in calls] or None,
            finish_reason="tool_calls" if calls else "stop",
            is_truncated=False,
        )
        response = Response(
            id=f"agentrl-{len(state['trajectory'])}", created=int(time.time()), model="agentrl", message=message
        )
        said: list[dict[str, Any]] = []
        try:
            self._run(self.env.add_model_response(state, self._prompt, response))
            if not self._run(self.env.is_completed(state)):
                prompt = self._run(self.env.get_prompt_messages(state))
                said = as_chat(prompt[len(self._prompt) + 1 :])
                self._prompt = prompt
                if state.get("final_env_response") is not None:
                    said = as_chat(list(state["final_env_response"]))
                    self._run(self.env.is_completed(state))
        except vf.Error as err:
            state["error"] = err
            self._run(self.env.is_completed(state))
        if not state.get("is_completed"):
            return (said[-1]["content"] if said else ""), 0.0, False, False, self._info(said)
        return self._finish(state, said)

    def _finish(self, state: Any, said: list[dict[str, Any]]) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """The episode's last step: cleanup, the rubric's score (bounded by reward_timeout_s), the stop reason."""
        self._state = None
        if state.get("error") is not None:
            raise RuntimeError(f"verifiers env {self.module!r}: {state['error']!r}")
        self._run(self.env.cleanup(state))
        reward, metrics, problem = self._score(state)
        info = self._info(said, metrics=metrics, stop_condition=str(state.get("stop_condition", "")))
        if problem:
            info["reward_error"] = problem
        info["won"] = reward >= float(getattr(self.env, "pass_threshold", 0.5))
        # the env's own ends (its max_turns included: a SingleTurnEnv always ends so) terminate the episode; a prompt
        # over the env's max_seq_len or its rollout time limit cut it
        truncated = state.get("stop_condition") in ("prompt_too_long", "timeout_reached")
        return (said[-1]["content"] if said else ""), reward, not truncated, truncated, info

    def _score(self, state: Any) -> tuple[float, dict[str, float], str]:
        """(reward, named metrics, why it scored 0 instead: "" when it did not): the rubric in a thread of its own,
        so that a reward function that never returns costs `reward_timeout_s`, not the run."""
        errors, box = _RewardErrors(), {}
        logger = logging.getLogger("verifiers")

        def score() -> None:
            try:
                asyncio.run(self.env.rubric.score_rollout(state))
                asyncio.run(self.env.rubric.cleanup(state))
            except Exception as err:  # anything the rubric itself raised: reported, scored 0
                box["error"] = f"{type(err).__name__}: {err}"[:500]

        logger.addHandler(errors)
        try:
            worker = threading.Thread(target=score, name="agentrl-verifiers-score", daemon=True)
            worker.start()
            worker.join(self.reward_timeout_s)
        finally:
            logger.removeHandler(errors)
        if worker.is_alive():
            return 0.0, {}, f"scoring ran past reward_timeout_s={self.reward_timeout_s:g}"
        if "error" in box or errors.messages:
            return 0.0, {}, box.get("error") or "; ".join(errors.messages)
        metrics = {str(k): float(v) for k, v in (state.get("metrics") or {}).items() if isinstance(v, int | float)}
        reward = state.get("reward")
        if not isinstance(reward, int | float):
            return 0.0, metrics, f"the rubric gave a reward of type {type(reward).__name__}"
        return float(reward), metrics, ""

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.close()


def _no_model() -> Any:
    """Stands in for verifiers' model client: agentrl samples every reply itself, so the env never calls it (one
    that tries gets an error, which ends its episode as an env error)."""
    from verifiers.clients import Client

    class NoModel(Client):
        def setup_client(self, config: Any) -> Any:
            return None

        async def _refuse(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a verifiers env called its model client; agentrl samples every reply itself")

        to_native_tool = to_native_prompt = get_native_response = _refuse
        raise_from_native_response = from_native_response = close = _refuse

    return NoModel(None)
