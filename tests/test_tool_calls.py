"""The chat protocol in tool-call form (`AgentEnv(tool_calls=True)`): what `train --mode agentic` trains through
TRL's tool loop, run by the evaluation loop — parsing, the oracle through the real tools, the prompt TRL renders,
malformed calls. The `tasks` and `search` fixtures are in conftest.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arftlib.env import AgentEnv, task_to_row, tool_functions
from arftlib.parse import ToolCall, parse_tool_call
from arftlib.policies import EpisodeContext, ScriptedPolicy
from arftlib.rollout import run_episodes, summarize
from arftlib.turns import gold_tool_turns


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>\n{"name": "search", "arguments": {"query": "Paris"}}\n</tool_call>',
     ToolCall(name="search", arguments={"query": "Paris"})),
    ('<think> x </think><tool_call>{"name": "answer", "arguments": "{\\"answer\\": \\"4\\"}"}</tool_call>',
     ToolCall(name="answer", arguments={"answer": "4"}, think="x", clean=True)),
    ('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b"}</tool_call>',
     ToolCall(name="a", arguments={}, count=2)),
])
def test_parse_tool_call_reads_the_first_call(text, expected):
    assert parse_tool_call(text) == expected


@pytest.mark.parametrize("text, error", [
    ("<tool_call>{not json}</tool_call>", "not valid JSON"),
    ('<tool_call>{"arguments": {}}</tool_call>', '"name"'),
    ('<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "must be an object"),
    ('<tool_call>{"name": "search", "arguments": "{oops"}</tool_call>', "arguments are not valid JSON"),
    ('<tool_call>{"name": "search"', "unclosed"),
])
def test_parse_tool_call_explains_what_is_wrong(text, error):
    call = parse_tool_call(text)
    assert call is not None and error in call.error


@pytest.mark.parametrize("junk", [None, b"<tool_call>", 3, "", "<answer> 4 </answer>", "\udcff" * 10])
def test_parse_tool_call_never_raises(junk):
    assert parse_tool_call(junk) is None


def test_oracle_through_tool_calls_scores_full_marks(tasks, search, tmp_path):
    trajs = run_episodes(tasks, ScriptedPolicy(), protocol="chat", progress=False,
                         env_kwargs={"search": search, "tool_calls": True, "work_dir": str(tmp_path)})
    s = summarize(trajs)
    assert s["f1"] == 100.0 and s["em"] == 100.0 and s["answered"] == len(tasks)
    assert s["invalid_turns"] == 0 and s["tool_errors"] == 0 and s["code_runs"] > 0 and s["searches"] > 0
    for t in trajs:
        for step in t.steps:
            assert "<tool_call>" in step.model_text  # the whole turn is recorded, not a re-rendered call


def test_the_prompt_is_what_trl_renders_and_tool_turns_carry_images(tasks, tmp_path):
    from arftlib.policies import HFPolicy

    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=4)
    task = tasks[0]  # a coding task whose gold chain runs code
    env = AgentEnv(protocol="chat", tool_calls=True, work_dir=str(tmp_path))
    env.reset(task=task)
    ctx = EpisodeContext(task, 0, "e", "chat", tool_format="json")
    ours = policy.chat_text(env.messages, ctx)
    row = task_to_row(task, "chat")  # TRL: the row's prompt with the environment's methods as tools
    theirs = policy.processor.apply_chat_template(row["prompt"], tools=tool_functions(), tokenize=False,
                                                  add_generation_prompt=True)
    assert ours == theirs and "<tools>" in ours and '"name": "run_code"' in ours
    for turn in gold_tool_turns(task)[:2]:  # diagnose, then run_code
        env.step(turn)
    text = policy.chat_text(env.messages, ctx)
    tail = text[text.rindex("<tool_response>"):]
    assert tail.startswith("<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>The code ran.")
    assert env.messages[-1]["role"] == "tool"
    # without tool calls the prompt carries no tool schemas
    assert "<tools>" not in policy.chat_text(env.messages, EpisodeContext(task, 0, "e", "chat"))


def test_malformed_unknown_and_missing_calls(tasks, tmp_path):
    env = AgentEnv(protocol="chat", tool_calls=True, work_dir=str(tmp_path))
    env.reset(task=tasks[0])
    obs = env.step('<tool_call>{"name": "rotate", "arguments": {}}</tool_call>')
    assert "unknown tool 'rotate'" in obs.text and not env.done
    env.step('<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>')  # not a coding tool
    assert "not available for coding" in env.trajectory.steps[-1].action.error
    env.step("I think the answer is 42.")  # no tool call: TRL's loop would stop here, so does the episode
    assert env.done and env.trajectory.steps[-1].action.kind == "invalid"
    assert env.trajectory.steps[-1].model_text == "I think the answer is 42."  # shown ...
    assert not env.trajectory.steps[-1].scored  # ... not scored
    assert env.trajectory.metrics["invalid_turns"] == 2 and env.trajectory.final_answer in (None, "")
    assert env.trajectory.metrics["turns"] == 2
    # a call TRL's response parser cannot read is no call at all: the loop (and the episode) ends there
    env.reset(task=tasks[0])
    env.step("<tool_call>{bad json}</tool_call>")
    assert env.done and not env.trajectory.steps[-1].scored
    env.reset(task=tasks[0])
    env.step("<think> sure </think>\n<answer> " + tasks[0].answers[0] + " </answer>")  # an answer without a call
    assert env.done and env.trajectory.metrics["f1"] == 1.0
    with pytest.raises(ValueError, match="tool-call form"):
        AgentEnv(protocol="tags", tool_calls=True)


def test_tags_tool_form_reads_turns_as_trl_does(tasks, tmp_path):
    """The "tags" form: `<code>` / `<problem>` / `<search>` are calls of TagToolEnv's tools, read by the same
    response template TRL parses with; `<answer>` is no call and ends the episode."""
    from arftlib.env import TagToolEnv, make_env, tool_functions
    from arftlib.tool_format import read_tool_calls
    from arftlib.turns import gold_turns

    task = tasks[0]
    env = make_env(protocol="chat", tool_calls="tags", work_dir=str(tmp_path))
    assert isinstance(env, TagToolEnv) and [f.__name__ for f in tool_functions(env)] == ["code", "problem", "search"]
    env.reset(task=task)
    for turn in gold_turns(task):
        calls, _ = read_tool_calls("tags", turn)
        assert [n for n, _ in calls] in ([], ["problem"], ["code"])
        env.step(turn)
    traj = env.trajectory
    assert env.done and traj.metrics["f1"] == 1.0 and traj.metrics["tool_errors"] == 0
    assert [s.action.kind for s in traj.steps] == ["problem", "code", "answer"]
    assert all(s.action.format_ok for s in traj.steps) and traj.steps[1].observation.kind == "image"
    assert [m["role"] for m in env.messages][-2:] == ["assistant", "tool"] or env.done
    # two calls in one turn: both run, as TRL runs them; the turn's action records both blocks
    env.reset(task=task)
    two = gold_turns(task)[0] + "\n" + gold_turns(task)[1].split("</think>", 1)[1]
    env.step(two)
    assert len(env.trajectory.steps) == 2 and env.trajectory.steps[0].action.blocks == ["problem", "code"]
    assert env.trajectory.steps[0].action.extra_tool_calls == 0 and not env.trajectory.steps[0].action.format_ok
    roles = [m["role"] for m in env.messages]
    assert roles[-3:] == ["assistant", "tool", "tool"]  # one assistant turn, two tool results
    with pytest.raises(ValueError, match="TagToolEnv"):
        AgentEnv(protocol="chat", tool_calls="tags")


def test_gold_tool_turns_are_json_calls(tasks):
    for task in tasks:
        for turn in gold_tool_turns(task):
            call = parse_tool_call(turn)
            assert call is not None and call.error is None and call.name in {f.__name__ for f in tool_functions()}
            assert json.loads(turn[turn.index("{"):turn.rindex("}") + 1])["name"] == call.name


def test_sft_rows_are_the_prompt_trl_renders(tasks):
    from experiments.agentic_demo import tool_call_sft_dataset
    from arftlib.models import load_policy

    _, processor = load_policy("tiny")
    coding = [t for t in tasks if t.kind == "coding"][:2]
    ds = tool_call_sft_dataset(coding, processor, 112)
    row = ds[0]
    assert "<tools>" in row["prompt"] and row["prompt"].count("<|image_pad|>") == 1
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["completion"].endswith("<|im_end|>") and parse_tool_call(row["completion"]).name == "diagnose"
    assert row["image"].size == (112, 112)


_PIECES = ["<tool_call>", "</tool_call>", "{", "}", '"name"', '"arguments"', ":", ",", '"diagnose"', '"search"',
           '"{\\"query\\": 1}"', "[", "]", "null", "\n", "<think>", "</think>", "\\", '"', "1e999", "{}" * 50]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=40))
def test_parse_tool_call_never_raises_on_mangled_calls(parts):
    text = "".join(parts)
    call = parse_tool_call(text)
    if "<tool_call>" not in text:
        assert call is None
    else:
        assert isinstance(call, ToolCall) and (call.error is not None or (call.name and isinstance(call.arguments,
                                                                                                   dict)))


def test_tools_off_keeps_the_form_but_runs_nothing(tasks, tmp_path):
    """The no-tool baseline of a policy trained in the tags tool form: the same turns, every code call answered
    "tools are off" (typed `tools_off`, not evidence, nothing run), the answer still scored."""
    from arftlib import prompts as P
    from arftlib.env import make_env
    from arftlib.rewards import agentic_rubric
    from arftlib.turns import gold_turns

    task = tasks[0]
    env = make_env(protocol="chat", tool_calls="tags", work_dir=str(tmp_path), tools_off=True,
                   rubric=agentic_rubric("coding"))
    env.reset(task=task)
    for turn in gold_turns(task):
        env.step(turn)
    traj = env.trajectory
    assert [s.action.kind for s in traj.steps] == ["problem", "code", "answer"]
    code_obs = traj.steps[1].observation
    assert code_obs.error_category == "tools_off" and code_obs.text == P.TOOLS_OFF_TEXT and not code_obs.is_evidence
    assert traj.metrics["tools_off_calls"] == 1 and traj.metrics.get("code_runs", 0) == 0
    assert traj.metrics["f1"] == 1.0  # the answer is still read and scored …
    assert traj.reward_components["answer_after_evidence"] == 0.0  # … but it came without evidence
    env.close()
