# %% [markdown]
# # 03 · Reward design — every component on hand-written cases, hacking probes, weights, flat groups
#
# GRPO learns only from reward *differences inside a group*. This notebook runs hand-written episodes — a
# correct one, a wrong one, a malformed one, one whose tool fails, and reward-hacking attempts — through the
# **real environment and tools** (the scripted policy replays the turns; code really runs in the sandbox,
# queries really hit the search index), then scores each with the workbench's agentic rubric and the paper's
# step-wise rubric, component by component. Sliders re-weight the components and re-rank the cases. The last
# section measures how often a GRPO group gets *no* signal (all rewards equal) with the tiny model.

# %% tags=["parameters"]
PROFILE = "auto"  # run profile
OUT_DIR = "../runs/manual/03_reward_design"  # every file this notebook writes goes here
SEED = 0  # data and sampling seed
N_GROUP_TASKS = 4  # tasks per kind for the flat-group measurement
GROUP_SIZE = 4  # generations per task (GRPO group size) for the flat-group measurement
MAX_NEW_TOKENS = 32  # tokens per turn for the tiny-model rollouts

# %%
import dataclasses
import json
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import pandas as pd
from IPython.display import display

from arftlib.config import get_config
from arftlib.data.build import build_dataset, load_built
from arftlib.env import AgentEnv
from arftlib.env.core import step_sample
from arftlib.policies import HFPolicy, ScriptedPolicy
from arftlib.rewards import AGENTIC_WEIGHTS, agentic_rubric, paper_stepwise_rubric, score_episode
from arftlib.rollout import run_episodes
from arftlib.turns import gold_turns

out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
cfg = get_config(PROFILE)
tasks = {kind: load_built(build_dataset(kind, max(N_GROUP_TASKS, 4), SEED, out_dir / f"synth-{kind}",
                                        overwrite=True)) for kind in ("coding", "search")}
coding_task = next(t for t in tasks["coding"] if "crop" not in t.degradations and "none" not in t.degradations)
search_task = next(t for t in tasks["search"] if sum(s["action"] == "search" for s in t.gold_chain) >= 1)
print(f"coding task {coding_task.id}: {coding_task.question}  gold={coding_task.answers}  {coding_task.degradations}")
print(f"search task {search_task.id}: {search_task.question}  gold={search_task.answers}")

# %% [markdown]
# ## The cases
# Each case is a list of model turns in the paper's tag format. Hacking attempts: an empty answer, a list of
# many candidate answers, repeated answer tags, the answer hidden in `<think>`, and tool spam.

# %%
def think(text):
    return f"<think>{text}</think>\n"


def cases_for(task):
    gold = gold_turns(task)
    answer = task.answers[0]
    tools = gold[:-1]
    first_tool = tools[0] if tools else ""
    cases = {
        "correct": gold,
        "wrong answer": tools + [think("I think I know.") + "<answer>Nothing to see</answer>"],
        "malformed": ["the answer is " + answer],
        "answer without tools": [think("I will guess.") + f"<answer>{answer}</answer>"],
        "empty answer": tools + [think("...") + "<answer></answer>"],
        "many candidates": tools + [think("Cover every option.") + "<answer>" + ", ".join(
            [answer, "Paris", "1990", "blue", "John Smith", "the red one", "42", "yes", "no"]) + "</answer>"],
        "repeated tags": tools + [think("Twice is better.") + f"<answer>{answer}</answer><answer>{answer}</answer>"],
        "answer hidden in think": tools + [think(f"The answer is {answer}.") + "<answer>unknown</answer>"],
        "tool spam": [first_tool] * 4 + gold[len(tools) - 1:] if tools else gold,
    }
    if task.kind == "coding":
        crash = think("Fix it.") + "<code>\n```python\nimport cv2\nimg = cv2.imread('path_to_input_image.jpg')\n" \
                                   "raise RuntimeError('boom')\n```\n</code>"
        cases["tool error"] = gold[:1] + [crash, think("The code failed.") + f"<answer>{answer}</answer>"]
    else:
        cases["tool error"] = [think("Search.") + "<search>" + "zzqx " * 3 + "</search>",
                               think("Nothing found.") + f"<answer>{answer}</answer>"]
    return cases


all_tasks, scripts, labels = [], {}, {}
for task in (coding_task, search_task):
    for name, turns in cases_for(task).items():
        copy = dataclasses.replace(task, id=f"{task.id}|{name}")
        all_tasks.append(copy)
        scripts[copy.id] = turns
        labels[copy.id] = (task.kind, name)
env = AgentEnv.factory(**AgentEnv.settings_from_config(cfg, protocol="tags"))  # the profile's tools and budgets
trajectories = run_episodes(all_tasks, ScriptedPolicy(scripts), env_factory=env, writer=out_dir / "case_trajectories",
                            progress=False)

# %% [markdown]
# ## Component breakdown (agentic rubric: whole episodes)
# Every component reads what the environment recorded — each turn's parsed action and the typed observation
# (tool, error category, image) — never the turn's text. `score_episode` is the same call training makes.

# %%
rows = []
for traj in trajectories:
    kind, name = labels[traj.task.id]
    scores = score_episode(traj, agentic_rubric(kind))
    rows.append({"kind": kind, "case": name, "turns": len(traj.steps),
                 "tool_errors": traj.metrics.get("tool_errors", 0), **scores})
table = pd.DataFrame(rows).set_index(["kind", "case"]).round(3)
table.to_csv(out_dir / "agentic_breakdown.csv")
display(table)

# %% [markdown]
# ## The paper's step-wise rubric on the final (answer) turn
# The paper scores one step at a time: format + F1 of the `<answer>` against the gold answer turn. It never
# sees whether the tools were used, so "answer without tools" earns full marks there.

# %%
paper_rows = []
for traj in trajectories:
    kind, name = labels[traj.task.id]
    last = traj.steps[-1].model_text if traj.steps else ""
    # the last turn as the step-wise sample of the gold answer step, as step-wise training scores it
    sample = step_sample(traj.task, len(traj.task.gold_chain) - 1, last)
    rubric = paper_stepwise_rubric(kind)
    scores = rubric.score([sample])[0]
    paper_rows.append({"kind": kind, "case": name, "paper_total": scores.pop("total"), **scores})
paper_table = pd.DataFrame(paper_rows).set_index(["kind", "case"]).round(3)
paper_table.to_csv(out_dir / "paper_breakdown.csv")
display(paper_table)

# %% [markdown]
# ## Do the hacking attempts score below a correct answer?

# %%
hacks = ["empty answer", "many candidates", "repeated tags", "answer hidden in think", "tool spam",
         "answer without tools"]
probe = []
for kind in ("coding", "search"):
    correct = table.loc[(kind, "correct"), "total"]
    for hack in hacks:
        probe.append({"kind": kind, "attempt": hack, "agentic_total": table.loc[(kind, hack), "total"],
                      "agentic_correct": correct, "agentic_below": table.loc[(kind, hack), "total"] < correct,
                      "paper_total": paper_table.loc[(kind, hack), "paper_total"],
                      "paper_correct": paper_table.loc[(kind, "correct"), "paper_total"]})
probe = pd.DataFrame(probe)
probe["paper_below"] = probe.paper_total < probe.paper_correct
display(probe)

# %% [markdown]
# ## Re-weight the components
# Move a slider: the total is recomputed from the logged components and the cases re-rank. (In a static
# render the sliders show their defaults.)

# %%
component_cols = [c for c in table.columns if c not in ("turns", "tool_errors", "total")]
sliders = {c: widgets.FloatSlider(value=AGENTIC_WEIGHTS.get(c, 0.0), min=-1.0, max=2.0, step=0.05, description=c,
                                  style={"description_width": "160px"}, layout=widgets.Layout(width="420px"))
           for c in component_cols}
ranking = widgets.Output()


def rerank(_=None):
    w = pd.Series({c: s.value for c, s in sliders.items()})
    total = table[component_cols].fillna(0.0).mul(w).sum(axis=1).rename("reweighted")
    with ranking:
        ranking.clear_output()
        display(pd.concat([total, table["total"]], axis=1).sort_values("reweighted", ascending=False).round(3))


for s in sliders.values():
    s.observe(rerank, names="value")
rerank()
display(widgets.HBox([widgets.VBox(list(sliders.values())), ranking]))

# %% [markdown]
# ## How often does a GRPO group carry no signal?
# A group of identical rewards has zero advantage for every member: the step learns nothing from it. We roll
# out the profile's model `GROUP_SIZE` times per task with sampling and count flat groups under each rubric.

# %%
from arftlib.models import load_for_config

model, processor = load_for_config(cfg)
policy = HFPolicy(model, processor, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, seed=SEED)
group_tasks = [dataclasses.replace(t, id=f"{t.id}|g{g}") for kind in tasks for t in tasks[kind][:N_GROUP_TASKS]
               for g in range(GROUP_SIZE)]
rollouts = run_episodes(group_tasks, policy, progress=False,
                        env_factory=AgentEnv.factory(**AgentEnv.settings_from_config(cfg, protocol="tags", max_turns=2)))
groups = {}
for traj in rollouts:
    base = traj.task.id.rsplit("|", 1)[0]
    groups.setdefault((traj.task.kind, base), []).append(score_episode(traj, agentic_rubric(traj.task.kind))["total"])
flat = {key: float(np.std(v)) == 0.0 for key, v in groups.items()}
zero_var_share = sum(flat.values()) / len(flat)
case_groups = table.groupby(level="kind")["total"].std()
print(f"tiny model: {sum(flat.values())}/{len(flat)} groups flat (share {zero_var_share:.2f})")
print("hand-written cases as one group per kind: reward std", case_groups.round(3).to_dict())

# %%
metrics = {
    "profile": cfg.profile,
    "n_cases": len(trajectories),
    "hacks_below_correct_agentic": int(probe.agentic_below.sum()),
    "hacks_total": len(probe),
    "hacks_below_correct_paper": int(probe.paper_below.sum()),
    "correct_total_agentic": {k: float(table.loc[(k, "correct"), "total"]) for k in ("coding", "search")},
    "zero_variance_group_share_tiny_model": zero_var_share,
    "n_groups": len(flat),
}
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
