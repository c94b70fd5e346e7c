"""`TrajectoryViewer`: the ipywidgets viewer. Pick the run, the training step, the group and the episode (or walk
with ◀ ▶), switch between one episode and the whole group, and filter by benchmark, degradation label, hop count,
failed tool calls, a reward range and free text. Its display is an `ipywidgets.HTML` holding exactly what
`viz.html.render_episode_html` / `render_group_html` return.

Left out: editing or annotating episodes, diffing two runs turn by turn, and live refresh while a run is still
writing (re-create the viewer to pick up new episodes).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from arftlib.types import Trajectory
from arftlib.viz.html import ExportResult, Renderer, escape, export_html, wrap_fragment
from arftlib.viz.store import (Store, episode_facets, filter_trajectories, group_trajectories, load_store, score_of,
                               count_tool_errors)

# ==============================================================================================================
# the widget
# ==============================================================================================================
ALL = ""  # the "all" choice of the viewer's filter dropdowns (None would show as an empty dropdown)


def _opt(value: Any) -> Any:
    return None if value == ALL else value


class TrajectoryViewer:
    """ipywidgets viewer over one or several trajectory stores (paths, `Store`s, or a list of Trajectory).

    `viewer.widget` is the VBox; displaying the viewer displays it. Controls: run, training step, group,
    episode (◀ ▶ walk the filtered episodes), view (episode | group side by side), filters (benchmark,
    degradation, hops, tool calls, reward range, text). `viewer.html` is the HTML currently shown,
    `viewer.filtered()` the episodes passing the filters, `viewer.export(path)` writes them as static HTML.
    """

    def __init__(self, source: Any, *, base_dir: str | os.PathLike | None = None,
                 max_image_side: int = 384):
        import ipywidgets as W

        self.max_image_side = int(max_image_side)
        self.stores = self._stores(source, base_dir)
        if not self.stores:
            raise ValueError("TrajectoryViewer: nothing to show (no stores given)")
        self._W = W
        self._busy = False
        style = {"description_width": "initial"}
        self.run_dd = W.Dropdown(options=[(s.name or f"run {i}", i) for i, s in enumerate(self.stores)], value=0,
                                 description="run", style=style, layout=W.Layout(width="auto"))
        self.step_dd = W.Dropdown(description="step", style=style, layout=W.Layout(width="auto"))
        self.group_dd = W.Dropdown(description="group", style=style, layout=W.Layout(width="300px"))
        self.episode_dd = W.Dropdown(description="episode", style=style, layout=W.Layout(width="340px"))
        self.prev_btn = W.Button(description="◀", tooltip="previous episode", layout=W.Layout(width="40px"))
        self.next_btn = W.Button(description="▶", tooltip="next episode", layout=W.Layout(width="40px"))
        self.view_tb = W.ToggleButtons(options=[("episode", "episode"), ("group side by side", "group")],
                                       value="episode", style={"button_width": "auto"})
        self.bench_dd = W.Dropdown(description="benchmark", style=style, layout=W.Layout(width="auto"))
        self.degr_dd = W.Dropdown(description="degradation", style=style, layout=W.Layout(width="auto"))
        self.hops_dd = W.Dropdown(description="hops", style=style, layout=W.Layout(width="auto"))
        self.tools_dd = W.Dropdown(options=[("any", "any"), ("failed tool call", "failed"),
                                            ("no failed call", "clean")], value="any", description="tool calls",
                                   style=style, layout=W.Layout(width="auto"))
        self.reward_sl = W.FloatRangeSlider(description="reward", min=0.0, max=1.0, value=(0.0, 1.0), step=0.01,
                                            readout_format=".2f", continuous_update=False, style=style,
                                            layout=W.Layout(width="360px"))
        self.text_tx = W.Text(placeholder="text in question or turns", description="contains", style=style,
                              continuous_update=False, layout=W.Layout(width="260px"))
        self.status = W.HTML()
        self.out = W.HTML(layout=W.Layout(width="100%"))
        self.out.add_class("arft-viewer-output")
        nav = W.HBox([self.run_dd, self.step_dd, self.group_dd, self.episode_dd, self.prev_btn, self.next_btn],
                     layout=W.Layout(flex_flow="row wrap"))
        filt = W.HBox([self.bench_dd, self.degr_dd, self.hops_dd, self.tools_dd, self.reward_sl, self.text_tx],
                      layout=W.Layout(flex_flow="row wrap"))
        self.widget = W.VBox([nav, filt, W.HBox([self.view_tb, self.status]), self.out])
        self.widget.add_class("arft-viewer")
        self.run_dd.layout.display = None if len(self.stores) > 1 else "none"
        self._setup_run()
        for w in (self.bench_dd, self.degr_dd, self.hops_dd, self.tools_dd, self.reward_sl, self.text_tx,
                  self.step_dd):
            w.observe(self._on_filter, names="value")
        self.run_dd.observe(self._on_run, names="value")
        self.group_dd.observe(self._on_group, names="value")
        self.episode_dd.observe(lambda ch: self._render(), names="value")
        self.view_tb.observe(lambda ch: self._render(), names="value")
        self.prev_btn.on_click(lambda b: self.step_episode(-1))
        self.next_btn.on_click(lambda b: self.step_episode(+1))
        self._refresh()

    # --- sources
    @staticmethod
    def _stores(source: Any, base_dir: Any) -> list[Store]:
        if isinstance(source, Store):
            return [source]
        if isinstance(source, (str, os.PathLike)):
            return [load_store(source)]
        if isinstance(source, Mapping):
            out = []
            for name, v in source.items():
                if isinstance(v, Store):
                    out.append(dataclasses.replace(v, name=str(name)))
                elif isinstance(v, (str, os.PathLike)):
                    out.append(load_store(v, name=str(name)))
                else:
                    out.append(Store(str(name), Path(base_dir) if base_dir else Path("."), list(v)))
            return out
        items = list(source)
        if items and all(isinstance(x, Trajectory) for x in items):
            return [Store("trajectories", Path(base_dir) if base_dir else Path("."), items)]
        out = []
        for x in items:
            out.append(x if isinstance(x, Store) else load_store(x))
        return out

    @property
    def store(self) -> Store:
        return self.stores[self.run_dd.value]

    # --- state → options
    def _setup_run(self) -> None:
        """Filter options for the current run."""
        self._busy = True
        try:
            trajs = self.store.trajectories
            facets = [episode_facets(t) for t in trajs]
            steps = sorted({f["step"] for f in facets if f["step"] is not None})
            self.step_dd.options = [("all", ALL)] + [(str(s), s) for s in steps]
            self.step_dd.value = ALL
            self.step_dd.layout.display = None if steps else "none"
            self.bench_dd.options = [("all", ALL)] + [(b, b) for b in sorted({f["benchmark"] for f in facets})]
            self.bench_dd.value = ALL
            self.degr_dd.options = [("all", ALL)] + [(d, d) for d in sorted({d for f in facets for d in f["degradations"]})]
            self.degr_dd.value = ALL
            self.degr_dd.layout.display = None if len(self.degr_dd.options) > 1 else "none"
            hops = sorted({f["hops"] for f in facets if f["hops"] is not None})
            self.hops_dd.options = [("all", ALL)] + [(str(h), h) for h in hops]
            self.hops_dd.value = ALL
            self.hops_dd.layout.display = None if hops else "none"
            self.tools_dd.value = "any"
            self.text_tx.value = ""
            scores = [f["score"] for f in facets if f["score"] is not None]
            lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
            lo, hi = math.floor(min(lo, 0.0) * 100) / 100, math.ceil(max(hi, 1.0) * 100) / 100
            self.reward_sl.min, self.reward_sl.max = -1e9, 1e9  # avoid transient min > max
            self.reward_sl.min, self.reward_sl.max = lo, hi
            self.reward_sl.value = (lo, hi)
            self._full_range = (lo, hi)
            has_reward = any(f["reward"] is not None for f in facets)
            self.reward_sl.description = "reward" if has_reward else "F1 (no reward)"
            self.reward_sl.layout.display = None if scores else "none"
        finally:
            self._busy = False

    def filtered(self) -> list[Trajectory]:
        """The current run's episodes that pass the filters."""
        rng = tuple(self.reward_sl.value)
        full = rng[0] <= self._full_range[0] + 1e-9 and rng[1] >= self._full_range[1] - 1e-9
        return filter_trajectories(
            self.store.trajectories, benchmark=_opt(self.bench_dd.value), degradation=_opt(self.degr_dd.value),
            hops=_opt(self.hops_dd.value), tool_errors=self.tools_dd.value, reward_range=None if full else rng,
            step=_opt(self.step_dd.value), text=self.text_tx.value)

    def _refresh(self, keep: Any = None) -> None:
        """Recompute groups and episodes from the filters, then render."""
        self._busy = True
        try:
            self._groups = group_trajectories(self.filtered())
            self._flat = [t for g in self._groups.values() for t in g]
            opts = []
            for key, members in self._groups.items():
                step, gid = key
                best = score_of(members[0])
                label = (f"{'step ' + str(step) + ' · ' if step is not None else ''}{gid} · n={len(members)}"
                         f"{' · best ' + format(best, '.2f') if best is not None else ''}")
                opts.append((label, key))
            self.group_dd.options = opts
            if opts:
                keys = [k for _, k in opts]
                self.group_dd.value = keep if keep in keys else keys[0]
            self._fill_episodes()
        finally:
            self._busy = False
        self._render()

    def _fill_episodes(self, keep: str | None = None) -> None:
        members = self._groups.get(self.group_dd.value, []) if self._groups else []
        opts = []
        for t in members:
            s = score_of(t)
            opts.append((f"{t.episode_id or t.task.id}{' · ' + format(s, '.2f') if s is not None else ''}"
                         f"{' · tool error' if count_tool_errors(t) else ''}", t.episode_id or t.task.id))
        self.episode_dd.options = opts
        if opts:
            ids = [v for _, v in opts]
            self.episode_dd.value = keep if keep in ids else ids[0]

    # --- events
    def _on_run(self, change: Any) -> None:
        self._setup_run()
        self._refresh()

    def _on_filter(self, change: Any) -> None:
        if not self._busy:
            self._refresh(keep=self.group_dd.value)

    def _on_group(self, change: Any) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._fill_episodes()
        finally:
            self._busy = False
        self._render()

    def step_episode(self, delta: int) -> None:
        """Move to the previous (-1) / next (+1) filtered episode, across groups."""
        if not self._flat:
            return
        cur = self.current()
        i = next((k for k, t in enumerate(self._flat) if t is cur), -1)
        j = (i + delta) % len(self._flat)
        t = self._flat[j]
        self.select(t.episode_id or t.task.id)

    def select(self, episode_id: str) -> None:
        """Show the episode with this id (it must pass the filters)."""
        for key, members in self._groups.items():
            for t in members:
                if (t.episode_id or t.task.id) == episode_id:
                    self._busy = True
                    try:
                        self.group_dd.value = key
                        self._fill_episodes(keep=episode_id)
                    finally:
                        self._busy = False
                    self._render()
                    return
        raise KeyError(f"episode {episode_id!r} is not among the {len(self._flat)} filtered episodes")

    def current(self) -> Trajectory | None:
        members = self._groups.get(self.group_dd.value, []) if self._groups else []
        for t in members:
            if (t.episode_id or t.task.id) == self.episode_dd.value:
                return t
        return members[0] if members else None

    # --- output
    def _render(self) -> None:
        if self._busy:
            return
        n_all = len(self.store.trajectories)
        n = len(self._flat)
        r = Renderer(self.store.dir, self.max_image_side)
        if not self._flat:
            frag = '<div class="arft-note">no episode matches the filters</div>'
        elif self.view_tb.value == "group":
            frag = r.group(self._groups.get(self.group_dd.value, []))
        else:
            cur = self.current()
            frag = r.episode(cur) if cur is not None else ""
        pos = ""
        cur = self.current()
        if cur is not None and self._flat:
            i = next((k for k, t in enumerate(self._flat) if t is cur), 0)
            pos = f"episode {i + 1} of "
        self.status.value = (f'<span style="color:#586174;margin-left:12px">{pos}{n} matching '
                             f'({n_all} in run {escape(self.store.name)}) · {r.images} image'
                             f'{"s" if r.images != 1 else ""} shown</span>')
        self.rendered_images = r.images
        self.out.value = wrap_fragment(frag)

    @property
    def html(self) -> str:
        return self.out.value

    def export(self, path: str | os.PathLike, **kw: Any) -> ExportResult:
        """Static HTML of the filtered episodes of the current run (see `export_html`)."""
        return export_html(self.filtered(), path, self.store.dir, **kw)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

