"""arftlib.env: the agent environment on scripted turns (both protocols, both task kinds) and its TRL face."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from PIL import Image

from arftlib import prompts as P
from arftlib.env import TOOL_METHODS, AgentEnv, task_from_row, task_to_row
from fixtures import fixture_tasks
from arftlib.tools.search import load_search
from arftlib.types import Observation, Task

PROBLEM = "<think> upside down </think>\n<problem> {'rotation180'} </problem>"
CODE = ("<think> rotate </think>\n<code>\n```python\nimport cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
        "img = cv2.rotate(img, cv2.ROTATE_180)\ncv2.imwrite('path_to_output_image.jpg', img)\n```\n</code>")
BAD_CODE = "<think> oops </think>\n<code>\n```python\nraise ValueError('boom')\n```\n</code>"


@pytest.fixture(scope="module")
def coding_tasks(tmp_path_factory) -> list[Task]:
    return fixture_tasks(3, tmp_path_factory.mktemp("coding"), "coding")  # rotation180, dark, crop


@pytest.fixture(scope="module")
def search_tasks(tmp_path_factory) -> list[Task]:
    return fixture_tasks(4, tmp_path_factory.mktemp("search"), "search")


@pytest.fixture(scope="module")
def search(search_tasks, tmp_path_factory):
    return load_search("local", corpus=search_tasks[0].metadata["corpus"], cache_root=tmp_path_factory.mktemp("bm25"))


def _env(protocol, tmp_path, **kw) -> AgentEnv:
    return AgentEnv(protocol=protocol, work_dir=tmp_path / "work", **kw)


def _user_text(messages) -> str:
    return messages[0]["content"][-1]["text"]


# ------------------------------------------------------------------------------------------------- coding
def test_tags_coding_episode(coding_tasks, tmp_path):
    task = coding_tasks[0]
    env = _env("tags", tmp_path)
    env.reset(task=task, episode_id="e1")
    before = env.messages
    assert [b["type"] for b in before[0]["content"]] == ["image", "text"]
    assert before[0]["content"][0]["image"] == task.images[0]

    obs = env.step(PROBLEM)  # diagnosis -> the reference's tips
    assert obs.kind == "text" and obs.text == P.tips_text(["rotation180"])
    assert _user_text(env.messages) == P.initial_user_text(task, "tags") + "\n" + PROBLEM + "\n" + obs.text

    obs = env.step(CODE)  # code -> processed image replaces the input image, no text added
    assert obs.kind == "image" and Path(obs.image).is_file() and obs.text == ""
    msgs = env.messages
    assert msgs[0]["content"][0]["image"] == obs.image
    assert _user_text(msgs).endswith("\n" + CODE)
    with Image.open(obs.image) as a, Image.open(task.clean_image) as b:
        assert a.size == b.size
    assert env.current_image == obs.image

    obs = env.step(f"<think> done </think>\n<answer> {task.answers[0]} </answer>")
    assert env.done and obs.kind == "none"
    t = env.trajectory
    assert t.finished and t.final_answer == task.answers[0]
    assert t.metrics["f1"] == 1.0 and t.metrics["em"] == 1.0 and t.metrics["f1_corrected"] == 1.0
    assert (t.metrics["turns"], t.metrics["code_runs"], t.metrics["diagnoses"], t.metrics["tool_errors"]) == (3, 1, 1, 0)
    assert [s.action.kind for s in t.steps] == ["problem", "code", "answer"]
    with pytest.raises(RuntimeError, match="is over"):
        env.step("<answer> again </answer>")
    img = obs_path = t.steps[1].observation.image
    env.close()
    assert not Path(obs_path).exists(), img  # episode files are removed on close


def test_chat_coding_episode(coding_tasks, tmp_path):
    task = coding_tasks[0]
    env = _env("chat", tmp_path)
    env.reset(task=task)
    env.step(PROBLEM)
    obs = env.step(CODE)
    msgs = env.messages
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"][0] == {"type": "image", "image": obs.image}
    assert "processed image" in msgs[-1]["content"][1]["text"]
    assert "<tips>" in msgs[3]["content"][0]["text"]
    env.step("<think> x </think><answer> nope </answer>")
    assert env.done and env.trajectory.metrics["f1"] == 0.0


def test_reference_crop_substitution(coding_tasks, tmp_path):
    task = coding_tasks[2]  # crop question with a [x1, y1, x2, y2] box
    assert task.degradations == ["crop"]
    code = ("<think> crop </think>\n<code>\n```python\nimport cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
            "img = img[0:5, 0:5]\ncv2.imwrite('path_to_output_image.jpg', img)\n```\n</code>")
    sizes = {}
    for protocol in ("tags", "chat"):
        env = _env(protocol, tmp_path)
        env.reset(task=task)
        tip = env.step("<think> a region </think>\n<problem> {'crop'} </problem>")
        assert tip.text.startswith("<tips> We now need to crop the image.")
        obs = env.step(code)
        with Image.open(obs.image) as im:
            sizes[protocol] = im.size
        env.close()
    # tags: the model's slice is replaced by the question's box (320x200 image, box [100, 400, 600, 550])
    assert sizes["tags"] == (192 - 32, 110 - 80)
    assert sizes["chat"] == (5, 5)  # chat runs the model's own code


def test_invalid_turns_and_max_turns(coding_tasks, tmp_path):
    task = coding_tasks[1]
    for protocol in ("tags", "chat"):
        env = _env(protocol, tmp_path, max_turns=3)
        env.reset(task=task)
        first = env.messages
        obs = env.step("I think the answer is 4")  # no action tag
        if protocol == "tags":  # the reference ignores such a turn: same prompt again
            assert obs.kind == "none" and env.messages == first
        else:
            assert obs.kind == "text" and "could not be used" in obs.text
            assert env.messages[-1]["content"][0]["text"] == obs.text
        obs = env.step("<think> x </think><search> capital of France </search>")  # not a coding action
        assert env.trajectory.steps[-1].action.kind == "invalid"
        assert "not an action of coding tasks" in env.trajectory.steps[-1].action.error
        assert not env.done
        env.step("<think> still nothing")
        assert env.done and env.trajectory.finished and env.trajectory.final_answer is None
        assert env.trajectory.metrics["invalid_turns"] == 3 and env.trajectory.metrics["f1"] == 0.0
        with pytest.raises(RuntimeError):
            env.step("<answer> late </answer>")


def test_tool_error_is_an_observation(coding_tasks, tmp_path):
    task = coding_tasks[0]
    for protocol in ("tags", "chat"):
        env = _env(protocol, tmp_path)
        env.reset(task=task)
        obs = env.step(BAD_CODE)
        assert obs.kind == "error" and "boom" in obs.error
        m = env.trajectory.metrics
        assert m["tool_errors"] == 1 and m["code_runs"] == 1 and m["images_shown"] == 0
        assert env.trajectory.errors and "boom" in env.trajectory.errors[0]
        assert env.current_image == task.images[0]
        if protocol == "tags":  # the turn is added, the error is not shown (as the reference)
            assert obs.text == "" and _user_text(env.messages).endswith("\n" + BAD_CODE)
            assert obs.error not in _user_text(env.messages)
        else:
            assert "boom" in env.messages[-1]["content"][0]["text"]
        env.close()


def test_image_budget(coding_tasks, tmp_path):
    env = _env("chat", tmp_path, image_budget=1)
    env.reset(task=coding_tasks[0])
    assert env.step(CODE).kind == "image"
    obs = env.step(CODE)
    assert obs.kind == "text" and "budget" in obs.text
    m = env.trajectory.metrics
    assert (m["code_runs"], m["images_shown"], m["image_budget_refusals"], m["tool_errors"]) == (1, 1, 1, 0)
    # code runs on the processed image: a second rotation would restore the degraded one
    env2 = _env("tags", tmp_path)
    env2.reset(task=coding_tasks[0])
    o1 = env2.step(CODE)
    o2 = env2.step(CODE)
    import numpy as np

    with Image.open(o2.image) as a, Image.open(coding_tasks[0].images[0]) as b:
        diff = np.abs(np.asarray(a.convert("L"), float) - np.asarray(b.convert("L"), float)).mean()
    assert diff < 3 and o1.image != o2.image


def test_direct_protocol(coding_tasks, tmp_path):
    env = _env("direct", tmp_path)
    env.reset(task=coding_tasks[0])
    assert env.messages[0]["content"][-1]["text"].endswith(P.DIRECT_SUFFIX)
    env.step(f"  {coding_tasks[0].answers[0]}\n")
    assert env.done and env.trajectory.metrics["em"] == 1.0


# ------------------------------------------------------------------------------------------------- search
def test_search_episode_both_protocols(search_tasks, search, tmp_path):
    task = search_tasks[1]
    query = task.gold_chain[0]["content"]
    turn = f"<think> look it up </think>\n<search> {query} </search>"
    for protocol in ("tags", "chat"):
        env = _env(protocol, tmp_path, search=search)
        env.reset(task=task)
        obs = env.step(turn)
        assert obs.kind == "text" and obs.text.startswith("<information> 1. Content:")
        assert task.answers[0] in obs.text and obs.hits and obs.hits[0]["id"] == "p1"
        if protocol == "tags":
            assert _user_text(env.messages).endswith("\n" + turn + "\n" + obs.text)
        else:
            assert env.messages[-1]["content"][0]["text"] == obs.text.rstrip()
        env.step(f"<think> found </think>\n<answer> {task.answers[0]} </answer>")
        assert env.done and env.trajectory.metrics["f1"] == 1.0 and env.trajectory.metrics["searches"] == 1
        obs = None
        # a coding action is invalid in a search task
        env.reset(task=task)
        env.step("<think> x </think><problem> {'dark'} </problem>")
        assert env.trajectory.steps[0].action.kind == "invalid"


def test_search_uses_task_corpus_by_default(search_tasks, tmp_path):
    env = _env("tags", tmp_path)  # no search= : shared local backend on metadata["corpus"]
    env.reset(task=search_tasks[0])
    obs = env.step(f"<search> {search_tasks[0].gold_chain[0]['content']} </search>")
    assert search_tasks[0].answers[0] in obs.text


class _BrokenSearch:
    def search(self, query, k=4):
        raise ConnectionError("backend down")


def test_search_failure_is_counted(search_tasks, tmp_path):
    env = _env("tags", tmp_path, search=_BrokenSearch())
    env.reset(task=search_tasks[0])
    obs = env.step("<search> anything </search>")
    assert obs.kind == "error" and "backend down" in obs.text and obs.text.startswith("<information> search failed")
    assert env.trajectory.metrics["tool_errors"] == 1
    assert "backend down" in _user_text(env.messages)  # the model sees it


# ------------------------------------------------------------------------------------------------- TRL face
def test_trl_discovers_exactly_the_tools():
    from transformers.utils import get_json_schema

    # TRL 1.16: public functions of the class, minus reset/get_reward, become tools
    found = sorted(name for name, _ in inspect.getmembers(AgentEnv, predicate=inspect.isfunction)
                   if name not in ("reset", "get_reward") and not name.startswith("_"))
    assert found == sorted(TOOL_METHODS)
    # no get_reward: the rubric's TRL adapter scores the trajectory (one scoring for training and evaluation)
    assert hasattr(AgentEnv, "reset") and not hasattr(AgentEnv, "get_reward")
    env = AgentEnv()
    for name in TOOL_METHODS:
        schema = get_json_schema(getattr(env, name))
        fn = schema["function"]
        assert fn["name"] == name and fn["description"]
        params = fn["parameters"]["properties"]
        assert len(params) == 1 and all(p["type"] == "string" and p.get("description") for p in params.values())
        assert fn["parameters"]["required"] == list(params)


def test_reset_from_trl_row_and_tool_calls(coding_tasks, search_tasks, search, tmp_path):
    task = coding_tasks[0]
    row = task_to_row(task, "chat")
    assert [b["type"] for b in row["prompt"][1]["content"]] == ["image", "text"]
    assert "image" not in row["prompt"][1]["content"][0]  # a placeholder TRL fills from the `image` column
    assert isinstance(row["image"], Image.Image) and json.loads(row["task"])["id"] == task.id
    assert task_from_row(row) == task
    env = AgentEnv(work_dir=tmp_path)  # protocol taken from the row
    assert env.reset(**row) is None and env.protocol == "chat"
    assert "rotation180" in env.diagnose("{'rotation180'}")
    out = env.run_code(CODE.split("```python\n")[1].split("```")[0])
    assert out[0]["type"] == "image" and isinstance(out[0]["image"], Image.Image) and out[1]["type"] == "text"
    bad = env.run_code("raise RuntimeError('nope')")
    assert len(bad) == 1 and "nope" in bad[0]["text"]
    assert "not available" in env.search("anything")  # search is not a coding tool: an invalid call
    assert "Answer recorded" in env.answer(task.answers[0])
    assert env.done and env.trajectory.metrics["f1"] == 1.0
    assert [s.action.kind for s in env.trajectory.steps] == ["problem", "code", "code", "invalid", "answer"]
    assert env.trajectory.metrics["tool_errors"] == 1 and env.trajectory.metrics["invalid_turns"] == 1
    assert "over" in env.search("more")  # calls after the end are refused, not recorded
    assert len(env.trajectory.steps) == 5

    # a row whose image file is not on this machine: the PIL image is used
    moved = Task.from_dict({**task.to_dict(), "images": [str(tmp_path / "elsewhere.png")]})
    row2 = dict(task_to_row(task, "chat"), task=json.dumps(moved.to_dict()))
    env.reset(**row2)
    assert Path(env.current_image).is_file() and env.current_image != moved.images[0]

    env.reset(**task_to_row(search_tasks[0], "tags"))
    with pytest.raises(ValueError, match="protocol"):
        AgentEnv(protocol="chat").reset(**task_to_row(search_tasks[0], "tags"))
    env2 = AgentEnv(protocol="tags", search=search)
    env2.reset(**task_to_row(search_tasks[0], "tags"))
    assert search_tasks[0].answers[0] in env2.search(search_tasks[0].gold_chain[0]["content"])


def test_rubric_scores_the_finished_episode_once(coding_tasks, tmp_path):
    from arftlib.rewards import agentic_rubric, score_episode

    rubric = agentic_rubric("coding")
    env = AgentEnv(protocol="chat", work_dir=tmp_path, rubric=rubric)
    env.reset(**task_to_row(coding_tasks[0], "chat"))
    env.diagnose("{'rotation180'}")
    env.answer(coding_tasks[0].answers[0])
    traj = env.trajectory
    assert env.done and isinstance(traj.reward, float) and set(traj.reward_components) <= set(rubric.names)
    assert traj.reward == pytest.approx(score_episode(traj, rubric)["total"])
    # observations are typed: the diagnosis came back as the problem tool's text
    assert traj.steps[0].observation.tool == "problem" and traj.steps[0].observation.error_category is None
    env.reset(**task_to_row(coding_tasks[0], "chat"))
    env.finish()  # never answered: closed unanswered, still scored
    assert env.done and env.trajectory.reward <= traj.reward


def test_tool_failures_are_typed_observations(coding_tasks, tmp_path):
    env = AgentEnv(protocol="chat", work_dir=tmp_path, image_budget=1)
    env.reset(**task_to_row(coding_tasks[0], "chat"))
    env.run_code("raise RuntimeError('nope')")
    bad = env.trajectory.steps[-1].observation
    assert bad.kind == "error" and bad.tool == "code" and bad.error_category == "code_error" and not bad.is_evidence
    env.run_code(CODE.split("```python\n")[1].split("```")[0])
    ok = env.trajectory.steps[-1].observation
    assert ok.kind == "image" and ok.is_evidence and ok.error_category is None
    env.run_code("pass")  # over the image budget: refused, not run
    assert env.trajectory.steps[-1].observation.error_category == "image_budget"
    env.search("x")  # not a coding tool
    assert env.trajectory.steps[-1].observation.error_category == "invalid_action"


def test_broken_sandbox_fails_loud(coding_tasks, tmp_path):
    from arftlib.tools.sandbox import CodeResult

    def broken(code, image, **kw):
        return CodeResult(ok=False, error="Sandbox unavailable: test", stdout="", output_image=None, elapsed_s=0.0,
                          category="infra")

    env = AgentEnv(protocol="chat", work_dir=tmp_path, code_runner=broken)
    env.reset(**task_to_row(coding_tasks[0], "chat"))
    with pytest.raises(RuntimeError, match="sandbox itself failed"):
        env.run_code("pass")


def test_fail_loud_on_bad_input(tmp_path):
    env = AgentEnv()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer> x </answer>")
    with pytest.raises(ValueError):
        env.reset(task="{not json")
    with pytest.raises(ValueError, match="question"):
        env.reset(foo=1)
    with pytest.raises(FileNotFoundError):
        env.reset(task=Task(id="x", question="q", images=[str(tmp_path / "missing.png")], answers=["a"], kind="coding"))
    with pytest.raises(ValueError):
        AgentEnv(protocol="xml")
    t = Task(id="m", question="q?", images=[], answers=["a"], kind="multihop")
    env.reset(task=t)
    assert isinstance(env.step("<think> x </think><answer> a </answer>"), Observation)


@pytest.mark.parametrize("with_title", [False, True])
def test_training_data_and_the_live_env_render_search_hits_identically(search_tasks, search, with_title):
    """One renderer (`prompts.render_search_hits`): the step-wise training prompt after a gold search holds exactly
    the text the live environment shows after the same query."""
    from arftlib.data.stepwise import expand_stepwise

    task = search_tasks[1]
    rows = expand_stepwise(task, search=search, k=4, search_with_title=with_title)
    answer_row = next(r for r in rows if r["gold_action"] == "answer")
    env = AgentEnv(protocol="tags", search=search, search_k=4, search_with_title=with_title)
    env.reset(task)
    obs = env.step(f"<think> look </think>\n<search> {task.gold_chain[0]['content']} </search>")
    assert obs.tool == "search" and obs.hits and obs.text.startswith("<information> ")
    assert obs.text in answer_row["context"]
    assert answer_row["context"].endswith(obs.text)


def test_question_after_image_repeats_the_question_under_a_returned_image(coding_tasks, tmp_path):
    """`question_after_image`: a code turn that returns an image is followed by the question (chat only), so the
    answer turn sees image + question as the first turn did; failed code, tags and the default show no question."""
    from arftlib.config import get_config
    from arftlib.train.datasets import chat_stepwise_rows

    task = coding_tasks[0]
    q = f"<query> {task.question} </query>"
    on = AgentEnv(protocol="chat", work_dir=tmp_path, question_after_image=True)
    on.reset(**task_to_row(task, "chat"))
    reply = on.run_code(CODE.split("```python\n")[1].split("```")[0])  # TRL's tool reply: image, then the text
    assert reply[0]["type"] == "image" and reply[1]["text"].endswith("\n" + q)
    assert on.run_code("raise RuntimeError('nope')")[0]["text"].count(task.question) == 0  # no image: no question
    on.reset(**task_to_row(task, "chat"))
    obs = on.step(CODE)  # a text turn: the same observation
    assert obs.kind == "image" and obs.text == "The code ran. The processed image is shown.\n" + q
    off = AgentEnv(protocol="chat", work_dir=tmp_path)
    off.reset(**task_to_row(task, "chat"))
    assert off.step(CODE).text == "The code ran. The processed image is shown."
    tags = AgentEnv(protocol="tags", work_dir=tmp_path, question_after_image=True)
    tags.reset(**task_to_row(task, "tags"))
    assert tags.step(CODE).text == ""  # the tags layout keeps the question with the image already
    # the warm start's gold-step rows come from the same environment: the answer row's last observation holds it
    cfg = get_config("tiny-cpu", protocol="chat", question_after_image=True)
    rows = chat_stepwise_rows(task, cfg, work_dir=str(tmp_path))
    answer_row = next(r for r in rows if r["gold_action"] == "answer")
    shown = [b.get("text", "") for m in answer_row["prompt"] for b in (m["content"] if isinstance(m["content"], list)
                                                                      else [{"text": m["content"]}])]
    assert sum(q in s for s in shown) == 2  # the first message and the observation under the restored image
