# %% [markdown]
# # 04 · Teaching a policy to use its tools: warm start → agentic GRPO, measured held-out with live tools
#
# The story of this notebook, on the CPU: a ~5 M-parameter Qwen3-VL (`tiny_size="seeing"`, `arch="qwen3_vl"`:
# its patches carry where they are; micro-search uses the Qwen2.5-VL of the same size) learns the **micro world**
# (`micro-coding`: colour, shape and position questions about images that are rotated, darkened, washed out, noisy,
# or too small to see until cropped — see notebook 01), where answering needs the tool:
#
# 1. **Warm start** (cold-start SFT, reported as such): supervised steps on gold behaviour — each training
#    question asked on its *clean* image and answered at once (learning to see; 0–60 neutral words between image
#    and question, so the reading does not hang on one image-to-answer distance), then those clean answers and
#    every task's diagnosis beside the whole gold episode (diagnosis, code, answer after the restored image) of only
#    a share of the tasks, so tool use is shown but not mastered. Cached, so the notebooks and the tests reuse it.
# 2. **Before**: the warm start on held-out tasks, with live tools (the sandbox really runs its code), greedy,
#    scored by the reference scorer (F1) and the agentic rubric — and with its tools switched off (the no-tool
#    baseline: same form, every tool call answered "tools are off").
# 3. **Agentic GRPO** on TRL's `GRPOTrainer` with `environment_factory`: whole episodes, the paper's tag actions
#    read as tool calls (`<problem>`, `<code>`), the processed image fed back as an image, tool tokens masked from
#    the loss. Curves: reward per component, tool calls per episode, episode length; the tool-use monitor warns
#    when tool use collapses.
# 4. **After**: the same held-out episodes, same seed and sampling, with the trained adapter; by degradation.
# 5. **The paper's step-wise GRPO** from the same warm start for a short run (the step rows are prefixes of the
#    same episodes, so both are evaluated the same way), and the method comparison table when one was run
#    (`python -m arftlib compare`).
#
# On a GPU set `PROFILE = "qwen2.5-vl-3b-qlora-24gb"`: the same cells run the real-size recipe.

# %% tags=["parameters"]
PROFILE = "auto"  # run profile: model, LoRA/QLoRA, GRPO settings and the collapse knobs come from it
OUT_DIR = "../runs/manual/04_grpo_training"  # every file this notebook writes goes here
KIND = "coding"  # micro world to train on: coding (restore / crop the image) or search (look the emblem up)
N_TASKS = 0  # tasks in the micro build (80 % train, 20 % held out); 0: the profile's
HELDOUT = 60  # held-out tasks evaluated before and after
SEEING_STEPS = 150  # warm-start stage 1: steps on clean-image answers alone, the bare word (learning to see; cached
# on its own; ~3.5 min); 0 skips it — then the warm start answers one word per question type (README "Learning on CPU")
SEEING_FILLER_WORDS = 60  # stage 1: 0..N neutral words between image and question, drawn per row, so the answer is read
# at varied distances from the image (an episode's answer turn is far from it; README "Where the reading is tied")
SEEING_COPIES = 3  # stage 1: each clean question this many times, each with its own filler
READING_STEPS = 300  # warm-start stage 1 when KIND is search: answer steps alone, the names of each row re-drawn
# from the pools of the world, so only reading the hits answers them (memorising the training facts does not); 0 skips
WARM_STEPS = 120  # warm-start stage 2: supervised steps on gold steps (cached: the same settings are reused)
SEARCH_WARM_STEPS = 150  # the same when KIND is search (the README's micro-search figures)
DIAGNOSIS_STEPS = True  # KIND coding, stage 2: also every training task's diagnosis row (image + question → the
# degradation labels), not only those of the TOOL_EPISODES share (README "make reproduce with the Qwen3-VL policy")
TOOL_EPISODES = 0.15  # share of training tasks whose whole gold episode the warm start shows
TAGS_LAYOUT = False  # warm start also on those gold steps in the paper tags layout (history in one user
# message), and held-out F1 in that layout before and after (eval --protocol tags); README "The paper layout"
FRESH_WORLDS = 2  # KIND search: GRPO trains on the train splits of this many other worlds (same societies, other
# facts) - the facts of its own world the warm start memorised, so there most groups agree; 0 trains on its own world
AGENTIC_MINUTES = 8.0  # wall clock of agentic GRPO
AGENTIC_STEPS = 0  # or a fixed number of agentic steps (0: by wall clock)
STEPWISE_MINUTES = 0.5  # wall clock of the paper step-wise GRPO from the same warm start (0 skips it)
STEPWISE_STEPS = 0  # or a fixed number of step-wise steps (0: by wall clock; both 0 skips it)
COMPARISON_DIR = ""  # a `python -m arftlib compare --out DIR` folder to show; empty: OUT_DIR/comparison
RUN_COMPARISON = False  # run the full comparison here (each method for AGENTIC_MINUTES; long)
SEED = 0  # seed for data, sampling and training

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from arftlib.config import describe, get_config
from arftlib.train import lora_snapshot, max_abs_diff, train, wall_clock_stop
from arftlib.train.trainer import current_rss_mb
from arftlib.train.warmstart import WarmStartRecipe, warm_start
from arftlib.trajectories import read_trajectories
from experiments.micro_learning import (answer_step_check, code_step_check, compare_methods, evaluate_policy,
                                       micro_setup, rl_training_tasks, seeing_check)

out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
cfg = get_config(PROFILE, benchmark=f"micro-{KIND}", seed=SEED)  # the profile with its micro-world settings
pd.set_option("display.max_colwidth", 110)
display(pd.DataFrame(describe(cfg), columns=["knob", "value", "meaning"]).set_index("knob"))
rss_before = current_rss_mb()
t_notebook = time.time()

# %% [markdown]
# ## The data: a micro build, train and held-out

# %%
out, cfg, train_tasks, heldout_tasks, data_dir = micro_setup(out_dir, kind=KIND, profile=cfg.profile,
                                                             n_tasks=N_TASKS or None, seed=SEED)
n_build = len(train_tasks) + len(heldout_tasks)
heldout_tasks = heldout_tasks[:HELDOUT]
print(f"micro-{KIND}: {len(train_tasks)} train / {len(heldout_tasks)} held-out tasks ({data_dir})")
# what GRPO trains on: the warm start's own training tasks, or (micro-search) other worlds' (the same held-out tasks)
rl_tasks, fresh_worlds = rl_training_tasks(KIND, train_tasks, out_dir / "data", n_build, cfg.seed,
                                           FRESH_WORLDS if KIND == "search" else 0)
if fresh_worlds:
    print(f"GRPO trains on {len(rl_tasks)} tasks of {fresh_worlds} other worlds (the warm start on this one)")
display(pd.Series(["+".join(t.degradations) or "-" for t in heldout_tasks]).value_counts().rename("held-out tasks"))

# %% [markdown]
# ## 1 · Warm start (cold-start SFT on gold steps; cached)

# %%
# micro-search images have no clean version: no seeing stage there, a reading stage instead
coding = KIND == "coding"
recipe = WarmStartRecipe(steps=WARM_STEPS if coding else SEARCH_WARM_STEPS, seeing_steps=SEEING_STEPS if coding else 0,
                         seeing_filler_words=SEEING_FILLER_WORDS if coding else 0,
                         seeing_copies=SEEING_COPIES if coding else 1, reading_steps=0 if coding else READING_STEPS,
                         diagnosis_steps=DIAGNOSIS_STEPS and coding,
                         tool_episode_fraction=TOOL_EPISODES, tags_rows=TAGS_LAYOUT, seed=cfg.seed)
t0 = time.time()
ws = warm_start(cfg, train_tasks, recipe, isolated=True)  # trained in a child process: GRPO here then runs faster
print(f"warm start {'reused from the cache' if ws['reused'] else 'trained'} in {time.time() - t0:.0f} s: "
      f"{ws['rows']} rows {ws['rows_by_action']}, {ws['steps']} steps, final loss {ws['loss']:.3f} → {ws['model']}")
for st in ws.get("stages", []):
    print(f"  stage {st['stage']!r}: {st['rows']} rows, {st['steps']} steps, {st['seconds']:.0f} s, loss {st['loss']:.3f}"
          f"{' (reused)' if st.get('reused') else ''}")
if ws.get("loss_curve"):
    plt.figure(figsize=(5, 2.6))
    plt.plot(ws["loss_curve"])
    plt.title("warm-start loss (logged every few steps)")
    plt.savefig(out_dir / "warm_start_loss.png", dpi=80)
    plt.show()

# %% [markdown]
# ### Can the warm start see?
# The held-out questions asked on their *clean* images, answered at once. At chance with one answer per question
# type, the policy reads the question, not the image: then neither tools nor RL can raise its F1 (the restored
# image is worth nothing to a policy that does not look).

# %%
seeing = seeing_check(cfg, ws["model"], ws["adapter"], heldout_tasks, out_dir / "seeing_check", kind=KIND)
if seeing is None:
    print("no clean images in this world (micro-search): the seeing check does not apply")
else:
    print(f"clean-image F1 {seeing['f1']:.1f} on {seeing['n']} held-out questions")
    display(pd.DataFrame(seeing["by_type"]).T.rename(columns={"answers": "distinct answers given"}))

# %% [markdown]
# ### ... and at an episode's answer turn?
# The colour and position questions again, now at the answer turn of their episode: the gold diagnosis and code are
# played (the code runs; a rotation comes back exactly), then the policy writes the answer alone, greedy. Eyes that
# work only at turn one read nothing here (README "Where the reading is tied"); `/rotated` rows needed the repair.

# %%
answer_step = None
if KIND == "coding":
    answer_step = answer_step_check(cfg, ws["model"], ws["adapter"], heldout_tasks, out_dir / "answer_step_check")
    print(f"answer turn after the gold repair: {answer_step['correct']} of {answer_step['n']} right")
    display(pd.DataFrame(answer_step["by_type"]).T.rename(columns={"answers": "distinct answers given"}))

# %% [markdown]
# ## 2 · Before: the warm start on held-out tasks, with live tools and without

# %%
t0 = time.time()
before = evaluate_policy(cfg, ws["model"], ws["adapter"], heldout_tasks, out_dir / "eval_before", kind=KIND,
                         direct_baseline=True)
print(f"before: F1 {before['f1']:.1f} {before['f1_ci']} with tools, {before['direct_f1']:.1f} with tools off; reward "
      f"{before['reward']:.3f}; {before['tool_calls_per_episode']:.2f} tool calls per episode "
      f"({time.time() - t0:.0f} s)")

# %% [markdown]
# ## 3 · Agentic GRPO: live episodes in TRL's tool loop
# Every step: the policy writes whole episodes (`num_generations` per task); `<problem>` and `<code>` are tool
# calls the environment runs (the code in the sandbox, its image fed back); the rubric scores the finished
# episode; GRPO updates the LoRA adapter. Collapse knobs of the profile: zero-variance groups filtered
# (`filter_zero_variance_groups`), unfinished episodes masked (`mask_unfinished_episodes`), the tool-use monitor.

# %%
snap = lora_snapshot() if cfg.finetune == "lora" else None
callbacks = [c for c in (snap, wall_clock_stop(AGENTIC_MINUTES) if AGENTIC_MINUTES else None) if c is not None]
t0 = time.time()
agentic = train(cfg, "agentic", model=ws["model"], out_dir=out_dir / "agentic", kind=KIND,
                max_steps=AGENTIC_STEPS or 100_000, tasks=(rl_tasks, heldout_tasks), callbacks=callbacks)
agentic_s = time.time() - t0
print(f"agentic GRPO: {agentic['steps']} steps in {agentic_s:.0f} s ({agentic['s_per_step']:.1f} s/step)")
for w in agentic["tool_collapse_warnings"][-3:]:
    print("WARNING:", w["message"])

# %%
hist = pd.DataFrame([h for h in agentic["log_history"] if "reward" in h])
comp_cols = [c for c in hist.columns if c.startswith("rewards/") and c.endswith("/mean")]
fig, axes = plt.subplots(1, 4, figsize=(19, 3.6))
for c in comp_cols:
    if hist[c].abs().sum() > 0:
        axes[0].plot(hist["step"], hist[c].rolling(5, min_periods=1).mean(), label=c.split("/")[1])
axes[0].set_title("reward per component (5-step mean)")
axes[0].legend(fontsize=6)
axes[1].plot(hist["step"], hist["reward"].rolling(5, min_periods=1).mean())
axes[1].set_title("total reward (5-step mean)")
axes[2].plot(hist["step"], hist["episode/tool_calls"], label="tool calls / episode")
axes[2].plot(hist["step"], hist["episode/answered"], label="answered")
axes[2].set_title("tool use (monitor: collapse warnings)")
axes[2].legend(fontsize=7)
axes[3].plot(hist["step"], hist["episode/turns"], label="turns / episode")
axes[3].plot(hist["step"], hist["completions/mean_length"] / 100, label="tokens / 100")
axes[3].set_title("episode length")
axes[3].legend(fontsize=7)
for ax in axes:
    ax.set_xlabel("step")
fig.tight_layout()
fig.savefig(out_dir / "training_curves.png", dpi=80)
plt.show()

# %% [markdown]
# ## 4 · After: the same held-out episodes with the trained adapter

# %%
adapter_dir = agentic["final_dir"]
after = evaluate_policy(cfg, ws["model"], adapter_dir, heldout_tasks, out_dir / "eval_after", kind=KIND,
                        direct_baseline=True)
adapter_diff = max_abs_diff(snap.start, snap.end) if snap is not None else float("nan")
adapter_changed = bool(adapter_diff > 0)
rows = [{"": "with tools", "F1 before": before["f1"], "F1 after": after["f1"], "gain": after["f1"] - before["f1"]},
        {"": "tools off (no-tool baseline)", "F1 before": before["direct_f1"], "F1 after": after["direct_f1"],
         "gain": after["direct_f1"] - before["direct_f1"]},
        {"": "reward (agentic rubric)", "F1 before": before["reward"], "F1 after": after["reward"],
         "gain": after["reward"] - before["reward"]},
        {"": "tool calls / episode", "F1 before": before["tool_calls_per_episode"],
         "F1 after": after["tool_calls_per_episode"],
         "gain": after["tool_calls_per_episode"] - before["tool_calls_per_episode"]}]
display(pd.DataFrame(rows).set_index("").round(3))
groups = sorted(set(before["by_group"]) | set(after["by_group"]))
by_deg = pd.DataFrame([{"group": g, "n": before["by_group"].get(g, {}).get("n"),
                        "F1 before": before["by_group"].get(g, {}).get("f1"),
                        "F1 after": after["by_group"].get(g, {}).get("f1"),
                        "tools off after": after.get("direct_by_group", {}).get(g, {}).get("f1")} for g in groups])
display(Markdown("### By degradation (reference F1, held-out)"))
display(by_deg.set_index("group"))
by_deg.to_csv(out_dir / "by_degradation.csv", index=False)
print(f"adapter changed: {adapter_changed} (max |ΔW| {adapter_diff:.2e})")

# %% [markdown]
# ### The hands: the code turn after the gold diagnosis, before and after
# Every held-out task with a gold code step gets its gold diagnosis played; the policy writes the code and the
# answer, greedy. `ran`: the code returned an image; `restored`: that image is close to the clean one
# (`restoration_score` quality ≥ 0.5 — writing the input back scores below it); `quality`: mean over the tasks.
# Beside the answer-turn check above (gold code, then the policy answers), it shows whether GRPO taught the code.

# %%
code_step = {}
if KIND == "coding":
    for name, ad in (("before", ws["adapter"]), ("after", adapter_dir)):
        code_step[name] = code_step_check(cfg, ws["model"], ad, heldout_tasks, out_dir / f"code_step_{name}")
    display(pd.concat({name: pd.DataFrame(r["by_degradation"]).T for name, r in code_step.items()}, axis=1))
    for name, r in code_step.items():
        print(f"{name}: of {r['n']} code turns after the gold diagnosis, {r['ran']} ran, {r['restored']} restored; "
              f"{r['correct']} answered right")

# %% [markdown]
# ### In the paper's layout (`TAGS_LAYOUT`)
# The reference evaluation keeps the whole history in one user message (`eval --protocol tags`). GRPO trained the chat
# layout only; a warm start that also saw the tags layout shows here whether what GRPO taught carries over.

# %%
tags_before = tags_after = None
if TAGS_LAYOUT:
    tags_before = evaluate_policy(cfg, ws["model"], ws["adapter"], heldout_tasks, out_dir / "eval_before_tags",
                                  kind=KIND, protocol="tags")
    tags_after = evaluate_policy(cfg, ws["model"], adapter_dir, heldout_tasks, out_dir / "eval_after_tags",
                                 kind=KIND, protocol="tags")
    print(f"tags layout: F1 {tags_before['f1']:.1f} {tags_before['f1_ci']} -> {tags_after['f1']:.1f} "
          f"{tags_after['f1_ci']}; answered {tags_before['answered']:.2f} -> {tags_after['answered']:.2f}")
else:
    print("TAGS_LAYOUT is off: this policy never saw the tags layout (it scores 0 there)")

# %% [markdown]
# ### By question type: seeing, or the prior?
# A policy that finishes more episodes scores more even when it does not look: its answer is then its prior. Per
# question type, how many answers differ and what always giving the most common one would score. A type answered
# with one word, scoring what that word scores, is guessing (README "How large is the gain").

# %%
by_question = pd.concat({name: pd.DataFrame(e["by_question"]).set_index("question")
                         for name, e in (("before", before), ("after", after))}, axis=1)
display(by_question)
by_question.to_csv(out_dir / "by_question.csv")

# %% [markdown]
# ## 5 · The paper's step-wise GRPO from the same warm start (short), and the method comparison

# %%
stepwise = None
if STEPWISE_MINUTES or STEPWISE_STEPS:
    sw = train(cfg, "stepwise", model=ws["model"], out_dir=out_dir / "stepwise", kind=KIND,
               max_steps=STEPWISE_STEPS or 100_000, tasks=(rl_tasks, heldout_tasks),
               callbacks=[wall_clock_stop(STEPWISE_MINUTES)] if STEPWISE_MINUTES else [])
    sw_after = evaluate_policy(cfg, ws["model"], sw["final_dir"], heldout_tasks, out_dir / "eval_after_stepwise",
                               kind=KIND)
    stepwise = {"steps": sw["steps"], "f1_after": sw_after["f1"], "f1_ci": sw_after["f1_ci"],
                "reward_after": sw_after["reward"]}
    print(f"step-wise GRPO ({sw['steps']} steps): held-out F1 {before['f1']:.1f} → "
          f"{sw_after['f1']:.1f} {sw_after['f1_ci']}")
comparison = None
comp_dir = Path(COMPARISON_DIR) if COMPARISON_DIR else out_dir / "comparison"
if RUN_COMPARISON:
    comparison = compare_methods(comp_dir, kind=KIND, minutes=AGENTIC_MINUTES, profile=cfg.profile, seed=SEED,
                                 recipe=recipe, data=data_dir, heldout_tasks=HELDOUT,  # this notebook's warm start
                                 fresh_worlds=fresh_worlds)
elif (comp_dir / "comparison.json").is_file():
    comparison = json.loads((comp_dir / "comparison.json").read_text())
if comparison:
    display(Markdown(f"### Same warm start, {comparison['minutes']} min each (best: {comparison['best']})\n\n"
                     + comparison["table_md"]))
else:
    print("no comparison yet: `python -m arftlib compare --kind coding --minutes 10 --out DIR` (or RUN_COMPARISON)")

# %% [markdown]
# ## The trained adapter and a few held-out episodes, before and after

# %%
print(sorted(p.name for p in Path(adapter_dir).iterdir()))
b_trajs = {t.task.id: t for t in read_trajectories(out_dir / "eval_before" / "trajectories")}
a_trajs = {t.task.id: t for t in read_trajectories(out_dir / "eval_after" / "trajectories")}
for tid in list(a_trajs)[:3]:
    for name, tr in (("BEFORE", b_trajs[tid]), ("AFTER ", a_trajs[tid])):
        turns = " | ".join(s.model_text.replace("\n", " ")[:90] for s in tr.steps)
        print(f"{name} {tid} gold={tr.task.answers} f1={tr.metrics.get('f1')}: {turns}")

# %%
metrics = {
    "profile": cfg.profile, "kind": KIND, "benchmark": f"micro-{KIND}", "data": str(data_dir),
    "warm_start_dir": ws["model"], "warm_start_adapter": ws["adapter"], "warm_start_reused": ws["reused"],
    "warm_start_rows": ws["rows"],
    "warm_start_steps": ws["steps"], "adapter_dir": str(adapter_dir),
    "heldout_f1_before": before["f1"], "heldout_f1_after": after["f1"],
    "heldout_reward_before": before["reward"], "heldout_reward_after": after["reward"],
    "heldout_f1_ci_before": before["f1_ci"], "heldout_f1_ci_after": after["f1_ci"],
    "direct_f1_before": before["direct_f1"], "direct_f1_after": after["direct_f1"],  # tools switched off
    "tools_minus_direct_f1_after": round(after["f1"] - after["direct_f1"], 2),
    "heldout_f1_gain": round(after["f1"] - before["f1"], 2), "warm_start_recipe": ws["recipe"],
    "warm_start_s": ws.get("seconds"), "warm_start_stages": ws.get("stages"),
    "warm_start_seeing_f1": seeing["f1"] if seeing else None,  # clean images, answered at once (can it see?)
    "warm_start_seeing_by_type": seeing["by_type"] if seeing else None,
    "warm_start_answer_step": answer_step,  # colour / position at the answer turn after the gold repair
    "code_step_before": code_step.get("before"),  # the code turn after the gold diagnosis: ran, restored, right
    "code_step_after": code_step.get("after"),
    "tool_calls_before": before["tool_calls_per_episode"], "tool_calls_after": after["tool_calls_per_episode"],
    "adapter_changed": adapter_changed, "adapter_max_abs_diff": adapter_diff,
    "agentic_steps": agentic["steps"], "agentic_s": round(agentic_s, 1), "agentic_s_per_step": agentic["s_per_step"],
    "tool_collapse_warnings": len(agentic["tool_collapse_warnings"]), "n_heldout": len(heldout_tasks),
    "by_question_before": before["by_question"], "by_question_after": after["by_question"],  # seeing or guessing
    "n_rl_tasks": len(rl_tasks), "fresh_worlds": fresh_worlds,
    "heldout_f1_tags_before": tags_before["f1"] if tags_before else None,  # the paper layout (TAGS_LAYOUT)
    "heldout_f1_tags_after": tags_after["f1"] if tags_after else None,
    "stepwise": stepwise, "comparison_best": comparison["best"] if comparison else None,
    "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(current_rss_mb(), 1),
    "notebook_s": round(time.time() - t_notebook, 1),
}
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
metrics
