"""The data that flows between rollout, sample building and the learner (DESIGN.md contracts).

The action mask, drawn once for a two-turn episode in `full` mode (P = prompt/template/observation tokens the agent
did not write, A = tokens the agent generated, including the end-of-turn token it generated):

    input_ids    : [sys][task][obs 1][tmpl] a a a a <eot> [tmpl][obs 2][tmpl] a a a <eot>  [pad pad]
    action_mask  :   0    0     0      0    1 1 1 1   1     0     0      0    1 1 1   1     0   0

In `window` mode each turn is its own sample: [prompt: task + last K turns + current obs] then that turn's A tokens,
and the mask is 1 exactly on that turn's generated ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from enum import Enum
from typing import Any


def option(
    default: Any = MISSING, help: str = "", *, resume: bool = False, factory: Callable[[], Any] | None = None
) -> Any:
    """A config field with its facts: `help`, one line for `agentrl-train --help`; `resume`, whether a resumed run
    may change it (it does not alter what was learned so far or how samples are drawn, or it applies from the next
    step on). `factory` for mutable defaults (lists, dicts, nested groups)."""
    meta = {"help": help, "resume": resume}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Choice(str, Enum):
    """A config field with a fixed set of string values: Hydra rejects any other value when the config is composed
    (listing the valid ones), and members compare equal to their strings. Member names are the values (Hydra
    matches names)."""

    def __str__(self) -> str:
        return self.value


class Precision(Choice):
    """Compute precision. Weights and optimizer state are always fp32 (master copy); bf16 runs the model under
    autocast, for generation and training alike (the paper protocols: bf16 compute, fp32 master weights). `auto` is
    resolved to one of the two when the config loads (policies/models.py resolve_precision)."""

    fp32 = "fp32"
    bf16 = "bf16"
    auto = "auto"  # bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with avx512_bf16/AMX)


class SampleMode(Choice):
    window = "window"  # one sample per turn (the paper's ALFWorld protocol)
    full = "full"  # one sample per episode, the whole conversation


@dataclass(frozen=True, kw_only=True)
class SampledWith:
    """How one reply was sampled: the record the rollout fills on every turn and the learner scores each row under.

    temperature: the reply was drawn from softmax(logits / temperature), its log-probs are those of that
        distribution; a greedy reply records 1 (backends report its log-probs under softmax(logits)).
    logprobs: the sampler's log-prob of each generated token (π_rollout), or None when the backend reported none.
    allowed: constrained decoding: the token ids allowed at each generated token (from the candidate replies), or
        None when generation was free.
    """

    temperature: float = 1.0
    logprobs: list[float] | None = None
    allowed: list[list[int]] | None = None


@dataclass(kw_only=True)
class Turn:
    """One agent turn: the exact prompt ids the policy saw and the exact ids it generated."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_text: str
    action: str
    valid: bool
    observation: str  # the observation the agent responded to
    reward: float = 0.0  # the env's reward for this step
    penalty: float = 0.0  # the invalid-action penalty charged to this turn (0 when valid)
    finish_reason: str = "stop"  # "stop" | "length"
    messages: list[dict[str, str]] = field(default_factory=list)  # the chat messages rendered into prompt_ids
    sampled: SampledWith = field(default_factory=SampledWith)  # how the reply was sampled (filled by the rollout)


@dataclass(kw_only=True)
class Episode:
    """One run of one task by one group member."""

    episode_id: int
    group_id: str
    task: str
    task_type: str
    instance: str
    turns: list[Turn] = field(default_factory=list)
    won: bool = False
    truncated: bool = False
    truncation_reason: str = ""  # "" | "max_turns" | "env_error: …" | "context"
    # the temperature this group member sampled at (its turns' sampled.temperature; rollout/success_T<t>)
    temperature: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_invalid(self) -> int:
        return sum(not t.valid for t in self.turns)

    @property
    def outcome(self) -> float:
        """The sum of the env's rewards (no penalties): what every window row of the episode is credited."""
        return sum(t.reward for t in self.turns)

    @property
    def total_reward(self) -> float:
        """The episode's return: outcome minus every invalid-action penalty."""
        return sum(t.reward - t.penalty for t in self.turns)


@dataclass
class Sample:
    """What the learner trains on: `input_ids` with `action_mask` (1 exactly on agent-generated tokens)."""

    input_ids: list[int]
    action_mask: list[int]
    advantage: float = 0.0
    reward: float = 0.0
    group_id: str = ""
    episode_id: int = 0
    turn_index: int = 0
    # constrained decoding: per action token (in order), the token ids the sampler allowed there (None: the whole
    # vocabulary); the learner's log-probs are then those of the same restricted distribution
    allowed: list[list[int] | None] | None = None
    # the sampler's log-prob of each action token (in order) when the generation backend reported them (π_rollout):
    # the learner's mismatch correction and metrics compare them with its own π_old
    rollout_logprobs: list[float] | None = None
    # the temperature its actions were sampled at (SampledWith.temperature): the learner scores this row at it
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.action_mask):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and action_mask ({len(self.action_mask)}) differ")
        if not self.temperature > 0:
            raise ValueError(
                f"a sample's temperature must be > 0 (a greedy reply cannot be scored), got {self.temperature}"
            )
        if self.allowed is not None and len(self.allowed) != sum(self.action_mask):
            raise ValueError(f"allowed has {len(self.allowed)} entries for {sum(self.action_mask)} action tokens")
        if self.rollout_logprobs is not None and len(self.rollout_logprobs) != sum(self.action_mask):
            raise ValueError(
                f"rollout_logprobs has {len(self.rollout_logprobs)} entries for {sum(self.action_mask)} action tokens"
            )

    @property
    def num_action_tokens(self) -> int:
        return sum(self.action_mask)
