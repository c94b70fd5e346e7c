"""Reward components read Trajectories (parsed Actions + typed Observations), the rubrics, the paper's step-wise
rewards, hacking probes, and the one TRL adapter."""

from __future__ import annotations

import doctest
import math
import pickle

import numpy as np
import pytest

from arftlib import rewards as R
from arftlib.env import AgentEnv
from arftlib.env.core import read_turn, step_sample
from arftlib.rewards import agentic, image, paper, rubric
from arftlib.types import DEGRADATIONS, Observation, Step, Task, Trajectory

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module", autouse=True)
def minilm():
    """Load all-MiniLM-L6-v2 once for the module (the similarity module caches it)."""
    pytest.importorskip("sentence_transformers")
    return R.load_minilm()


def test_doctests():
    for m in (rubric, paper, agentic, image):
        assert doctest.testmod(m).failed == 0, m.__name__


# ---------------------------------------------------------------------------------------------------------
# Tasks, turns and trajectories
# ---------------------------------------------------------------------------------------------------------
SEARCH_TASK = Task(id="s1", question="Which city is the capital of the country in the image?", images=[],
                   answers=["Paris"], kind="search",
                   gold_chain=[{"action": "search", "content": "capital of France"},
                               {"action": "answer", "content": "Paris"}])
CODING_TASK = Task(id="c1", question="What does the sign say?", images=["in.png"], answers=["OPEN 24 HOURS"],
                   kind="coding", degradations=["rotation180"],
                   gold_chain=[{"action": "problem", "content": "{'rotation180'}"},
                               {"action": "code", "content": "import cv2\n"},
                               {"action": "answer", "content": "OPEN 24 HOURS"}])
INFO = "<information> 1. Content:Paris is the capital and largest city of France. </information> "
EVIDENCE = Observation(kind="text", text=INFO, tool="search", hits=[{"text": "Paris is the capital.", "title": "x"}])
FAILED = Observation(kind="error", text="<information> search failed: reset </information> ", tool="search",
                     error="connection reset", error_category="search_error")
EMPTY = Observation(kind="text", text="<information>  </information> ", tool="search", hits=[])


def think(action: str, body: str, reason: str = "Reasoning here.") -> str:
    return f"<think>{reason}</think>\n<{action}>{body}</{action}>"


def code_turn(code: str) -> str:
    return f"<think>Fix the image.</think>\n<code>\n```python\n{code}```\n</code>"


def step_of(task: Task, start: int, text: str) -> Trajectory:
    """A step-wise sample as training builds it (read only: no tool runs)."""
    return step_sample(task, start, text)


def episode(task: Task, *turns, protocol: str = "chat") -> Trajectory:
    """A hand-written episode: each turn is text (no observation) or (text, Observation), read by the one parser."""
    steps = []
    for k, t in enumerate(turns):
        text, obs = t if isinstance(t, tuple) else (t, None)
        steps.append(Step(turn=k, model_text=text, action=read_turn(text, task), observation=obs))
    return Trajectory(task=task, steps=steps, episode_id=f"ep-{task.id}", protocol=protocol, finished=True)


def vals(fn, trajs):
    return [fn(t) for t in trajs]


# ---------------------------------------------------------------------------------------------------------
# The paper's step-wise rewards
# ---------------------------------------------------------------------------------------------------------
def test_paper_format_search():
    texts = [think("answer", "Paris"), think("search", "capital of France"), "<answer>Paris</answer>",
             think("search", "q") + "<answer>Paris</answer>", think("answer", "a") + "<answer>b</answer>",
             "<think>a</think><think>b</think><answer>c</answer>", "Paris", think("answer", "Paris") + " trailing"]
    assert [paper.paper_format(step_of(SEARCH_TASK, 1, t)) for t in texts] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert paper.paper_format(episode(SEARCH_TASK, think("answer", "Paris"))) is None  # episodes: not the paper's


def test_paper_format_coding_dispatches_on_the_gold_step():
    prob, code, ans = think("problem", "{'dark', 'rotation90'}"), code_turn("x = 1\n"), think("answer", "A")
    for start, want in [(0, [1.0, 0.0, 0.0]), (1, [0.0, 1.0, 0.0]), (2, [0.0, 0.0, 1.0])]:
        assert [paper.paper_format(step_of(CODING_TASK, start, t)) for t in (prob, code, ans)] == want
    # the problem pattern needs a quoted set; repeated tags score 0
    for bad in (think("problem", "dark"), prob + "<problem>{'x'}</problem>"):
        assert paper.paper_format(step_of(CODING_TASK, 0, bad)) == 0.0
    assert paper.paper_format(step_of(CODING_TASK, 1, code + code)) == 0.0


def test_paper_answer_f1():
    texts = [think("answer", "Paris"), think("answer", "Lyon"), think("answer", "Paris, France"),
             think("search", "x") + "\n<answer>Paris</answer>", "Paris", think("answer", "Pa\nris")]
    got = [paper.paper_answer_f1(step_of(SEARCH_TASK, 1, t)) for t in texts]
    assert got[:5] == [1.0, 0.0, pytest.approx(2 / 3), 0.0, 1.0]  # no tags: the whole turn is the answer
    assert got[5] == 0.0  # a multi-line answer misses the single-line regex: the whole turn is compared
    # coding: a <code> or <problem> tag anywhere zeroes it; not an answer step -> None
    assert paper.paper_answer_f1(step_of(CODING_TASK, 2, think("answer", "OPEN 24 HOURS") + "<code>")) == 0.0
    assert paper.paper_answer_f1(step_of(CODING_TASK, 1, think("answer", "A"))) is None


def test_paper_search_similarity_threshold(monkeypatch):
    texts = [think("search", "capital of France"), think("search", "France capital city"),
             think("search", "banana bread recipe"), think("answer", "Paris"), "capital of France"]
    got = [paper.paper_search_similarity(step_of(SEARCH_TASK, 0, t)) for t in texts]
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    assert 0.9 < got[1] < 1.0  # the raw cosine is kept above the threshold
    assert got[2] == 0.0 and got[3] == 0.0
    assert got[4] == pytest.approx(1.0, abs=1e-6)  # no tag: the whole turn is the query
    # real pairs on both sides of 0.5 (cosines 0.406 and 0.565 under all-MiniLM-L6-v2)
    eiffel = Task(id="e", question="?", images=[], answers=["x"], kind="search",
                  gold_chain=[{"action": "search", "content": "Eiffel Tower architect"}, {"action": "answer", "content": "x"}])
    assert R.query_cosine("Eiffel Tower architect", "Paris landmarks") > 0.3
    assert paper.paper_search_similarity(step_of(eiffel, 0, think("search", "Paris landmarks"))) == 0.0
    pop = Task(id="p", question="?", images=[], answers=["x"], kind="search",
               gold_chain=[{"action": "search", "content": "Paris population"}, {"action": "answer", "content": "x"}])
    low = paper.paper_search_similarity(step_of(pop, 0, think("search", "capital of France")))
    assert low == pytest.approx(R.query_cosine("capital of France", "Paris population")) and 0.5 < low < 0.6
    # the boundary itself: below 0.5 -> 0, at 0.5 -> kept
    from arftlib.rewards import similarity

    for cos, want in [(0.4999, 0.0), (0.5, 0.5)]:
        monkeypatch.setattr(similarity, "query_cosine", lambda a, b, c=cos: c)
        assert paper.paper_search_similarity(step_of(eiffel, 0, think("search", "x"))) == want
    # answer steps are not search steps
    assert paper.paper_search_similarity(step_of(SEARCH_TASK, 1, think("search", "x"))) is None


def test_paper_code_flat_and_diagnosis():
    texts = [code_turn("1/0\n"), "", think("answer", "x"), think("problem", "{'dark'}")]
    assert [paper.paper_code_flat(step_of(CODING_TASK, 1, t)) for t in texts] == [0.9, 0.9, 0.0, 0.0]
    assert paper.paper_code_flat(step_of(CODING_TASK, 2, "x")) is None

    def diag(pred: str, gold: str) -> float | None:
        task = Task(id="d", question="?", images=["i.png"], answers=["x"], kind="coding",
                    gold_chain=[{"action": "problem", "content": gold}, {"action": "answer", "content": "x"}])
        return paper.paper_diagnosis(step_of(task, 0, think("problem", pred)))

    assert diag("{'rotation90', 'dark'}", "{'dark', 'rotation90'}") == 1.0
    assert diag("{'rotation90'}", "{'dark', 'rotation90'}") == 0.5
    assert diag("{'rotation180'}", "{'rotation180', 'noise'}") == 0.5
    assert diag("{'dark'}", "{'dark', 'rotation90'}") == 0.0  # only the rotation earns half credit
    assert diag("{'rotation90'}", "{'rotation90'}") == 1.0
    assert diag("{'rotation90', 'dark', 'blur'}", "{'dark', 'rotation90'}") == 0.0
    assert diag("{'dark', 'dark'}", "{'dark'}") == 0.0  # the reference compares lists
    assert paper.paper_diagnosis(step_of(CODING_TASK, 0, think("problem", "{'rotation180'}") + "<code>")) == 0.0


def test_paper_accuracy_is_the_one_split_component_that_applies():
    trajs = [step_of(SEARCH_TASK, 1, think("answer", "Paris")), step_of(CODING_TASK, 1, code_turn("pass\n")),
             step_of(CODING_TASK, 0, think("problem", "{'rotation180'}")), step_of(SEARCH_TASK, 0, "nothing")]
    assert vals(paper.paper_accuracy, trajs) == [1.0, 0.9, 1.0, 0.0]


def test_paper_f1_has_no_exact_match_override():
    assert R.paper_f1("Paris Paris", "Paris") == pytest.approx(2 / 3)
    assert R.paper_f1("A", "A") == 0.0  # both normalise to nothing


# ---------------------------------------------------------------------------------------------------------
# Our components: they read Actions and Observations, never text
# ---------------------------------------------------------------------------------------------------------
def test_format_per_turn_and_protocol():
    good, bad = think("search", "q"), "<search>q</search>"
    trajs = [episode(SEARCH_TASK, good), episode(SEARCH_TASK, bad), episode(SEARCH_TASK, (good, EVIDENCE), bad),
             episode(SEARCH_TASK), episode(SEARCH_TASK, think("answer", "a") + "<answer>b</answer>"),
             episode(SEARCH_TASK, think("code", "x"))]
    assert vals(R.format, trajs) == [1.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert R.format(episode(SEARCH_TASK, good, protocol="direct")) is None
    # the component reads Action.format_ok: change the recorded action and the reward follows, whatever the text
    t = episode(SEARCH_TASK, good)
    t.steps[0].action.format_ok = False
    assert R.format(t) == 0.0


def test_answer_f1_em_variants():
    task = Task(id="a", question="?", images=["i.png"], answers=["A"], kind="coding", degradations=["none"])
    trajs = [episode(task, think("answer", t)) for t in ("A", "Answer: A", "The")]
    assert vals(R.answer_f1_reference, trajs) == [1.0, 0.0, 1.0]  # "The" == "" == "A" in the reference
    assert vals(R.answer_em_reference, trajs) == [1.0, 0.0, 1.0]
    assert vals(R.answer_f1_corrected, trajs) == [1.0, pytest.approx(2 / 3), 0.0]
    assert vals(R.answer_em_corrected, trajs) == [1.0, 0.0, 0.0]
    # step-wise: only answer steps; a strictly invalid (hedged) answer turn gets nothing
    assert R.answer_f1_corrected(step_of(SEARCH_TASK, 0, think("answer", "Paris"))) is None
    assert R.answer_f1_corrected(step_of(SEARCH_TASK, 1, think("answer", "Paris") + "<answer>Paris</answer>")) == 0.0


def test_answer_after_evidence_and_grounding():
    ans = think("answer", "Paris")
    search = think("search", "capital of France")
    trajs = [episode(SEARCH_TASK, (search, EVIDENCE), ans), episode(SEARCH_TASK, (search, FAILED), ans),
             episode(SEARCH_TASK, (search, EMPTY), ans), episode(SEARCH_TASK, ans),
             episode(SEARCH_TASK, ans, (think("search", "q"), EVIDENCE))]
    assert vals(R.answer_after_evidence, trajs) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert vals(R.grounded_answer_f1, trajs) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert vals(R.answer_f1_corrected, trajs) == [1.0] * 5
    # tasks that need no tool are not gated; a coding "none" item needs none by default
    free = Task.from_dict({**SEARCH_TASK.to_dict(), "metadata": {"needs_tool": False}})
    assert R.grounded_answer_f1(episode(free, ans)) == 1.0
    none = Task(id="n", question="?", images=["i.png"], answers=["Paris"], kind="coding", degradations=["none"])
    assert R.answer_after_evidence(episode(none, ans)) is None
    dark = Task.from_dict({**none.to_dict(), "degradations": ["dark"]})
    assert R.answer_after_evidence(episode(dark, ans)) == 0.0
    # step-wise samples carry the evidence in the prompt
    assert R.answer_after_evidence(step_of(SEARCH_TASK, 1, ans)) is None
    assert R.grounded_answer_f1(step_of(SEARCH_TASK, 1, ans)) == 1.0
    # evidence is a field of the observation, not its wording: reword the text, same reward
    reworded = Observation(kind="text", text="totally different words", tool="search", hits=EVIDENCE.hits)
    assert R.grounded_answer_f1(episode(SEARCH_TASK, (search, reworded), ans)) == 1.0


def test_query_similarity():
    texts = [think("search", "capital of France"), think("search", "banana bread"), think("answer", "Paris"),
             "<search>capital of France</search><search>x</search>"]
    got = [R.query_similarity(step_of(SEARCH_TASK, 0, t)) for t in texts]
    assert got[0] == pytest.approx(1.0, abs=1e-6) and got[1:] == [0.0, 0.0, 0.0]
    assert R.query_similarity(step_of(SEARCH_TASK, 1, think("search", "x"))) is None
    ans = think("answer", "Paris")
    one = episode(SEARCH_TASK, (think("search", "capital of France"), EVIDENCE), ans)
    junk = episode(SEARCH_TASK, (think("search", "capital of France"), EVIDENCE),
                   (think("search", "banana bread recipe"), EVIDENCE), ans)
    none = episode(SEARCH_TASK, ans)
    got = vals(R.query_similarity, [one, junk, none])
    assert got[0] == pytest.approx(1.0, abs=1e-6)
    assert got[1] == pytest.approx(0.75, abs=1e-6)  # recall 1, precision 1/2
    assert got[2] == 0.0
    no_gold = Task.from_dict({**SEARCH_TASK.to_dict(), "gold_chain": []})
    assert R.query_similarity(episode(no_gold, ans)) is None
    assert R.query_similarity(episode(CODING_TASK, ans)) is None


def test_diagnosis():
    task = Task(id="d", question="?", images=["i.png"], answers=["x"], kind="coding",
                degradations=["rotation90", "dark"])
    texts = [think("problem", "{'dark', 'rotation90'}"), think("problem", "['Rotation 90']"),
             think("problem", "{'dark'}"), think("problem", str(sorted(DEGRADATIONS))), think("answer", "x")]
    assert [R.diagnosis(episode(task, t)) for t in texts] == [1.0, 0.5, 0.0, 0.0, 0.0]
    step = Task(id="d2", question="?", images=["i.png"], answers=["x"], kind="coding",
                gold_chain=[{"action": "problem", "content": "{'rotation180', 'noise'}"},
                            {"action": "answer", "content": "x"}])
    assert R.diagnosis(step_of(step, 0, think("problem", "{'rotation180'}"))) == 0.5
    assert R.diagnosis(step_of(step, 1, think("problem", "{'noise'}"))) is None
    assert R.diagnosis(episode(SEARCH_TASK, think("problem", "{'dark'}"))) is None


def test_penalties():
    tr = episode(SEARCH_TASK, (think("search", "Capital of France?"), EVIDENCE), "garbage",
                 (think("search", "the capital of france"), EVIDENCE), think("code", "x"),
                 (think("search", "Paris facts"), EVIDENCE), think("answer", "Paris"), think("answer", "Paris"))
    # invalid: "garbage", <code> in a search task (2); after the answer: 1; valid up to the answer: 4 > gold 2 -> 2
    assert R.wasted_turns(tr) == 5.0
    assert R.repeated_queries(tr) == 1.0
    assert R.tool_spam(tr) == 0.0
    spam = episode(SEARCH_TASK, think("search", "a") + "<search>b</search><search>c</search>")
    inside = episode(SEARCH_TASK, "<think>maybe <search>x</search></think><search>a</search>")
    assert vals(R.tool_spam, [spam, inside]) == [2.0, 0.0]
    # step-wise: a query the gold steps before it already issued repeats it
    later = Task.from_dict({**SEARCH_TASK.to_dict(), "gold_chain": [
        {"action": "search", "content": "capital of France"}, {"action": "search", "content": "Paris facts"},
        {"action": "answer", "content": "Paris"}]})
    assert [R.repeated_queries(step_of(later, 1, think("search", q))) for q in ("Capital of France", "Paris")] == \
        [1.0, 0.0]


# ---------------------------------------------------------------------------------------------------------
# Executed code (real sandbox, run by the environment)
# ---------------------------------------------------------------------------------------------------------
NOOP = "import cv2\ncv2.imwrite('path_to_output_image.jpg', cv2.imread('path_to_input_image.jpg'))\n"
FIX180 = ("import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
          "cv2.imwrite('path_to_output_image.jpg', cv2.rotate(img, cv2.ROTATE_180))\n")
CRASH = "import cv2\nimg = cv2.imread('path_to_input_image.jpg')\nraise RuntimeError('boom')\n"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("rw")
    clean = np.ascontiguousarray(data.astronaut()[::2, ::2])
    cp, ip = d / "clean.png", d / "rot180.png"
    Image.fromarray(clean).save(cp)
    Image.fromarray(np.ascontiguousarray(clean[::-1, ::-1])).save(ip)
    return {"clean": str(cp), "input": str(ip), "dir": d, "clean_array": clean}


def _rot_task(images, clean: bool = True) -> Task:
    return Task(id="t1", question="What does the sign say?", images=[images["input"]], answers=["OPEN"],
                kind="coding", degradations=["rotation180"], clean_image=images["clean"] if clean else None,
                gold_chain=[{"action": "problem", "content": "{'rotation180'}"},
                            {"action": "code", "content": FIX180}, {"action": "answer", "content": "OPEN"}])


def _acted(images, text: str, clean: bool = True, timeout: float = 10.0) -> Trajectory:
    env = AgentEnv(protocol="tags", work_dir=images["dir"], sandbox_timeout_s=timeout, keep_files=True)
    return step_sample(_rot_task(images, clean), 1, text, env=env)


def test_executed_code_reads_what_the_environment_ran(images):
    pytest.importorskip("cv2")
    texts = [code_turn(FIX180), code_turn(NOOP), code_turn(CRASH), code_turn("while True:\n    pass\n"),
             think("answer", "x"), code_turn("x = 1\n")]
    trajs = [_acted(images, t, timeout=2.0) for t in texts]
    assert all(t.start_step == 1 and [s.scored for s in t.steps] == [False, True] for t in trajs)  # gold prefix
    fix, noop, crash, loop, answer, no_image = vals(R.executed_code, trajs)
    assert fix > 0.95 and R.RAN_CREDIT <= noop < 0.5 and fix > noop
    assert crash == loop == answer == no_image == 0.0
    assert trajs[3].steps[-1].observation.error_category == "code_timeout"
    assert trajs[5].steps[-1].observation.error_category == "no_output_image"
    # no clean image: a small constant for any valid image
    assert [R.executed_code(_acted(images, t, clean=False)) for t in texts[:3]] == [R.RAN_CREDIT, R.RAN_CREDIT, 0.0]
    # not a code step / not a coding task; read-only samples have no observation: 0
    assert R.executed_code(step_sample(_rot_task(images), 2, code_turn(FIX180))) is None
    assert R.executed_code(episode(SEARCH_TASK, code_turn(FIX180))) is None
    assert R.executed_code(step_sample(_rot_task(images), 1, code_turn(FIX180))) == 0.0


def test_restoration_score(images):
    clean = images["clean_array"]
    s = R.restoration_score(clean, images["clean"], images["input"])
    assert s["quality"] == pytest.approx(1.0) and s["ssim_in"] < 0.5
    noop = R.restoration_score(images["input"], images["clean"], images["input"])
    assert noop["gain"] == 0.0 and noop["quality"] < 0.3
    crop = clean[: clean.shape[0] // 2, : clean.shape[1] // 2]
    assert R.restoration_score(crop, images["clean"], target_box=[0, 0, 500, 500])["quality"] > 0.95


# ---------------------------------------------------------------------------------------------------------
# Episodes through the real environment, scored once
# ---------------------------------------------------------------------------------------------------------
def _env_episode(images, turns, protocol="chat", tool_calls=False, rubric_=None) -> Trajectory:
    env = AgentEnv(protocol=protocol, work_dir=images["dir"], keep_files=True, tool_calls=tool_calls, rubric=rubric_)
    env.reset(_rot_task(images))
    for t in turns:
        if env.done:
            break
        env.step(t)
    env.finish()
    return env.trajectory


def test_score_episode_through_the_environment(images):
    rub = R.agentic_rubric("coding")
    good = _env_episode(images, [think("problem", "{'rotation180'}"), code_turn(FIX180), think("answer", "OPEN")],
                        rubric_=rub)
    failed = _env_episode(images, [think("problem", "{'rotation180'}"), code_turn(CRASH), think("answer", "OPEN")],
                          rubric_=rub)
    g, f = good.reward_components, failed.reward_components
    assert g["grounded_answer_f1"] == 1.0 and g["diagnosis"] == 1.0 and g["executed_code"] > 0.95
    assert g["answer_after_evidence"] == 1.0 and g["wasted_turns"] == 0.0
    assert f["executed_code"] == 0.0 and f["grounded_answer_f1"] == 0.0  # no evidence before the answer
    assert good.reward == pytest.approx(sum(w * g[n] for n, w in zip(rub.names, rub.weights) if n in g))
    assert good.reward > failed.reward
    assert R.score_episode(good, rub)["total"] == pytest.approx(good.reward)  # the one function, again
    # the output image must still exist when rewards are computed
    gone = _env_episode(images, [think("problem", "{'rotation180'}"), code_turn(FIX180), think("answer", "OPEN")])
    next(s for s in gone.steps if s.observation and s.observation.image).observation.image = "/nonexistent.png"
    with pytest.raises(FileNotFoundError, match="executed_code"):
        R.score_episode(gone, rub)


def test_tool_call_episodes_score_like_tag_turns(images):
    """The same gold chain as tag turns (chat) and as TRL-style JSON tool calls scores the same: both are recorded
    by the environment as the same Actions and Observations."""
    from arftlib.turns import gold_tool_turns, gold_turns

    rub = R.agentic_rubric("coding")
    task = _rot_task(images)
    tags = _env_episode(images, gold_turns(task), rubric_=rub)
    calls = _env_episode(images, gold_tool_turns(task), tool_calls=True, rubric_=rub)
    assert calls.reward_components["format"] == 1.0 and calls.reward_components["wasted_turns"] == 0.0
    assert calls.reward_components == pytest.approx(tags.reward_components)
    bad = _env_episode(images, gold_tool_turns(task)[:2] + ['<think>t</think><tool_call>{"name": "answer", '
                                                             '"arguments": </tool_call>'], tool_calls=True, rubric_=rub)
    assert bad.reward_components["grounded_answer_f1"] == 0.0  # unparseable call: no answer


# ---------------------------------------------------------------------------------------------------------
# Rubric mechanics and the TRL adapter
# ---------------------------------------------------------------------------------------------------------
TRL_EXTRAS = dict(trainer_state=None, log_metric=lambda *a, **k: None, log_extra=lambda *a, **k: None)


def _trl_call(fn, texts, tasks, starts):
    return fn(prompts=[[{"role": "user", "content": "q"}]] * len(texts),
              completions=[[{"role": "assistant", "content": t}] for t in texts],
              completion_ids=[[1, 2]] * len(texts), task=[t.to_dict() for t in tasks], step_index=starts,
              **TRL_EXTRAS)


def test_trl_adapter_one_function_per_component_same_totals():
    from trl.trainer.utils import get_callable_name

    rub = R.agentic_rubric("search")
    texts = [think("answer", "Paris"), think("answer", "Lyon"), think("search", "capital of France")]
    starts = [1, 1, 0]
    adapter = R.TRLRewards(rub)
    funcs = adapter.reward_funcs()
    assert [get_callable_name(f) for f in funcs] == rub.names and adapter.weights == rub.weights
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    per = []
    for f in funcs:  # TRL calls every function with the same completions object
        per.append([np.nan if v is None else v for v in f(completions=completions, task=[SEARCH_TASK.to_dict()] * 3,
                                                             step_index=starts, **TRL_EXTRAS)])
    trl_totals = np.nansum(np.array(per) * np.array(rub.weights)[:, None], axis=0)
    direct = rub([step_of(SEARCH_TASK, s, t) for s, t in zip(starts, texts)])
    assert trl_totals == pytest.approx(direct)
    assert rub.last_components["grounded_answer_f1"] == [1.0, 0.0, None]
    assert [t.start_step for t in adapter.last_trajectories] == starts  # what the trajectory log writes
    pickle.loads(pickle.dumps(funcs[0]))
    with pytest.raises(KeyError, match="'task'"):
        funcs[0](completions=[[{"role": "assistant", "content": "x"}]], step_index=[0], **TRL_EXTRAS)


def test_rubric_validation_and_errors():
    with pytest.raises(ValueError, match="duplicate"):
        R.Rubric([(R.format, 1.0), (R.format, 2.0)])
    with pytest.raises(ValueError, match="__name__"):
        R.Rubric([(lambda t: 1.0, 1.0)])

    def nan_reward(traj):
        return math.nan

    with pytest.raises(ValueError, match="nan_reward"):
        R.Rubric([(nan_reward, 1.0)])([episode(SEARCH_TASK, "x")])

    def buggy(traj):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):  # a bug is never a silent 0
        R.Rubric([(R.format, 1.0), (buggy, 1.0)])([episode(SEARCH_TASK, "x")])
    with pytest.raises(TypeError, match="Trajectory"):
        R.Rubric([(R.format, 1.0)])(["x"])
    no_answers = Task.from_dict({**SEARCH_TASK.to_dict(), "answers": []})
    with pytest.raises(ValueError, match="gold answers"):
        R.answer_f1_corrected(episode(no_answers, think("answer", "x")))
    with pytest.raises(ValueError, match="outside its gold chain"):
        step_sample(SEARCH_TASK, 5, "x")


# ---------------------------------------------------------------------------------------------------------
# Reward-hacking probes: each must score below a correct answer
# ---------------------------------------------------------------------------------------------------------
def _stepwise_probes(answer: str) -> dict[str, str]:
    return {
        "empty answer": think("answer", ""),
        "many candidates": think("answer", f"{answer}, London, Rome, Berlin, Madrid"),
        "repeated tags": think("answer", answer) + f"\n<answer>{answer}</answer>",
        "repeated tags, hedged": think("answer", "London") + f"\n<answer>{answer}</answer>",
        "answer hidden in think": f"<think>The answer is {answer}.</think>",
        "answer in think, bare text after": f"<think>The answer is {answer}.</think>\n{answer}",
        "tool spam": think("search", "capital of France") + "<search>Paris</search><search>France</search>"
                     + f"<answer>{answer}</answer>",
    }


@pytest.mark.parametrize("task", [SEARCH_TASK, CODING_TASK], ids=["search", "coding"])
@pytest.mark.parametrize("which", ["agentic", "paper"])
def test_stepwise_probes_score_below_correct(task, which):
    answer = task.answers[0]
    rub = R.agentic_rubric(task.kind) if which == "agentic" else R.paper_stepwise_rubric(task.kind)
    probes = _stepwise_probes(answer)
    last = len(task.gold_chain) - 1
    totals = rub([step_of(task, last, t) for t in [think("answer", answer)] + list(probes.values())])
    for (name, _), total in zip(probes.items(), totals[1:]):
        assert total < totals[0], f"{which} rubric: probe {name!r} scored {total} >= correct {totals[0]}"


def test_stepwise_search_step_probes():
    """On a search step: spamming queries or answering instead of searching scores below a good query."""
    texts = [think("search", "capital of France"),
             think("search", "capital of France") + "<search>France</search><search>Paris</search>",
             think("answer", "Paris"), think("search", "")]
    for rub in (R.agentic_rubric("search"), R.paper_stepwise_rubric("search")):
        totals = rub([step_of(SEARCH_TASK, 0, t) for t in texts])
        assert all(t < totals[0] for t in totals[1:]), (rub.name, totals)


def test_episode_probes_score_below_correct():
    s = think("search", "capital of France")
    correct = episode(SEARCH_TASK, (s, EVIDENCE), think("answer", "Paris"))
    probes = {
        "empty answer": episode(SEARCH_TASK, (s, EVIDENCE), think("answer", "")),
        "many candidates": episode(SEARCH_TASK, (s, EVIDENCE), think("answer", "Paris, London, Rome, Berlin")),
        "repeated tags": episode(SEARCH_TASK, (s, EVIDENCE), think("answer", "Paris") + "<answer>Paris</answer>"),
        "answer hidden in think": episode(SEARCH_TASK, (s, EVIDENCE), "<think>The answer is Paris.</think>"),
        "guess without evidence": episode(SEARCH_TASK, think("answer", "Paris")),
        "tool spam (turns)": episode(SEARCH_TASK, *[(think("search", q), EVIDENCE) for q in
                                                   ["capital of France", "capital of France", "France capital",
                                                    "Paris", "capital of France"]], think("answer", "Paris")),
        "tool spam (one turn)": episode(SEARCH_TASK, (s + "<search>Paris</search><search>France</search>", EVIDENCE),
                                        think("answer", "Paris")),
    }
    rub = R.agentic_rubric("search")
    totals = rub([correct] + list(probes.values()))
    for (name, _), total in zip(probes.items(), totals[1:]):
        assert total < totals[0], f"probe {name!r} scored {total} >= correct {totals[0]}"


# ---------------------------------------------------------------------------------------------------------
# Findings: where the paper's rubric can be gamed, and our fix
# ---------------------------------------------------------------------------------------------------------
def test_finding_paper_code_reward_cannot_tell_a_fix_from_a_noop_or_a_crash(images):
    texts = [code_turn(FIX180), code_turn(NOOP), code_turn(CRASH), "<think>I will not write code.</think>"]
    trajs = [_acted(images, t) for t in texts]
    pap = R.paper_stepwise_rubric("coding")(trajs)
    # the paper: fix == no-op == crash (format 1 + flat 0.9), and no code at all still earns the 0.9
    assert pap[:3] == [pytest.approx(1.9)] * 3 and pap[3] == pytest.approx(0.9)
    fix, noop, crash, none = R.agentic_rubric("coding")(trajs)
    assert fix > noop > crash and fix > none
    ablation = R.executed_stepwise_rubric("coding")(trajs)  # the paper's rubric with only the code reward swapped
    assert ablation[0] > ablation[1] > ablation[2] == 1.0 and ablation[3] == 0.0


def test_finding_paper_answer_f1_scores_correct_single_letter_zero():
    task = Task(id="l", question="?", images=["i.png"], answers=["A"], kind="coding", degradations=["none"],
                gold_chain=[{"action": "problem", "content": "{'none'}"}, {"action": "answer", "content": "A"}])
    trajs = [step_of(task, 1, think("answer", x)) for x in ("A", "B")]
    pap = R.paper_stepwise_rubric("coding")(trajs)
    assert pap[0] == pap[1] == 1.0  # format only: the gold "A" normalises to nothing, so F1 is 0 for both
    ours = R.agentic_rubric("coding")(trajs)
    assert ours[0] > ours[1]


def test_rewards_contain_no_parser_of_model_text():
    """The reward package never reads text with a regex or the parser's entry points on model turns: it reads the
    Actions and Observations the environment recorded (the paper's components go through parse.reference_turn)."""
    import pathlib

    pkg = pathlib.Path(R.__file__).parent
    for path in pkg.glob("*.py"):
        src = path.read_text(encoding="utf-8")
        assert "import re\n" not in src and "re.compile" not in src, path.name
        code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith((">>>", "...")))
        assert "model_text" not in code or path.name == "paper.py", path.name
        assert ".raw" not in src and "error.startswith" not in src, path.name
