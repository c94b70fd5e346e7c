"""arftlib.evaluate: results in the reference format, tables with bootstrap intervals, the oracle check."""

from __future__ import annotations

import csv
import json

import pytest

from arftlib.evaluate import BENCHMARKS, bootstrap_ci, group_table, results_records, run_eval
from arftlib.metrics import score_records
from fixtures import fixture_tasks


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("fx")
    return fixture_tasks(6, root / "c", "coding"), fixture_tasks(4, root / "s", "search")


def test_bootstrap_ci():
    assert bootstrap_ci([50.0] * 10) == (50.0, 50.0)
    lo, hi = bootstrap_ci([0.0, 100.0] * 50, n_boot=500, seed=1)
    assert 35 < lo < 50 < hi < 65
    assert bootstrap_ci([0.0, 100.0] * 50, n_boot=500, seed=1) == (lo, hi)  # seeded


def test_oracle_on_fixture_writes_everything(fixture, tmp_path):
    coding, _ = fixture
    out = tmp_path / "run"
    s = run_eval("synth-coding", "fixture", "oracle", "tags", out, tasks=coding, direct_baseline=True,
                 n_boot=200, progress=False)
    for variant in ("reference", "corrected"):
        assert s["agent"]["scores"][variant]["f1"] == 100.0 and s["agent"]["scores"][variant]["em"] == 100.0
        assert s["direct"]["scores"][variant]["n"] == len(coding)
    assert s["agent"]["rollout"]["tool_errors"] == 0 and s["agent"]["rollout"]["code_runs"] == len(coding)
    ev = s["agent"]["evidence"]
    assert ev["code_all_ok_fraction"] == 1.0 and ev["final_image_ssim_mean"] > 0.9
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in results] == [t.id for t in coding]
    assert set(results[0]) >= {"id", "query", "gt", "pred_answer"}
    assert results[0]["gt"] == coding[0].answers and results[0]["pred_answer"] == coding[0].answers[0]
    assert score_records(results, "mat-coding", "corrected")["f1"] == 100.0  # re-scorable as the reference's
    rows = list(csv.DictReader(open(out / "table.csv", encoding="utf-8")))
    groups = {(r["run"], r["variant"], r["group_by"], r["group"]) for r in rows}
    assert ("agent", "reference", "all", "all") in groups and ("direct", "corrected", "all", "all") in groups
    assert {("agent", "reference", "degradation", lab) for lab in ("rotation180", "dark", "crop")} <= groups
    assert ("agent", "reference", "split", "hard") in groups
    assert "| agent | reference | all | all | 6 | 100.00 [100.00, 100.00]" in (out / "table.md").read_text()
    assert (out / "trajectories" / "trajectories.jsonl").is_file()
    assert len(list((out / "trajectories" / "images").iterdir())) == len(coding)
    assert (out / "direct" / "results.json").is_file()
    assert json.loads((out / "scores.json").read_text())["n"] == len(coding)
    assert s["direct"]["form"] == "reference"  # the oracle has no trained form: the reference's direct prompt
    # the agent's own form with its tools off: the oracle's gold answers still come, but after no evidence
    off = run_eval("synth-coding", "fixture", "oracle", "tags", tmp_path / "off", tasks=coding, direct_baseline=True,
                   direct_form="tools_off", n_boot=50, progress=False)
    assert off["direct"]["form"] == "tools_off" and off["direct"]["rollout"]["code_runs"] == 0
    assert off["direct"]["rollout"]["tool_errors"] == 0


def test_group_table_by_hops_and_variants(fixture):
    _, search = fixture
    recs = [{"id": t.id, "query": t.question, "gt": t.answers, "pred_answer": p}
            for t, p in zip(search, [search[0].answers[0], "the " + search[1].answers[0], "wrong", None])]
    rows = group_table(search, recs, "synth-search", n_boot=100)
    allrow = {r["variant"]: r for r in rows if r["group_by"] == "all"}
    assert allrow["reference"]["n"] == 4 and allrow["reference"]["em"] == 50.0
    assert any(r["group_by"] == "hops" and r["group"] == "1" for r in rows)
    assert allrow["reference"]["em_lo"] <= 50.0 <= allrow["reference"]["em_hi"]


def test_results_records_need_every_task(fixture):
    coding, _ = fixture
    with pytest.raises(RuntimeError, match="no trajectory"):
        results_records(coding, [])
    with pytest.raises(ValueError):
        run_eval("nope", "x", "oracle", out="/tmp/never", tasks=coding)
    with pytest.raises(ValueError, match="protocol"):
        run_eval("synth-coding", "x", "oracle", "direct", out="/tmp/never", tasks=coding)
    assert "multihop" in BENCHMARKS and "synth-search" in BENCHMARKS


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    build = pytest.importorskip("arftlib.data.build")
    root = tmp_path_factory.mktemp("builds")
    # verify=False: the builder's own tests check restoration; here the environment replays the gold code
    coding = build.build_dataset("coding", n=8, seed=0, out=root / "coding", verify=False)
    search = build.build_dataset("search", n=8, seed=0, out=root / "search")
    return coding, search


@pytest.mark.parametrize("kind,protocol", [("coding", "tags"), ("search", "tags"), ("coding", "chat"), ("search", "chat"),
                                           ("coding", "chat-tool-calls"), ("search", "chat-tool-calls")])
def test_oracle_on_procedural_builds(builds, tmp_path, kind, protocol):
    data = builds[0] if kind == "coding" else builds[1]
    tool_calls = protocol == "chat-tool-calls"  # TRL-style tool calls, as agentic training speaks them
    s = run_eval(f"synth-{kind}", data, "oracle", "chat" if tool_calls else protocol, tmp_path / "out", n_boot=100,
                 progress=False, tool_calls=tool_calls, direct_baseline=tool_calls)
    assert s["n"] == 8 and s["tool_calls"] is tool_calls
    for variant in ("reference", "corrected"):
        assert s["agent"]["scores"][variant]["f1"] >= 99.0, s["agent"]
    assert s["agent"]["rollout"]["tool_errors"] == 0 and s["agent"]["rollout"]["invalid_turns"] == 0
    ev = s["agent"]["evidence"]
    if kind == "search":
        assert ev["needed_passages_found_fraction"] == 1.0
    else:
        assert ev["code_all_ok_fraction"] == 1.0
    if tool_calls:
        with pytest.raises(ValueError, match="needs protocol='chat'"):
            run_eval(f"synth-{kind}", data, "oracle", "tags", tmp_path / "bad", tool_calls=True)


def test_tiny_model_eval_and_bench(builds, fixture, tmp_path):
    pytest.importorskip("torch")
    from arftlib.policies import HFPolicy
    from experiments.bench_rollout import bench_rollout

    coding, _ = fixture
    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=8)
    s = run_eval("synth-coding", "fixture", "tiny", "chat", tmp_path / "tiny", tasks=coding[:2], direct_baseline=True,
                 max_turns=2, eval_max_new_tokens=8, n_boot=50, progress=False, policy=policy)
    assert s["agent"]["rollout"]["episodes"] == 2 and s["agent"]["rollout"]["completion_tokens"] > 0
    assert 0.0 <= s["agent"]["scores"]["reference"]["f1"] <= 100.0
    assert s["direct"]["rollout"]["turns"] == 2

    r = bench_rollout(n_tasks=4, max_turns=2, max_new_tokens=4, data=builds[0], work_dir=tmp_path / "bench",
                      policy=policy)
    assert r["n_tasks"] == 4 and r["max_turns"] == 2 and r["batched"]["generate_calls"] == 2
    assert r["sequential"]["generate_calls"] == r["sequential"]["turns"]
    assert r["ratio"] == pytest.approx(r["batched_eps_per_s"] / r["sequential_eps_per_s"], rel=0.01)


def test_eval_follows_the_recorded_question_after_image(builds, tmp_path, caplog):
    """A model trained with `question_after_image` (recorded in its `TRAINED_FORM_FILE`) is evaluated with it even
    when the config says otherwise — the answer turn then sees the question under the restored image as in
    training — with a warning; a form that recorded False keeps the question out."""
    import logging

    from arftlib.config import get_config
    from arftlib.models import TRAINED_FORM_FILE
    from arftlib.policies import ScriptedPolicy
    from arftlib.trajectories import read_trajectories

    questions_under_images = {}
    for qai in (True, False):
        model = tmp_path / f"model-{qai}"
        model.mkdir()
        (model / TRAINED_FORM_FILE).write_text(json.dumps({"mode": "sft", "protocol": "chat", "tool_format": "tags",
                                                           "prompt_style": "minimal", "question_after_image": qai}))
        cfg = get_config("tiny-cpu", question_after_image=not qai)
        with caplog.at_level(logging.WARNING, logger="arftlib.evaluate"):
            s = run_eval("synth-coding", builds[0], str(model), None, tmp_path / f"out-{qai}", cfg=cfg, n_boot=50,
                         progress=False, policy=ScriptedPolicy(), limit=3)
        assert s["protocol"] == "chat" and s["agent"]["scores"]["reference"]["f1"] >= 99.0
        assert any(f"question_after_image={qai}" in r.getMessage() for r in caplog.records)
        trajs = read_trajectories(tmp_path / f"out-{qai}" / "trajectories", resolve_images=False)
        under_images = [t.task.question in st.observation.text for t in trajs for st in t.steps
                        if st.observation is not None and st.observation.kind == "image"]
        assert under_images, "the gold chains run code that returns an image"
        questions_under_images[qai] = sum(under_images)
    assert questions_under_images[True] > 0 and questions_under_images[False] == 0
