"""Multi-turn rollout: tasks × group size through an EnvPool, one batched generation per turn.

Per turn, each active episode's prompt is rendered by its env family's prompt format ("window": task + last K
turns + current observation, re-rendered every turn; "full": the conversation so far, extended with the model's
generated ids verbatim). Replies are parsed into actions; invalid ones are still sent to the env (which answers
like the game, e.g. "Nothing happens.") and cost `invalid_penalty`. Every prompt id and generated id is kept.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm.auto import tqdm

from agentrl.chat import ChatTokens
from agentrl.envs.pool import EnvPool, StepResult
from agentrl.envs.prompting import ConstrainedReplies, HistoryItem, PromptFormat, constrained_problems
from agentrl.errors import unknown_name_message
from agentrl.policies.base import Constraint, Policy, SamplingParams, allowed_per_token
from agentrl.types import Episode, SampledWith, SampleMode, Turn, option


@dataclass
class ExplorationConfig:
    """How training samples explore (the `exploration` group): the rollout samples group member k at
    member_temperatures[k % len] (all at `temperature` when empty), every member scaled by the same factor from 1
    at the first iteration to temperature_end / temperature at the last when annealing; each row keeps the
    temperature it was sampled at, the learner scores it there and, with temperature_compensation, multiplies its
    advantage by it. Evaluation samples at rollout.eval_temperature."""

    temperature: float = option(1.0, "training sampling temperature (the learner scores each row at its own)")
    # one group holds hot, exploring members and cold, near-greedy ones
    member_temperatures: list[float] = option(
        help="member k of a group samples at t[k mod len]; []: all at exploration.temperature", factory=list
    )
    temperature_end: float | None = option(None, "training temperatures anneal geometrically to this; None: constant")
    # ∇_logits of T·log softmax(z/T)_a is e_a − softmax(z/T), so a row sampled hot pushes the logits as hard as one
    # sampled at 1 (without it, a row at T gets 1/T of the push, and wins found by hot exploration barely teach the
    # policy). Ratios and clipping are unchanged.
    temperature_compensation: bool = option(False, "the learner multiplies each row's advantage by its temperature")

    def training_temperatures(self, iteration: int, iterations: int) -> list[float]:
        """The member temperatures of training iteration `iteration` (0-based) of `iterations`: member_temperatures
        (or [temperature]), each scaled by (temperature_end / temperature) ** (iteration / (iterations - 1)) when
        annealing."""
        base = list(self.member_temperatures or [self.temperature])
        if self.temperature_end is None:
            return base
        fraction = iteration / (iterations - 1) if iterations > 1 else 0.0
        factor = (self.temperature_end / self.temperature) ** min(max(fraction, 0.0), 1.0)
        return [t * factor for t in base]

    def validate(self, group_size: int) -> list[str]:
        problems = []
        if not (math.isfinite(self.temperature) and self.temperature > 0):  # the learner scores logits / temperature
            problems.append(
                f"exploration.temperature={self.temperature}: training samples need a finite temperature > 0"
            )
        for value in self.member_temperatures:
            if not (math.isfinite(value) and value > 0):
                problems.append(
                    f"exploration.member_temperatures: every entry must be a finite number > 0, got {value}"
                )
        end = self.temperature_end
        if end is not None and not (math.isfinite(end) and end > 0):
            problems.append(
                f"exploration.temperature_end must be a finite number > 0 (or null: no annealing), got {end}"
            )
        if len(self.member_temperatures) > group_size:
            problems.append(
                f"exploration.member_temperatures has {len(self.member_temperatures)} entries for a group of "
                f"{group_size}: the extra ones would never be used; give at most rollout.group_size"
            )
        return problems


@dataclass
class RolloutConfig:
    """The `rollout` config group: how episodes are played and how replies are sampled."""

    group_size: int = option(8, "episodes per task (the group of group-relative advantages)")
    tasks_per_iteration: int = option(16, "tasks sampled per iteration (all ranks together)")
    max_turns: int = option(50, "the one step limit in training: envs are made with Gymnasium's TimeLimit at it")
    history_length: int = option(2, "(observation, action) pairs quoted in window prompts (verl-agent: 2)")
    max_prompt_tokens: int = option(2048, "a longer prompt ends its episode")
    invalid_penalty: float = option(0.1, "subtracted from an invalid turn's own row")
    length_limited_is_invalid: bool = option(True, "a reply cut by max_new_tokens counts as invalid")
    length_limited_scores_zero: bool = option(False, "a reply cut by max_new_tokens earns no env reward (oat)")
    constrained_actions: bool = option(False, "sample only replies naming an admissible action (the learner too)")
    sample_mode: SampleMode = option(SampleMode.window, "window: one row per turn; full: one row per episode")
    num_workers: int = option(2, "env worker processes; 0: in-process", resume=True)
    env_timeout_s: float = option(
        120.0, "an env call slower than this fails its episode (the worker restarts)", resume=True
    )
    max_observation_chars: int = option(32_768, "a longer observation ends its episode", resume=True)
    env_memory_mb: int = option(8192, "address-space cap per env worker over its start size (0: none)", resume=True)
    pipeline_chunks: int = option(2, "> 1: generate chunk k+1 while the env workers step chunk k", resume=True)
    top_p: float = option(1.0, "nucleus sampling (training)")
    max_new_tokens: int = option(512, "reply length limit (also Dr.GRPO's constant length normaliser)")
    stop: list[str] = option(help="stop strings ending a reply", factory=list)
    generation_batch_size: int = option(64, "prompts per generate call (transformers backend)", resume=True)
    eval_temperature: float = option(0.4, "evaluation sampling temperature; 0: greedy", resume=True)
    eval_max_turns: int = option(50, "the step limit in evaluation", resume=True)
    eval_max_new_tokens: int | None = option(
        None, "reply length limit in evaluation; None: max_new_tokens", resume=True
    )

    @property
    def eval_reply_tokens(self) -> int:
        """The reply length limit of evaluation rollouts."""
        return self.eval_max_new_tokens or self.max_new_tokens

    @property
    def longest_sequence(self) -> int:
        """Prompt plus the longest reply of training or evaluation: the sampler's context length."""
        return self.max_prompt_tokens + max(self.max_new_tokens, self.eval_reply_tokens)

    def pool_options(self) -> dict[str, int]:
        """EnvPool's guards against misbehaving envs (envs/pool.py)."""
        return {"max_observation_chars": self.max_observation_chars, "memory_mb": self.env_memory_mb}

    def sampling(self, seed: int | None, *, evaluation: bool = False, logprobs: bool = False) -> SamplingParams:
        """The sampling parameters for training or evaluation rollouts (`seed`: the run's base seed; `logprobs`:
        keep the sampler's log-prob of every generated token). Training temperatures come per call from the
        exploration settings (RolloutManager.run's `temperatures`); 1.0 is what a call without them samples at."""
        return SamplingParams(
            temperature=self.eval_temperature if evaluation else 1.0,
            top_p=1.0 if evaluation else self.top_p,
            max_new_tokens=self.eval_reply_tokens if evaluation else self.max_new_tokens,
            stop=list(self.stop),
            seed=seed,
            logprobs=logprobs,
        )

    def validate(self) -> list[str]:
        problems = []
        if self.sample_mode not in tuple(SampleMode):
            problems.append(unknown_name_message("rollout.sample_mode", self.sample_mode, SampleMode))
        for name in (
            "group_size",
            "tasks_per_iteration",
            "max_turns",
            "eval_max_turns",
            "max_new_tokens",
            "max_prompt_tokens",
            "generation_batch_size",
            "pipeline_chunks",
            "max_observation_chars",
        ):
            if getattr(self, name) < 1:
                problems.append(f"rollout.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_max_new_tokens is not None and self.eval_max_new_tokens < 1:
            problems.append(
                f"rollout.eval_max_new_tokens must be >= 1 (or null: max_new_tokens), got {self.eval_max_new_tokens}"
            )
        for name in ("history_length", "num_workers", "env_memory_mb"):
            if getattr(self, name) < 0:
                problems.append(f"rollout.{name} must be >= 0, got {getattr(self, name)}")
        for name, low in (("eval_temperature", 0.0), ("invalid_penalty", 0.0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= low):
                problems.append(f"rollout.{name} must be a finite number >= {low}, got {value}")
        if not (0.0 < self.top_p <= 1.0):
            problems.append(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.env_timeout_s) and self.env_timeout_s > 0):
            problems.append(f"rollout.env_timeout_s must be a finite number > 0, got {self.env_timeout_s}")
        return problems


def generation_seed(run_seed: int, iteration: int, turn: int, chunk: int) -> int:
    """The sampling seed of one generation call: distinct for every (iteration, turn, pipeline chunk) of a run,
    and a pure function of them, so a resumed run samples exactly what the uninterrupted run would have."""
    return (run_seed + iteration * 7919 + turn) * 31 + chunk


@dataclass
class Task:
    instance: int
    seed: int
    group_id: str


@dataclass
class _Live:
    episode: Episode
    slot: int
    observation: str
    info: dict[str, Any]
    history: list[HistoryItem] = field(default_factory=list)
    done: bool = False
    # a chat env's conversation (envs/tools.py: info["messages"] at reset; None: the prompt format renders turns)
    chat: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None  # its tool schemas (info["tools"] at reset)
    said: list[dict[str, Any]] = field(default_factory=list)  # the env's messages since the model's last reply


@dataclass
class RolloutTimings:
    generation_s: float = 0.0
    env_s: float = 0.0  # resets, plus env time not hidden behind generation
    env_wait_s: float = 0.0  # env-step time the rollout waited for (not overlapped with generation)
    env_busy_s: float = 0.0  # env stepping time on the critical path (slowest worker), hidden or not
    prompt_s: float = 0.0
    turns: int = 0
    generated_tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "time/generation_s": self.generation_s,
            "time/env_s": self.env_s + self.env_wait_s,
            "time/env_wait_s": self.env_wait_s,
            "rollout/env_hidden_frac": max(0.0, 1.0 - self.env_wait_s / self.env_busy_s) if self.env_busy_s else 0.0,
            "time/prompt_s": self.prompt_s,
            "rollout/turns": float(self.turns),
            "rollout/generated_tokens": float(self.generated_tokens),
        }


class RolloutManager:
    def __init__(
        self,
        pool: EnvPool,
        policy: Policy,
        tokenizer,
        prompt_format: PromptFormat,
        cfg: RolloutConfig,
        *,
        evaluation: bool = False,
        seed: int | None = 0,
        logprobs: bool = False,
    ):
        """`evaluation`: play with the eval sampling and turn limit; `seed`: the run's base sampling seed;
        `logprobs`: keep the sampler's log-probs on every Turn (π_rollout, for the learner's mismatch correction)."""
        problems = cfg.validate() + (constrained_problems(prompt_format) if cfg.constrained_actions else [])
        if problems:
            raise ValueError("invalid rollout config: " + "; ".join(problems))
        self.pool, self.policy, self.format, self.cfg = pool, policy, prompt_format, cfg
        # the format's constrained-reply capability, checked once above (None: free generation)
        self.replies: ConstrainedReplies | None = None
        if cfg.constrained_actions and isinstance(prompt_format, ConstrainedReplies):
            self.replies = prompt_format
        self.max_turns = cfg.eval_max_turns if evaluation else cfg.max_turns
        self.sampling = cfg.sampling(seed, evaluation=evaluation, logprobs=logprobs)
        self.evaluation = evaluation
        self.chat = ChatTokens(tokenizer)
        self.timings = RolloutTimings()

    def run(
        self,
        tasks: list[Task],
        *,
        group_size: int | None = None,
        seed: int = 0,
        sampling: SamplingParams | None = None,
        temperatures: list[float] | None = None,
        progress: bool = False,
        desc: str = "rollout",
    ) -> list[Episode]:
        """Play each task `group_size` times (same instance and env seed; different sampling) until all end.
        `temperatures`: this call's member temperatures (ExplorationConfig.training_temperatures; default: all at
        1.0; ignored in evaluation, which samples at rollout.eval_temperature)."""
        g = group_size or self.cfg.group_size
        sampling = sampling or self.sampling
        self.timings = RolloutTimings()
        members = [t for t in tasks for _ in range(g)]  # slot = position; a group's copies share instance and seed
        started = time.perf_counter()
        resets = self.pool.reset([(slot, t.seed, {"instance": t.instance}) for slot, t in enumerate(members)])
        self.timings.env_s += time.perf_counter() - started
        live = []
        temps = [] if self.evaluation else list(temperatures or [])
        temps = temps or [sampling.temperature]  # every episode records the temperature it samples at
        for slot, (task, result) in enumerate(zip(members, resets)):
            ep = Episode(
                episode_id=slot,
                group_id=task.group_id,
                task=str(result.info.get("task", "")),
                task_type=str(result.info.get("task_type", "")),
                instance=str(result.info.get("instance", "")),
                temperature=temps[(slot % g) % len(temps)],
            )
            state = _Live(ep, slot, result.observation, result.info)
            if result.info and result.info.get("messages") is not None:
                state.chat, state.tools = list(result.info["messages"]), result.info.get("tools") or None
            if result.error:
                self._finish(state, truncated=True, reason=f"env_error: {result.error}")
            live.append(state)
        bar = tqdm(total=len(live), desc=desc, unit="game", leave=False, disable=not progress)  # games done / total
        bar.update(sum(s.done for s in live))
        for turn in range(self.max_turns):
            active = [s for s in live if not s.done]
            if not active:
                break
            bar.set_postfix(turn=turn + 1)
            self._turn(active, sampling, seed, turn)
            bar.update(sum(s.done for s in active))
        bar.close()
        for state in live:
            if not state.done:
                self._finish(state, truncated=True, reason="max_turns")
        return [s.episode for s in live]

    def _turn(self, active: list[_Live], sampling: SamplingParams, iteration: int, turn: int) -> None:
        started = time.perf_counter()
        prompts, constraints = [], []
        for state in list(active):
            ids, messages = self._prompt(state)
            if ids is None:
                self._finish(state, truncated=True, reason="context")
                active.remove(state)
            else:
                prompts.append((ids, messages))
                constraints.append(self._constraint(state))
        self.timings.prompt_s += time.perf_counter() - started
        if not active:
            return
        chunks = max(1, min(self.cfg.pipeline_chunks if self.pool.num_workers > 0 else 1, len(active)))
        bounds = [round(k * len(active) / chunks) for k in range(chunks + 1)]
        pending = []
        for k in range(chunks):
            part = range(bounds[k], bounds[k + 1])
            started = time.perf_counter()
            seed = None if sampling.seed is None else generation_seed(sampling.seed, iteration, turn, k)
            completions = self._generate(
                [active[i].episode.temperature for i in part],
                [prompts[i][0] for i in part],
                replace(sampling, seed=seed),
                [constraints[i] for i in part] if self.cfg.constrained_actions else None,
            )
            self.timings.generation_s += time.perf_counter() - started
            actions = [self._record(active[i], prompts[i], c, constraints[i]) for i, c in zip(part, completions)]
            started = time.perf_counter()
            pending.append((part, self.pool.step_async(actions)))  # in-process pools step right here
            self.timings.env_wait_s += time.perf_counter() - started
        self.timings.turns += 1
        started = time.perf_counter()
        for part, handle in pending:
            results = self.pool.collect(handle)
            busy: dict[int, float] = {}
            for i, result in zip(part, results):
                worker = active[i].slot % max(self.pool.num_workers, 1)
                busy[worker] = busy.get(worker, 0.0) + result.elapsed_s
                self._apply(active[i], result)
            self.timings.env_busy_s += max(busy.values(), default=0.0)
        self.timings.env_wait_s += time.perf_counter() - started

    def _generate(
        self,
        values: list[float],
        prompts: list[list[int]],
        sampling: SamplingParams,
        constraints: list[Constraint | None] | None,
    ) -> list:
        """One completion per prompt, each at its episode's temperature (`values`): one generate call per distinct
        temperature (the k-th with the call's seed + k, so the calls' samples differ)."""
        out: list = [None] * len(prompts)
        for k, value in enumerate(dict.fromkeys(values)):
            part = [i for i, v in enumerate(values) if v == value]
            seed = None if sampling.seed is None else sampling.seed + k * 1_000_003
            completions = self.policy.generate(
                [prompts[i] for i in part],
                replace(sampling, temperature=value, seed=seed),
                None if constraints is None else [constraints[i] for i in part],
            )
            for i, completion in zip(part, completions):
                out[i] = completion
        return out

    def _constraint(self, state: _Live) -> Constraint | None:
        """With rollout.constrained_actions: the token ids of every reply naming an admissible action, each closed
        by the end-of-turn token; None when the env lists no admissible actions (free generation)."""
        admissible = state.info.get("admissible_actions")
        if self.replies is None or not admissible:
            return None
        replies = dict.fromkeys(self.replies.constrained_reply(a) for a in admissible)
        return [self.chat.encode_plain(r) + [self.chat.eos_id] for r in replies]

    def _record(
        self,
        state: _Live,
        prompt: tuple[list[int], list[dict[str, str]]],
        completion,
        constraint: Constraint | None = None,
    ) -> tuple[int, str]:
        """Parse a completion into the episode's next Turn; returns the (slot, action) to send to the env."""
        ids, messages = prompt
        action, valid = self.format.parse(completion.text, state.info.get("admissible_actions"))
        if completion.finish_reason == "length" and self.cfg.length_limited_is_invalid:
            valid = False
        self.timings.generated_tokens += len(completion.token_ids)
        turn = Turn(
            prompt_ids=ids,
            completion_ids=list(completion.token_ids),
            completion_text=completion.text,
            action=action,
            valid=valid,
            observation=state.observation,
            penalty=0.0 if valid else self.cfg.invalid_penalty,
            finish_reason=completion.finish_reason,
            messages=messages,
            sampled=SampledWith(
                # what _generate sampled at; a greedy reply (0) is scored as backends report it: softmax(logits)
                temperature=state.episode.temperature if state.episode.temperature > 0 else 1.0,
                logprobs=completion.logprobs,
                allowed=allowed_per_token(constraint, list(completion.token_ids)) if constraint else None,
            ),
        )
        state.episode.turns.append(turn)
        return state.slot, action

    def _prompt(self, state: _Live) -> tuple[list[int] | None, list[dict[str, str]]]:
        if state.chat is not None:
            return self._chat_prompt(state)
        admissible = state.info.get("admissible_actions")
        task = state.episode.task
        if self.cfg.sample_mode == "full":
            messages = self.format.render(task, [], state.observation, admissible, window=0)
            if not state.episode.turns:
                ids = self.chat.prompt_ids(messages)
            else:  # the conversation so far, with the generated ids verbatim, then the new user turn
                last = state.episode.turns[-1]
                messages = messages[-1:]
                opening = self.chat.next_user_ids(last.completion_ids, messages[0]["content"])
                ids = last.prompt_ids + last.completion_ids + opening
            return (ids if len(ids) <= self.cfg.max_prompt_tokens else None), messages
        # window: drop the oldest quoted history first; never the instructions, step count or current observation
        for window in range(min(self.cfg.history_length, len(state.history)), -1, -1):
            messages = self.format.render(task, state.history, state.observation, admissible, window=window)
            ids = self.chat.prompt_ids(messages)
            if len(ids) <= self.cfg.max_prompt_tokens:
                return ids, messages
        return None, messages

    def _chat_prompt(self, state: _Live) -> tuple[list[int] | None, list[dict[str, Any]]]:
        """A chat env's turn: the conversation so far ("full": the generated ids verbatim, then the env's messages;
        "window": re-rendered with the replies as text, the whole conversation, as the env defines it)."""
        turns = state.episode.turns
        if self.cfg.sample_mode == "full" and turns:
            last = turns[-1]
            ids = (
                last.prompt_ids
                + last.completion_ids
                + self.chat.next_turn_ids(last.completion_ids, state.said, state.tools)
            )
            messages = state.said
        else:
            messages = state.chat
            ids = self.chat.prompt_ids(messages, state.tools)
        return (ids if len(ids) <= self.cfg.max_prompt_tokens else None), messages

    def _apply(self, state: _Live, result: StepResult) -> None:
        turn = state.episode.turns[-1]
        zeroed = self.cfg.length_limited_scores_zero and turn.finish_reason == "length"
        turn.reward = 0.0 if zeroed else result.reward
        state.history.append(HistoryItem(state.observation, turn.action))
        if state.chat is not None:  # the env's answer: its messages, else its observation as a user message
            said = (result.info or {}).get("messages")
            state.said = list(said) if said is not None else [{"role": "user", "content": result.observation}]
            state.chat += [{"role": "assistant", "content": turn.completion_text}, *state.said]
        state.observation, state.info = result.observation, result.info or state.info
        state.episode.won = bool(result.info.get("won", False)) if result.info else state.episode.won
        if result.info and isinstance(result.info.get("metrics"), dict):  # an env's named reward parts (hub envs)
            state.episode.info["metrics"] = {
                str(k): float(v) for k, v in result.info["metrics"].items() if isinstance(v, int | float)
            }
        if result.info and result.info.get("reward_error"):  # the env scored the episode 0 instead: say why
            warnings.warn(
                f"episode {state.episode.episode_id} ({state.episode.instance}) scored 0: {result.info['reward_error']}"[
                    :1000
                ],
                stacklevel=2,
            )
        if result.error:
            self._finish(state, truncated=True, reason=f"env_error: {result.error}")
        elif result.terminated:
            self._finish(state, truncated=False, reason="")
        elif result.truncated:  # an env may say why (a dropped connection: envs/hub_openenv.py)
            self._finish(
                state, truncated=True, reason=str((result.info or {}).get("truncation_reason") or "env_truncated")
            )

    @staticmethod
    def _finish(state: _Live, *, truncated: bool, reason: str) -> None:
        if reason.startswith("env_error"):  # the episode ends truncated; the run goes on, but say why
            warnings.warn(
                f"episode {state.episode.episode_id} ({state.episode.instance}) ended: {reason}", stacklevel=2
            )
        state.done = True
        state.episode.truncated = truncated
        state.episode.truncation_reason = reason


def episode_totals(episodes: list[Episode]) -> dict[str, float]:
    """The sums the rollout rates are made of (several ranks add theirs up before dividing: stats_from_totals)."""
    return {
        "episodes": float(len(episodes)),
        "won": float(sum(e.won for e in episodes)),
        "reward": float(sum(e.total_reward for e in episodes)),
        "invalid": float(sum(e.num_invalid for e in episodes)),
        "turns": float(sum(len(e.turns) for e in episodes)),
        "env_errors": float(sum(e.truncation_reason.startswith("env_error") for e in episodes)),
        "length_limited": float(sum(t.finish_reason == "length" for e in episodes for t in e.turns)),
    }


def env_metrics(episodes: list[Episode]) -> dict[str, float]:
    """rollout/metric/<name>: the mean of each named quantity envs report with an episode's end (info["metrics"],
    e.g. a verifiers rubric's reward functions), over the episodes that report it."""
    values: dict[str, list[float]] = {}
    for e in episodes:
        for name, value in e.info.get("metrics", {}).items():
            values.setdefault(name, []).append(value)
    return {f"rollout/metric/{name}": sum(v) / len(v) for name, v in sorted(values.items())}


def success_by_temperature(episodes: list[Episode], scale: float = 1.0) -> dict[str, float]:
    """rollout/success_T<t> per member temperature, t named as configured: each episode's temperature divided by
    `scale` (the iteration's annealing factor, exploration.temperature_end). Every rank holds the same number of
    episodes at each temperature, so the mean over ranks is the run's rate."""
    by_temperature: dict[str, list[bool]] = {}
    for e in episodes:
        by_temperature.setdefault(f"{e.temperature / scale:g}", []).append(e.won)
    return {f"rollout/success_T{t}": sum(won) / len(won) for t, won in sorted(by_temperature.items(), key=_by_value)}


def temperature_metrics(cfg: ExplorationConfig, temperatures: list[float], episodes: list[Episode]) -> dict[str, float]:
    """A training iteration's temperature metrics: rollout/temperature when annealing (exploration.temperature_end)
    and rollout/success_T<t> per configured member temperature (exploration.member_temperatures); `temperatures`:
    the iteration's (ExplorationConfig.training_temperatures)."""
    base = cfg.member_temperatures or [cfg.temperature]
    scale = temperatures[0] / base[0] if temperatures else 1.0
    out = {"rollout/temperature": cfg.temperature * scale} if cfg.temperature_end is not None else {}
    if cfg.member_temperatures:
        out.update(success_by_temperature(episodes, scale))
    return out


def _by_value(item: tuple[str, list[bool]]) -> float:
    return float(item[0])


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Success rate, mean return, invalid-action rate, turns, truncations."""
    return stats_from_totals(episode_totals(episodes))


def stats_from_totals(t: dict[str, float]) -> dict[str, float]:
    """episode_stats from episode_totals' sums (of one rank's episodes, or added up over ranks)."""
    n, turns = max(t["episodes"], 1.0), max(t["turns"], 1.0)
    return {
        "rollout/success": t["won"] / n,
        "rollout/reward": t["reward"] / n,
        "rollout/invalid_rate": t["invalid"] / turns,
        "rollout/turns_per_episode": t["turns"] / n,
        "rollout/env_errors": t["env_errors"],
        "rollout/length_limited": t["length_limited"] / turns,
    }
