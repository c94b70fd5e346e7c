"""Every notebook runs under papermill in the tiny-cpu profile and writes the metrics it promises.

Each notebook in notebooks/ must appear in EXPECTATIONS with small overrides (all declared parameters) and a
check of its metrics.json, so a new notebook cannot slip in untested.
"""

from __future__ import annotations

import json

import pytest

from arftlib.notebooks import (
    NotebookContractError,
    build_notebooks,
    list_notebooks,
    read_parameters,
    run_notebook,
)


def _check_00(m):
    assert m["profile"] == "tiny-cpu"
    assert m["action_kind"] in {"search", "code", "problem", "answer", "invalid"}
    assert 0.0 <= m["f1"] <= 1.0 and m["completion_tokens"] > 0
    assert m["image_tokens"] > 0  # the image really went through the processor


def _check_01(m):
    assert m["n_coding"] == 12 and m["n_search"] == 12
    assert set(m["coding_by_split"]) == {"train", "test"}
    for kind in ("coding", "search"):
        leak = m["leakage"][kind]
        assert all(v == 0 for k, v in leak.items() if k.startswith("shared") and isinstance(v, int)), leak
        assert m["stepwise_rows"][kind] > m["episode_rows"][kind] == 12


def _check_02(m):
    assert m["restorations_ok"] == 6, m["restorations"]
    assert m["demo_examples"] == 6 and m["demo_fixed_ok"] == 6
    assert m["hostile_stopped"] == m["hostile_programs"]
    assert m["search_queries"] > 0


def _check_03(m):
    assert m["hacks_below_correct_agentic"] == m["hacks_total"] > 0
    assert 0.0 <= m["zero_variance_group_share_tiny_model"] <= 1.0


def _check_04(m):
    # a very short run (two agentic steps): the learning itself is measured by `make reproduce` (README "Learning
    # on CPU"); tests/test_micro_learning.py checks the comparison pipeline; here the notebook's wiring and its
    # metrics contract
    for key in ("warm_start_dir", "adapter_dir", "heldout_f1_before", "heldout_f1_after", "heldout_reward_before",
                "heldout_reward_after", "adapter_changed"):
        assert key in m, key
    assert 0.0 <= m["heldout_f1_before"] <= 100.0 and 0.0 <= m["heldout_f1_after"] <= 100.0
    assert m["adapter_changed"] is True and m["adapter_max_abs_diff"] > 0
    assert m["agentic_steps"] == 2 and m["stepwise"]["steps"] == 1
    assert m["kind"] == "coding" and m["benchmark"] == "micro-coding" and m["n_heldout"] == 6
    assert [s["stage"] for s in m["warm_start_stages"]] == ["seeing", "gold steps"]  # SEEING_STEPS reached the recipe
    # the seeing check: clean-image questions of every non-zoom type asked, with the chance level beside them
    assert set(m["warm_start_seeing_by_type"]) <= {"color", "shape", "position"}
    assert all(r["chance"] and r["n"] > 0 for r in m["warm_start_seeing_by_type"].values())
    # the code turn after the gold diagnosis, for the warm start and the adapter, on the same held-out tasks
    for r in (m["code_step_before"], m["code_step_after"]):
        assert 0 < r["n"] <= 6 and r["restored"] <= r["ran"] <= r["coded"] <= r["n"] and r["correct"] <= r["answered"]
    assert m["code_step_before"]["n"] == m["code_step_after"]["n"]
    # per question type, the answers' spread (is the score the prior's?), over every held-out episode
    for rows in (m["by_question_before"], m["by_question_after"]):
        assert sum(r["n"] for r in rows) == 6 and {r["question"] for r in rows} <= {"color", "shape", "position", "zoom"}
        assert all(r["correct"] <= r["answered"] <= r["n"] and r["distinct answers"] <= r["answered"] for r in rows)


def _check_05(m):
    assert m["oracle_f1_micro_coding"] >= 99.0 and m["oracle_f1_micro_search"] >= 99.0
    assert m["published_files_rescored"] == 14
    assert m["run_04"] is None and m["profile_model_f1"] is not None  # run alone: no 04 run of this profile
    assert 0.0 <= m["profile_model_f1"] <= 100.0


def _check_06(m):
    assert m["profile"] == "tiny-cpu" and m["episodes_rendered"] == m["episodes"] == 4  # oracle: 2 runs × 2 tasks
    assert m["paired_before_after"] is False
    assert m["images_rendered"] > 0 and m["missing_images"] == 0 and m["widget_images"] > 0


# notebook stem -> (parameter overrides for a short CI run, metrics check)
EXPECTATIONS = {
    "00_quickstart": ({}, _check_00),
    "01_build_datasets": ({"N_CODING": 12, "N_SEARCH": 12, "SHOW_EXAMPLES": 4}, _check_01),
    "02_tools": ({"N_SEARCH_QUERIES": 3}, _check_02),
    "03_reward_design": ({"N_GROUP_TASKS": 2, "GROUP_SIZE": 2}, _check_03),
    "04_grpo_training": ({"N_TASKS": 30, "HELDOUT": 6, "WARM_STEPS": 4, "SEEING_STEPS": 2, "AGENTIC_MINUTES": 0, "AGENTIC_STEPS": 2,
                          "STEPWISE_MINUTES": 0, "STEPWISE_STEPS": 1}, _check_04),
    "05_evaluation": ({"N_TASKS": 20, "N_ORACLE": 4, "N_BOOT": 200, "RUNS_DIR": "/nonexistent-runs"}, _check_05),
    "06_trajectories": ({"N_TASKS": 2, "RUNS_DIR": "/nonexistent-runs"}, _check_06),
}

NOTEBOOKS = list_notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


def test_notebooks_built_from_sources():
    assert build_notebooks(check=True) == [], "run `python -m arftlib build-notebooks`"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_contract(nb):
    import papermill

    params = read_parameters(nb)
    assert {"PROFILE", "OUT_DIR"} <= set(params)
    # papermill infers parameters with its own parser; it must see every declared one (it silently skips
    # lines it cannot parse, then only warns about "unknown" overrides).
    seen = set(papermill.inspect_notebook(str(nb)))
    assert seen == set(params), f"{nb.name}: papermill sees {sorted(seen)}, declared {sorted(params)}"
    overrides, _ = EXPECTATIONS.get(nb.stem, ({}, None))
    undeclared = set(overrides) - set(params)
    assert not undeclared, f"{nb.name}: test overrides {undeclared} are not declared parameters"
    nbjson = json.loads(nb.read_text())
    outputs = sum(len(c.get("outputs", [])) for c in nbjson["cells"] if c["cell_type"] == "code")
    assert outputs == 0, f"{nb.name}: commit notebooks with outputs cleared"


def test_parameters_contract_rejects_bad_cells(tmp_path):
    import nbformat

    def nb_with(src, tag=True):
        cell = nbformat.v4.new_code_cell(src)
        if tag:
            cell.metadata["tags"] = ["parameters"]
        path = tmp_path / "x.ipynb"
        path.write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[cell])))
        return path

    with pytest.raises(NotebookContractError, match="plain literal"):
        read_parameters(nb_with("PROFILE = 'a'  # p\nOUT_DIR = make()  # o"))
    with pytest.raises(NotebookContractError, match="only `NAME = literal`"):
        read_parameters(nb_with("import os\nPROFILE = 'a'  # p"))
    with pytest.raises(NotebookContractError, match="exactly 1"):
        read_parameters(nb_with("PROFILE = 'a'  # p", tag=False))
    with pytest.raises(NotebookContractError, match="lacks"):
        read_parameters(nb_with("PROFILE = 'a'  # p"))
    with pytest.raises(NotebookContractError, match="comment"):
        read_parameters(nb_with("PROFILE = 'a'\nOUT_DIR = 'b'  # o"))
    ok = nb_with("PROFILE = 'a'  # p\nOUT_DIR = 'b'  # o\nN = 3  # n")
    with pytest.raises(NotebookContractError, match="not declared"):
        run_notebook(ok, tmp_path / "out", parameters={"NOPE": 1})


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_tiny_cpu(nb, tmp_path):
    assert nb.stem in EXPECTATIONS, f"{nb.name} has no expectations in tests/test_notebooks.py"
    overrides, check = EXPECTATIONS[nb.stem]
    out = tmp_path / nb.stem
    metrics = run_notebook(nb, out, profile="tiny-cpu", parameters=overrides)
    assert (out / nb.name).exists(), "executed notebook not saved"
    written = {p for p in tmp_path.rglob("*")}
    assert all(str(p).startswith(str(out)) for p in written), "notebook wrote outside OUT_DIR"
    check(metrics)
