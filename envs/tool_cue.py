"""ToolCue: CueBandit played by calling a tool — the smallest env whose reward requires a correct tool call.

Description:
    Each turn names a cue word; the agent must call the tool `press` with the button (color) that goes with the cue
    (the cue word itself, CueBandit's "copy" rule). The env talks in chat messages (envs/tools.py): the opening is a
    system and a user message, the tools are offered with `info["tools"]`, and each call is answered by a tool
    message, followed by the next cue as a user message.
Observation:
    The text of the env's last message (the rollout shows the messages themselves).
Action:
    The whole reply; its tool calls are read with `parse_tool_calls` (Hermes/Qwen `<tool_call>{json}</tool_call>`).
    `admissible_actions` lists the replies that call `press` with each button (and, with `distractors`, for each
    button a reply that names it without calling a tool and one that calls a tool that does not exist), so
    rollout.constrained_actions can sample among them.
Rewards:
    1/turns for each turn whose first tool call is `press` with the right button; 0 otherwise.
Episode end:
    Terminates after `turns` replies. A reply without a readable tool call ends the episode (reward 0 for it).
    `won` is True when every press was right.
Arguments:
    turns (int, 1): cues per episode. num_cues (int, 4, ≤ 8): distinct buttons. num_instances (int, 64).
    distractors (bool, False): also list the wrong kinds of reply (no call; a call to an unknown tool).
Version history:
    v0: initial version.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.envs.base import TextEnv, clean_text, empty_info
from agentrl.envs.cue_bandit import ANSWERS
from agentrl.envs.prompting import ChatPromptFormat
from agentrl.envs.tools import ToolCallError, parse_tool_calls, tool_call_text

SYSTEM = "Call the press tool with the button that goes with the cue."


class ToolCueEnv(TextEnv):
    metadata = {"render_modes": [], "prompt_format": ChatPromptFormat}

    def __init__(self, turns: int = 1, num_cues: int = 4, num_instances: int = 64, distractors: bool = False) -> None:
        super().__init__()
        if not 1 <= num_cues <= len(ANSWERS):
            raise ValueError(f"num_cues must be in 1..{len(ANSWERS)}, got {num_cues}")
        if turns < 1:
            raise ValueError(f"turns must be >= 1, got {turns}")
        self.turns, self._num_instances = turns, num_instances
        self.buttons = list(ANSWERS[:num_cues])
        self.replies = [tool_call_text("press", {"button": b}) for b in self.buttons]
        if distractors:
            self.replies += [f"The button is {b}." for b in self.buttons]
            self.replies += [tool_call_text("push", {"button": b}) for b in self.buttons]
        self.tools = [
            {
                "type": "function",
                "function": {
                    "name": "press",
                    "description": "Press a button.",
                    "parameters": {
                        "type": "object",
                        "properties": {"button": {"type": "string", "enum": self.buttons}},
                        "required": ["button"],
                    },
                },
            }
        ]
        self._cues: list[str] = []
        self._turn = self._correct = self._instance = 0

    @property
    def num_instances(self) -> int:
        return self._num_instances

    def _cue_message(self) -> dict[str, str]:
        return {"role": "user", "content": f"Cue: {self._cues[self._turn]}."}

    def _info(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return empty_info(
            task="press the button of each cue",
            admissible_actions=list(self.replies),
            task_type="tool_cue",
            instance=f"toolcue-{self._instance}",
            won=self._correct == self.turns,
            messages=messages,
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._instance = self.pick_instance(options)
        rng = np.random.default_rng(self._instance)
        n = len(self.buttons)
        self._cues = [self.buttons[(self._instance + t * int(rng.integers(1, n + 1))) % n] for t in range(self.turns)]
        self._turn = self._correct = 0
        messages = [{"role": "system", "content": SYSTEM}, self._cue_message()]
        info = self._info(messages)
        info["tools"] = self.tools
        return messages[-1]["content"], info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._turn >= self.turns:
            raise RuntimeError("step() called after the episode ended; call reset()")
        try:
            _, calls = parse_tool_calls(clean_text(action))
        except ToolCallError as err:
            calls, problem = [], f"Your tool call could not be read: {err}"
        else:
            problem = "" if calls else "You did not call a tool."
        cue = self._cues[self._turn]
        self._turn += 1
        if not calls:
            info = self._info([{"role": "user", "content": problem}])
            info["valid_action"] = False
            return problem, 0.0, True, False, info
        call = calls[0]
        if call.name != "press":
            result = f"error: there is no tool {call.name!r}"
        else:
            result = f"pressed {call.arguments.get('button')!r}"
        correct = call.name == "press" and call.arguments.get("button") == cue
        self._correct += int(correct)
        done = self._turn >= self.turns
        messages = [{"role": "tool", "content": result + (": right" if correct else ": wrong"), "name": call.name}]
        if not done:
            messages.append(self._cue_message())
        info = self._info(messages)
        info["valid_action"] = call.name == "press"
        return messages[-1]["content"], (1.0 / self.turns) if correct else 0.0, done, False, info
