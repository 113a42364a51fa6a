"""Chat-template token handling: render messages to prompt ids, and extend a conversation turn by turn with the
model's generated ids spliced in verbatim (never re-tokenising generated text)."""

from __future__ import annotations

PLACEHOLDER = "\u2063agentrl\u2063"  # an unlikely string to locate the assistant content in rendered templates


class ChatTokens:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.eos_text = tokenizer.eos_token or ""
        self._after_eos: str | None = None
        self._closed_turn: str | None = None  # a rendered system/user/assistant exchange, for template deltas

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_plain(self, text: str) -> list[int]:
        """Text that must never become a control token (env observations, tasks): special-token strings in it are
        encoded as ordinary text."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def has_special(self, text: str) -> bool:
        return any(s in text for s in self.tokenizer.all_special_tokens)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The rendered prompt's ids. Message contents are text: a special-token string inside one (an observation
        quoting "<|im_end|>") is encoded as plain text, so the env cannot close the turn or forge a role."""
        if not any(self.has_special(m["content"]) for m in messages):
            return self.encode(self.render(messages))  # the common case, one pass
        marked = [{**m, "content": f"{PLACEHOLDER}{k}{PLACEHOLDER}"} for k, m in enumerate(messages)]
        pieces = self.render(marked).split(PLACEHOLDER)  # template, index, template, index, …, template
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

    def next_user_ids(self, completion_ids: list[int], content: str) -> list[int]:
        """Ids that follow an assistant turn to open the next user turn and the next generation prompt.

        If the completion did not end with the end-of-turn token (it hit the length limit), the template's
        end-of-turn token is inserted here, as a template token.
        """
        base = [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a"},
        ]
        before = self.render(base, generation_prompt=False)
        after = self.render([*base, {"role": "user", "content": content}], generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("this chat template re-renders earlier turns; use sample mode 'window'")
        missing_eos = [self.eos_id] if not completion_ids or completion_ids[-1] != self.eos_id else []
        delta = self.after_eos() + after[len(before) :]
        if not self.has_special(content):
            return missing_eos + self.encode(delta)
        # the template around the content, located by a placeholder (a content equal to "<|im_start|>user" must not
        # be matched in the template's own header), is encoded as template; the content as plain text
        marked = self.render([*base, {"role": "user", "content": PLACEHOLDER}], generation_prompt=True)
        head, tail = (self.after_eos() + marked[len(before) :]).split(PLACEHOLDER)
        return missing_eos + self.encode(head) + self.encode_plain(content) + self.encode(tail)
