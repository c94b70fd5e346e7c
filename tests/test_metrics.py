"""F1/EM scoring: the reference variant reproduces the published Visual-ARFT figures; corrected fixes the
documented defects; records fail loud; the CLI prints one JSON object."""

from __future__ import annotations

import doctest
import gzip
import json
import subprocess
import sys

import pytest

import arftlib.metrics as metrics
from arftlib.metrics import f1_em, normalize_answer, score_file, score_records
from arftlib.paths import REFERENCE_PREDICTIONS, REPO_ROOT

# (folder, file, benchmark, (F1, EM) all, (F1, EM) simple or None, (F1, EM) hard or None)
# Reference figures from notes/facts.md (the reference notebooks' output).
REFERENCE_FIGURES = [
    ("MAT-Coding", "3b_mat_coding_grpo_step1400.json", "mat-coding", (35.90, 22.50), (49.78, 40.00), (28.42, 13.08)),
    ("MAT-Coding", "3b_mat_coding_grpo_step1400_v2.json", "mat-coding", (36.52, 23.00), None, None),
    ("MAT-Coding", "7b_mat_coding_grpo_step1400.json", "mat-coding", (50.67, 34.50), (60.10, 51.43), (45.60, 25.38)),
    ("MAT-Coding", "7b_mat_coding_grpo_step1400_v2.json", "mat-coding", (50.87, 35.00), None, None),
    ("MAT-Search", "3b_step200_mat_search_web_n4.json", "mat-search", (53.70, 46.00), (59.64, 54.67), (47.75, 37.33)),
    ("MAT-Search", "7b_step200_mat_search_web_n4.json", "mat-search", (63.77, 55.33), (71.78, 66.67), (55.77, 44.00)),
    ("2wiki", "3b_step200_2wiki_web_n4.json", "multihop", (49.77, 39.13), None, None),
    ("2wiki", "7b_step200_2wiki_web_n4.json", "multihop", (63.09, 51.99), None, None),
    ("hotpotqa", "3b_step200_hotpotqa_web_n4.json", "multihop", (41.33, 30.10), None, None),
    ("hotpotqa", "7b_step200_hotpotqa_web_n4.json", "multihop", (48.01, 36.48), None, None),
    ("musique", "3b_step200_musique_web_n4.json", "multihop", (19.10, 11.58), None, None),
    ("musique", "7b_step200_musique_web_n4.json", "multihop", (22.71, 14.07), None, None),
    ("bamboogle", "3b_step200_bamboogle_web_n4.json", "multihop", (49.01, 38.40), None, None),
    ("bamboogle", "7b_step200_bamboogle_web_n4.json", "multihop", (60.15, 48.80), None, None),
]


def _results_file(folder: str, name: str):
    # shipped inside the package; a missing file is a failure, not a skip
    path = REFERENCE_PREDICTIONS / folder / (name + ".gz")
    assert path.is_file(), f"reference results file missing: {path}"
    return path


@pytest.mark.parametrize(
    "folder,name,benchmark,all_,simple,hard",
    REFERENCE_FIGURES,
    ids=[f"{f}/{n}" for f, n, *_ in REFERENCE_FIGURES],
)
def test_reference_variant_reproduces_published_figures(folder, name, benchmark, all_, simple, hard):
    result = score_file(_results_file(folder, name), benchmark=benchmark)
    assert result["variant"] == "reference" and result["benchmark"] == benchmark
    assert (result["f1"], result["em"]) == pytest.approx(all_, abs=1e-9)
    if benchmark == "multihop":
        assert "simple" not in result and "hard" not in result
    else:
        assert set(result["simple"]) == {"f1", "em"} and set(result["hard"]) == {"f1", "em"}
    if simple is not None:
        assert (result["simple"]["f1"], result["simple"]["em"]) == pytest.approx(simple, abs=1e-9)
        assert (result["hard"]["f1"], result["hard"]["em"]) == pytest.approx(hard, abs=1e-9)


def test_corrected_differs_on_7b_mat_coding_and_escaped_newline_fix_matches_sanity_number():
    path = _results_file("MAT-Coding", "7b_mat_coding_grpo_step1400.json")
    ref = score_file(path, "mat-coding")
    cor = score_file(path, "mat-coding", variant="corrected")
    assert cor["variant"] == "corrected"
    assert (cor["f1"], cor["em"]) != (ref["f1"], ref["em"])
    assert cor["f1"] > ref["f1"] and cor["em"] > ref["em"]
    # Defect (b) in isolation: reference scoring with the golds' escaped newlines decoded gives the
    # figure in facts.md (55.68/41.00).
    records = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))
    decoded = [dict(r, gt=[g.replace("\\n", "\n") for g in r["gt"]]) for r in records]
    isolated = score_records(decoded, "mat-coding")
    assert (isolated["f1"], isolated["em"]) == (55.68, 41.00)


def test_reference_normalisation_steps():
    assert normalize_answer("The Eiffel-Tower, a landmark!", "search") == "eiffeltower landmark"
    assert normalize_answer("An  apple\tand\nthe pear", "search") == "apple and pear"
    # CJK punctuation is only removed in coding style
    assert normalize_answer("“Yes”", "search") == "“yes”"
    assert normalize_answer("“Yes”", "coding") == "yes"
    # coding style, CJK text: only spaces removed, articles and newlines kept
    assert normalize_answer("the 咖啡 a\nB", "coding") == "the咖啡a\nb"


def test_single_letter_answers():
    # reference: "A" normalises to nothing, so anything that also normalises to nothing matches it ...
    assert normalize_answer("A", "coding") == ""
    assert f1_em("The", ["A"], "coding") == (1.0, 1.0)
    assert f1_em(".", ["A"], "coding") == (1.0, 1.0)
    # ... and a verbose correct answer gets nothing
    assert f1_em("Answer: A", ["A"], "coding") == (0.0, 0.0)
    # corrected: a standalone or final article is a label and is kept
    assert normalize_answer("A", "coding", "corrected") == "a"
    assert f1_em("A", ["A"], "coding", "corrected") == (1.0, 1.0)
    assert f1_em("(A)", ["A"], "coding", "corrected") == (1.0, 1.0)
    assert f1_em("The", ["A"], "coding", "corrected") == (0.0, 0.0)
    assert f1_em("B", ["A"], "coding", "corrected") == (0.0, 0.0)
    f1, em = f1_em("Answer: A", ["A"], "coding", "corrected")
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    assert f1_em("Plan B", "Plan A", "search", "corrected")[0] == pytest.approx(0.5)
    # real articles (followed by a word) are still dropped
    assert normalize_answer("A cat and the dog", "search", "corrected") == "cat and dog"


def test_escaped_newline():
    gold = "FOOD\\nDIRECTORY"  # backslash + n, as in 15 MAT-Coding golds
    assert normalize_answer(gold, "coding") == "foodndirectory"
    assert f1_em("FOOD DIRECTORY", gold, "coding") == (0.0, 0.0)
    assert normalize_answer(gold, "coding", "corrected") == "food directory"
    assert f1_em("FOOD DIRECTORY", gold, "coding", "corrected") == (1.0, 1.0)
    assert f1_em("food\\ndirectory", "Food Directory", "search", "corrected") == (1.0, 1.0)
    # a real newline already works in both variants
    assert f1_em("FOOD DIRECTORY", "FOOD\nDIRECTORY", "coding") == (1.0, 1.0)
    # CJK branch: corrected removes all whitespace, as the reference's own comment intends
    assert normalize_answer("哆爱\\niD\n网咖", "coding", "corrected") == "哆爱id网咖"


def test_cjk_per_character_f1():
    # "沁和园" vs "沁和园公园": set of shared characters {沁, 和, 园} = 3; P = 3/3, R = 3/5 (5 chars)
    f1, em = f1_em("沁和园", "沁和园公园", "coding")
    assert em == 0.0 and f1 == pytest.approx(2 * 1 * 0.6 / 1.6)
    # spaces do not count in CJK mode; an exact match after removing them is EM 1
    assert f1_em("沁 和 园", "沁和园", "coding") == (1.0, 1.0)
    # set, not multiset: a repeated character counts once in the overlap but fully in the lengths
    f1, _ = f1_em("园园", "园", "coding")
    assert f1 == pytest.approx(2 * 0.5 * 1 / 1.5)
    # search style never goes per character
    assert f1_em("沁和园", "沁和园公园", "search") == (0.0, 0.0)


def test_set_based_f1_and_max_over_golds():
    f1, em = f1_em("paris paris", "paris", "search")  # overlap 1, P = 1/2, R = 1
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    assert f1_em("Barack Obama", ["Obama", "Barack Obama"], "search") == (1.0, 1.0)
    f1, em = f1_em("Barack Obama", ["Obama", "Barack Hussein Obama"], "search")
    assert em == 0.0 and f1 == pytest.approx(0.8)


def test_none_prediction_counts_as_zero():
    assert f1_em(None, ["x"], "search") == (0.0, 0.0)
    records = [
        {"pred_answer": "Paris", "gt": ["Paris"]},
        {"pred_answer": None, "gt": ["Rome"]},
        {"gt": "Berlin"},  # missing pred_answer
        {"pred_answer": "Madrid", "gt": "madrid"},
    ]
    result = score_records(records, "multihop")
    assert result["n"] == 4 and result["n_none"] == 2
    assert (result["f1"], result["em"]) == (50.0, 50.0)


def test_mat_splits_reference_hardcoded_vs_corrected_actual_counts():
    records = [{"pred_answer": "yes", "gt": "yes"}] * 10 + [{"pred_answer": "no", "gt": "yes"}] * 10
    with pytest.warns(UserWarning, match="hard-coded"):
        ref = score_records(records, "mat-coding")
    assert ref["f1"] == 5.0 and ref["simple"]["f1"] == pytest.approx(100 * 10 / 70, abs=0.005)
    assert ref["hard"] == {"f1": 0.0, "em": 0.0}
    cor = score_records(records, "mat-coding", "corrected")
    assert cor["f1"] == 50.0 and cor["simple"]["f1"] == 50.0 and cor["hard"]["f1"] == 0.0
    # corrected uses a per-record split field when every record has one
    tagged = [dict(r, split="simple" if r["pred_answer"] == "yes" else "hard") for r in records]
    cor = score_records(tagged, "mat-search", "corrected")
    assert cor["simple"] == {"f1": 100.0, "em": 100.0} and cor["hard"] == {"f1": 0.0, "em": 0.0}


@pytest.mark.parametrize(
    "record,field",
    [({"pred_answer": "x"}, "gt"), ({"pred_answer": "x", "gt": 3}, "gt"), ({"pred_answer": "x", "gt": []}, "gt"),
     ({"pred_answer": "x", "gt": ["a", None]}, "gt"), ({"pred_answer": 7, "gt": "a"}, "pred_answer")],
)
def test_bad_record_names_file_record_and_field(tmp_path, record, field):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"pred_answer": "a", "gt": "a"}, record]), encoding="utf-8")
    with pytest.raises(ValueError) as info:
        score_file(path, "multihop")
    message = str(info.value)
    assert str(path) in message and "record 1" in message and repr(field) in message


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="benchmark"):
        score_records([], "mmlu")
    with pytest.raises(ValueError, match="variant"):
        f1_em("a", "a", "search", variant="fixed")
    with pytest.raises(ValueError, match="style"):
        normalize_answer("a", "chat")


def test_cli_prints_one_json_object(tmp_path):
    path = tmp_path / "coding.json"
    records = [{"id": str(i), "pred_answer": "SIZE 3", "gt": ["SIZE\\n3"]} for i in range(200)]
    path.write_text(json.dumps(records), encoding="utf-8")
    for variant, expected in (("reference", 0.0), ("corrected", 100.0)):
        proc = subprocess.run(
            [sys.executable, "-m", "arftlib", "score", "--benchmark", "mat-coding", "--variant", variant, str(path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, proc.stdout
        out = json.loads(lines[0])
        assert {"n", "f1", "em", "simple", "hard", "variant", "benchmark", "file"} <= set(out)
        assert set(out["simple"]) == {"f1", "em"} and set(out["hard"]) == {"f1", "em"}
        assert out["n"] == 200 and out["variant"] == variant and out["f1"] == expected


def test_doctests():
    result = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
