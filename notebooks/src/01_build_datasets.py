# %% [markdown]
# # 01 · Build the datasets — procedural MAT-style benchmarks and the paper's step-wise training data
#
# The real MAT benchmarks and training files live on the model hub; the workbench also builds its own,
# contamination-free versions whose content is known exactly:
#
# * **synth-coding** — rendered signs, labels, receipts, forms, price tags, charts and multi-region pages, plus
#   real CC0 photos with hand-checked questions, degraded with the paper's label set (rotation90, rotation180,
#   dark, overexposure, blur, noise, crop, none; *hard* items combine two). Each task carries a gold chain
#   `problem → code → answer` whose code was **run in the sandbox at build time** and restored the image
#   (SSIM/PSNR thresholds in `arftlib/data/degrade.py`).
# * **synth-search** — one-hop (simple) and two-/three-hop (hard) questions over the offline Wikipedia corpus,
#   and over a generated world of fictional entities that no pretrained model can know. Every gold query was
#   checked to retrieve its passage in the top 4.
#
# Then each gold chain is expanded into the paper's step-wise samples (`pre_problem`, `pre_code`,
# `pre_answer`; one sample per search step) and into episode rows for multi-turn training.

# %% tags=["parameters"]
PROFILE = "auto"  # run profile; its n_coding_tasks / n_search_tasks set the default sizes
OUT_DIR = "../runs/manual/01_build_datasets"  # every file this notebook writes goes here
N_CODING = 0  # coding tasks to build; 0 means the profile default (tiny-cpu 48, GPU profiles 1000)
N_SEARCH = 0  # search tasks to build; 0 means the profile default
SEED = 0  # data seed: the same seed gives byte-identical builds
SHOW_EXAMPLES = 6  # examples per benchmark in the grids

# %%
import json
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from PIL import Image

from arftlib.config import get_config
from arftlib.data.build import build_dataset, leakage_report, load_built
from arftlib.data.stepwise import episode_dataset, step_counts, stepwise_dataset

out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
cfg = get_config(PROFILE)
n_coding = N_CODING or cfg.n_coding_tasks
n_search = N_SEARCH or cfg.n_search_tasks
print(f"profile={cfg.profile}: building {n_coding} coding and {n_search} search tasks with seed {SEED}")

# %% [markdown]
# ## Build (the coding build runs every gold program in the sandbox; the search build runs every gold query)

# %%
builds, tasks, cards, logs = {}, {}, {}, {}
for kind, n in (("coding", n_coding), ("search", n_search)):
    t0 = time.time()
    builds[kind] = build_dataset(kind, n, SEED, out_dir / f"synth-{kind}", overwrite=True, progress=True)
    tasks[kind] = load_built(builds[kind])
    cards[kind] = json.loads((builds[kind] / "data_card.json").read_text())  # content only: same seed, same bytes
    logs[kind] = json.loads((builds[kind] / "build_log.json").read_text())  # timings live apart from the content
    print(f"synth-{kind}: {len(tasks[kind])} tasks in {time.time() - t0:.1f} s, "
          f"{cards[kind]['size_bytes'] / 1e6:.1f} MB, sha256 {cards[kind]['content_sha256'][:16]}…")

# %% [markdown]
# ## Coding examples: degraded input, what the gold code restored, the question and the gold chain

# %%
examples = tasks["coding"][:SHOW_EXAMPLES]
fig, axes = plt.subplots(2, len(examples), figsize=(3.2 * len(examples), 6.5))
for col, task in enumerate(examples):
    axes[0, col].imshow(Image.open(task.images[0]))
    axes[0, col].set_title(f"{task.id} · {'+'.join(task.degradations)}", fontsize=8)
    axes[1, col].imshow(Image.open(task.clean_image))
    axes[1, col].set_title("clean", fontsize=8)
    for ax in axes[:, col]:
        ax.axis("off")
fig.tight_layout()
fig.savefig(out_dir / "coding_examples.png", dpi=80)
plt.show()
for task in examples[:3]:
    print(f"[{task.id}] {task.question}\n  gold answers: {task.answers}")
    for step in task.gold_chain:
        print(f"  <{step['action']}> {step['content'].strip()[:300]}")

# %% [markdown]
# ## Search examples: the entity image, the question and its gold search chain

# %%
examples = tasks["search"][:SHOW_EXAMPLES]
fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.4))
for col, task in enumerate(examples):
    if task.images:
        axes[col].imshow(Image.open(task.images[0]))
    axes[col].set_title(f"{task.id} · {task.split}", fontsize=8)
    axes[col].axis("off")
fig.tight_layout()
fig.savefig(out_dir / "search_examples.png", dpi=80)
plt.show()
for task in examples[:3]:
    print(f"[{task.id}] {task.question}\n  gold answers: {task.answers}")
    for step in task.gold_chain:
        print(f"  <{step['action']}> {step['content'][:200]}")

# %% [markdown]
# ## Distributions: degradation types, answer lengths, hops

# %%
deg = Counter(label for t in tasks["coding"] for label in t.degradations)
hops = Counter(sum(s["action"] == "search" for s in t.gold_chain) for t in tasks["search"])
ans_len = [len(t.answers[0].split()) for k in tasks for t in tasks[k]]
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
axes[0].bar(list(deg), list(deg.values()))
axes[0].set_title("coding: degradation labels")
axes[0].tick_params(axis="x", rotation=45)
axes[1].bar([str(h) for h in sorted(hops)], [hops[h] for h in sorted(hops)])
axes[1].set_title("search: gold search steps (hops)")
axes[2].hist(ans_len, bins=range(1, max(ans_len) + 2))
axes[2].set_title("answer length (words)")
fig.tight_layout()
fig.savefig(out_dir / "distributions.png", dpi=80)
plt.show()

# %% [markdown]
# ## Leakage check: train and test must share no entity, no template part and no question

# %%
leakage = {}
for kind in tasks:
    train = [t for t in tasks[kind] if t.split == "train"]
    test = [t for t in tasks[kind] if t.split == "test"]
    leakage[kind] = leakage_report(train, test)
    print(kind, json.dumps(leakage[kind]))

# %% [markdown]
# ## Step-wise samples (the paper's recipe) and episode rows (multi-turn training)

# %%
step_ds = {k: stepwise_dataset(tasks[k], SEED) for k in tasks}
episode_ds = {k: episode_dataset(tasks[k], SEED) for k in tasks}
for k in tasks:
    print(f"{k}: {len(step_ds[k])} step samples {step_counts(step_ds[k])}; {len(episode_ds[k])} episode rows")
row = step_ds["coding"][0]
print("\nOne step sample:", {key: (str(v)[:160] if key != "image" else v) for key, v in row.items()})

# %% [markdown]
# ## Data cards

# %%
for kind in builds:
    display(Markdown((builds[kind] / "data_card.md").read_text()))

# %%
metrics = {
    "profile": cfg.profile,
    "seed": SEED,
    "n_coding": len(tasks["coding"]),
    "n_search": len(tasks["search"]),
    "coding_by_split": dict(Counter(t.split for t in tasks["coding"])),
    "search_by_split": dict(Counter(t.split for t in tasks["search"])),
    "degradation_labels": dict(deg),
    "search_hops": {str(h): c for h, c in sorted(hops.items())},
    "stepwise_rows": {k: len(step_ds[k]) for k in step_ds},
    "episode_rows": {k: len(episode_ds[k]) for k in episode_ds},
    "leakage": leakage,
    "build_time_s": {k: logs[k]["build_time_s"] for k in logs},
    "content_sha256": {k: cards[k]["content_sha256"] for k in cards},
}
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
