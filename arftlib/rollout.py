"""The one batched multi-turn rollout loop for evaluation: `run_episodes(tasks, policy, ...)`.

Up to `batch_size` episodes are live at once, each an `env.AgentEnv`. Every round, ALL live episodes generate
together — one `policy.generate` call over the batch (`policies.py`) — then the batch's turns are acted on
concurrently in a `ThreadPoolExecutor` (`env.step`: parsing, code in the sandbox, search), episodes that
answered or ran out of turns leave the batch, their trajectories are written (`trajectories.TrajectoryWriter`,
flushed per round) and waiting tasks take their places. `sequential=True` runs the same episodes one question
at a time, each turn generated alone and its tool call run inline — the way the reference evaluation scripts
work; the same environment, tools and policy are used, so the two modes produce the same trajectories with a
deterministic policy (tested with `policies.ScriptedPolicy`).

How fast it is against the reference-style loop is measured by `experiments/bench_rollout.py`
(`python -m arftlib bench rollout`; figures in the README).

Left out: continuous batching inside a round (a round waits for its longest completion), prefix sharing between
different episodes, several samples per prompt in one call (pass a task several times instead), and multi-GPU
data parallelism (run one process per GPU on a shard of the tasks).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arftlib.env import AgentEnv, make_env
from arftlib.policies import EpisodeContext, Generation, Policy
from arftlib.trajectories import TrajectoryWriter
from arftlib.types import Task, Trajectory

__all__ = ["run_episodes", "summarize"]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, leave=False)


def _episode_ids(tasks: Sequence[Task], given: Sequence[str] | None) -> list[str]:
    if given is not None:
        ids = [str(x) for x in given]
        if len(ids) != len(tasks):
            raise ValueError(f"episode_ids has {len(ids)} entries for {len(tasks)} tasks")
    else:
        seen: collections.Counter[str] = collections.Counter()
        ids = []
        for t in tasks:
            k = seen[str(t.id)]
            ids.append(str(t.id) if k == 0 else f"{t.id}#{k}")
            seen[str(t.id)] += 1
    if len(set(ids)) != len(ids):
        raise ValueError("episode ids must be unique")
    return ids


def run_episodes(
    tasks: Sequence[Task],
    policy: Policy,
    *,
    protocol: str = "tags",
    max_turns: int = 5,
    image_budget: int = 4,
    batch_size: int = 16,
    sequential: bool = False,
    env_factory: Callable[[], AgentEnv] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    writer: TrajectoryWriter | str | os.PathLike | None = None,
    tool_workers: int = 8,
    episode_ids: Sequence[str] | None = None,
    progress: bool = True,
    desc: str | None = None,
    stats: dict[str, Any] | None = None,
) -> list[Trajectory]:
    """Run every task as one episode and return the finished trajectories in task order.

    `env_factory()` makes the environments (default `AgentEnv(protocol=…, max_turns=…, image_budget=…,
    **env_kwargs)`). `writer` is a `TrajectoryWriter` or a folder for a new one (closed at the end);
    trajectories are written as they finish, and the returned trajectories' tool images then point at the
    stored copies. Without a writer, tool image files are removed with their environment (paths dangle).
    `sequential=True` is the one-question-at-a-time loop.
    `stats`, when given, is filled with counters: episodes, rounds, generate_calls, generate_s,
    tool_wall_s, wall_s, cpu_s (this process's CPU time), turns.
    """
    tasks = list(tasks)
    ids = _episode_ids(tasks, episode_ids)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if env_factory is None:
        kw = dict(env_kwargs or {})

        def env_factory() -> AgentEnv:
            return make_env(protocol=protocol, max_turns=max_turns, image_budget=image_budget, **kw)

    own_writer = writer is not None and not isinstance(writer, TrajectoryWriter)
    w: TrajectoryWriter | None = TrajectoryWriter(writer) if own_writer else writer  # type: ignore[assignment]
    st = stats if stats is not None else {}
    st.update(episodes=0, rounds=0, generate_calls=0, generate_s=0.0, tool_wall_s=0.0, wall_s=0.0, cpu_s=0.0, turns=0,
              reused_prompt_tokens=0)
    results: list[Trajectory | None] = [None] * len(tasks)
    bar = _progress(len(tasks), desc or ("episodes (sequential)" if sequential else "episodes"), progress)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    pool = None if sequential else ThreadPoolExecutor(max_workers=max(1, tool_workers), thread_name_prefix="tools")

    def start(i: int) -> AgentEnv:
        env = env_factory()
        env.reset(task=tasks[i], episode_id=ids[i])
        return env

    def finish(i: int, env: AgentEnv) -> None:
        traj = env.trajectory
        if w is not None:
            rec = w.write(traj)
            for step, d in zip(traj.steps, rec["steps"]):  # point at the stored copies (the env's go away)
                if step.observation is not None and step.observation.image:
                    step.observation.image = str(w.dir / d["observation"]["image"])
        env.close()
        forget = getattr(policy, "forget", None)
        if forget is not None:  # a policy that caches per episode (HFPolicy's KV reuse) frees it now
            forget([traj.episode_id])
        results[i] = traj
        st["episodes"] += 1
        bar.update(1)

    def context(env: AgentEnv) -> EpisodeContext:
        return EpisodeContext(task=env.task, turn=len(env.trajectory.steps), episode_id=env.trajectory.episode_id,
                              protocol=env.protocol, tool_format=getattr(env, "tool_format", None))

    def act(env: AgentEnv, g: Generation) -> None:
        env.step(g.text, prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens,
                 image_tokens=g.image_tokens, generate_s=g.seconds)

    def generate(envs: list[AgentEnv]) -> list[Generation]:
        t0 = time.perf_counter()
        gens = policy.generate([e.messages for e in envs], [context(e) for e in envs])
        st["generate_s"] += time.perf_counter() - t0
        st["generate_calls"] += 1
        st["reused_prompt_tokens"] += sum(g.reused_tokens for g in gens)
        if len(gens) != len(envs):
            raise RuntimeError(f"policy returned {len(gens)} generations for {len(envs)} prompts")
        return gens

    try:
        if sequential:
            for i in range(len(tasks)):
                env = start(i)
                while not env.done:
                    g = generate([env])[0]
                    t0 = time.perf_counter()
                    act(env, g)
                    st["tool_wall_s"] += time.perf_counter() - t0
                    st["turns"] += 1
                    st["rounds"] += 1
                finish(i, env)
        else:
            queue = collections.deque(range(len(tasks)))
            live: list[tuple[int, AgentEnv]] = []
            while queue or live:
                while queue and len(live) < batch_size:
                    i = queue.popleft()
                    live.append((i, start(i)))
                gens = generate([e for _, e in live])
                t0 = time.perf_counter()
                if len(live) == 1:
                    act(live[0][1], gens[0])
                else:
                    list(pool.map(act, [e for _, e in live], gens))  # re-raises the first exception
                st["tool_wall_s"] += time.perf_counter() - t0
                st["turns"] += len(live)
                st["rounds"] += 1
                still = []
                for i, env in live:
                    if env.done:
                        finish(i, env)
                    else:
                        still.append((i, env))
                live = still
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
        if own_writer and w is not None:
            w.close()
        st["wall_s"] = time.perf_counter() - t_start
        st["cpu_s"] = time.process_time() - cpu_start  # this process only (sandbox children not included)
    return [r for r in results if r is not None]


def summarize(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Totals and means over trajectories: episodes, answered, turns, tool calls/errors, tokens, f1/em."""
    n = len(trajs)
    tot: collections.Counter[str] = collections.Counter()
    for t in trajs:
        for k, v in t.metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tot[k] += v
    out: dict[str, Any] = {"episodes": n}
    for k in ("answered", "turns", "tool_calls", "tool_errors", "invalid_turns", "searches", "code_runs",
              "diagnoses", "images_shown", "image_budget_refusals", "prompt_tokens", "completion_tokens",
              "image_tokens"):
        out[k] = int(tot[k])
    for k in ("f1", "em", "f1_corrected", "em_corrected"):
        if n and all(k in t.metrics for t in trajs):
            out[k] = round(100 * tot[k] / n, 2)
    return out


