"""How actions travel through TRL's tool loop — in agentic training, and in the evaluation of what it trained.

TRL's `GRPOTrainer` (with `environment_factory`) samples an assistant turn, reads tool calls out of it with the
tokenizer's *response template* (`tokenizer.parse_response`), calls the environment's methods of those names,
appends the results as `tool` messages rendered by the chat template, and samples again; a turn without a tool
call ends the episode. Two forms of the same actions:

* `"tags"` (default) — the paper's actions: `<search> q </search>`, `<code> ```python …``` </code>`,
  `<problem> {…} </problem>` are tool calls of the environment's `search` / `code` / `problem` methods
  (`TAG_TOOLS`, one argument `content`); `<answer> … </answer>` is no call, so it ends the episode, as the
  answer does. The chat template is TRL's Qwen3-VL template without its tool-schema section (the system prompt
  already describes the actions), so turns read exactly like the step-wise data and the tags/chat evaluation.
* `"json"` — Qwen/Hermes JSON calls `<tool_call>{"name": …, "arguments": {…}}</tool_call>` of `search`,
  `run_code`, `diagnose`, `answer`, with the tool schemas rendered into the system prompt (TRL's Qwen3-VL
  template and its own response template).

`prepare_processor(processor, form)` sets the chat template and response template a form needs;
`read_tool_calls(tokenizer_or_form, text)` reads a turn with that response template — the very reading TRL does,
so the evaluation loop (`env/toolcalls.py`) acts on a turn exactly as training did.

Left out: parallel tool calls (several calls in one turn run one after another, as TRL runs them) and tool-call
argument typing (every argument here is a string).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["TAG_TOOLS", "TOOL_FORMATS", "prepare_processor", "read_tool_calls", "response_template",
           "tags_chat_template", "tool_turns_as_user"]

TOOL_FORMATS = ("tags", "json")
# tag action → (environment method, its one argument) in the "tags" form
TAG_TOOLS: dict[str, tuple[str, str]] = {"search": ("search", "content"), "code": ("code", "content"),
                                         "problem": ("problem", "content")}

_TAGS_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close_pattern": r"</think>\s*", "content": "text"},
        "tool_calls": {
            "open_pattern": r"<(?P<name>search|code|problem)>",
            "close_pattern": r"</(?:search|code|problem)>\s*",
            "repeats": True,
            "content": "text",
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": {"content": "{content}"}}},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def response_template(form: str) -> dict[str, Any]:
    """The response template TRL parses turns of `form` with."""
    if form == "tags":
        return _TAGS_RESPONSE_TEMPLATE
    if form == "json":
        from trl.chat_template_utils import qwen3_template

        return qwen3_template
    raise ValueError(f"unknown tool format {form!r}; use one of {TOOL_FORMATS}")


def tags_chat_template() -> str:
    """TRL's Qwen3-VL chat template with the tool-schema section removed (rendered as if no tools were given):
    prefix-preserving, renders tool messages as `<tool_response>` user turns, and keeps the prompt short."""
    from trl.chat_template_utils import qwen3_vl_chat_template

    # the top-level `{%- if tools %} … {%- else %} … {%- endif %}` starts at column 0; keep the else branch
    m = re.match(r"(?s)\{%- if tools %\}\n.*?\n\{%- else %\}\n(.*?)\n\{%- endif %\}\n(.*)$", qwen3_vl_chat_template)
    if m is None:  # pragma: no cover - a TRL release changed its template
        raise RuntimeError("TRL's qwen3_vl_chat_template no longer has the expected tools section")
    return m.group(1) + "\n" + m.group(2)


def prepare_processor(processor: Any, form: str) -> Any:
    """Give `processor` (and its tokenizer) the chat template and response template of tool `form`."""
    from trl.chat_template_utils import qwen3_vl_chat_template

    template = tags_chat_template() if form == "tags" else qwen3_vl_chat_template
    tok = getattr(processor, "tokenizer", processor)
    processor.chat_template = template
    if tok is not processor:
        tok.chat_template = template
    tok.response_template = response_template(form)
    return processor


def read_tool_calls(form: str, text: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """`([(tool name, arguments), …], reasoning)` of one assistant turn, read with the response template of `form`
    exactly as TRL's tool loop reads it (`[]` = no tool call: the loop ends at this turn). Never raises: a turn the
    parser cannot read has no tool call, as TRL's fallback decides."""
    from transformers.utils.chat_parsing.response_parser import parse_response

    template = response_template(form)  # an unknown form is the caller's mistake: it raises
    try:
        parsed = parse_response(text, template, prefix="<|im_start|>assistant\n")
    except (ValueError, TypeError):
        return [], ""
    calls = []
    for call in parsed.get("tool_calls") or []:
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        args = fn.get("arguments", {})
        calls.append((str(fn.get("name", "")), args if isinstance(args, dict) else {"content": args}))
    return calls, str(parsed.get("reasoning_content") or "")


def tool_turns_as_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation with each run of `tool` messages spelled as the `user` message the Qwen3-VL chat
    template renders it as (`<|im_start|>user` + `\n<tool_response>\n…\n</tool_response>` per result +
    `<|im_end|>`): the rendered text is identical, but image placeholders now sit in a user message, where TRL's
    `prepare_multimodal_messages` fills them from a row's `images` column (it leaves tool messages alone). Used
    for step-wise rows that are prefixes of tool-loop episodes (tests/test_tool_format.py checks the identity)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") != "tool":
            out.append(m)
            continue
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": str(m["content"])}]
        blocks = [{"type": "text", "text": "\n<tool_response>\n"}, *content, {"type": "text", "text": "\n</tool_response>"}]
        if out and out[-1].get("role") == "user" and out[-1].get("_tool_run"):
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": "user", "content": blocks, "_tool_run": True})
    for m in out:
        if m.get("_tool_run"):
            del m["_tool_run"]
            first = m["content"][0]
            m["content"][0] = {"type": "text", "text": first["text"][1:]}  # the template writes "user" + "\n"
    return out
