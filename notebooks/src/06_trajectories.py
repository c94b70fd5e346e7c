# %% [markdown]
# # 06 · Trajectories — what the agent did, turn by turn
#
# Every evaluation and every training run keeps its episodes in a trajectory folder (`trajectories.jsonl` +
# the images the code tool produced; see `arftlib/trajectories.py`). This notebook opens one and shows it:
#
# * a **viewer** (ipywidgets): pick the run, the training step, the GRPO group and the episode; each turn is a
#   chat bubble — the model's reasoning, its action (code with syntax highlighting, a search query, a
#   diagnosis, the answer, or why the turn was invalid), then what the tool returned (the processed image,
#   the search hits with their scores, the error). Rewards per component and the advantage sit on top;
#   "group side by side" puts a group's generations next to each other, best reward first. Filters: benchmark,
#   degradation type, hop count, failed tool calls, reward range, free text;
# * **plots**: reward components over training steps, actions and tool calls by turn, success by degradation
#   type and by hop count, turns per episode;
# * a **static HTML export** of the same view (images embedded, filters included) into `OUT_DIR`, to share or to
#   open after a headless run.
#
# Which trajectories: `SOURCE` (a training run directory, an evaluation output or a trajectory folder), else
# **notebook 04's held-out episodes before and after training** (the sibling `04_grpo_training` run of `make
# reproduce`, else the newest 04 run of the profile under `RUNS_DIR`, or `RUN_04`) — the same tasks side by side, warm start vs trained adapter — else the newest trajectory
# folder under `RUNS_DIR`. In the `tiny-cpu` profile with none of these, the notebook makes its own: a small
# procedural build evaluated by the gold-chain oracle (coding and search).
#
# Interactively: `make lab` starts JupyterLab on 127.0.0.1 with this workbench's kernel.

# %% tags=["parameters"]
PROFILE = "auto"  # run profile: auto | tiny-cpu | qwen2.5-vl-3b-qlora-24gb | qwen2.5-vl-7b-lora-80gb | paper-8gpu
OUT_DIR = "../runs/manual/06_trajectories"  # every file this notebook writes goes here
SOURCE = ""  # run dir, evaluation output or trajectory folder to open; empty: notebook 04's before/after episodes
RUN_04 = ""  # notebook 04 output folder whose held-out episodes to compare; empty: the newest 04 run of the profile
RUNS_DIR = "../runs"  # where notebook 04 runs (and, outside tiny-cpu, the newest trajectories) are looked for
N_TASKS = 4  # tiny-cpu without a 04 run: procedural tasks per benchmark for the oracle evaluations
SIDE_BY_SIDE = 4  # held-out tasks shown before | after next to each other
SEED = 0  # tiny-cpu: seed of the procedural builds
MAX_EPISODES = 200  # at most this many episodes in the HTML export (whole groups, in order)
MAX_IMAGE_SIDE = 384  # embedded images are downscaled to this many pixels on their long side

# %%
import json
import re
import time
from pathlib import Path

from IPython.display import display

from arftlib import viz
from arftlib.config import get_config
from arftlib.notebooks import find_run

out_dir = Path(OUT_DIR).resolve()
out_dir.mkdir(parents=True, exist_ok=True)
cfg = get_config(PROFILE)
t_start = time.time()
print(f"profile={cfg.profile}  OUT_DIR={out_dir}")

# %% [markdown]
# ## Which trajectories
# Notebook 04's two evaluations of the same held-out tasks (before / after training) when that run is beside this
# one; else, in `tiny-cpu`, a few micro-coding and micro-search tasks evaluated by the oracle (`model="oracle"`
# replays the gold chains through the real environment and tools, so the code tool produces real images and the
# search tool real hits).

# %%
sources: dict[str, Path] = {}
run_04 = None if SOURCE else find_run("04_grpo_training", out_dir, RUNS_DIR, cfg.profile, RUN_04)
paired = run_04 is not None and (run_04 / "eval_before" / "trajectories").is_dir() and (
    run_04 / "eval_after" / "trajectories").is_dir()
if SOURCE:
    sources[Path(SOURCE).name] = viz.resolve_store(SOURCE)
elif paired:
    sources["before · warm start"] = viz.resolve_store(run_04 / "eval_before")
    sources["after · GRPO adapter"] = viz.resolve_store(run_04 / "eval_after")
    print(f"notebook 04's held-out episodes: {run_04}")
elif cfg.profile == "tiny-cpu":
    from arftlib.data.build import build_dataset
    from arftlib.evaluate import run_eval

    data_dir, eval_dir = out_dir / "data", out_dir / "evals"
    runs = [("oracle · micro-coding", "micro-coding"), ("oracle · micro-search", "micro-search")]
    for name, bench in runs:
        build_dataset(bench, N_TASKS, SEED, data_dir / bench, overwrite=True)
        t0 = time.time()
        dest = eval_dir / name.replace(" · ", "-")
        summary = run_eval(bench, data_dir / bench, "oracle", "chat", dest, cfg=cfg, tool_calls=cfg.tool_format,
                           n_boot=200, progress=False)
        f1 = summary["agent"]["scores"]["reference"]["f1"]
        print(f"{name:24s} {summary['n']} episodes  F1 {f1:6.2f}  ({time.time() - t0:.1f} s) → {dest}")
        sources[name] = viz.resolve_store(dest)
else:
    newest = viz.newest_store(RUNS_DIR)
    sources[newest.parent.name if newest.name == "trajectories" else newest.name] = newest

stores = [viz.load_store(path, name) for name, path in sources.items()]
for s in stores:
    print(f"{s.name}: {len(s.trajectories)} episodes from {s.dir}")

# %% [markdown]
# ## The viewer
# Walk the episodes with ◀ ▶, or pick a step / group / episode. "group side by side" shows every generation
# of the selected group (in an evaluation: every run of one question), best reward first.

# %%
viewer = viz.TrajectoryViewer(stores, max_image_side=MAX_IMAGE_SIDE)
display(viewer)

# %% [markdown]
# The same functions render one episode anywhere, e.g. the first one of the first run as plain HTML:

# %%
from IPython.display import HTML

first = stores[0].trajectories[0]
HTML(viz.wrap_fragment(viz.render_episode_html(first, stores[0].dir, max_image_side=256)))

# %% [markdown]
# ## The same held-out tasks, before and after training
# Notebook 04 evaluated the warm start and the trained adapter on the same held-out tasks with the same seed and
# greedy decoding; here each task's two episodes sit next to each other (left: before, right: after).

# %%
side_by_side = 0
if paired:
    before_by_id = {t.task.id: t for t in stores[0].trajectories}
    after_by_id = {t.task.id: t for t in stores[1].trajectories}
    changed = [tid for tid in after_by_id if tid in before_by_id
               and before_by_id[tid].metrics.get("f1") != after_by_id[tid].metrics.get("f1")]
    chosen = (changed + [t for t in after_by_id if t not in changed])[:SIDE_BY_SIDE]
    cells = []
    for tid in chosen:
        left = viz.render_episode_html(before_by_id[tid], stores[0].dir, max_image_side=200)
        right = viz.render_episode_html(after_by_id[tid], stores[1].dir, max_image_side=200)
        cells.append(f'<tr><td style="vertical-align:top;width:50%">{left}</td>'
                     f'<td style="vertical-align:top;width:50%">{right}</td></tr>')
    side_by_side = len(chosen)
    page = ('<table style="width:100%"><tr><th>before · warm start</th><th>after · GRPO adapter</th></tr>'
            + "".join(cells) + "</table>")
    (out_dir / "before_after.html").write_text(viz.wrap_fragment(page), encoding="utf-8")
    display(HTML(viz.wrap_fragment(page)))
    print(f"{len(changed)} of {len(after_by_id)} held-out tasks changed their F1 after training")
else:
    print("no notebook 04 run beside this one: nothing to compare (run `make reproduce`, or set RUN_04)")

# %% [markdown]
# ## Plots
# One overview per run: mean reward components per training step (in an evaluation, which has no rewards, the
# answer F1/EM stand in), what the model did at each turn with failed tool calls marked, F1/EM by degradation
# label (coding) and by hop count (search), and turns per episode.

# %%
figures = []
for s in stores:
    fig = viz.plot_overview(s.trajectories, title=f"{s.name} — {len(s.trajectories)} episodes")
    path = out_dir / f"overview-{re.sub(r'[^A-Za-z0-9]+', '-', s.name).strip('-')}.png"
    fig.savefig(path, dpi=100)
    figures.append(path.name)
    display(fig)

# %% [markdown]
# ## Static HTML export
# One self-contained file (images embedded as data URIs) with the index, the filters and every episode — open
# it in any browser, attach it to an issue, or look at a headless run's episodes without a kernel.

# %%
export = viz.export_html({s.name: s for s in stores}, out_dir / "trajectories.html",
                         title=f"Trajectories — {', '.join(s.name for s in stores)}",
                         max_episodes=MAX_EPISODES, max_image_side=MAX_IMAGE_SIDE)
print(f"wrote {export.path}: {export.episodes} episodes, {export.images} images "
      f"({export.missing_images} missing), {export.bytes / 1e6:.2f} MB")

# %%
metrics = {
    "profile": cfg.profile,
    "sources": {s.name: str(s.dir) for s in stores},
    "episodes": sum(len(s.trajectories) for s in stores),
    "episodes_rendered": export.episodes,
    "images_rendered": export.images,
    "missing_images": export.missing_images,
    "widget_images": viewer.rendered_images,
    "html": export.path.name,
    "html_bytes": export.bytes,
    "figures": figures,
    "paired_before_after": bool(paired),
    "side_by_side": side_by_side,
    "runs": {s.name: {"episodes": len(s.trajectories),
                      "answered": sum(t.final_answer is not None for t in s.trajectories),
                      "with_tool_errors": sum(viz.episode_facets(t)["failed_tools"] for t in s.trajectories)}
             for s in stores},
    "wall_s": round(time.time() - t_start, 1),
}
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
