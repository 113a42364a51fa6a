"""The policy protocol: token ids in, token ids out (DESIGN.md). Text is decoded for the env; ids are kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # seeds the whole batch: rows draw different numbers, so group members differ
    logprobs: bool = False  # return each generated token's log-prob (memory: [B, N, V] logits are kept)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    logprobs: list[float] | None = None


# Constrained decoding: the completions a prompt may receive, as token-id sequences (each ending with the EOS id).
# Sampling then runs token by token over the tokens that continue some candidate (a trie), and the learner scores
# the same restricted distribution (Sample.allowed), so ratios compare like with like.
Constraint = list[list[int]]


def allowed_next(candidates: Constraint, prefix: list[int]) -> list[int]:
    """The distinct tokens that extend `prefix` towards some candidate, sorted ([] when none does)."""
    k = len(prefix)
    return sorted({c[k] for c in candidates if len(c) > k and c[:k] == prefix})


def allowed_per_token(candidates: Constraint, ids: list[int]) -> list[list[int]]:
    """For each generated token, the tokens that were allowed at its position."""
    return [allowed_next(candidates, ids[:k]) for k in range(len(ids))]


def request_seeds(seed: int | None, count: int) -> list[int | None]:
    """One sampling seed per request of a call seeded `seed` (None: unseeded): distinct within the call, so the
    members of a group differ, and a pure function of (seed, position), so a run is reproducible."""
    if seed is None:
        return [None] * count
    return [(seed * 1_000_003 + k) % 2**31 for k in range(count)]


PROBE_TEXT = (
    "You are an agent in a house. Your task is to: put a clean apple in the fridge. Admissible actions: go to "
    "fridge 1, take apple 1 from countertop 1, open fridge 1, look, inventory. Answer: go to countertop 1."
)


def probe_ids(tokenizer) -> list[int]:
    """The sync canary's fixed probe: up to 96 token ids of an ALFWorld-like prompt."""
    return tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:96]


def probe_log_probs(model: torch.nn.Module, probe: list[int], precision: str = "fp32") -> torch.Tensor:
    """log π(probe_t | probe_<t) for t = 1 … len − 1 under `model` in eval mode at temperature 1, in the learner's
    compute precision: the learner's side of a sync canary."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([probe], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=ids).logits.float()[0, :-1]
    finally:
        model.train(was_training)
    return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu()


@runtime_checkable
class Policy(Protocol):
    """A generation backend: what the rollout, the trainer and agentrl-eval call.

    `generate`: one completion per prompt; `constraints` (one per prompt, None = free) restricts each completion to
    one of its candidates. `sync_weights`: pull the learner's weights when they live elsewhere (a collective under
    torchrun). `sleep`: free generation memory while the learner runs (a GPU engine; a no-op elsewhere). `close`:
    release the backend. `stats`: its sync metrics for the log (weight version, sync and canary times, canary gap).
    `free_logprobs`: the sampler's log-probs cost nothing extra, so the rollout always keeps them (vLLM).
    `matches_learner`: it samples from exactly the learner's distribution (transformers on the learner's model), so
    learner.mismatch.correction=auto corrects nothing; else (vLLM's kernels and precision) auto is tis."""

    free_logprobs: bool
    matches_learner: bool

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, constraints: list[Constraint | None] | None = None
    ) -> list[Completion]: ...

    def sync_weights(self) -> None: ...

    def sleep(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, float]: ...
