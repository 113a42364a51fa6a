"""Tool-calling turns: the chat messages an env adds to the conversation, tool schemas, and tool calls in replies.

An env that talks in chat messages puts them in `info["messages"]` (reset: the opening prompt, e.g. a system and a
user message; step: its answer, e.g. one "tool" message per tool call) and its tools in `info["tools"]` (reset,
OpenAI-shaped: {"type": "function", "function": {"name", "description", "parameters"}}). The rollout then shows
the model exactly that conversation, its own replies spliced in verbatim, and never calls the prompt format's
render. The env receives the whole reply as its action and reads the tool calls in it with `parse_tool_calls`.

Tool calls are written the Hermes/Qwen way, which Qwen2.5, Qwen3 and Hermes models are trained on:

    <tool_call>
    {"name": "press", "arguments": {"color": "red"}}
    </tool_call>

When the tokenizer's chat template renders tools (`apply_chat_template(tools=…)` shows them), the template does
it. When it does not (SmolLM2-135M's, the tiny test model's ChatML), the fallback below is used and the rollout
says so once: the tool schemas go into the system message with the instructions Qwen2.5's template gives, and each
tool result becomes a user message inside <tool_response> tags (Qwen2.5's own rendering of tool messages).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.S)
ROLES = ("system", "user", "tool")  # the roles an env's messages may have (the assistant's turns are the model's)
MAX_TOOLS = 64

FALLBACK_SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


class ToolCallError(ValueError):
    """A reply whose tool call cannot be read (an invalid action, never a crash)."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


def parse_tool_calls(reply: str) -> tuple[str, list[ToolCall]]:
    """(the reply's text outside tool calls, its tool calls in order). ToolCallError when a <tool_call> block is
    not closed, is not a JSON object, or lacks a string "name" or an object "arguments" (a JSON string holding an
    object is accepted, as OpenAI's wire format sends it)."""
    calls = []
    for k, match in enumerate(CALL_RE.finditer(reply)):
        body = match.group(1).strip()
        try:
            value = json.loads(body)
        except json.JSONDecodeError as err:
            raise ToolCallError(f"tool call {k + 1} is not JSON: {err.msg} ({body[:80]!r})") from None
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
            raise ToolCallError(f'tool call {k + 1} is not an object with a "name" ({body[:80]!r})')
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise ToolCallError(
                    f"tool call {k + 1}: arguments are not a JSON object ({arguments[:80]!r})"
                ) from None
        if not isinstance(arguments, dict):
            raise ToolCallError(f"tool call {k + 1}: arguments are not a JSON object ({body[:80]!r})")
        calls.append(ToolCall(value["name"], arguments, id=f"call_{k}"))
    text = CALL_RE.sub("", reply)
    if CALL_OPEN in text or CALL_CLOSE in text:
        raise ToolCallError("a <tool_call> tag is not closed (or a </tool_call> is not opened)")
    return text.strip(), calls


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """The reply that makes one tool call (what a model trained on the Hermes/Qwen format writes)."""
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"


def openai_tool(tool: Any) -> dict[str, Any]:
    """A tool schema as chat templates take it ({"type": "function", "function": {...}}), from that shape or from
    a bare {"name", "description", "parameters"} (verifiers' vf.Tool, a pydantic model or a dict)."""
    if hasattr(tool, "model_dump"):
        tool = tool.model_dump(exclude_none=True)
    if not isinstance(tool, dict):
        raise ValueError(f"a tool schema must be a dict, got {type(tool).__name__}")
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        function = tool["function"]
    else:
        function = {k: v for k, v in tool.items() if k in ("name", "description", "parameters", "strict")}
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise ValueError(f"a tool schema has no name: {str(tool)[:120]}")
    return {"type": "function", "function": function}


def check_messages(messages: Any) -> str | None:
    """Why `messages` is not a list of env chat messages (None: it is): each a dict with a role in ROLES and a
    str content."""
    if not isinstance(messages, list):
        return f"info['messages'] is a {type(messages).__name__}, not a list"
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"info['messages'][{k}] is not a {{'role': one of {ROLES}, 'content': str}} message: {str(m)[:120]}"
    return None


def check_tools(tools: Any) -> str | None:
    """Why `tools` is not a list of OpenAI-shaped tool schemas (None: it is)."""
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        return f"info['tools'] must be a list of at most {MAX_TOOLS} tool schemas"
    for k, tool in enumerate(tools):
        try:
            if openai_tool(tool) != tool:
                return f"info['tools'][{k}] is not OpenAI-shaped ({{'type': 'function', 'function': {{...}}}})"
        except ValueError as err:
            return f"info['tools'][{k}]: {err}"
    return None


def fallback_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """`messages` for a chat template that renders neither tools nor tool messages: the tool schemas appended to
    the system message (one is made when there is none), consecutive tool results merged into one user message
    of <tool_response> blocks."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] != "tool":
            out.append({"role": m["role"], "content": m["content"]})
            continue
        block = f"<tool_response>\n{m['content']}\n</tool_response>"
        if out and out[-1].get("tool_results"):
            out[-1]["content"] += "\n" + block
        else:
            out.append({"role": "user", "content": block, "tool_results": True})
    out = [{"role": m["role"], "content": m["content"]} for m in out]
    if tools:
        block = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
