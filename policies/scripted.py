"""Scripted policies that speak the token protocol without a model: for rollout, mask and env tests."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from agentrl.policies.base import Completion, Constraint, SamplingParams

ADMISSIBLE_RE = re.compile(r"admissible actions of the current situation are: \[(.*?)\]\.\n", re.DOTALL)
QUOTED_RE = re.compile(r"'([^'\n]*)'")
CHOICES_RE = re.compile(r"Choices: (.*?)\.")


def admissible_from_prompt(prompt_text: str) -> list[str]:
    """The admissible actions a prompt format listed (agent format: quoted, one per line; word-choice format:
    comma-separated), last occurrence."""
    if found := ADMISSIBLE_RE.findall(prompt_text):
        return QUOTED_RE.findall(found[-1])
    if found := CHOICES_RE.findall(prompt_text):
        return [a.strip() for a in found[-1].split(",") if a.strip()]
    return []


class ScriptedPolicy:
    """Replies with `reply_fn(prompt_text)`, encoded to ids plus EOS, truncated at max_new_tokens (then "length")."""

    free_logprobs = False
    matches_learner = True  # no distribution of its own to correct for

    def __init__(self, tokenizer, reply_fn: Callable[[str], str]):
        self.tokenizer, self.reply_fn = tokenizer, reply_fn

    def sync_weights(self) -> None:
        pass

    def sleep(self) -> None:
        pass

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {}

    def generate(
        self, prompts: list[list[int]], sampling: SamplingParams, constraints: list[Constraint | None] | None = None
    ) -> list[Completion]:
        """`constraints` are not enforced: a scripted reply is what the test wrote."""
        out = []
        for prompt in prompts:
            reply = self.reply_fn(self.tokenizer.decode(prompt))
            ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            reason = "stop"
            if len(ids) > sampling.max_new_tokens:
                ids, reason = ids[: sampling.max_new_tokens], "length"
            out.append(Completion(ids, self.tokenizer.decode(ids, skip_special_tokens=True), reason))
        return out


def replay(replies: list[str]) -> Callable[[str], str]:
    """A reply_fn that cycles through fixed replies."""
    state = {"i": 0}

    def reply(_: str) -> str:
        text = replies[state["i"] % len(replies)]
        state["i"] += 1
        return text

    return reply


def echo_admissible(seed: int = 0, tagged: bool = True) -> Callable[[str], str]:
    """A reply_fn that picks a random admissible action from the prompt, in the <think>/<action> format."""
    rng = random.Random(seed)

    def reply(prompt_text: str) -> str:
        choices = admissible_from_prompt(prompt_text) or ["look"]
        action = rng.choice(choices)
        return f"<think>I will {action}.</think><action>{action}</action>" if tagged else action

    return reply
