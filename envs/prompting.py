"""Prompt formats: how a turn is shown to the LLM (chat messages) and how a reply becomes an action.

The agentic protocol is verl-agent's (PAPER.md §5), which the reference runs: one user message per turn, built from
`ALFWORLD_TEMPLATE_NO_HIS` on the first turn and `ALFWORLD_TEMPLATE` afterwards ("Prior to this step, you have
already taken N step(s)…"), with the admissible actions quoted one per line. The reply reasons inside
<think>…</think> and names one action inside <action>…</action>. A reply that breaks the rules is invalid (not an
error): the rollout charges the invalid-action penalty to that turn and the env receives the projected text.

History has one owner: the rollout passes the whole history of (observation, action) pairs and the window to show;
the step count comes from the whole history, the quoted pairs from its last `window` entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agentrl.envs.base import clean_text
from agentrl.envs.tools import ToolCallError, parse_tool_calls

CJK_RE = re.compile(r"[\u4e00-\u9fff]")  # the reference's "contains Chinese characters" rule
MAX_ACTION_CHARS = 200  # lenient and word-choice parsing never return more than this

FIRST_TURN_TEMPLATE = """
You are an expert agent operating in {environment}.
Your current observation is: {observation}
Your admissible actions of the current situation are: [{admissible}].

{instruction}
"""
LATER_TURN_TEMPLATE = """
You are an expert agent operating in {environment}. Your task is to: {task}
Prior to this step, you have already taken {step_count} step(s). Below are the most recent {window} observaitons and the corresponding actions you took: {history}
You are now at step {current_step} and your current observation is: {observation}
Your admissible actions of the current situation are: [{admissible}].

{instruction}
"""  # "observaitons" (sic) is verl-agent's text; kept so prompts match the reference token for token
REASONING_INSTRUCTION = (
    "Now it's your turn to take an action.\n"
    "You should first reason step-by-step about the current situation. This reasoning process MUST be enclosed "
    "within <think> </think> tags. \n"
    "Once you've finished your reasoning, you should choose an admissible action for current step and present it "
    "within <action> </action> tags."
)
ACTION_ONLY_INSTRUCTION = (
    "Now it's your turn to take an action.\n"
    "Reply with exactly one admissible action inside <action> </action> tags and nothing else, for example: "
    "<action>{example}</action>"
)


@dataclass
class HistoryItem:
    observation: str  # what the agent saw
    action: str  # what it did in response (the projected action the env received)


@runtime_checkable
class PromptFormat(Protocol):
    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None, *, window: int
    ) -> list[dict[str, str]]:
        """Chat messages for the next turn. `history` is the whole episode so far; show its last `window` items."""
        ...

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        """(action for the env, valid)."""
        ...


@runtime_checkable
class ConstrainedReplies(Protocol):
    """The capability rollout.constrained_actions needs from a prompt format: spell the reply that names an action.
    Sampling is then restricted to the replies naming the env's admissible actions."""

    def constrained_reply(self, action: str) -> str:
        """The reply naming `action`; ValueError when this format's options cannot list replies (e.g. reasoning)."""
        ...


def constrained_problems(fmt: PromptFormat) -> list[str]:
    """Why `fmt` cannot drive rollout.constrained_actions (empty: it can)."""
    if not isinstance(fmt, ConstrainedReplies):
        return [f"rollout.constrained_actions=true: the prompt format {type(fmt).__name__} has no constrained_reply()"]
    try:
        fmt.constrained_reply("look")
    except ValueError as err:
        return [f"rollout.constrained_actions=true: {err}"]
    return []


def first_named_action(reply: str, admissible: list[str] | None) -> str | None:
    """The admissible action that occurs earliest in the reply (longest wins a tie), case-insensitively."""
    text = reply.lower()
    hits = [(text.find(a.lower()), -len(a), a) for a in admissible or [] if a and a.lower() in text]
    return min(hits)[2] if hits else None


def project_action(reply: str, *, require_think: bool = True) -> tuple[str, bool]:
    """verl-agent's ALFWorld projection: (lower-cased text between the first "<action>" and the first
    "</action>", valid). Invalid when either action tag is missing (action ""), when `require_think` and the
    reply lacks "<think>" or "</think>", or when it contains CJK characters. Tags are found case-insensitively,
    the think pair case-sensitively, as there. A closing tag before the opening one gives the empty action."""
    lowered = reply.lower()
    start, end = lowered.find("<action>"), lowered.find("</action>")
    if start == -1 or end == -1:
        return "", False
    action = lowered[start + len("<action>") : end].strip()
    valid = not (require_think and ("<think>" not in reply or "</think>" not in reply)) and not CJK_RE.search(reply)
    return action, valid


def offered(admissible: list[str] | None) -> list[str]:
    """The admissible actions a prompt lists: all but ALFWorld's "help" (it only prints the command list)."""
    return [a for a in admissible or [] if a != "help"]


@dataclass
class AgentPromptFormat:
    """The verl-agent multi-turn protocol for any env with admissible actions.

    Options (env.prompt.*): `environment` names what the agent acts in (ALFWorld: "the ALFRED Embodied
    Environment", the reference's wording); `reasoning` asks for <think> reasoning and requires the think pair
    (False: the action tag alone, for small models); `lenient` also accepts a reply without well-formed tags that
    names an admissible action (small CPU models; not the reference's rule).
    """

    environment: str = "a text environment"
    reasoning: bool = True
    lenient: bool = False

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None, *, window: int
    ) -> list[dict[str, str]]:
        actions = offered(admissible)
        example = actions[0] if actions else "look"
        instruction = REASONING_INSTRUCTION if self.reasoning else ACTION_ONLY_INSTRUCTION.format(example=example)
        fields = {
            "environment": self.environment,
            "observation": observation,
            "instruction": instruction,
            "admissible": "\n ".join(f"'{a}'" for a in actions),
        }
        if not history or window <= 0:
            if task and task not in observation:  # ALFWorld's first observation states the task itself
                fields["observation"] = f"{observation}\nYour task is to: {task}"
            return [{"role": "user", "content": FIRST_TURN_TEMPLATE.format(**fields)}]
        recent = history[-window:]
        first = len(history) - len(recent) + 1  # absolute step number of the oldest item shown
        lines = [
            f"[Observation {first + k}: '{h.observation}', Action {first + k}: '{h.action}']"
            for k, h in enumerate(recent)
        ]
        text = LATER_TURN_TEMPLATE.format(
            task=task,
            step_count=len(history),
            window=len(recent),
            history="\n".join(lines),
            current_step=len(history) + 1,
            **fields,
        )
        return [{"role": "user", "content": text}]

    def constrained_reply(self, action: str) -> str:
        """The reply that names `action` (rollout.constrained_actions samples only such replies)."""
        if self.reasoning:
            raise ValueError("constrained decoding needs env.prompt.reasoning=false (a <think> text cannot be listed)")
        return f"<action>{action}</action>"

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        reply = clean_text(reply)
        action, valid = project_action(reply, require_think=self.reasoning)
        if not valid and self.lenient and not CJK_RE.search(reply):
            named = first_named_action(action or reply, admissible)
            if named:
                return named.lower(), True
        return action, valid


@dataclass
class TersePromptFormat(AgentPromptFormat):
    """A short prompt for small models on CPUs, where prompt tokens are the cost (the agent protocol's boilerplate
    and quoted action list are ~150 tokens a turn): the task, the last `window` actions with what followed each,
    the current observation, and the admissible actions on one line. Replies as AgentPromptFormat (the action tag
    alone by default). Not the reference's wording; the quickstart uses it (env.prompt_format=...:TersePromptFormat).
    """

    reasoning: bool = False
    lenient: bool = True  # free-text replies (without rollout.constrained_actions) may name the action untagged
    list_actions: bool = True  # False: no action list (with rollout.constrained_actions the sampler still knows them)
    system: str = ""  # a system message ("": none, the chat template's default)
    show_step: bool = True  # a "Step N." line
    instruction: str = "Reply <action>one action</action>."  # "": none (constrained decoding needs no instruction)

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None, *, window: int
    ) -> list[dict[str, str]]:
        def strip(text: str) -> str:  # ALFWorld's first observation repeats the task
            return text.replace(f"Your task is to: {task}.", "").replace(f"Your task is to: {task}", "").strip()

        lines = [f"Task: {task}." if task else "", f"Step {len(history) + 1}." if self.show_step else ""]
        for h in history[-window:] if window > 0 else []:  # a transcript: what was seen, then "> what was done"
            lines.append(f"{strip(h.observation)}\n> {h.action}")
        lines.append(strip(observation))
        actions = offered(admissible)
        if self.list_actions and actions:
            lines.append("Actions: " + "; ".join(actions))
        lines.append(self.instruction if not self.reasoning else REASONING_INSTRUCTION)
        user = {"role": "user", "content": "\n".join(line for line in lines if line)}
        return [{"role": "system", "content": self.system}, user] if self.system else [user]


@dataclass
class AnswerPromptFormat:
    """Single-turn question answering (math), oat's qwen_math template: the instruction is the system turn and the
    bare question the user turn. The whole reply is the action; the env grades it."""

    system: str = "Please reason step by step, and put your final answer within \\boxed{}."

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None, *, window: int
    ) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": observation}]

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        reply = clean_text(reply)
        return reply, bool(reply.strip())


@dataclass
class ChatPromptFormat:
    """For envs that talk in chat messages (envs/tools.py: info["messages"], e.g. hub envs and tool envs): the
    rollout shows the env's own conversation, so `render` is only the fallback for a turn without messages (the
    observation as a user message). The whole reply is the action; the env reads it (and the tool calls in it). A
    reply with a malformed <tool_call> is invalid (the usual penalty) and still reaches the env, which answers it
    like any reply without a call. `constrained_reply` is the identity: an env that lists whole replies as its
    admissible actions (e.g. the tool calls it accepts) can be played with rollout.constrained_actions."""

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None, *, window: int
    ) -> list[dict[str, str]]:
        return [{"role": "user", "content": observation}]

    def constrained_reply(self, action: str) -> str:
        return action

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        reply = clean_text(reply)
        try:
            parse_tool_calls(reply)
        except ToolCallError:
            return reply, False
        return reply, bool(reply.strip())


@dataclass
class WordChoicePromptFormat:
    """Tagless choice among a few words: the action is the admissible word that occurs first in the reply.

    Used by CueBandit so that a tiny random-init model can discover the answer by exploration alone.
    """

    system: str = "Answer with one word."

    def render(
        self, task: str, history: list[HistoryItem], observation: str, admissible: list[str] | None, *, window: int
    ) -> list[dict[str, str]]:
        choices = f" Choices: {', '.join(admissible)}." if admissible else ""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": f"{observation}{choices}"}]

    def constrained_reply(self, action: str) -> str:
        return action

    def parse(self, reply: str, admissible: list[str] | None = None) -> tuple[str, bool]:
        reply = clean_text(reply)
        named = first_named_action(reply, admissible)
        return (named, True) if named else (reply.strip()[:MAX_ACTION_CHARS], False)
