# %% [markdown]
# # 05 · Evaluation — did training help, on tasks it never saw?
#
# 1. **The oracle** replays the gold chains through the same environment and tools the model uses. On the micro
#    benchmarks it must score F1 ≥ 99: that checks the environment, the sandbox, the search index and the scorer.
# 2. **Warm start vs trained adapter** — the two models notebook 04 wrote (default: the newest 04 run of this
#    profile) on **this notebook's own build**, made with another seed: new images, and the test split's
#    colour/shape combinations and question wordings, which training never saw. Each is run with live tools
#    (the form it was trained in) and with its tools switched off (same form; every tool call is answered "tools
#    are off", so it answers from the image as it is), greedy, same seed;
#    F1 with bootstrap 95 % CIs, by degradation type, and tool calls per episode.
# 3. **The reference's published predictions** (shipped in `arftlib/resources/reference_predictions/`) re-scored
#    in both scoring variants.
# 4. With a GPU and a model id: `MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"` and `ADAPTER = "<run>/final"` evaluate a
#    real model and adapter the same way (`BENCHMARK` and `DATA` choose the benchmark).
#
# The same comparison from a shell: `python -m arftlib eval --benchmark micro-coding --data DIR --model WARM_START
# --adapter ADAPTER --direct-baseline --out OUT` (a model or adapter the workbench trained is evaluated in the form
# it was trained in: the chat protocol with the paper's tag actions as tool calls, `--protocol chat --tool-calls
# tags`).

# %% tags=["parameters"]
PROFILE = "auto"  # run profile
OUT_DIR = "../runs/manual/05_evaluation"  # every file this notebook writes goes here
RUN_04 = ""  # notebook 04 output folder whose warm start and adapter to evaluate; empty: the newest 04 run of the profile
RUNS_DIR = "../runs"  # where an empty RUN_04 looks for notebook 04 runs
KIND = ""  # micro world: coding or search; empty: the one notebook 04 trained on (coding without a 04 run)
N_TASKS = 1500  # tasks in the build this notebook makes (its 20 % test split, 300 tasks, is evaluated)
SEED = 1  # seed of this notebook's build: differs from notebook 04's (0) so images and tasks are new
N_ORACLE = 24  # tasks per micro benchmark replayed by the oracle
MODEL = ""  # evaluate this model instead of 04's warm start (hub id or local path); empty: 04's warm start
ADAPTER = ""  # evaluate this LoRA adapter instead of 04's; empty: 04's adapter
N_BOOT = 1000  # bootstrap resamples for the confidence intervals

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from arftlib.config import get_config
from arftlib.data.build import build_dataset, load_built
from arftlib.evaluate import run_eval
from arftlib.metrics import score_file
from arftlib.notebooks import find_run
from arftlib.paths import reference_prediction_files
from experiments.micro_learning import evaluate_policy

out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
t_notebook = time.time()
run_04 = find_run("04_grpo_training", out_dir, RUNS_DIR, get_config(PROFILE).profile, RUN_04)
m04 = json.loads((run_04 / "metrics.json").read_text()) if run_04 else {}
kind = KIND or m04.get("kind", "coding")
cfg = get_config(PROFILE, benchmark=f"micro-{kind}", seed=SEED)  # the settings 04 trained with (micro world)
warm_start_dir = MODEL or m04.get("warm_start_dir")
warm_start_adapter = None if MODEL else m04.get("warm_start_adapter")  # set when the warm start was LoRA
adapter_dir = ADAPTER or m04.get("adapter_dir")
print(f"profile={cfg.profile}; notebook 04 run: {run_04 or 'none found'}")
print(f"warm start: {warm_start_dir}\nadapter:    {adapter_dir}")

# %% [markdown]
# ## 1 · The oracle (gold chains through the real environment and tools)

# %%
oracle = {}
for k in ("coding", "search"):
    data = build_dataset(f"micro-{k}", N_ORACLE, SEED, out_dir / f"data-oracle-{k}", overwrite=True)
    oracle[k] = run_eval(f"micro-{k}", data, "oracle", "tags", out_dir / f"oracle-{k}", cfg=cfg, n_boot=N_BOOT,
                         progress=False)["agent"]["scores"]["reference"]
    print(f"oracle micro-{k}: F1 {oracle[k]['f1']:.1f} EM {oracle[k]['em']:.1f} (n={oracle[k]['n']})")

# %% [markdown]
# ## 2 · Warm start vs trained adapter, with tools and without, on a build notebook 04 never saw

# %%
data_dir = out_dir / f"data-micro-{kind}"
build_dataset(f"micro-{kind}", N_TASKS, SEED, data_dir, overwrite=True)
heldout = [t for t in load_built(data_dir) if t.split == "test"]
print(f"micro-{kind}, seed {SEED}: {len(heldout)} held-out (test-split) tasks")
evals = {}
if warm_start_dir:
    evals["warm start"] = evaluate_policy(cfg, warm_start_dir, warm_start_adapter, heldout,
                                          out_dir / "eval_warm_start", kind=kind, direct_baseline=True, n_boot=N_BOOT)
    if adapter_dir:
        evals["trained adapter"] = evaluate_policy(cfg, warm_start_dir, adapter_dir, heldout, out_dir / "eval_adapter",
                                                   kind=kind, direct_baseline=True, n_boot=N_BOOT)
else:
    print("No notebook 04 run of this profile and no MODEL: run notebook 04 first (or `make reproduce`); "
          f"evaluating the profile's model {cfg.model_id} instead.")
    evals["profile model"] = evaluate_policy(cfg, cfg.model_id, None, heldout, out_dir / "eval_profile_model",
                                             kind=kind, direct_baseline=True, n_boot=N_BOOT)
table = pd.DataFrame([{"model": name, "F1 with tools": e["f1"], "95% CI": e["f1_ci"], "EM": e["em"],
                       "direct F1 (no tools)": e["direct_f1"], "tools − direct": e["f1"] - e["direct_f1"],
                       "tool calls / episode": e["tool_calls_per_episode"], "answered": e["answered"],
                       "reward": e["reward"]} for name, e in evals.items()]).set_index("model")
display(table.round(3))
table.to_csv(out_dir / "warm_start_vs_adapter.csv")
# per question type: distinct answers and what always giving the most common one scores (seeing, or the prior?)
by_question = pd.concat({name: pd.DataFrame(e["by_question"]).set_index("question") for name, e in evals.items()},
                        axis=1)
display(by_question)
by_question.to_csv(out_dir / "by_question.csv")

# %%
groups = sorted({g for e in evals.values() for g in e["by_group"] if g.startswith(("degradation=", "combination="))})
by_deg = pd.DataFrame([{"group": g, "n": next(iter(evals.values()))["by_group"].get(g, {}).get("n"),
                        **{f"{name} · tools": e["by_group"].get(g, {}).get("f1") for name, e in evals.items()},
                        **{f"{name} · direct": e["direct_by_group"].get(g, {}).get("f1") for name, e in evals.items()}}
                       for g in groups]).set_index("group")
display(Markdown("### F1 by degradation (reference scoring, held-out)"))
display(by_deg.round(1))
by_deg.to_csv(out_dir / "by_degradation.csv")
deg_only = by_deg[[g.startswith("degradation=") for g in by_deg.index]]
ax = deg_only[[c for c in deg_only.columns if c != "n"]].plot.bar(figsize=(11, 3.6), rot=30)
ax.set_xticklabels([g.split("=", 1)[1] for g in deg_only.index])
ax.set_ylabel("F1")
ax.set_title(f"micro-{kind}, seed {SEED}: F1 by degradation, with tools and direct")
ax.legend(fontsize=7)
plt.tight_layout()
plt.savefig(out_dir / "by_degradation.png", dpi=80)
plt.show()

# %% [markdown]
# ## 3 · The reference's published predictions, re-scored
# `reference` reproduces the reference notebooks (hard-coded split denominators, its normaliser);
# `corrected` fixes the documented defects (see `arftlib/metrics.py`). Both are labelled.

# %%
bench_of = {"MAT-Coding": "mat-coding", "MAT-Search": "mat-search", "2wiki": "multihop", "hotpotqa": "multihop",
            "musique": "multihop", "bamboogle": "multihop"}
rows = []
for folder, paths in reference_prediction_files().items():
    bench = bench_of[folder]
    for path in paths:
        for variant in ("reference", "corrected"):
            s = score_file(path, benchmark=bench, variant=variant)
            rows.append({"benchmark": folder, "file": path.name.removesuffix(".json.gz"), "variant": variant,
                         "n": s["n"], "F1": s["f1"], "EM": s["em"], "simple F1": s.get("simple", {}).get("f1"),
                         "hard F1": s.get("hard", {}).get("f1")})
published = pd.DataFrame(rows)
published.to_csv(out_dir / "published_rescored.csv", index=False)
display(published.pivot_table(index=["benchmark", "file"], columns="variant", values=["F1", "EM"]).round(2))

# %%
ws, ad = evals.get("warm start"), evals.get("trained adapter")
metrics = {
    "profile": cfg.profile, "kind": kind, "benchmark": f"micro-{kind}", "seed": SEED, "data": str(data_dir),
    "n_heldout": len(heldout), "run_04": str(run_04) if run_04 else None,
    "warm_start_dir": warm_start_dir, "adapter_dir": adapter_dir,
    "oracle_f1_micro_coding": oracle["coding"]["f1"], "oracle_f1_micro_search": oracle["search"]["f1"],
    "warm_start_f1": ws["f1"] if ws else None, "warm_start_f1_ci": ws["f1_ci"] if ws else None,
    "adapter_f1": ad["f1"] if ad else None, "adapter_f1_ci": ad["f1_ci"] if ad else None,
    "adapter_gain_f1": round(ad["f1"] - ws["f1"], 2) if ws and ad else None,
    "warm_start_direct_f1": ws["direct_f1"] if ws else None, "adapter_direct_f1": ad["direct_f1"] if ad else None,
    "warm_start_tool_calls": ws["tool_calls_per_episode"] if ws else None,
    "adapter_tool_calls": ad["tool_calls_per_episode"] if ad else None,
    "profile_model_f1": evals["profile model"]["f1"] if "profile model" in evals else None,
    "published_files_rescored": int(len(published) / 2),
    "notebook_s": round(time.time() - t_notebook, 1),
}
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
metrics
