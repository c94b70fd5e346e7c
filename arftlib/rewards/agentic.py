"""Our reward components: whole episodes (and step-wise samples) scored from what the environment recorded.

Every component is a per-sample function `f(traj) -> float | None` reading the parsed `Action` of each scored
step and its typed `Observation` (`tool`, `error_category`, `is_evidence`) — never a turn's text and never an error
message's wording. Actions are judged strictly: a turn with several action blocks counts as invalid
(`Action.strict_kind`), so hedging with repeated tags earns nothing. Penalties return non-negative counts; the
rubric gives them negative weights. None means "does not apply to this sample".

  format                  share of turns in the strict format (`Action.format_ok`) with an action the task allows
  answer_f1_reference / answer_em_reference / answer_f1_corrected / answer_em_corrected
                          `metrics.f1_em` of the first valid answer, either scoring variant
  grounded_answer_f1      corrected F1, but 0 unless a successful tool observation preceded the answer
                          (when the task needs tools)
  answer_after_evidence   1 if a successful tool observation preceded the answer, else 0
  query_similarity        MiniLM cosine (0 below 0.5) of issued vs gold queries: mean of recall and precision
  diagnosis               set match of the first diagnosis with the gold labels, the paper's 0.5 for a rotation
                          alone; any extra label scores 0
  wasted_turns            count: invalid turns + turns after the answer + valid turns beyond the gold chain length
  repeated_queries        count: searches (normalised) or code (whitespace-normalised) already issued before
  tool_spam               count: tool calls beyond the first within one turn
  (executed_code lives in rewards/image.py)

Left out: checking that a search was *relevant* evidence (any successful tool observation counts), learned
reward models and LLM judges.
"""

from __future__ import annotations

import numpy as np

from arftlib.metrics import f1_em, normalize_answer
from arftlib.parse import parse_action, parse_diagnosis
from arftlib.rewards import similarity
from arftlib.rewards.common import answer_index, evidence_before, gold_action, gold_step
from arftlib.turns import gold_turn
from arftlib.types import TOOL_ACTIONS, Trajectory, allowed_actions

__all__ = ["answer_after_evidence", "answer_em_corrected", "answer_em_reference", "answer_f1_corrected",
           "answer_f1_reference", "diagnosis", "diagnosis_credit", "format", "grounded_answer_f1",
           "query_similarity", "repeated_queries", "tool_spam", "wasted_turns"]


def format(traj: Trajectory) -> float | None:  # noqa: A001 - the component's logged name
    """Share of the scored turns in the strict format (`<think>…</think>` then exactly one action the task
    allows, nothing else, no repeated tag: `Action.format_ok`). 0 for no turns; None for the `direct` protocol,
    which has no tags."""
    if traj.protocol == "direct":
        return None
    steps = traj.scored_steps
    if not steps:
        return 0.0
    allowed = allowed_actions(traj.task.kind)
    return sum(s.action.format_ok and s.action.kind in allowed for s in steps) / len(steps)


def _answer_score(traj: Trajectory, variant: str, metric: int) -> float | None:
    g = gold_action(traj)
    if g is not None and g != "answer":
        return None
    steps = traj.scored_steps
    j = answer_index(steps)
    pred = steps[j].action.content if j is not None else None
    if not traj.task.answers:
        raise ValueError(f"answer rewards need gold answers; task {traj.task.id!r} has none")
    return f1_em(pred, traj.task.answers, traj.task.family, variant)[metric]


def answer_f1_reference(traj: Trajectory) -> float | None:
    """Token F1 (`metrics.f1_em`, reference variant) of the first valid answer against the task's answers; None on
    step-wise samples whose gold step is not an answer."""
    return _answer_score(traj, "reference", 0)


def answer_em_reference(traj: Trajectory) -> float | None:
    """Exact match (reference variant) of the first valid answer."""
    return _answer_score(traj, "reference", 1)


def answer_f1_corrected(traj: Trajectory) -> float | None:
    """Token F1 (corrected variant: single letters kept, escaped newlines decoded) of the first valid answer."""
    return _answer_score(traj, "corrected", 0)


def answer_em_corrected(traj: Trajectory) -> float | None:
    """Exact match (corrected variant) of the first valid answer."""
    return _answer_score(traj, "corrected", 1)


def answer_after_evidence(traj: Trajectory) -> float | None:
    """1.0 if the episode's first answer came after at least one successful tool observation
    (`Observation.is_evidence`), 0.0 if it came without one (or never came); None for step-wise samples (the
    evidence is in the prompt) and for tasks that need no tool (`Task.needs_tool`)."""
    if traj.start_step is not None or not traj.task.needs_tool:
        return None
    steps = traj.scored_steps
    j = answer_index(steps)
    return 1.0 if j is not None and evidence_before(steps, j) else 0.0


answer_after_evidence.needs_observations = True


def grounded_answer_f1(traj: Trajectory) -> float | None:
    """Corrected answer F1, given only when the answer came after a successful tool observation (for tasks that
    need tools; step-wise answer samples carry their evidence in the prompt and are not gated)."""
    f1 = _answer_score(traj, "corrected", 0)
    if f1 is None:
        return None
    gate = answer_after_evidence(traj)
    return f1 if gate is None else f1 * gate


grounded_answer_f1.needs_observations = True


def _gold_queries(traj: Trajectory) -> list[str]:
    step = gold_step(traj)
    chain = [step] if step is not None else traj.task.gold_chain
    out = []
    for s in chain:
        if s.get("action") == "search":
            out.append(parse_action(gold_turn(s, traj.task)).content)
    return [q for q in out if q]


def _issued_queries(traj: Trajectory) -> list[str]:
    steps = traj.scored_steps
    if traj.start_step is not None:
        steps = steps[:1]
    return [s.action.content for s in steps if s.action.strict_kind == "search"]


def query_similarity(traj: Trajectory) -> float | None:
    """MiniLM cosine between issued and gold search queries, each similarity set to 0 below 0.5. Step-wise search
    samples: the turn's query vs the gold step's (0 if the turn is not a valid search). Episodes: (recall +
    precision) / 2, recall = mean over gold queries of the best issued match, precision = mean over issued
    queries of the best gold match (junk queries lower it). None for coding tasks, step-wise samples of other
    steps, and episodes whose gold chain has no search."""
    if traj.task.family == "coding":
        return None
    g = gold_action(traj)
    if g is not None and g != "search":
        return None
    golds = _gold_queries(traj)
    if not golds:
        return None
    issued = _issued_queries(traj)
    if not issued:
        return 0.0
    sims = np.array([[similarity.thresholded(similarity.query_cosine(s, q)) for q in golds] for s in issued])
    if g == "search":
        return float(sims.max())
    return float(0.5 * (sims.max(axis=0).mean() + sims.max(axis=1).mean()))


def _prefetch(trajs: list[Trajectory]) -> None:
    texts = []
    for t in trajs:
        if t.task.family == "search":
            texts += _gold_queries(t) + _issued_queries(t)
    if texts:
        similarity.prefetch(texts)


query_similarity.prepare = _prefetch  # the Rubric embeds a batch's queries in one call


def diagnosis_credit(pred, gold) -> float:
    """Set match: 1.0 for the exact label set; 0.5 (the paper's partial credit) for a two-label gold that
    contains a rotation when only that rotation is predicted; 0.0 otherwise (an extra label always scores 0,
    so listing every label does not pay).

    >>> diagnosis_credit({"rotation90"}, {"rotation90", "dark"}), diagnosis_credit({"dark"}, {"rotation90", "dark"})
    (0.5, 0.0)
    >>> diagnosis_credit(["dark", "noise", "blur", "rotation90"], ["dark"])
    0.0
    """
    p, g = set(pred), set(gold)
    if p == g and g:
        return 1.0
    if len(g) == 2 and len(p) == 1:
        (label,) = p
        if label in ("rotation90", "rotation180") and label in g:
            return 0.5
    return 0.0


def diagnosis(traj: Trajectory) -> float | None:
    """`diagnosis_credit` of the first valid diagnosis (its labels, as the parser canonicalised them) against the
    gold labels: the gold step's on step-wise samples, the task's degradations on episodes. 0 when there is no
    diagnosis; None for search tasks and step-wise samples of other steps."""
    if traj.task.family != "coding":
        return None
    g = gold_action(traj)
    if g is not None and g != "problem":
        return None
    steps = traj.scored_steps
    if g == "problem":
        gold = parse_diagnosis(parse_action(gold_turn(gold_step(traj), traj.task)).content)
        first = steps[0] if steps and steps[0].action.strict_kind == "problem" else None
    else:
        gold = set(traj.task.degradations)
        first = next((s for s in steps if s.action.strict_kind == "problem"), None)
    return 0.0 if first is None else diagnosis_credit(parse_diagnosis(first.action.content), gold)


def wasted_turns(traj: Trajectory) -> float:
    """Count of wasted turns: invalid turns (strictly, or an action the task does not allow), turns after the
    first answer, and valid turns (up to the answer) beyond the gold chain's length (episodes only)."""
    allowed = allowed_actions(traj.task.kind)
    steps = traj.scored_steps
    j = answer_index(steps)
    upto = steps if j is None else steps[: j + 1]
    invalid = sum(s.action.strict_kind not in allowed for s in upto)
    after = 0 if j is None else len(steps) - j - 1
    beyond = 0
    if traj.start_step is None and traj.task.gold_chain:
        beyond = max(0, (len(upto) - invalid) - len(traj.task.gold_chain))
    return float(invalid + after + beyond)


def _tool_key(kind: str, content: str) -> tuple[str, str]:
    norm = normalize_answer(content, "search", "corrected") if kind == "search" else " ".join(content.split())
    return (kind, norm)


def repeated_queries(traj: Trajectory) -> float:
    """Count of tool calls that repeat an earlier one: searches equal after answer normalisation (case,
    punctuation, articles, spaces) to an earlier query of the episode (or of a step-wise sample's gold steps
    before it), and code equal up to whitespace to earlier code."""
    seen = set()
    if traj.start_step is not None:
        seen = {_tool_key(s["action"], str(s["content"])) for s in traj.task.gold_chain[: traj.start_step]
                if s.get("action") in TOOL_ACTIONS}
    n = 0
    for s in traj.scored_steps:
        if s.action.kind not in TOOL_ACTIONS:
            continue
        key = _tool_key(s.action.kind, s.action.content)
        n += key in seen
        seen.add(key)
    return float(n)


def tool_spam(traj: Trajectory) -> float:
    """Count of tool calls beyond the first within one turn (`Action.extra_tool_calls`: extra `<search>`/`<code>`
    blocks, extra calls in one tool-call message) — an environment acts on one per turn at most."""
    return float(sum(s.action.extra_tool_calls for s in traj.scored_steps))
