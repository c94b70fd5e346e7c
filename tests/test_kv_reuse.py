"""arftlib.kv_reuse: per-episode KV reuse across turns gives the same greedy tokens as `model.generate` on the
whole prompt, reuses what it should (and nothing it should not), and keeps to its memory budget. The `tasks` and
`search` fixtures are in conftest.py."""

from __future__ import annotations

import pytest

from arftlib.policies import EpisodeContext, HFPolicy, ScriptedPolicy
from arftlib.rollout import run_episodes

torch = pytest.importorskip("torch")


class _Probe:
    """Drives episodes with the gold chain (so prompts grow with real actions, tool results and tool images)
    while, every round, the KV-reusing policy generates for the whole batch and the reference policy
    (`model.generate`, whole prompt) generates each prompt alone; both outputs are recorded."""

    def __init__(self, policy: HFPolicy):
        self.policy = policy
        self.reference = policy.without_kv_reuse()
        self.oracle = ScriptedPolicy()
        self.pairs: list[tuple[str, str, int, int]] = []  # (reused text, reference text, prompt, reused tokens)

    def generate(self, batch, contexts=None):
        got = self.policy.generate(batch, contexts)
        for messages, ctx, g in zip(batch, contexts, got):
            ref = self.reference.generate([messages], [ctx])[0]  # model.generate (no cache), same prompt text
            assert g.prompt_tokens == ref.prompt_tokens and g.image_tokens == ref.image_tokens
            self.pairs.append((g.text, ref.text, g.prompt_tokens, g.reused_tokens))
        return self.oracle.generate(batch, contexts)

    def forget(self, ids):
        self.policy.forget(ids)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("protocol", ["tags", "chat", "chat-tool-calls"])
def test_reuse_matches_generate_on_growing_episodes(tasks, search, tmp_path, protocol, arch):
    name = "tiny" if arch == "qwen2_5_vl" else "tiny:qwen3_vl"
    policy = HFPolicy.from_pretrained(name, max_new_tokens=10, seed=0)
    assert policy.engine is not None
    probe = _Probe(policy)
    tool_calls = protocol == "chat-tool-calls"
    protocol = "chat" if tool_calls else protocol
    trajs = run_episodes(tasks, probe, protocol=protocol, max_turns=4, batch_size=4, progress=False,
                         env_kwargs={"search": search, "work_dir": str(tmp_path), "tool_calls": tool_calls})
    assert all(t.metrics["answered"] for t in trajs)  # the gold chains ran through the real tools
    assert len(probe.pairs) == sum(len(t.steps) for t in trajs)
    mismatched = [(a, b) for a, b, _, _ in probe.pairs if a != b]
    assert not mismatched, f"{len(mismatched)}/{len(probe.pairs)} turns differ from model.generate: {mismatched[:2]}"
    later = [(p, r) for _, _, p, r in probe.pairs if r > 0]
    assert later, "no turn reused its episode's cache"
    assert all(r < p for p, r in later)
    stats = policy.engine.stats
    assert stats["reused_tokens"] > 0.5 * stats["prompt_tokens"] - stats["prefilled_tokens"]
    assert policy.engine.cached_tokens() == 0  # finished episodes were forgotten
    if protocol == "chat":  # tool images arrive as new image content after the cached prefix
        assert any(s.observation is not None and s.observation.image for t in trajs for s in t.steps)


def test_a_changed_image_is_not_reused(tasks, tmp_path):
    from PIL import Image

    from arftlib.env import AgentEnv

    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=8, seed=0)
    env = AgentEnv(protocol="tags")
    env.reset(task=tasks[0], episode_id="same-id")
    messages = env.messages
    ctx = [EpisodeContext(tasks[0], 0, "same-id", "tags")]
    policy.generate([messages], ctx)
    # the same prompt with another image of the same size: identical token ids, different pixels
    src = next(b["image"] for b in messages[0]["content"] if b.get("type") == "image")
    with Image.open(src) as im:
        other = Image.new("RGB", im.size, (7, 200, 30))
    swapped = [dict(messages[0], content=[dict(b, image=other) if b.get("type") == "image" else b
                                          for b in messages[0]["content"]])]
    swapped += messages[1:]
    got = policy.generate([swapped], ctx)[0]
    ids = policy.engine.prepare(policy.processor.apply_chat_template(swapped, tokenize=False,
                                                                     add_generation_prompt=True), [other]).ids
    first_image = ids.index(policy.engine.image_token_id)
    assert got.reused_tokens <= first_image
    assert got.text == policy.without_kv_reuse().generate([swapped])[0].text
    again = policy.generate([swapped], ctx)[0]  # now the cache holds the new image: reuse is back
    assert again.reused_tokens > first_image and again.text == got.text


def test_budget_bounds_the_cache_and_sampling_runs(tasks):
    from arftlib.env import AgentEnv

    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=6, seed=0, kv_budget_tokens=1500,
                                      temperature=0.9, top_p=0.9, top_k=20, repetition_penalty=1.2)
    envs, ctx = [], []
    for i, t in enumerate(tasks[:4]):
        e = AgentEnv(protocol="tags")
        e.reset(task=t, episode_id=f"ep{i}")
        envs.append(e)
        ctx.append(EpisodeContext(t, 0, f"ep{i}", "tags"))
    gens = policy.generate([e.messages for e in envs], ctx)
    assert all(1 <= g.completion_tokens <= 6 for g in gens)
    assert 0 < policy.engine.cached_tokens() <= 1500  # ~700 tokens an episode: at most two kept
    assert len(policy.engine._episodes) <= 2
    policy.forget([f"ep{i}" for i in range(4)])
    assert policy.engine.cached_tokens() == 0


def test_prepare_tokenizes_like_the_processor(tasks):
    from arftlib.env import AgentEnv
    from arftlib.policies import images_of, load_image

    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=4)
    for protocol in ("tags", "chat"):
        env = AgentEnv(protocol=protocol)
        env.reset(task=next(t for t in tasks if t.kind == "search"))
        text = policy.processor.apply_chat_template(env.messages, tokenize=False, add_generation_prompt=True)
        images = images_of(env.messages)
        ours = policy.engine.prepare(text, images)
        theirs = policy.processor(text=[text], images=[load_image(x, {}) for x in images], return_tensors="pt")
        assert ours.ids == theirs["input_ids"][0].tolist()
        pos, _ = policy.model.model.get_rope_index(theirs["input_ids"], mm_token_type_ids=theirs["mm_token_type_ids"],
                                                   image_grid_thw=theirs["image_grid_thw"])
        assert torch.equal(ours.positions, pos[:, 0])


def test_bench_rollout_reports_all_three_loops(tmp_path):
    from experiments.bench_rollout import bench_rollout

    r = bench_rollout(8, max_turns=2, max_new_tokens=6, threads=1, work_dir=tmp_path)
    assert r["kv_reuse"] is True and r["n_tasks"] == 8
    # the same greedy episodes from the reference-style loop, the batched loop and batched without reuse
    assert r["identical_episodes"] == 8 and r["identical_episodes_no_kv_reuse"] == 8
    assert r["sequential"]["reused_prompt_tokens"] == 0 == r["batched_no_kv_reuse"]["reused_prompt_tokens"]
    assert 0 < r["batched"]["reused_prompt_tokens"] < r["batched"]["prompt_tokens"]
    assert r["sequential"]["generate_calls"] == r["sequential"]["turns"] == 16
    assert r["batched"]["generate_calls"] == 2
    for key in ("batched_eps_per_s", "sequential_eps_per_s", "batched_no_kv_reuse_eps_per_s"):
        assert r[key] > 0


def test_image_cache_keeps_to_its_byte_budget(tasks):
    from arftlib.env import AgentEnv

    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=6, seed=0)
    policy.engine._image_cache_bytes = 1  # at most one processed image is kept
    envs = []
    for t in tasks[:4]:
        e = AgentEnv(protocol="tags")
        e.reset(task=t)
        envs.append(e)
    ctx = [EpisodeContext(e.task, 0, e.trajectory.episode_id, "tags") for e in envs]
    gens = policy.generate([e.messages for e in envs], ctx)
    assert len(policy.engine._images) == 1
    plain = policy.without_kv_reuse()
    assert [g.text for g in gens] == [plain.generate([e.messages])[0].text for e in envs]


def test_eager_attention_matches_too_and_flash_attention_falls_back(tasks, search, tmp_path):
    from arftlib.kv_reuse import supports_kv_reuse

    policy = HFPolicy.from_pretrained("tiny", max_new_tokens=8, seed=0, load_kwargs={"attn_implementation": "eager"})
    assert policy.model.config._attn_implementation == "eager" and policy.engine is not None
    probe = _Probe(policy)
    run_episodes(tasks[:3] + tasks[6:8], probe, protocol="chat", max_turns=3, batch_size=5, progress=False,
                 env_kwargs={"search": search, "work_dir": str(tmp_path)})
    assert [a for a, _, _, _ in probe.pairs] == [b for _, b, _, _ in probe.pairs]
    assert any(r > 0 for _, _, _, r in probe.pairs)
    policy.model.config._attn_implementation = "flash_attention_2"  # pretend: the engine cannot pass its masks
    assert not supports_kv_reuse(policy.model)
