"""The paper's step-wise rewards, faithfully: format + accuracy per step type, on step-wise samples.

Each component reads a step-wise `Trajectory` (`start_step` set): the policy's one turn and the gold step it
replaces (the reference's `solution`). Both are read the way the reference's training rewards read them —
substring tests and its regexes — through `parse.reference_turn` (the reading lives in parse.py; nothing here
looks at text). Components return None for episodes and for step types they do not score.

  paper_format            the reference's regex format reward (coding: by the gold step's tag; search: by the turn's)
  paper_answer_f1         answer steps: set-token F1 of `<answer>` vs the solution's answer, 0 if a tool tag appears
  paper_search_similarity search steps: all-MiniLM-L6-v2 cosine of the query vs the gold query, 0 below 0.5
  paper_code_flat         code steps: a flat 0.9 unless `<answer>`/`<problem>` appears (nothing is run)
  paper_diagnosis         diagnosis steps: exact label list = 1, the rotation alone of a rotation+X pair = 0.5
  paper_accuracy          whichever of the four accuracy rewards applies (0.0 when none does), as one number

Reference: github.com/Liuziyu77/Visual-RFT, folder `Visual-ARFT/src/visual_arft/src/open_r1/`, read from the
mirror `raja-kumar/Visual-RFT` at commit f3d3f05c24e2f7e1d86dee5c84561e745f878ec1: `grpo_agent_code.py`
(`accuracy_reward`, `format_reward`, `extract_problems`, `compute_f1`) and `grpo_agent_search.py`
(`accuracy_reward`, `format_reward`, `compute_similarity`). Both train with `reward_funcs=["accuracy", "format"]`
at TRL's default weights (1, 1). Re-implemented from their behaviour, not copied. Deviations: (1) the search
script first tries `math_verify.parse/verify(content, solution)`; not a dependency here, so left out (it could
only raise a reward, for answers that parse as the same number). (2) The reference wraps accuracy in `try/except
Exception: pass`; here errors propagate. (3) "accuracy" is split into one component per step type so each is
logged under its own name; exactly one applies per sample, so the total equals accuracy + format.
"""

from __future__ import annotations

from arftlib.metrics import normalize_answer
from arftlib.parse import reference_turn
from arftlib.rewards import similarity
from arftlib.rewards.common import gold_reference
from arftlib.types import Trajectory

__all__ = ["PAPER_CODE_REWARD", "paper_accuracy", "paper_answer_f1", "paper_code_flat", "paper_diagnosis",
           "paper_diagnosis_credit", "paper_f1", "paper_format", "paper_search_similarity"]

PAPER_CODE_REWARD = 0.9  # grpo_agent_code.py: `reward = 0.9` for any code step


def paper_f1(prediction: str, ground_truth: str) -> float:
    """The training F1 of both reference scripts (`compute_f1`): search-style normalisation (for MAT-Coding
    too, so no per-character CJK F1), set of shared tokens, and NO "exact match forces F1 = 1" — a gold that
    normalises to nothing (the option letter "A") scores 0 whatever the prediction.

    >>> paper_f1("The Eiffel Tower", "eiffel tower"), paper_f1("A", "A")
    (1.0, 0.0)
    """
    p = normalize_answer(prediction, "search", "reference").split()
    g = normalize_answer(ground_truth, "search", "reference").split()
    same = len(set(p) & set(g))
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def paper_diagnosis_credit(gold: list[str], pred: list[str]) -> float:
    """The reference's diagnosis accuracy: for a two-label gold containing rotation90 (else rotation180),
    predicting only that rotation gives 0.5; otherwise the sorted label lists must be equal (1.0).

    >>> paper_diagnosis_credit(["dark", "rotation90"], ["rotation90"]), paper_diagnosis_credit(["dark"], ["dark"])
    (0.5, 1.0)
    """
    reward = 0.0
    if len(gold) == 2 and "rotation90" in gold:
        if len(pred) == 1 and "rotation90" in pred:
            reward = 0.5
    elif len(gold) == 2 and "rotation180" in gold:
        if len(pred) == 1 and "rotation180" in pred:
            reward = 0.5
    if reward == 0:
        reward = 1.0 if gold == pred else 0.0
    return reward


def _turn(traj: Trajectory):
    """The policy's turn as the reference reads it (the first scored step; empty when there is none)."""
    steps = traj.scored_steps
    return reference_turn(steps[0].model_text if steps else "")


def paper_format(traj: Trajectory) -> float | None:
    """The reference `format_reward` (`ReferenceTurn.format_ok`); None for episodes."""
    if traj.start_step is None:
        return None
    fam = traj.task.family
    gold_step = gold_reference(traj).step(fam) if fam == "coding" else None
    return 1.0 if _turn(traj).format_ok(fam, gold_step) else 0.0


def paper_answer_f1(traj: Trajectory) -> float | None:
    """Answer steps (`<answer>` in the solution), else None: 0 if the turn contains a tool tag (coding:
    `<code>`/`<problem>`; search: `<search>`), else `paper_f1` of the turn's first single-line `<answer>` (the
    whole turn when there is none) against the solution's."""
    if traj.start_step is None:
        return None
    fam = traj.task.family
    sol = gold_reference(traj)
    if sol.step(fam) != "answer":
        return None
    turn = _turn(traj)
    forbidden = ("code", "problem") if fam == "coding" else ("search",)
    if any(turn.has(t) for t in forbidden):
        return 0.0
    return paper_f1(turn.answer, sol.answer)


def paper_search_similarity(traj: Trajectory) -> float | None:
    """Search steps (`<search>` and no `<answer>` in the solution), else None: 0 if the turn contains `<answer>`;
    else the all-MiniLM-L6-v2 cosine of the turn's first single-line `<search>` (the whole turn when there is
    none) and the solution's, set to 0 below 0.5."""
    if traj.start_step is None:
        return None
    sol = gold_reference(traj)
    if sol.step("search") != "search":
        return None
    turn = _turn(traj)
    if turn.has("answer"):
        return 0.0
    s = similarity.query_cosine(turn.query, sol.query)
    return 0.0 if s < similarity.PAPER_SIMILARITY_THRESHOLD else s


def _prefetch_queries(trajs: list[Trajectory]) -> None:
    texts = []
    for t in trajs:
        if t.start_step is not None and gold_reference(t).step("search") == "search":
            texts += [_turn(t).query, gold_reference(t).query]
    if texts:
        similarity.prefetch(texts)


paper_search_similarity.prepare = _prefetch_queries  # the Rubric embeds a batch's queries in one call


def paper_code_flat(traj: Trajectory) -> float | None:
    """Code steps (`<code>` and no `<answer>` in the solution), else None: 0.9 unless the turn contains
    `<answer>` or `<problem>` — nothing is run or compared, so a no-op, a crash, or no code at all score 0.9."""
    if traj.start_step is None:
        return None
    if gold_reference(traj).step("coding") != "code":
        return None
    turn = _turn(traj)
    return 0.0 if (turn.has("answer") or turn.has("problem")) else PAPER_CODE_REWARD


def paper_diagnosis(traj: Trajectory) -> float | None:
    """Diagnosis steps (`<problem>`, no `<answer>`/`<code>` in the solution), else None: 0 if the turn contains
    `<answer>` or `<code>`; else `paper_diagnosis_credit` of the sorted quoted labels (`reference_problems`)."""
    if traj.start_step is None:
        return None
    sol = gold_reference(traj)
    if sol.step("coding") != "problem":
        return None
    turn = _turn(traj)
    if turn.has("answer") or turn.has("code"):
        return 0.0
    return paper_diagnosis_credit(list(sol.problems), list(turn.problems))


def paper_accuracy(traj: Trajectory) -> float | None:
    """The reference's single `accuracy_reward` number: whichever step reward of the task's family applies, 0.0
    when none does; None for episodes."""
    if traj.start_step is None:
        return None
    parts = [paper_answer_f1]
    parts += [paper_code_flat, paper_diagnosis] if traj.task.family == "coding" else [paper_search_similarity]
    for fn in parts:
        v = fn(traj)
        if v is not None:
            return v
    return 0.0


paper_accuracy.prepare = _prefetch_queries
