"""Plots of trajectories (matplotlib; each returns a `Figure`, `plot_all` saves them): reward components over
training steps, tool calls by turn, success (F1/EM) by degradation label and by hop count, turns per episode."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from arftlib.types import Trajectory
from arftlib.viz.html import ACTION_COLOURS
from arftlib.viz.store import as_number, degradations_of, episode_facets, hops_of

# ==============================================================================================================
# plots
# ==============================================================================================================
def _new_ax(ax: Any, figsize: tuple[float, float] = (6.4, 3.6)) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _empty(ax: Any, msg: str) -> None:
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="#6a7385")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reward_components(trajs: Sequence[Trajectory], ax: Any = None) -> Any:
    """Mean of every reward component and of the total reward per training step (lines). Without training
    steps (an evaluation) the means are bars; without any rewards the answer F1/EM stand in (the title says)."""
    fig, ax = _new_ax(ax)
    comps: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trajs:
        for k, v in t.reward_components.items():
            x = as_number(v)
            if x is not None:
                comps[k][t.training_step].append(x)
        r = as_number(t.reward)
        if r is not None:
            comps["total reward"][t.training_step].append(r)
    title = "reward components"
    if not comps:
        for t in trajs:
            for k in ("f1", "em"):
                x = as_number(t.metrics.get(k))
                if x is not None:
                    comps[k.upper()][t.training_step].append(x)
        title = "answer scores (no rewards recorded)"
    if not comps:
        _empty(ax, "no rewards or scores recorded")
        ax.set_title(title)
        return fig
    steps = sorted({s for c in comps.values() for s in c if s is not None})
    if steps:
        for name, by_step in comps.items():
            xs = [s for s in steps if by_step.get(s)]
            ys = [sum(by_step[s]) / len(by_step[s]) for s in xs]
            style = dict(lw=2.6, color="black") if name == "total reward" else dict(lw=1.5)
            ax.plot(xs, ys, marker="o", ms=3, label=name, **style)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel("mean over rollouts")
        ax.legend(fontsize=8, loc="best")
    else:
        names = list(comps)
        means = [sum(comps[n][None]) / max(1, len(comps[n][None])) for n in names]
        ax.bar(range(len(names)), means, color="#7d9bd6")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("mean over episodes")
        title += " (evaluation: no training steps)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_tool_calls_by_turn(trajs: Sequence[Trajectory], ax: Any = None) -> Any:
    """Stacked bars: what the model did at each turn (search, code, diagnosis, answer, invalid), with the
    number of failed tool calls per turn marked."""
    fig, ax = _new_ax(ax)
    counts: dict[str, Counter] = {k: Counter() for k in ACTION_COLOURS}
    errors: Counter = Counter()
    for t in trajs:
        for s in t.steps:
            k = s.action.kind if s.action.kind in counts else "invalid"
            counts[k][int(s.turn) + 1] += 1
            if s.observation is not None and (s.observation.kind == "error" or s.observation.error):
                errors[int(s.turn) + 1] += 1
    turns = sorted({n for c in counts.values() for n in c})
    if not turns:
        _empty(ax, "no turns recorded")
        ax.set_title("actions by turn", fontsize=10)
        return fig
    bottom = [0] * len(turns)
    for k, colour in ACTION_COLOURS.items():
        ys = [counts[k][n] for n in turns]
        if any(ys):
            ax.bar(turns, ys, bottom=bottom, color=colour, label=k)
            bottom = [b + y for b, y in zip(bottom, ys)]
    if any(errors.values()):
        ax.plot(turns, [errors[n] for n in turns], "kx", ms=9, mew=2, label="failed tool calls")
    ax.set_xticks(turns)
    ax.set_xlabel("turn")
    ax.set_ylabel("episodes")
    ax.set_title("actions and tool calls by turn", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _success_bars(ax: Any, groups: Mapping[str, list[tuple[float, float]]], xlabel: str, empty: str) -> None:
    names = list(groups)
    if not names:
        _empty(ax, empty)
        return
    import numpy as np

    x = np.arange(len(names))
    f1 = [100 * sum(a for a, _ in groups[n]) / len(groups[n]) for n in names]
    em = [100 * sum(b for _, b in groups[n]) / len(groups[n]) for n in names]
    ax.bar(x - 0.2, f1, width=0.4, label="F1", color="#7d9bd6")
    ax.bar(x + 0.2, em, width=0.4, label="EM (success)", color="#2e8b57")
    for i, n in enumerate(names):
        ax.text(i, max(f1[i], em[i]) + 2, f"n={len(groups[n])}", ha="center", fontsize=8)
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 112)
    ax.set_ylabel("percent")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _scored(t: Trajectory) -> tuple[float, float] | None:
    f1, em = as_number(t.metrics.get("f1")), as_number(t.metrics.get("em"))
    if f1 is None and em is None:
        return None
    return (f1 or 0.0, em or 0.0)


def plot_success_by_degradation(trajs: Sequence[Trajectory], ax: Any = None) -> Any:
    """Answer F1 and EM (percent) per degradation label of the coding tasks (an item with two labels counts
    under both), with the number of episodes."""
    fig, ax = _new_ax(ax)
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for t in trajs:
        sc = _scored(t)
        if t.task.kind != "coding" or sc is None:
            continue
        for d in degradations_of(t):
            groups[d].append(sc)
    _success_bars(ax, dict(sorted(groups.items())), "degradation", "no scored coding episodes")
    ax.set_title("success by degradation type", fontsize=10)
    return fig


def plot_success_by_hops(trajs: Sequence[Trajectory], ax: Any = None) -> Any:
    """Answer F1 and EM (percent) by hop count of the search / multi-hop tasks."""
    fig, ax = _new_ax(ax)
    groups: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for t in trajs:
        sc = _scored(t)
        h = hops_of(t)
        if h is None or sc is None:
            continue
        groups[h].append(sc)
    _success_bars(ax, {f"{h} hop{'s' if h != 1 else ''}": groups[h] for h in sorted(groups)}, "hops",
                  "no scored search episodes with a hop count")
    ax.set_title("success by hop count", fontsize=10)
    return fig


def plot_turns_per_episode(trajs: Sequence[Trajectory], ax: Any = None) -> Any:
    """Histogram of turns per episode, split into answered and unanswered episodes."""
    fig, ax = _new_ax(ax)
    if not trajs:
        _empty(ax, "no episodes")
        ax.set_title("turns per episode", fontsize=10)
        return fig
    ans = Counter(len(t.steps) for t in trajs if t.final_answer is not None)
    no = Counter(len(t.steps) for t in trajs if t.final_answer is None)
    xs = list(range(min([*ans, *no]), max([*ans, *no]) + 1))
    ax.bar(xs, [ans[x] for x in xs], color="#2e8b57", label="answered")
    ax.bar(xs, [no[x] for x in xs], bottom=[ans[x] for x in xs], color="#b03030", label="no answer")
    ax.set_xticks(xs)
    ax.set_xlabel("turns")
    ax.set_ylabel("episodes")
    ax.set_title("turns per episode", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


PLOTS = {
    "reward_components": plot_reward_components,
    "tool_calls_by_turn": plot_tool_calls_by_turn,
    "success_by_degradation": plot_success_by_degradation,
    "success_by_hops": plot_success_by_hops,
    "turns_per_episode": plot_turns_per_episode,
}


def plot_overview(trajs: Sequence[Trajectory], title: str = "") -> Any:
    """All five plots on one figure (2 × 3 grid; the sixth panel lists the counts)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 7.6), layout="constrained")
    axes = fig.subplots(2, 3)
    for ax, fn in zip(axes.flat, PLOTS.values()):
        fn(trajs, ax=ax)
    f = [episode_facets(t) for t in trajs]
    lines = [f"episodes: {len(f)}",
             f"answered: {sum(x['answered'] for x in f)}",
             f"with a failed tool call: {sum(x['failed_tools'] for x in f)}",
             f"tool calls: {sum(x['tool_calls'] for x in f)}",
             f"mean turns: {sum(x['turns'] for x in f) / len(f):.2f}" if f else "mean turns: —"]
    scores = [x["f1"] for x in f if x["f1"] is not None]
    if scores:
        lines.append(f"mean F1: {100 * sum(scores) / len(scores):.1f}")
    rewards = [x["reward"] for x in f if x["reward"] is not None]
    if rewards:
        lines.append(f"mean reward: {sum(rewards) / len(rewards):.3f}")
    ax = axes.flat[-1]
    ax.axis("off")
    ax.text(0.02, 0.95, "\n".join(lines), va="top", ha="left", fontsize=11, family="monospace",
            transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return fig


def plot_all(trajs: Sequence[Trajectory], out_dir: str | os.PathLike | None = None, *, dpi: int = 110,
             prefix: str = "") -> dict[str, Any]:
    """Every plot above as {name: Figure}; with `out_dir`, each is also saved as `<prefix><name>.png`."""
    figs = {name: fn(trajs) for name, fn in PLOTS.items()}
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            fig.savefig(d / f"{prefix}{name}.png", dpi=dpi)
    return figs


def facets_table(trajs: Sequence[Trajectory]) -> list[dict[str, Any]]:
    """`episode_facets` of every episode (e.g. for a pandas DataFrame)."""
    return [episode_facets(t) for t in trajs]

