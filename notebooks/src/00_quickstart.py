# %% [markdown]
# # 00 · Quickstart — one image, one question, one turn
#
# Loads the policy for the profile (on a machine without CUDA: a tiny random Qwen2.5-VL built offline in
# seconds), shows it a real MAT-Coding image with the paper's coding prompt, prints the raw turn it writes,
# parses that turn into an action and scores it against the gold answer with the reference F1/EM.
# The tiny model's weights are random, so its turn is gibberish: the point is that every piece of the
# pipeline (processor, chat template, generation, parser, scorer) runs end to end. Point `MODEL` at
# `Qwen/Qwen2.5-VL-3B-Instruct` or a local checkpoint on a GPU machine to see a real turn.

# %% tags=["parameters"]
PROFILE = "auto"  # run profile: auto | tiny-cpu | qwen2.5-vl-3b-qlora-24gb | qwen2.5-vl-7b-lora-80gb | paper-8gpu
OUT_DIR = "../runs/manual/00_quickstart"  # every file this notebook writes goes here
MODEL = ""  # hub id or local path; empty means the model of the profile (tiny means random tiny model built offline)
TASK_ID = "12"  # which of the six real MAT-Coding demo examples to ask: 12 is a rotated can, 119 a crop
PROTOCOL = "tags"  # tags (the paper's prompt) | chat
MAX_NEW_TOKENS = 64  # tokens to sample for the one turn
SEED = 0  # sampling seed

# %%
import json
import time
from pathlib import Path

import torch
from IPython.display import display
from PIL import Image

from arftlib.config import get_config
from arftlib.data.loaders import load_mat_coding
from arftlib.metrics import f1_em
from arftlib.models import load_for_config
from arftlib.parse import parse_action
from arftlib.paths import MAT_CODING_DEMO
from arftlib.prompts import build_messages
from arftlib.policies import HFPolicy

out_dir = Path(OUT_DIR)
out_dir.mkdir(parents=True, exist_ok=True)
cfg = get_config(PROFILE, **({"model_id": MODEL} if MODEL else {}))
torch.manual_seed(SEED)
print(f"profile={cfg.profile}  model={cfg.model_id}  quantization={cfg.quantization}")

# %% [markdown]
# ## The task: a real MAT-Coding example
# The six examples shipped in `arftlib/resources/mat_coding_demo/` load through the same MAT-Coding loader the
# full benchmark uses. The model sees the degraded image (or, for crop questions, the original image).

# %%
tasks = {t.id: t for t in load_mat_coding(MAT_CODING_DEMO / "coding_case.json")}
task = tasks[TASK_ID]
print(f"[{task.id}] {task.question}\ngold: {task.answers}   type: {task.degradations}   split: {task.split}")
image = Image.open(task.images[0]).convert("RGB")
preview = image.copy()
preview.thumbnail((360, 360))
display(preview)

# %% [markdown]
# ## Load the policy and write one turn

# %%
t0 = time.time()
model, processor = load_for_config(cfg)
load_s = time.time() - t0
n_params = sum(p.numel() for p in model.parameters())
print(f"loaded {type(model).__name__} ({n_params / 1e6:.2f} M parameters) in {load_s:.1f} s")

messages = build_messages(task, PROTOCOL, history=[])
print(json.dumps(messages, indent=1, default=str)[:1500])

# %%
policy = HFPolicy(model, processor, max_new_tokens=MAX_NEW_TOKENS, temperature=cfg.temperature, seed=SEED)
t0 = time.time()
turn = policy.generate([messages])[0]
gen_s = time.time() - t0
print(f"prompt tokens: {turn.prompt_tokens} (image tokens: {turn.image_tokens}), "
      f"completion tokens: {turn.completion_tokens}, {gen_s:.2f} s")
print("---- raw turn ----")
print(turn.text)

# %% [markdown]
# ## Parse and score
# `parse_action` never raises: a malformed turn is an `invalid` action carrying the reason. The answer is
# scored with the reference MAT-Coding F1/EM (the `reference` variant reproduces the paper's notebooks).

# %%
action = parse_action(turn.text)
print(action)
pred = action.content if action.kind == "answer" else None
f1, em = f1_em(pred, task.answers, style="coding", variant="reference")
gold_f1, gold_em = f1_em(task.answers[0], task.answers, style="coding", variant="reference")
print(f"model turn: kind={action.kind}  F1={f1:.2f}  EM={em:.2f}   (sanity: gold vs gold F1={gold_f1:.2f})")

# %%
metrics = {
    "profile": cfg.profile,
    "model": cfg.model_id,
    "task_id": task.id,
    "protocol": PROTOCOL,
    "action_kind": action.kind,
    "f1": f1,
    "em": em,
    "score_variant": "reference",
    "prompt_tokens": turn.prompt_tokens,
    "image_tokens": turn.image_tokens,
    "completion_tokens": turn.completion_tokens,
    "load_s": round(load_s, 3),
    "generate_s": round(gen_s, 3),
}
(out_dir / "raw_turn.txt").write_text(turn.text)
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
metrics
