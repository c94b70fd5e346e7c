"""experiments/micro_learning.py — the micro world's learning pipeline, on a tiny budget.

What this checks: warm start (cached by recipe) → held-out evaluation with live tools and with tools switched off →
each training method (agentic GRPO, step-wise GRPO, more SFT) from the SAME warm start → the same held-out
episodes again; the comparison table. It does not claim learning: a few steps cannot show it. The learning itself
is measured by `make reproduce` (notebook 04's metrics.json: held-out F1 before/after; README "Learning on CPU"),
and CI's direction check is `tests/test_train.py::test_learning_short_direction` (step-wise, a margin asserted).
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(autouse=True)
def fresh_warm_start_cache(tmp_path_factory, monkeypatch):
    """Each test its own empty warm-start cache (the tests assert what is trained and what is reused: a warm start
    cached by an earlier run of the suite on the same machine made the seeing-stage test fail), sharing the
    machine's built tiny models and search indexes."""
    from arftlib.paths import cache_dir

    root = tmp_path_factory.mktemp("arft-cache")
    for shared in ("tiny-models", "search"):
        (root / shared).symlink_to(cache_dir(shared), target_is_directory=True)
    monkeypatch.setenv("ARFT_CACHE_DIR", str(root))


@pytest.fixture(scope="module")
def tiny_budget():
    from arftlib.train.warmstart import WarmStartRecipe

    return dict(n_tasks=30, heldout_tasks=4, steps=1, n_boot=50, recipe=WarmStartRecipe(steps=3, seeing_steps=1),
                config_overrides={"per_device_train_batch_size": 8, "num_generations": 4, "torch_threads": 1})


def test_compare_runs_every_method_from_one_warm_start(tmp_path, tiny_budget):
    from experiments.micro_learning import compare_methods

    res = compare_methods(tmp_path / "cmp", kind="coding", minutes=None, **tiny_budget)
    assert [r["method"] for r in res["rows"]] == ["agentic", "stepwise", "sft"]
    assert res["best"] in ("agentic", "stepwise", "sft")
    metrics = [json.loads((tmp_path / "cmp" / m / "metrics.json").read_text()) for m in ("agentic", "stepwise", "sft")]
    assert len({m["warm_start_dir"] for m in metrics}) == 1  # one warm start (cached), three methods
    assert len({m["heldout_f1_before"] for m in metrics}) == 1  # the same "before" for all: same episodes, greedy
    for m in metrics:
        assert m["n_heldout_tasks"] == 4
        # measured, not assumed: a step whose groups all had zero variance is filtered and changes nothing
        assert m["adapter_changed"] == (m["adapter_max_abs_diff"] > 0)
        assert m["before"]["n"] == m["after"]["n"] == 4
        # the no-tool baseline of a trained policy is its own form with tools off, not the reference's prompt
        scores = json.loads((tmp_path / "cmp" / m["method"] / "eval_before" / "scores.json").read_text())
        assert scores["direct"]["form"] == "tools_off" and scores["direct"]["rollout"]["code_runs"] == 0
        assert scores["protocol"] == "chat" and scores["tool_calls"] == "tags"
    assert metrics[2]["adapter_changed"] is True  # a supervised step always moves the weights
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.count("\n") == 5 and "| agentic |" in table and "| sft |" in table


def test_warm_start_rows_and_cache(tmp_path, tiny_budget):
    """The recipe's rows: clean-image direct answers for every non-crop task, whole gold episodes for a share;
    a second call with the same inputs is a cache hit."""
    import dataclasses

    from experiments.micro_learning import micro_setup
    from arftlib.train.warmstart import WarmStartRecipe, clean_answer_task, warm_start

    _, cfg, train_tasks, _, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=30,
                                           config_overrides={"torch_threads": 1})
    recipe = WarmStartRecipe(steps=2, tool_episode_fraction=0.2, seeing_steps=0)
    first = warm_start(cfg, train_tasks, recipe)
    again = warm_start(cfg, train_tasks, recipe)
    assert again["reused"] is True and again["model"] == first["model"]
    n_clean = sum(clean_answer_task(t) is not None for t in train_tasks)
    assert n_clean > 0 and first["rows_by_action"]["answer_clean"] == n_clean
    shown = round(0.2 * len(train_tasks))
    assert first["rows_by_action"]["problem"] == shown  # every gold episode starts with its diagnosis
    # diagnosis_steps: every task's diagnosis row too, the other rows as before; its own cache key
    diag = warm_start(cfg, train_tasks, dataclasses.replace(recipe, diagnosis_steps=True))
    assert diag["reused"] is False and diag["model"] != first["model"]
    with_diagnosis = sum(any(g["action"] == "problem" for g in t.gold_chain) for t in train_tasks)
    assert diag["rows_by_action"]["problem"] == with_diagnosis > shown
    assert {k: v for k, v in diag["rows_by_action"].items() if k != "problem"} == {
        k: v for k, v in first["rows_by_action"].items() if k != "problem"}
    crop = next(t for t in train_tasks if "crop" in t.degradations)
    assert clean_answer_task(crop) is None  # the whole clean scene does not show the boxed detail
    clean = clean_answer_task(next(t for t in train_tasks if "crop" not in t.degradations))
    assert clean.images == [clean.clean_image] and [s["action"] for s in clean.gold_chain] == ["answer"]


def test_tags_rows_teach_the_papers_layout_beside_the_chat_one(tmp_path):
    """`tags_rows=True`: the same shown gold episodes once more in the paper's tags layout (history in one user
    message; the answer step sees the image the gold code produced), counted apart, in the chat rows' columns; a
    cache key of its own; a tags run asking for them is told it already has them."""
    from experiments.micro_learning import micro_setup
    from arftlib.models import model_path_for
    from arftlib.train.datasets import make_dataset
    from arftlib.train.warmstart import WarmStartRecipe, _as_chat_columns, warm_start, warm_start_key

    _, cfg, train_tasks, _, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=30,
                                           config_overrides={"torch_threads": 1})
    recipe = WarmStartRecipe(steps=2, tool_episode_fraction=0.2, tags_rows=True)
    res = warm_start(cfg, train_tasks, recipe)
    counts = res["rows_by_action"]
    shown = round(0.2 * len(train_tasks))
    assert counts["problem"] == counts["problem (tags)"] == shown
    assert counts["answer"] == counts["answer (tags)"] == shown and "answer_clean (tags)" not in counts
    base = model_path_for(cfg)
    assert warm_start_key(cfg, train_tasks, recipe, base) != warm_start_key(
        cfg, train_tasks, WarmStartRecipe(steps=2, tool_episode_fraction=0.2), base)
    chat = make_dataset(train_tasks[:3], cfg, "stepwise", seed=0)
    tags = _as_chat_columns(make_dataset(train_tasks[:3], cfg.replace(protocol="tags"), "stepwise", seed=0), chat)
    assert tags.features == chat.features and set(tags["protocol"]) == {"tags"}
    answer = next(r for r in tags if r["gold_action"] == "answer" and r["step_index"] > 0)
    assert [m["role"] for m in answer["prompt"]] == ["user"] and len(answer["images"]) == 1
    assert "<code>" in answer["prompt"][0]["content"][-1]["text"]  # the gold code is in the one user message
    with pytest.raises(ValueError, match="tags_rows"):
        warm_start(cfg.replace(protocol="tags"), train_tasks, recipe)


def test_seeing_stage_runs_first_and_is_shared(tmp_path):
    """`seeing_steps`: a first stage on the clean-image answers alone, cached on its own, so two recipes that differ
    only in the gold-steps stage train it once; both stages are reported."""
    from experiments.micro_learning import micro_setup
    from arftlib.train.warmstart import WarmStartRecipe, warm_start

    _, cfg, train_tasks, _, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=30,
                                           config_overrides={"torch_threads": 1})
    a = warm_start(cfg, train_tasks, WarmStartRecipe(steps=1, seeing_steps=2, tool_episode_fraction=0.2))
    b = warm_start(cfg, train_tasks, WarmStartRecipe(steps=2, seeing_steps=2, tool_episode_fraction=0.2))
    assert [s["stage"] for s in a["stages"]] == ["seeing", "gold steps"]
    assert a["stages"][0]["steps"] == 2 and a["stages"][1]["steps"] == 1 and a["steps"] == 3
    assert a["stages"][0]["reused"] is False and b["stages"][0]["reused"] is True
    assert a["model"] != b["model"]  # the later stage differs: two warm starts on one seeing stage
    with pytest.raises(ValueError, match="full=True"):
        warm_start(cfg, train_tasks, WarmStartRecipe(steps=1, seeing_steps=2, full=False))


def test_row_mean_loss_warm_start_trains_and_has_its_own_cache_key(tmp_path):
    """`WarmStartRecipe(row_mean_loss=True)` trains through `train.sft`'s row-mean trainer (TRL's SFTTrainer with its
    loss replaced) and is cached apart from the token-mean recipe."""
    import math

    from experiments.micro_learning import micro_setup
    from arftlib.models import model_path_for
    from arftlib.train.warmstart import WarmStartRecipe, warm_start, warm_start_key

    _, cfg, train_tasks, _, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=30,
                                           config_overrides={"torch_threads": 1})
    rm = WarmStartRecipe(steps=2, tool_episode_fraction=0.2, row_mean_loss=True)
    res = warm_start(cfg, train_tasks, rm)
    assert res["steps"] == 2 and math.isfinite(res["loss"]) and res["loss"] > 0
    base = model_path_for(cfg)
    assert warm_start_key(cfg, train_tasks, rm, base) != warm_start_key(
        cfg, train_tasks, WarmStartRecipe(steps=2, tool_episode_fraction=0.2), base)


def test_seeing_stage_rows_are_the_bare_word(tmp_path):
    """`seeing_bare_answers` (default): the seeing stage's target is `<answer> X </answer>` with nothing before the
    word (a think there slows learning to see several times over, `micro_probe --answer-form`); the clean-answer rows
    of the gold-steps stage keep the think-first format."""
    from experiments.micro_learning import micro_setup
    from arftlib.train.warmstart import WarmStartRecipe, bare_answer_task, clean_answer_task
    from arftlib.turns import gold_turns

    _, _, train_tasks, _, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=30)
    clean = next(c for c in map(clean_answer_task, train_tasks) if c is not None)
    assert gold_turns(bare_answer_task(clean)) == [f"<answer> {clean.answers[0]} </answer>"]
    assert gold_turns(clean)[0].startswith("<think>")
    assert WarmStartRecipe().seeing_bare_answers is True


def test_seeing_filler_puts_varied_neutral_words_between_image_and_question(tmp_path):
    """`seeing_filler_words` / `seeing_copies`: every clean question `seeing_copies` times, each with its own
    0..N words of `FILLER_WORDS` before the question (none of them an answer word), so the image-to-answer
    distance varies; the gold turn stays the bare word. At their defaults the rows and the cache key are as before."""
    from experiments.micro_learning import micro_setup
    from arftlib.models import model_path_for
    from arftlib.train.warmstart import (FILLER_WORDS, WarmStartRecipe, bare_answer_task, clean_answer_task,
                                         seeing_rows_tasks, warm_start_key)
    from arftlib.turns import gold_turns

    _, cfg, train_tasks, _, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=30)
    clean = [c for c in map(clean_answer_task, train_tasks) if c is not None]
    plain = seeing_rows_tasks(clean, WarmStartRecipe())
    assert [(t.id, t.question, t.gold_chain) for t in plain] == [
        (t.id, t.question, t.gold_chain) for t in map(bare_answer_task, clean)]
    recipe = WarmStartRecipe(seeing_filler_words=12, seeing_copies=3)
    rows = seeing_rows_tasks(clean, recipe)
    assert len(rows) == 3 * len(clean) and len({t.id for t in rows}) == len(rows)
    answers = {a.lower() for t in train_tasks for a in t.answers}
    lengths = set()
    for row, orig in zip(rows, clean * 3):
        filler = row.question[: len(row.question) - len(orig.question)].split()
        assert row.question.endswith(orig.question) and set(filler) <= set(FILLER_WORDS)
        assert not set(filler) & answers
        assert gold_turns(row) == [f"<answer> {orig.answers[0]} </answer>"]
        lengths.add(len(filler))
    assert len(lengths) > 5 and max(lengths) <= 12  # the distance varies, within the bound
    assert seeing_rows_tasks(clean, recipe) == rows  # seeded: the same rows every time
    base = model_path_for(cfg)
    assert warm_start_key(cfg, train_tasks, WarmStartRecipe(), base) == warm_start_key(
        cfg, train_tasks, WarmStartRecipe(seeing_filler_words=0, seeing_copies=1), base)
    assert warm_start_key(cfg, train_tasks, recipe, base) != warm_start_key(cfg, train_tasks, WarmStartRecipe(), base)


def test_default_recipe_is_notebook_04s_warm_start():
    """`compare` and `micro_learning()` without a recipe start from the warm start notebook 04 reports (its
    SEEING_STEPS / READING_STEPS / WARM_STEPS / TOOL_EPISODES / TAGS_LAYOUT parameters); micro-search has no clean
    images, so a reading stage instead of the seeing stage."""
    import re
    from pathlib import Path

    from experiments.micro_learning import default_recipe

    src = (Path(__file__).resolve().parents[1] / "notebooks" / "src" / "04_grpo_training.py").read_text()
    params = dict(re.findall(r"^(SEEING_STEPS|SEEING_FILLER_WORDS|SEEING_COPIES|READING_STEPS|WARM_STEPS|"
                             r"SEARCH_WARM_STEPS|TOOL_EPISODES) = ([\d.]+)", src, re.M))
    assert len(params) == 7, params
    coding = default_recipe("coding", 0)
    assert (coding.seeing_steps, coding.seeing_filler_words, coding.seeing_copies, coding.steps,
            coding.tool_episode_fraction) == (int(params["SEEING_STEPS"]), int(params["SEEING_FILLER_WORDS"]),
                                              int(params["SEEING_COPIES"]), int(params["WARM_STEPS"]),
                                              float(params["TOOL_EPISODES"]))
    search = default_recipe("search", 3)
    assert (search.seeing_steps, search.reading_steps, search.steps, search.seed) == (
        0, int(params["READING_STEPS"]), int(params["SEARCH_WARM_STEPS"]), 3)
    assert (search.seeing_filler_words, search.seeing_copies) == (0, 1)
    assert coding.reading_steps == 0
    diagnosis = re.search(r"^DIAGNOSIS_STEPS = (True|False)", src, re.M).group(1)
    assert coding.diagnosis_steps is (diagnosis == "True") and search.diagnosis_steps is False
    tags_layout = re.search(r"^TAGS_LAYOUT = (True|False)", src, re.M).group(1)
    assert coding.tags_rows is search.tags_rows is (tags_layout == "True")


def test_reading_stage_rows_are_answer_steps_with_names_redrawn(tmp_path):
    """micro-search's reading stage: answer steps only, each row's names swapped consistently (hits, gold answer and
    answers alike) for other words of the same pools, so memorising a training fact gives the wrong answer."""
    import re

    from arftlib.config import get_config
    from arftlib.data import micro_search as MS
    from arftlib.data.build import build_dataset, load_built
    from arftlib.train.datasets import make_dataset
    from arftlib.train.warmstart import WarmStartRecipe, _reading_rows, warm_start_key

    cfg = get_config("tiny-cpu", benchmark="micro-search")
    tasks = [t for t in load_built(build_dataset("micro-search", 24, 0, tmp_path / "ms")) if t.split == "train"]
    rows = make_dataset(tasks, cfg, "stepwise", seed=0)
    recipe = WarmStartRecipe(reading_steps=3, reading_batch_size=8)
    reading = _reading_rows(rows, recipe)
    assert len(reading) == 24 and set(reading["gold_action"]) == {"answer_relabelled"}
    originals = {r["task_id"]: r for r in rows if r["gold_action"] == "answer"}
    moved = 0
    for r in reading:
        answer = r["answers"][0]
        hits = "".join(b["text"] or "" for m in r["prompt"] for b in m["content"])
        assert re.search(rf"\b{answer}\b", hits) and f"<answer> {answer} </answer>" in r["solution"]
        assert answer in MS.TOWN_NAMES + MS.PERSON_NAMES + MS.RIVER_NAMES
        moved += answer != originals[r["task_id"]]["answers"][0]
    assert moved >= 20  # a random permutation of the pool: almost every fact is a new one
    with pytest.raises(ValueError, match="micro-search"):
        _reading_rows(rows.map(lambda r: {"benchmark": "micro-coding"}), recipe)
    from arftlib.models import model_path_for

    m = model_path_for(cfg, None)
    assert warm_start_key(cfg, tasks, WarmStartRecipe(), m) != warm_start_key(cfg, tasks, recipe, m)


def test_fresh_worlds_are_other_facts_about_the_same_training_societies(tmp_path):
    """micro_learning(fresh_worlds=k) trains GRPO on other worlds' TRAIN splits: the training societies asked the
    same kinds of question, but with facts of another seed (so a fact memorised in the warm start's world is wrong
    there), each task searching its own world's corpus, ids made unique; micro-coding refuses it."""
    import collections

    from arftlib.data.build import build_dataset, load_built
    from experiments.micro_learning import fresh_world_tasks

    own = load_built(build_dataset("micro-search", 60, 0, tmp_path / "own"))
    fresh = fresh_world_tasks(tmp_path / "worlds", "search", 60, 0, 2)
    assert {t.split for t in fresh} == {"train"} and len({t.id for t in fresh}) == len(fresh)
    assert len({t.metadata["corpus"] for t in fresh}) == 2
    society = lambda t: (t.metadata["visual"]["color"], t.metadata["visual"]["category"])  # noqa: E731
    assert not {society(t) for t in fresh} & {society(t) for t in own if t.split == "test"}
    facts = collections.defaultdict(set)
    for t in [t for t in own if t.split == "train"] + fresh:
        facts[(society(t), t.metadata["question_kind"])].add(t.answers[0])
    assert sum(len(v) > 1 for v in facts.values()) >= len(facts) // 2  # the same question, other answers
    with pytest.raises(ValueError, match="micro-search"):
        fresh_world_tasks(tmp_path / "c", "coding", 60, 0, 1)


def test_warm_start_key_tells_models_apart_that_share_every_weight(tmp_path):
    """`seeing` and `seeing-grid` share every weight and differ in their rotary layout: a warm start cached for one
    must not be reused for the other, and a folder without config.json is named."""
    import shutil

    from arftlib.config import get_config
    from arftlib.models import tiny_model_path
    from arftlib.train.warmstart import WarmStartRecipe, warm_start_key

    cfg = get_config("tiny-cpu")
    base = tiny_model_path("qwen2_5_vl")
    other = tmp_path / "other-rope"
    shutil.copytree(base, other)
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["rope_parameters"]["rope_theta"] = 100.0
    (other / "config.json").write_text(json.dumps(config))
    key = warm_start_key(cfg, [], WarmStartRecipe(), str(base))
    assert key == warm_start_key(cfg, [], WarmStartRecipe(), str(base))
    assert key != warm_start_key(cfg, [], WarmStartRecipe(), str(other))
    # the question under a returned image shapes the gold rows: its own key; off, the keys cached before stay
    assert key != warm_start_key(cfg.replace(question_after_image=True), [], WarmStartRecipe(), str(base))
    assert key == warm_start_key(cfg.replace(question_after_image=False), [], WarmStartRecipe(), str(base))
    (other / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        warm_start_key(cfg, [], WarmStartRecipe(), str(other))


def test_isolated_warm_start_worker_ends_when_its_parent_is_killed(tmp_path):
    """`warm_start(isolated=True)` trains in a spawned pool worker; killing the parent (a notebook kernel, a script)
    must not leave that worker running: `exit_with_parent` ends it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    def running(pid: int) -> bool:  # a zombie (exited, not yet reaped by whoever adopted it) has ended
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from arftlib.train.warmstart import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:\n"
        "        print(pool.submit(os.getpid).result(), flush=True)\n"
        "        pool.submit(time.sleep, 120).result()\n")
    repo = Path(__file__).resolve().parent.parent
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=repo,
                              env={**os.environ, "PYTHONPATH": str(repo)})
    worker = int(parent.stdout.readline())
    assert running(worker)  # alive while its parent is
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 20
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        raise AssertionError(f"pool worker {worker} outlived its killed parent by 20 s")


def test_answer_step_check_plays_the_gold_steps_then_asks_only_the_answer(tmp_path):
    """`answer_step_check`: the gold diagnosis and code are played (the code runs), the policy writes the answer turn
    alone. The oracle answers every question right from there; every episode has one scored step, the answer."""
    from experiments.micro_learning import answer_step_check, micro_setup
    from arftlib.trajectories import read_trajectories

    _, cfg, _, test_tasks, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=40)
    res = answer_step_check(cfg, "oracle", None, test_tasks, tmp_path / "answer_step")
    picked = [t for t in test_tasks if t.metadata.get("question_type") in ("color", "position")]
    assert res["n"] == len(picked) > 0 and res["correct"] == res["n"]
    assert sum(r["n"] for r in res["by_type"].values()) == res["n"]
    assert all(k.split("/")[0] in ("color", "position") for k in res["by_type"])
    trajs = read_trajectories(tmp_path / "answer_step" / "trajectories", resolve_images=False)
    assert len(trajs) == res["n"]
    for t in trajs:
        scored = [s for s in t.steps if s.scored]
        assert len(scored) == 1 and scored[0].action.kind == "answer" and t.start_step == len(t.steps) - 1
        if any(d.startswith("rotation") for d in t.task.degradations):  # the gold code ran and returned an image
            assert any(s.observation is not None and s.observation.kind == "image" for s in t.steps[:-1])
    with pytest.raises(ValueError, match="no task of types"):
        answer_step_check(cfg, "oracle", None, test_tasks, tmp_path / "none", question_types=("nope",))


def test_code_step_check_plays_the_gold_diagnosis_then_scores_the_policys_code(tmp_path):
    """`code_step_check`: only tasks with a gold code step; the gold diagnosis is played, the policy writes the code
    and the answer. The oracle's code runs and restores (a rotation exactly), and it answers right; each episode's
    scored steps start at the code turn. The tallies add up by degradation."""
    from experiments.micro_learning import RESTORED_QUALITY, code_step_check, micro_setup
    from arftlib.trajectories import read_trajectories

    _, cfg, _, test_tasks, _ = micro_setup(tmp_path / "setup", kind="coding", n_tasks=40)
    res = code_step_check(cfg, "oracle", None, test_tasks, tmp_path / "code_step")
    picked = [t for t in test_tasks if len(t.gold_chain) > 1 and t.gold_chain[1]["action"] == "code"]
    assert 0 < res["n"] == len(picked) < len(test_tasks) + 1
    assert res["coded"] == res["ran"] == res["answered"] == res["correct"] == res["n"]
    assert sum(r["n"] for r in res["by_degradation"].values()) == res["n"]
    for name, row in res["by_degradation"].items():
        assert 0.0 < row["quality"] <= 1.0, name
        if name in ("rotation90", "rotation180"):  # the gold rotation brings the clean image back exactly
            assert row["restored"] == row["n"] and row["quality"] >= RESTORED_QUALITY
    trajs = read_trajectories(tmp_path / "code_step" / "trajectories", resolve_images=False)
    assert len(trajs) == res["n"]
    for t in trajs:
        scored = [s for s in t.steps if s.scored]
        assert t.start_step == 1 and scored[0].action.kind == "code" and scored[-1].action.kind == "answer"
        assert not t.steps[0].scored  # the gold diagnosis, played
    with pytest.raises(ValueError, match="no task with a gold code step"):
        code_step_check(cfg, "oracle", None, [t for t in test_tasks if t not in picked], tmp_path / "none")
