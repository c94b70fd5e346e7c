"""The tool-call form of the `chat` protocol: what TRL's tool loop trains (`train --mode agentic`), and how an
agentic-trained adapter is evaluated (`eval --protocol chat --tool-calls tags|json`).

Two forms of the same actions (`arftlib.tool_format`): `"tags"` — the paper's `<search>`, `<code>`, `<problem>`
tags are calls of `TagToolEnv`'s `search` / `code` / `problem` methods and an `<answer>` is no call — and
`"json"` — Qwen/Hermes `<tool_call>{json}</tool_call>` calls of `AgentEnv`'s `search` / `run_code` / `diagnose`
/ `answer`, with the tool schemas in the prompt.

Reading a turn: its tool calls are read with the form's response template (`tool_format.read_tool_calls`: the
very parser TRL uses), and each call runs the very method TRL calls, so a tool turn shows exactly what training
showed; a call the environment cannot run is an invalid turn (the reason comes back as the tool turn). A turn
without a tool call ends the episode, as TRL's loop ends there: an `<answer>` in it is the answer; any other
such turn is recorded for viewing only (`Step.scored = False`), so metrics and rubric rewards count it exactly
as training does (not at all).

Also here, the reading of a finished TRL tool-loop completion (`close_from_trl`): TRL hands the environment only
each call's arguments, so the assistant text around each call is attached to its step afterwards, and the last
call-less turn is acted on (`AgentEnv.finish`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from arftlib.env.chat import ChatProtocol
from arftlib.parse import parse_action, parse_tool_call
from arftlib.tool_format import TAG_TOOLS, read_tool_calls
from arftlib.turns import TOOL_FOR_ACTION
from arftlib.types import Action, Observation, Step, Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.env.core import AgentEnv

__all__ = ["ToolCallProtocol", "assistant_text", "close_from_trl", "final_text", "record_unscored"]

# tool method → (action kind, argument name), per form
_JSON_TOOLS = {name: (kind, arg) for kind, (name, arg) in TOOL_FOR_ACTION.items()}
_TAG_TOOLS = {name: (kind, arg) for kind, (name, arg) in TAG_TOOLS.items()}


class ToolCallProtocol(ChatProtocol):
    """The chat protocol in tool-call form `form` ("tags" or "json"); see the module docstring."""

    name = "chat"

    def __init__(self, form: str = "json"):
        self.form = form
        self.tools = _TAG_TOOLS if form == "tags" else _JSON_TOOLS

    def step(self, env: "AgentEnv", text: str, gen: Mapping[str, Any]) -> Observation:
        traj = env.trajectory
        calls, _reasoning = read_tool_calls(self.form, text)
        if not calls:  # TRL's loop stops at a turn without a tool call: what `finish` does in training
            n_steps = len(traj.steps)
            env.finish(text)  # an <answer> in it is the answer; else the episode closes unanswered
            if len(traj.steps) > n_steps:
                return traj.steps[-1].observation or Observation(kind="none")
            record_unscored(traj, text, gen)
            return Observation(kind="none")
        think, clean = self._think_and_format(text, len(calls))
        obs: Observation = Observation(kind="none")
        for k, (name, arguments) in enumerate(calls):
            first = k == 0
            turn_text, turn_gen = (text, gen) if first else ("", {})
            if env.done:  # TRL would still call it; the environment refuses calls after the end
                env.calls_after_end += 1
                break
            if name not in self.tools:
                action = Action(kind="invalid", think=think if first else "", raw=text,
                                error=f"unknown tool {name!r}; the tools are {', '.join(sorted(self.tools))}")
                obs = env.act(action, turn_text, turn_gen)
                continue
            kind, arg = self.tools[name]
            n_steps = len(traj.steps)
            env.pending_turn = (turn_text, turn_gen, think if first else "", clean and first)
            try:  # the very method TRL calls, so the tool turn shows exactly what training showed
                returned = getattr(env, name)(**{arg: arguments.get(arg)})
            finally:
                env.pending_turn = None
            if len(traj.steps) == n_steps:  # refused before acting (episode over)
                obs = Observation(kind="text", text=str(returned))
                continue
            step = traj.steps[-1]
            if first:
                step.action.blocks = [self.tools.get(n, ("invalid", ""))[0] for n, _ in calls]
            obs = step.observation or Observation(kind="none")
            if obs.kind != "none":
                shown = returned if isinstance(returned, str) else "".join(
                    str(b.get("text", "")) for b in returned if b.get("type") == "text")
                env.replace_last_shown(turn_text if first else None, {"text": shown, "image": obs.image})
        return obs

    def _think_and_format(self, text: str, n_calls: int) -> tuple[str, bool]:
        """The turn's think text and whether it is in the strict format (think + exactly one call, nothing else)."""
        if self.form == "tags":
            action = parse_action(text)
            return action.think, action.format_ok and n_calls == 1
        call = parse_tool_call(text)
        return (call.think, call.clean and n_calls == 1) if call is not None else ("", False)


def record_unscored(traj: Trajectory, text: str, gen: Mapping[str, Any] | None = None) -> None:
    """Append a turn that came after the episode closed (shown in the viewer, never scored)."""
    action = parse_action(text)
    if action.kind != "answer":
        action = Action(kind="invalid", think=action.think, raw=text, blocks=action.blocks,
                        error="no tool call: the episode ended here (not scored, as in training)")
    gen = gen or {}
    traj.steps.append(Step(turn=len(traj.steps), model_text=text, action=action, scored=False,
                           prompt_tokens=int(gen.get("prompt_tokens", 0)),
                           completion_tokens=int(gen.get("completion_tokens", 0)),
                           generate_s=float(gen.get("generate_s", 0.0))))


# --------------------------------------------------------------------------------------------------------------
# TRL tool-loop completions
# --------------------------------------------------------------------------------------------------------------
def assistant_text(msg: Mapping[str, Any]) -> str:
    """An assistant message of TRL's tool loop as the model wrote it, minus the tool calls: TRL's response parser
    moves a leading `<think>…</think>` into `reasoning_content`; it is put back in front of the content."""
    content = msg.get("content") or ""
    if isinstance(content, list):
        content = "".join(b.get("text", "") for b in content if isinstance(b, Mapping))
    reasoning = msg.get("reasoning_content")
    if reasoning:
        content = f"<think> {reasoning} </think>\n" + content
    return content


def final_text(completion: Any) -> str | None:
    """The text of the last assistant message of a TRL tool-loop completion when it made no tool call."""
    if not isinstance(completion, list) or not completion:
        return completion if isinstance(completion, str) else None
    last = completion[-1]
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return None
    return assistant_text(last)


def _call_texts(calls: list[Mapping[str, Any]], form: str) -> str:
    parts = []
    for c in calls:
        fn = c.get("function", c)
        args = fn.get("arguments", {})
        if form == "tags":
            parts.append(f"<{fn.get('name')}>{args.get('content', '') if isinstance(args, Mapping) else args}"
                         f"</{fn.get('name')}>")
        else:
            import json

            parts.append("<tool_call>\n" + json.dumps({"name": fn.get("name"), "arguments": args},
                                                       ensure_ascii=False) + "\n</tool_call>")
    return "\n".join(parts)


def _attach_turn_texts(traj: Trajectory, completion: Any, form: str) -> None:
    """Give each tool-call step the whole turn that issued it (TRL hands the env only the call's arguments), and
    the turn's think text, strict format and action blocks, so the viewer and the rewards see the whole turn."""
    if not isinstance(completion, list):
        return
    tools = _TAG_TOOLS if form == "tags" else _JSON_TOOLS
    ptr = 0
    steps = traj.steps
    for msg in completion:
        if msg.get("role") != "assistant":
            continue
        calls = msg.get("tool_calls") or []
        if not calls:
            continue
        if ptr >= len(steps):
            return
        turn = assistant_text(msg)
        if not any(t in turn for t in ("<tool_call>", "<search>", "<code>", "<problem>")):
            turn = (turn + "\n" if turn.strip() else "") + _call_texts(calls, form)
        step = steps[ptr]
        step.model_text = turn
        think, clean = ToolCallProtocol(form)._think_and_format(turn, len(calls))
        step.action.think = think
        step.action.format_ok = clean and step.action.kind != "invalid"
        step.action.blocks = [tools.get(c.get("function", c).get("name"), ("invalid", ""))[0] for c in calls]
        ptr += len(calls)


def close_from_trl(env: "AgentEnv", completion: Any) -> Trajectory:
    """Finish a TRL rollout's environment: act on the completion's last call-less turn (an answer), close the
    episode, attach each call's assistant text, and record a trailing non-answer turn for viewing only."""
    final = final_text(completion)
    n_before = len(env.trajectory.steps)
    env.finish(final)
    traj = env.trajectory
    _attach_turn_texts(traj, completion, env.tool_format or "json")
    if final is not None and len(traj.steps) == n_before and final.strip():
        record_unscored(traj, final)
    return traj
