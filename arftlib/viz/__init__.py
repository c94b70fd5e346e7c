"""Look at trajectories: stores on disk and their facets (`store.py`), HTML for the widget and the static export
(`html.py`), the ipywidgets viewer (`widget.py`) and plots (`plots.py`). The `python -m arftlib view` arguments
live here.

"Reward" in sorting, filtering and the index is `traj.reward` when the run recorded one (training, or an evaluation
with a rubric) and otherwise the episode's answer F1 (`metrics["f1"]`); the page says which.
"""

from __future__ import annotations

from typing import Any

from arftlib.viz.html import (DEFAULT_MAX_IMAGE_SIDE, ExportResult, export_html, highlight_python, image_data_uri,
                              render_episode_html, render_group_html, slug, viewer_css, wrap_fragment)
from arftlib.viz.plots import (PLOTS, facets_table, plot_all, plot_overview, plot_reward_components,
                               plot_success_by_degradation, plot_success_by_hops, plot_tool_calls_by_turn,
                               plot_turns_per_episode)
from arftlib.viz.store import (Store, degradations_of, episode_facets, filter_trajectories, find_stores,
                               group_trajectories, hops_of, load_store, newest_store, resolve_store, score_of)
from arftlib.viz.widget import ALL, TrajectoryViewer

__all__ = [
    "ALL", "ExportResult", "PLOTS", "Store", "TrajectoryViewer", "add_export_arguments", "degradations_of", "episode_facets",
    "export_from_args", "export_html", "facets_table", "filter_trajectories", "find_stores", "group_trajectories",
    "highlight_python", "hops_of", "image_data_uri", "load_store", "newest_store", "plot_all", "plot_overview",
    "plot_reward_components", "plot_success_by_degradation", "plot_success_by_hops", "plot_tool_calls_by_turn",
    "plot_turns_per_episode", "render_episode_html", "render_group_html", "resolve_store", "score_of", "viewer_css",
    "wrap_fragment",
]


def add_export_arguments(p: Any) -> None:
    """Arguments of the static-export command on an argparse (sub)parser."""
    p.add_argument("source", nargs="+", help="run directory, evaluation output or trajectory folder (several: "
                   "one run each in the page)")
    p.add_argument("--out", required=True, help="HTML file to write (plots, with --plots, go next to it)")
    p.add_argument("--title", default="Visual-ARFT trajectories")
    p.add_argument("--max-episodes", type=int, default=200, help="at most this many episodes (whole groups)")
    p.add_argument("--max-image-side", type=int, default=DEFAULT_MAX_IMAGE_SIDE,
                   help="embedded images are downscaled to this many pixels on their long side")
    p.add_argument("--plots", action="store_true", help="also save the overview plot of every run as PNG")


def export_from_args(args: Any) -> dict[str, Any]:
    """`export_html` (and optionally `plot_overview`) from parsed `add_export_arguments` arguments."""
    stores = [load_store(s) for s in args.source]
    names = [s.name for s in stores]
    if len(set(names)) != len(names):  # two folders with the same name: name them by position
        for i, s in enumerate(stores):
            s.name = f"{i}:{s.name}"
    runs: Any = stores[0] if len(stores) == 1 else {s.name: s for s in stores}
    res = export_html(runs, args.out, title=args.title, max_episodes=args.max_episodes,
                      max_image_side=args.max_image_side)
    out = res.to_dict()
    if args.plots:
        figs = []
        for s in stores:
            path = res.path.with_name(f"{res.path.stem}-{slug(s.name)}-overview.png")
            plot_overview(s.trajectories, title=s.name).savefig(path, dpi=100)
            figs.append(str(path))
        out["figures"] = figs
    return out
