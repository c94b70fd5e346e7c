"""arftlib.rollout and arftlib.trajectories: batched vs sequential loop, policies, the trajectory store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arftlib.policies import EpisodeContext, Generation, HFPolicy, ScriptedPolicy, VLLMPolicy
from arftlib.rollout import run_episodes, summarize
from arftlib.turns import gold_turns
from arftlib.trajectories import TrajectoryWriter, read_trajectories
from arftlib.types import Trajectory


def _comparable(traj: Trajectory) -> dict:
    """A trajectory without timings and file locations (which differ between runs)."""
    d = traj.to_dict()
    for k in ("generate_s", "tool_s"):
        d["metrics"].pop(k, None)
    for s in d["steps"]:
        s["generate_s"] = 0.0
        if s["observation"]:
            s["observation"]["elapsed_s"] = 0.0
            if s["observation"]["image"]:
                s["observation"]["image"] = Path(s["observation"]["image"]).name
    return d


def test_gold_turns_use_reference_tags(tasks):
    turns = gold_turns(tasks[0])
    assert turns[0].startswith("<think>") and "\n<problem> {'rotation180'} </problem>" in turns[0]
    assert "<code>\n```python\nimport cv2" in turns[1] and turns[1].endswith("```\n</code>")
    assert turns[2].endswith(f"<answer> {tasks[0].answers[0]} </answer>")


@pytest.mark.parametrize("protocol", ["tags", "chat"])
def test_batched_equals_sequential_with_oracle(tasks, search, tmp_path, protocol):
    kw = dict(protocol=protocol, env_kwargs={"search": search, "work_dir": str(tmp_path / "w")}, progress=False)
    seq_stats, bat_stats, small_stats = {}, {}, {}
    seq = run_episodes(tasks, ScriptedPolicy(), sequential=True, stats=seq_stats, **kw)
    bat = run_episodes(tasks, ScriptedPolicy(), batch_size=len(tasks), stats=bat_stats, **kw)
    small = run_episodes(tasks, ScriptedPolicy(), batch_size=4, stats=small_stats, **kw)  # refills the batch
    assert [t.task.id for t in seq] == [t.id for t in tasks]
    assert [_comparable(t) for t in seq] == [_comparable(t) for t in bat] == [_comparable(t) for t in small]
    s = summarize(bat)
    assert s["f1"] == 100.0 and s["em"] == 100.0 and s["tool_errors"] == 0 and s["answered"] == len(tasks)
    assert s["code_runs"] == 6 and s["searches"] == 5
    # one generate call per round: coding chains have 3 turns, search chains 2
    assert bat_stats["generate_calls"] == 3 and seq_stats["generate_calls"] == sum(len(t.steps) for t in seq)
    assert small_stats["generate_calls"] > 3 and bat_stats["episodes"] == len(tasks)


def test_scripted_turns_and_max_turns(tasks, tmp_path):
    t = tasks[0]
    pol = ScriptedPolicy({t.id: ["no tags here", "<think> x </think><answer> wrong </answer>"]})
    [traj] = run_episodes([t], pol, protocol="tags", progress=False, env_kwargs={"work_dir": str(tmp_path)})
    assert [s.action.kind for s in traj.steps] == ["invalid", "answer"] and traj.metrics["f1"] == 0.0
    pol = ScriptedPolicy({t.id: []})  # past its script the policy writes invalid turns
    [traj] = run_episodes([t], pol, max_turns=3, progress=False)
    assert len(traj.steps) == 3 and traj.finished and traj.final_answer is None
    with pytest.raises(ValueError, match="EpisodeContext"):
        ScriptedPolicy().generate([[]])


class _WrongCount:
    def generate(self, batch, contexts=None):
        return [Generation(text="x")]


def test_policy_must_answer_every_prompt(tasks):
    with pytest.raises(RuntimeError, match="2 prompts"):
        run_episodes(tasks[:2], _WrongCount(), batch_size=2, progress=False)


def test_trajectory_store_round_trip(tasks, search, tmp_path):
    store = tmp_path / "store"
    trajs = run_episodes(tasks, ScriptedPolicy(), protocol="chat", writer=store, progress=False,
                         env_kwargs={"search": search})
    lines = (store / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(tasks)
    rec = next(json.loads(x) for x in lines if json.loads(x)["task"]["kind"] == "coding")
    rel = rec["steps"][1]["observation"]["image"]
    assert rel.startswith("images/") and (store / rel).is_file()  # relative, copied in
    back = read_trajectories(store)
    by_id = {t.episode_id: t for t in trajs}
    assert sorted(by_id) == sorted(t.episode_id for t in back)
    for t in back:
        assert t.to_dict() == by_id[t.episode_id].to_dict()  # returned trajectories point at the stored images
        for s in t.steps:
            if s.observation and s.observation.image:
                assert Path(s.observation.image).is_file()
    raw = read_trajectories(store, resolve_images=False)
    coding = next(t for t in raw if t.task.kind == "coding")  # stored in finishing order: search ends first
    assert coding.steps[1].observation.image.startswith("images/")
    # appending a newer version of an episode replaces it on reading
    changed = back[0]
    changed.reward = 0.5
    with TrajectoryWriter(store, mode="a") as w:
        w.write(changed)
    again = read_trajectories(store)
    assert len(again) == len(tasks) and again[0].episode_id == changed.episode_id and again[0].reward == 0.5
    (store / "trajectories.jsonl").write_text("{broken\n", encoding="utf-8")
    with pytest.raises(ValueError, match=":1:"):
        read_trajectories(store)


def test_vllm_policy_missing_is_clear():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install vllm"):
            VLLMPolicy("tiny")
    else:  # pragma: no cover
        pytest.skip("vllm is installed")


@pytest.fixture(scope="module")
def tiny_policy():
    pytest.importorskip("torch")
    return HFPolicy.from_pretrained("tiny", max_new_tokens=12, seed=0)


def test_hf_policy_batch_with_images(tiny_policy, tasks, tmp_path):
    from arftlib.env import AgentEnv

    envs = []
    for t in (tasks[0], tasks[6], tasks[1]):  # coding + search (different image sizes and prompt lengths)
        for protocol in ("tags", "chat"):
            e = AgentEnv(protocol=protocol)
            e.reset(task=t)
            envs.append(e)
    ctx = [EpisodeContext(e.task, 0, e.trajectory.episode_id, e.protocol) for e in envs]
    gens = tiny_policy.generate([e.messages for e in envs], ctx)
    assert len(gens) == len(envs)
    for g in gens:
        assert isinstance(g.text, str) and 1 <= g.completion_tokens <= 12
        assert g.prompt_tokens > g.image_tokens > 0 and g.seconds > 0
        for tok in ("<|image_pad|>", "<|video_pad|>"):
            assert tok not in g.text
    # greedy decoding: a sequence decodes the same alone and inside a left-padded batch
    alone = tiny_policy.generate([envs[0].messages])[0]
    assert alone.text == gens[0].text and alone.prompt_tokens == gens[0].prompt_tokens


def test_hf_policy_runs_episodes(tiny_policy, tasks, search, tmp_path):
    trajs = run_episodes(tasks[:2] + tasks[6:8], tiny_policy, protocol="chat", max_turns=2, batch_size=4,
                         writer=tmp_path / "store", progress=False, env_kwargs={"search": search})
    assert len(trajs) == 4 and all(t.finished for t in trajs)
    for t in trajs:
        assert t.metrics["prompt_tokens"] > 0 and t.metrics["completion_tokens"] > 0
        assert all(s.generate_s > 0 for s in t.steps)
    assert len(read_trajectories(tmp_path / "store")) == 4
