"""A classic verifiers environment module, as authors publish them on the hub (`load_environment` → a vf env), for
the adapter's tests: CueBandit's task (answer each cue with its word; "copy": the word is the cue itself) served as
a vf.SingleTurnEnv, a vf.MultiTurnEnv or a vf.ToolEnv, with a dataset built in memory and an async reward."""

from __future__ import annotations

import asyncio
import time

import verifiers as vf
from datasets import Dataset

WORDS = ("up", "down", "left", "right")
SYSTEM = "Answer with one word."


def cues(instance: int, turns: int) -> list[str]:
    return [WORDS[(instance + 3 * t) % len(WORDS)] for t in range(turns)]


def question(cue: str) -> str:
    return f"Cue: {cue}. Which word goes with this cue? Choices: {', '.join(WORDS)}."


def first_word(text: str) -> str | None:
    """The choice word named first in a reply (CueBandit's WordChoicePromptFormat rule)."""
    text = (text or "").lower()
    hits = [(text.find(w), w) for w in WORDS if w in text]
    return min(hits)[1] if hits else None


def replies(completion: list) -> list[str]:
    return [m.content or "" for m in completion if getattr(m, "role", None) == "assistant"]


class CueTurns(vf.MultiTurnEnv):
    """One cue per turn: after each reply the env says whether it was right and shows the next cue."""

    def __init__(self, turns: int, **kwargs):
        super().__init__(max_turns=turns, **kwargs)
        self.turns = turns

    async def env_response(self, messages, state, **kwargs):
        done = len(state["trajectory"])
        expected = state["info"]["cues"][done - 1]
        verdict = "Correct." if first_word(messages[-1].content) == expected else "Wrong."
        return [vf.UserMessage(content=f"{verdict} {question(state['info']['cues'][done])}")]


def load_environment(
    kind: str = "multi", turns: int = 2, n: int = 64, reward: str = "ok", eval_n: int = 16
) -> vf.Environment:
    turns = 1 if kind == "single" else turns

    def rows(count: int, offset: int) -> Dataset:
        out = []
        for i in range(offset, offset + count):
            seq = cues(i, turns)
            prompt = "Press the button of the cue." if kind == "tool" else question(seq[0])
            out.append(
                {
                    "prompt": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": prompt + f" {seq[0]}"},
                    ]
                    if kind == "tool"
                    else [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                    "answer": " ".join(seq),
                    "info": {"cues": seq},
                    "example_id": i,
                }
            )
        return Dataset.from_list(out)

    async def correct(completion, answer, **kwargs) -> float:
        await asyncio.sleep(0)  # an async reward function, as hub envs often have
        if reward == "raise":
            raise RuntimeError("this reward function is broken")
        if reward == "hang":
            await asyncio.sleep(3600)
        if kind == "tool":
            calls = [c for m in completion if getattr(m, "role", None) == "assistant" for c in (m.tool_calls or [])]
            return float(bool(calls) and calls[0].name == "press" and answer.split()[0] in calls[0].arguments)
        said = replies(completion)
        expected = answer.split()
        return sum(first_word(r) == e for r, e in zip(said, expected)) / len(expected)

    def blocking(completion, **kwargs) -> float:  # a sync reward function that never returns
        time.sleep(3600)
        return 0.0

    funcs, weights = [correct], [1.0]
    if reward == "hang-sync":
        funcs, weights = [blocking], [1.0]
    rubric = vf.Rubric(funcs=funcs, weights=weights)
    common = dict(dataset=rows(n, 0), eval_dataset=rows(eval_n, 10_000), rubric=rubric)
    if kind == "single":
        return vf.SingleTurnEnv(**common)
    if kind == "tool":

        def press(button: str) -> str:
            """Press a button.

            Args:
                button: the button to press
            """
            return f"pressed {button}"

        return vf.ToolEnv(tools=[press], max_turns=3, **common)
    return CueTurns(turns, **common)
