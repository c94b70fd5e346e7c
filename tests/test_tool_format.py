"""The tool forms of TRL's tool loop (tool_format.py): the paper's tags read as tool calls by the very response
template TRL uses, the tools-free chat template, and step-wise rows that are token-for-token prefixes of the
episodes the environment shows."""

from __future__ import annotations

import pytest

from arftlib.tool_format import prepare_processor, read_tool_calls, tags_chat_template, tool_turns_as_user


def test_tags_are_read_as_tool_calls():
    calls, think = read_tool_calls("tags", "<think> fix </think>\n<code>\n```python\nx = 1\n```\n</code>")
    assert calls == [("code", {"content": "```python\nx = 1\n```"})] and think == "fix"
    assert read_tool_calls("tags", "<think>q</think><search> red triangle </search>")[0] == [
        ("search", {"content": "red triangle"})]  # the response parser strips the payload
    assert read_tool_calls("tags", "<think>ok</think><answer> red </answer>")[0] == []  # no call: the loop ends
    two, _ = read_tool_calls("tags", "<problem>{'dark'}</problem><code>x</code>")
    assert [n for n, _ in two] == ["problem", "code"]  # TRL runs both
    json_calls, _ = read_tool_calls("json", '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>')
    assert json_calls == [("search", {"query": "x"})]
    with pytest.raises(ValueError, match="tool format"):
        read_tool_calls("xml", "x")


def test_tags_chat_template_is_qwen3_vl_without_tools():
    from transformers import AutoProcessor
    from trl.chat_template_utils import is_chat_template_prefix_preserving, qwen3_vl_chat_template

    from arftlib.models import tiny_model_path

    proc = AutoProcessor.from_pretrained(tiny_model_path())
    msgs = [{"role": "system", "content": [{"type": "text", "text": "S"}]},
            {"role": "user", "content": [{"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<think>t</think><code>x</code>"}]},
            {"role": "tool", "content": [{"type": "text", "text": "ran"}]}]

    def tool(x: str) -> str:
        """A tool.

        Args:
            x: input.
        """
        return x

    plain = proc.apply_chat_template(msgs, tokenize=False, chat_template=qwen3_vl_chat_template)
    tags = proc.apply_chat_template(msgs, tools=[tool], tokenize=False, chat_template=tags_chat_template())
    assert tags == plain and "<tools>" not in tags  # tool schemas never reach the prompt in the tags form
    prepare_processor(proc, "tags")
    assert proc.tokenizer.response_template["fields"]["tool_calls"]["open_pattern"].startswith("<(?P<name>")
    assert is_chat_template_prefix_preserving(proc)


def test_tool_turns_spelled_as_user_render_identically():
    from transformers import AutoProcessor

    from arftlib.models import tiny_model_path

    proc = AutoProcessor.from_pretrained(tiny_model_path())
    prepare_processor(proc, "tags")
    msgs = [{"role": "system", "content": [{"type": "text", "text": "S"}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<code>x</code>"}]},
            {"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "ran"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<problem>{'dark'}</problem>"}]},
            {"role": "tool", "content": [{"type": "text", "text": "tip 1"}]},
            {"role": "tool", "content": [{"type": "text", "text": "tip 2"}]}]
    a = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    b = proc.apply_chat_template(tool_turns_as_user(msgs), tokenize=False, add_generation_prompt=True)
    assert a == b and a.count("<tool_response>") == 3
    assert [m["role"] for m in tool_turns_as_user(msgs)] == ["system", "user", "assistant", "user", "assistant", "user"]


def test_chat_step_rows_are_prefixes_of_the_episode_the_environment_shows(tmp_path):
    """A chat step-wise row (the paper's step-wise method in the tool loop's form) renders to exactly the text the
    environment shows after the same gold steps: the step-wise method and agentic GRPO see the same tokens."""
    from transformers import AutoProcessor
    from trl.data_utils import prepare_multimodal_messages

    from arftlib.config import get_config
    from arftlib.data.build import build_dataset, load_built
    from arftlib.env import AgentEnv, make_env
    from arftlib.models import model_path_for
    from arftlib.train.datasets import chat_stepwise_rows

    tasks = load_built(build_dataset("micro-coding", 12, 5, tmp_path / "mc", verify=False))
    cfg = get_config("tiny-cpu", protocol="chat", prompt_style="compact", tool_format="tags")
    proc = AutoProcessor.from_pretrained(model_path_for(cfg))
    prepare_processor(proc, "tags")
    checked = 0
    for task in tasks[:4]:
        for i, row in enumerate(chat_stepwise_rows(task, cfg)):
            assert row["step_index"] == i and row["gold_action"] == task.gold_chain[i]["action"]
            msgs = prepare_multimodal_messages([dict(m) for m in row["prompt"]], images=row["images"])
            ours = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            env = make_env(**AgentEnv.settings_from_config(cfg, protocol="chat", tool_calls="tags"))
            env.reset_at(task, i)
            assert ours == proc.apply_chat_template(env.messages, tokenize=False, add_generation_prompt=True)
            checked += 1
    assert checked >= 8
