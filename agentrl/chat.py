"""Chat-template token handling: render messages to prompt ids, and extend a conversation turn by turn with the
model's generated ids spliced in verbatim (never re-tokenising generated text). Tools (envs/tools.py) are rendered
by the template when it can, else by the documented fallback."""

from __future__ import annotations

import json
import warnings
from typing import Any

from agentrl.envs.tools import fallback_messages

PLACEHOLDER = "\u2063agentrl\u2063"  # an unlikely string to locate the assistant content in rendered templates


class ChatTokens:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.eos_text = tokenizer.eos_token or ""
        self._after_eos: str | None = None
        self._closed_turn: str | None = None  # a rendered system/user/assistant exchange, for template deltas
        self._renders_tools: bool | None = None

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_plain(self, text: str) -> list[int]:
        """Text that must never become a control token (env observations, tasks): special-token strings in it are
        encoded as ordinary text."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def render(
        self, messages: list[dict[str, str]], generation_prompt: bool = True, tools: list[dict] | None = None
    ) -> str:
        extra = {"tools": tools} if tools else {}
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **extra
        )

    @property
    def renders_tools(self) -> bool:
        """Whether the chat template shows tool schemas and tool messages itself (else: envs/tools.py's fallback,
        said once in a warning)."""
        if self._renders_tools is None:
            probe = {
                "type": "function",
                "function": {"name": "agentrl_probe_tool", "description": "d", "parameters": {}},
            }
            user = [{"role": "user", "content": "u"}]
            try:
                shown = "agentrl_probe_tool" in self.render(user, tools=[probe])
                answer = [*user, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "agentrl_result"}]
                shown = shown and "agentrl_result" in self.render(answer)
            except Exception:  # a template that raises on tools (or on a tool message) does not render them
                shown = False
            self._renders_tools = shown
            if not shown:
                warnings.warn(
                    "this tokenizer's chat template does not render tools: tool schemas go in the system message and "
                    "tool results in <tool_response> user messages (the Hermes/Qwen format, envs/tools.py)",
                    stacklevel=2,
                )
        return self._renders_tools

    def conversation(
        self, messages: list[dict[str, Any]], tools: list[dict] | None
    ) -> tuple[list[dict[str, Any]], list[dict] | None]:
        """(messages, tools) as this template takes them: unchanged when it renders tools and tool messages, else
        the fallback's (tools inside the system message, tool results as user messages)."""
        if not (tools or any(m["role"] == "tool" for m in messages)):
            return messages, None
        if self._native(tools):
            return messages, tools
        return fallback_messages(messages, tools), None

    def _native(self, tools: list[dict] | None) -> bool:
        """The one rule for both the opening and every later turn: the template renders the tools itself when it
        can and their schemas hold no special-token string (schemas are template text), else the fallback."""
        return self.renders_tools and not self.has_special(json.dumps(tools or []))

    def has_special(self, text: str) -> bool:
        return any(s in text for s in self.tokenizer.all_special_tokens)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
        """The rendered prompt's ids (`tools`: the env's tool schemas). Message contents are text: a special-token
        string inside one (an observation quoting "<|im_end|>") is encoded as plain text, so the env cannot close
        the turn or forge a role."""
        messages, tools = self.conversation(messages, tools)
        return self._marked_ids(messages, lambda marked: self.render(marked, tools=tools))

    def _marked_ids(self, messages: list[dict[str, Any]], render) -> list[int]:
        """Ids of `render(messages)` with every message content encoded as plain text (the template around them
        as template text)."""
        if not any(self.has_special(m["content"]) for m in messages):
            return self.encode(render(messages))  # the common case, one pass
        marked = [{**m, "content": f"{PLACEHOLDER}{k}{PLACEHOLDER}"} for k, m in enumerate(messages)]
        pieces = render(marked).split(PLACEHOLDER)  # template, index, template, index, …, template
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            ids += self.encode(piece) if k % 2 == 0 else self.encode_plain(messages[int(piece)]["content"])
        return ids

    def after_eos(self) -> str:
        """Template text between the end-of-turn token the model generates and the next message ("\\n" in ChatML)."""
        if self._after_eos is None:
            base = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
            full = self.render([*base, {"role": "assistant", "content": PLACEHOLDER}], generation_prompt=False)
            closing = full[full.rindex(PLACEHOLDER) + len(PLACEHOLDER) :]
            self._after_eos = closing[len(self.eos_text) :] if closing.startswith(self.eos_text) else closing
        return self._after_eos

    def next_turn_ids(
        self, completion_ids: list[int], messages: list[dict[str, Any]], tools: list[dict] | None = None
    ) -> list[int]:
        """Ids that follow an assistant turn to add the env's `messages` (user messages or tool results) and open
        the next generation prompt; `tools` as given to prompt_ids for the conversation's opening (a template's
        system block must render the same). A completion that did not end with the end-of-turn token (it hit the
        length limit) gets it here, as a template token."""
        if not (tools or any(m["role"] == "tool" for m in messages)):
            tools = None
        elif not self._native(tools):  # the opening's schemas are in its system message already
            messages, tools = fallback_messages(messages, None), None
        base = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
        before = self.render(base, generation_prompt=False, tools=tools)

        def delta(shown: list[dict[str, Any]]) -> str:
            after = self.render([*base, *shown], generation_prompt=True, tools=tools)
            if not after.startswith(before):
                raise ValueError("this chat template re-renders earlier turns; use sample mode 'window'")
            return self.after_eos() + after[len(before) :]

        missing_eos = [self.eos_id] if not completion_ids or completion_ids[-1] != self.eos_id else []
        # a content equal to "<|im_start|>user" must not be matched in the template's own header: each content is
        # located by a placeholder and encoded as plain text, the template around it as template
        return missing_eos + self._marked_ids(messages, delta)

    def next_user_ids(self, completion_ids: list[int], content: str) -> list[int]:
        """next_turn_ids for one user message."""
        return self.next_turn_ids(completion_ids, [{"role": "user", "content": content}])
