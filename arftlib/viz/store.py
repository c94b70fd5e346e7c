"""Trajectory stores on disk, and the facets viewers and plots filter and group by.

`resolve_store(path)` accepts a trajectory folder (`trajectories.jsonl` + `images/`), its jsonl file, a training
run directory or an evaluation output (both keep the store in `trajectories/`); `newest_store(root)` finds the most
recently written store below a folder; `load_store` reads one. Facets: degradation labels, hop count, benchmark,
score ("reward" when the run recorded one, else the answer F1), failed tool calls.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from arftlib.trajectories import TRAJECTORIES_FILE
from arftlib.types import Trajectory

@dataclasses.dataclass
class Store:
    """One trajectory folder, loaded: `name` (for menus), `dir` (holds trajectories.jsonl), the episodes."""

    name: str
    dir: Path
    trajectories: list[Trajectory]


def find_stores(root: str | os.PathLike) -> list[Path]:
    """Every folder under `root` (itself included) holding a `trajectories.jsonl`, newest file first."""
    root = Path(root)
    if not root.exists():
        return []
    found = {p.parent for p in root.rglob(TRAJECTORIES_FILE) if p.is_file()}
    return sorted(found, key=lambda d: (d / TRAJECTORIES_FILE).stat().st_mtime, reverse=True)


def newest_store(*roots: str | os.PathLike) -> Path:
    """The most recently written trajectory folder under any of `roots` (FileNotFoundError naming them if none)."""
    stores = [s for r in roots for s in find_stores(r)]
    if not stores:
        raise FileNotFoundError(f"no {TRAJECTORIES_FILE} under {', '.join(str(r) for r in roots)} — run an "
                                f"evaluation (python -m arftlib eval …) or a training run first")
    return max(stores, key=lambda d: (d / TRAJECTORIES_FILE).stat().st_mtime)


def resolve_store(path: str | os.PathLike) -> Path:
    """The trajectory folder meant by `path`: the folder itself, its jsonl file, or a run / evaluation output
    directory whose `trajectories/` holds it (an evaluation's `direct/` baseline is a separate store: name it)."""
    p = Path(path)
    if p.is_file() and p.name.endswith(".jsonl"):
        return p.parent
    if (p / TRAJECTORIES_FILE).is_file():
        return p
    if (p / "trajectories" / TRAJECTORIES_FILE).is_file():
        return p / "trajectories"
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    below = find_stores(p)
    if len(below) == 1:
        return below[0]
    if not below:
        raise FileNotFoundError(f"{p}: no {TRAJECTORIES_FILE} in it or below it")
    raise ValueError(f"{p} holds {len(below)} trajectory stores; name one: " + ", ".join(str(s) for s in below))


def load_store(path: str | os.PathLike, name: str | None = None) -> Store:
    """Read the store meant by `path` (see `resolve_store`)."""
    from arftlib.trajectories import read_trajectories

    d = resolve_store(path)
    if name is None:
        name = d.parent.name if d.name == "trajectories" else d.name
    return Store(name=name, dir=d, trajectories=read_trajectories(d))


# ==============================================================================================================
# facets: what filters and plots look at
# ==============================================================================================================
def degradations_of(traj: Trajectory) -> list[str]:
    """The task's degradation labels; coding tasks without any count as "none"; other kinds have none."""
    t = traj.task
    labels = sorted({str(x) for x in (t.degradations or [])})
    if not labels and t.kind == "coding":
        return ["none"]
    return labels


def hops_of(traj: Trajectory) -> int | None:
    """Hop count of a search / multi-hop task (`Task.hops`); None for coding tasks or when unknown."""
    return traj.task.hops


def as_number(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)) and math.isfinite(float(x)):
        return float(x)
    return None


def score_of(traj: Trajectory) -> float | None:
    """The number episodes are sorted and filtered by: the reward when recorded, else the answer F1."""
    r = as_number(traj.reward)
    return r if r is not None else as_number(traj.metrics.get("f1"))


def count_tool_errors(traj: Trajectory) -> int:
    n = as_number(traj.metrics.get("tool_errors"))
    seen = sum(1 for s in traj.steps if s.observation is not None and (s.observation.kind == "error"
                                                                        or s.observation.error))
    return max(int(n or 0), seen)


def benchmark_of(traj: Trajectory) -> str:
    return traj.task.benchmark or traj.task.kind or "?"


def episode_facets(traj: Trajectory) -> dict[str, Any]:
    """The per-episode values the filters, the index table and the plots use."""
    return {
        "episode": traj.episode_id or traj.task.id,
        "task": traj.task.id,
        "benchmark": benchmark_of(traj),
        "kind": traj.task.kind,
        "split": traj.task.split,
        "degradations": degradations_of(traj),
        "hops": hops_of(traj),
        "step": traj.training_step,
        "group": traj.group_id,
        "reward": as_number(traj.reward),
        "score": score_of(traj),
        "advantage": as_number(traj.advantage),
        "f1": as_number(traj.metrics.get("f1")),
        "em": as_number(traj.metrics.get("em")),
        "turns": len(traj.steps),
        "tool_calls": int(as_number(traj.metrics.get("tool_calls")) or sum(
            1 for s in traj.steps if s.action.kind in ("search", "code"))),
        "tool_errors": count_tool_errors(traj),
        "failed_tools": count_tool_errors(traj) > 0,
        "answered": traj.final_answer is not None,
    }


def filter_trajectories(
    trajs: Iterable[Trajectory],
    *,
    benchmark: str | None = None,
    degradation: str | None = None,
    hops: int | None = None,
    tool_errors: str = "any",
    reward_range: tuple[float, float] | None = None,
    step: int | None = None,
    text: str = "",
) -> list[Trajectory]:
    """The episodes that pass every given filter. `tool_errors`: "any" | "failed" (at least one failed tool
    call) | "clean" (none). `reward_range` is inclusive on `score_of` (an episode without any score passes
    only when no range is given). `text` is a case-insensitive substring of the question, a model turn or an
    observation."""
    if tool_errors not in ("any", "failed", "clean"):
        raise ValueError(f"tool_errors must be 'any', 'failed' or 'clean', not {tool_errors!r}")
    needle = text.strip().lower()
    out = []
    for t in trajs:
        if benchmark and benchmark_of(t) != benchmark:
            continue
        if degradation and degradation not in degradations_of(t):
            continue
        if hops is not None and hops_of(t) != hops:
            continue
        if tool_errors != "any" and (count_tool_errors(t) > 0) != (tool_errors == "failed"):
            continue
        if step is not None and t.training_step != step:
            continue
        if reward_range is not None:
            s = score_of(t)
            lo, hi = reward_range
            if s is None or s < lo - 1e-9 or s > hi + 1e-9:
                continue
        if needle and not _contains(t, needle):
            continue
        out.append(t)
    return out


def _contains(t: Trajectory, needle: str) -> bool:
    parts = [t.task.question, t.task.id, t.episode_id, t.final_answer or "", *t.task.answers]
    for s in t.steps:
        parts.append(s.model_text)
        if s.observation is not None:
            parts += [s.observation.text, s.observation.error or ""]
    return any(needle in str(p).lower() for p in parts)


def sort_key(t: Trajectory) -> tuple[int, float]:
    s = score_of(t)
    return (1, 0.0) if s is None else (0, -s)


def group_trajectories(trajs: Iterable[Trajectory]) -> "OrderedDict[tuple[int | None, str], list[Trajectory]]":
    """Episodes by (training step, group): the GRPO group id, or the task id when there is none (evaluation),
    so several runs of one question land together. Groups in order of step then first appearance; members
    best score first (episodes without a score last)."""
    groups: dict[tuple[int | None, str], list[Trajectory]] = OrderedDict()
    for t in trajs:
        key = (t.training_step, t.group_id or f"task {t.task.id}")
        groups.setdefault(key, []).append(t)
    order = sorted(groups, key=lambda k: (k[0] is None, k[0] if k[0] is not None else 0))
    return OrderedDict((k, sorted(groups[k], key=sort_key)) for k in order)

