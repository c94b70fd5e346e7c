"""Rewards: named per-sample components that read a `Trajectory`, combined by a `Rubric`.

* `rubric.py` — `Rubric` (batching, weights, per-component logging, `score_episode`) and the named rubrics
  (`paper_stepwise_rubric`, `executed_stepwise_rubric`, `agentic_rubric`);
* `paper.py` — the paper's step-wise rewards, faithfully (format, answer F1, query similarity, flat code, diagnosis);
* `agentic.py` — ours (format, answer F1/EM, evidence gating, query similarity, diagnosis, penalties);
* `image.py` — restoration score and `executed_code`; `similarity.py` — all-MiniLM-L6-v2;
* `trl.py` — `TRLRewards`: the rubric as TRL reward functions (the one adapter to TRL's signature).

No component reads model text: the environment (or `env.core.step_sample`) records the parsed `Action` of each
step and a typed `Observation`; the paper's components read turns through `parse.reference_turn`.
"""

from arftlib.rewards.agentic import (answer_after_evidence, answer_em_corrected, answer_em_reference,
                                     answer_f1_corrected, answer_f1_reference, diagnosis, diagnosis_credit, format,
                                     grounded_answer_f1, query_similarity, repeated_queries, tool_spam, wasted_turns)
from arftlib.rewards.image import RAN_CREDIT, SSIM_SIZE, executed_code, restoration_score
from arftlib.rewards.paper import (PAPER_CODE_REWARD, paper_accuracy, paper_answer_f1, paper_code_flat,
                                   paper_diagnosis, paper_f1, paper_format, paper_search_similarity)
from arftlib.rewards.rubric import (AGENTIC_WEIGHTS, Component, Rubric, agentic_rubric, executed_stepwise_rubric,
                                    paper_stepwise_rubric, score_episode)
from arftlib.rewards.similarity import PAPER_SIMILARITY_THRESHOLD, load_minilm, query_cosine
from arftlib.rewards.trl import TRLRewards

__all__ = [
    "AGENTIC_WEIGHTS", "Component", "PAPER_CODE_REWARD", "PAPER_SIMILARITY_THRESHOLD", "RAN_CREDIT", "Rubric",
    "SSIM_SIZE", "TRLRewards", "agentic_rubric", "answer_after_evidence", "answer_em_corrected",
    "answer_em_reference", "answer_f1_corrected", "answer_f1_reference", "diagnosis", "diagnosis_credit",
    "executed_code", "executed_stepwise_rubric", "format", "grounded_answer_f1", "load_minilm", "paper_accuracy",
    "paper_answer_f1", "paper_code_flat", "paper_diagnosis", "paper_f1", "paper_format", "paper_search_similarity",
    "paper_stepwise_rubric", "query_cosine", "query_similarity", "repeated_queries", "restoration_score",
    "score_episode", "tool_spam", "wasted_turns",
]
