"""Prompt formats: how a turn is shown to the LLM (chat messages) and how a reply becomes an action.

The agentic protocol (PAPER.md §5, verl-agent): reason inside <think>…</think>, then exactly one action inside
<action>…</action>. A reply without a well-formed action is invalid (not an error): the rollout applies the
invalid-action penalty and the env receives the raw text, to which it answers like the game ("Nothing happens.").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

ACTION_RE = re.compile(r"<action>(.*?)</action>", re.DOTALL | re.IGNORECASE)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
MAX_ACTION_CHARS = 200


@dataclass
class HistoryItem:
    observation: str
    action: str


@runtime_checkable
class PromptFormat(Protocol):
    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None
    ) -> list[dict[str, str]]: ...

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]: ...


def clean_text(text: str) -> str:
    """Text safe to hand to an env or a tokenizer: valid UTF-8, no NULs."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def first_named_action(reply: str, admissible: list[str] | None) -> str | None:
    """The admissible action that occurs earliest in the reply (longest wins a tie), case-insensitively."""
    text = reply.lower()
    hits = [(text.find(a.lower()), -len(a), a) for a in admissible or [] if a and a.lower() in text]
    return min(hits)[2] if hits else None


@dataclass
class AgentPromptFormat:
    """<think>/<action> protocol with the task, the last `history_length` (observation, action) pairs, the current
    observation and the admissible actions. `system` and `environment` name what the agent is acting in."""

    environment: str = "a text environment"
    history_length: int = 2
    require_think: bool = False  # verl-agent only demands the action tag; set True to also demand <think>
    reasoning: bool = True  # False: ask for the action tag alone (small models, short replies)
    lenient: bool = False  # True: a reply without a well-formed tag that names an admissible action is valid
    system: str = "You are an expert agent. Solve the task by choosing one action per turn."

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None
    ) -> list[dict[str, str]]:
        recent = history[-self.history_length :] if self.history_length > 0 else []
        parts = [f"You are acting in {self.environment}. Your task is to: {task}"]
        if recent:
            start = len(history) - len(recent) + 1
            lines = [
                f"[Observation {start + i}: '{h.observation}', Action {start + i}: '{h.action}']"
                for i, h in enumerate(recent)
            ]
            parts.append(
                f"Prior to this step, you have already taken {len(history)} step(s). Below are the most recent "
                f"{len(recent)} observations and the corresponding actions you took: " + " ".join(lines)
            )
        parts.append(f"You are now at step {len(history) + 1} and your current observation is: {observation}")
        if admissible:
            parts.append("Your admissible actions of the current situation are: [" + ", ".join(admissible) + "].")
        if self.reasoning:
            parts.append(
                "Now it's your turn to take an action. You should first reason step-by-step about the current "
                "situation. This reasoning process MUST be enclosed within <think> </think> tags. Once you've finished "
                "your reasoning, you should choose an admissible action for current step and present it within "
                "<action> </action> tags."
            )
        else:
            example = admissible[0] if admissible else "look"
            parts.append(
                "Now it's your turn to take an action. Reply with exactly one admissible action inside <action> "
                f"</action> tags and nothing else, for example: <action>{example}</action>"
            )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": "\n".join(parts)}]

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        """(action, valid): the text of the single <action> tag; invalid when missing, repeated, empty or huge."""
        reply = clean_text(reply)
        found = ACTION_RE.findall(reply)
        if len(found) != 1:
            named = first_named_action(reply, admissible) if self.lenient else None
            return (named, True) if named else (reply[-MAX_ACTION_CHARS:].strip(), False)
        action = " ".join(found[0].split()).strip()
        valid = 0 < len(action) <= MAX_ACTION_CHARS and (not self.require_think or bool(THINK_RE.search(reply)))
        return action, valid


@dataclass
class AnswerPromptFormat:
    """Single-turn question answering (math): the whole reply is the action; the env grades it."""

    system: str = "You are a helpful assistant."
    history_length: int = 0  # single-turn: no history
    instruction: str = "Solve the problem step by step, and put your final answer within \\boxed{}."

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None
    ) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{observation}\n\n{self.instruction}"},
        ]

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        reply = clean_text(reply)
        return reply, bool(reply.strip())


@dataclass
class WordChoicePromptFormat:
    """Tagless choice among a few words: the action is the admissible word that occurs first in the reply.

    Used by CueBandit so that a tiny random-init model can discover the answer by exploration alone.
    """

    system: str = "Answer with one word."
    history_length: int = 0  # each cue is answered on its own

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None
    ) -> list[dict[str, str]]:
        choices = f" Choices: {', '.join(admissible)}." if admissible else ""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": f"{observation}{choices}"}]

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        reply = clean_text(reply)
        named = first_named_action(reply, admissible)
        return (named, True) if named else (reply.strip()[:MAX_ACTION_CHARS], False)
