"""Probe: can the `seeing` tiny VLM learn the micro world on 2 CPU cores, and do the micro degradations destroy
(and the gold repairs restore) what it learned?

What it measures
- `coding`: builds a `micro-coding` set, trains the `seeing` model (`arftlib.models.tiny_model_path(size=
  "seeing")`, random init) with a plain supervised loop — AdamW, lr 1e-3, batch 32, prompt = image + question in
  the tiny chat template, loss on the answer tokens only — on CLEAN training images (a zoom question's clean
  image is its gold crop, enlarged as the gold code does) for `--minutes`. Then, on the held-out split (new
  colour × shape combinations, test wordings), greedy answers are scored by exact match, per question type:
    clean      the clean image (zoom: the enlarged gold crop);
    <label>    the clean image degraded by each label in turn, the strength drawn as the builder draws it
               (also labels the world does not pair with that question type, and `blur`, to show why the
               pairing table looks as it does); zoom: the full image, alone or with dark / noise;
    fixed      the gold code's output for that degraded image, run in the sandbox (what a policy that repairs
               the image sees).
  Chance is 1 / number of possible answers of the type. A pairing is useful when `<label>` is near chance
  (or below: flipped answers) and `fixed` is near `clean`.
- `search`: builds a `micro-search` set and trains, in one mixed supervised run, the two skills an episode needs:
    query   image + question → the gold first query ("red guild"), held-out: colour × kind pairings never seen;
    copy    image + question + the `<information>` blocks of the gold queries' top-4 hits → the answer word
            (answers are pool words; which one is a fact of a held-out society: only reading works;
            `experiments/reading_probe.py` isolates this step);
  and reports exact-match accuracy of both on the held-out split after `--minutes`, plus the direct-answer
  baseline (image + question → answer, no hits) that the same run also trains.

How to run (from the repository root; each run prints a table and writes `probe_<kind>.json` to `--out`):
    HF_HUB_OFFLINE=1 nice .venv/bin/python experiments/micro_probe.py coding --minutes 3 --out /tmp/micro-probe
    HF_HUB_OFFLINE=1 nice .venv/bin/python experiments/micro_probe.py search --minutes 3 --out /tmp/micro-probe
A coding run takes ~`--minutes` + 2 minutes, a search run ~`--minutes` + 1 minute on 2 shared cores. `--types`
(e.g. `position`), `--max-train N` and `--answer-form word|short-think|think` (the target text: the word alone, or
behind a think as the warm start's rows have it) narrow a coding run. What they showed (2026-12-02, seed 0, 700
training tasks, clean-image accuracy at step 150, answers colour / zoom): `word` 77 / 76 %; `short-think`
30 / 22 % (34 / 46 % at step 200); `think` 17 / 16 % at step 100. So every token before the answer word slows
learning to see several times over. `--types position` (4 sides) stayed at one answer for 450 steps with the
`seeing` build of then (M-RoPE sections [8, 12, 12], theta 1e6); on the build of 2026-12-07 ([0, 16, 16], theta 10;
`arftlib.models`; that text theta garbled the gold code, `--size seeing-grid` is the same at theta 100) it reached
96 % after ~370 steps (rotation180 6 %, restored 96 %), and all four types mixed (`--minutes 4`, 400 steps) colour
96 %, zoom 89 %, position 92 %, shape 4 %; `seeing-grid` position alone: see the README.

What it leaves out: the agentic loop (diagnosis, code generation, tool calls), RL, and the `toy` model; this is
the "can it see at all" check that the micro world's design rests on. Numbers vary with the machine's load (the
budget is wall-clock) and with `--seed`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as a script from anywhere
    sys.path.insert(0, str(REPO))

LR = 1e-3  # AdamW learning rate (facts.md's probe)
BATCH = 32  # training batch size
EVAL_BATCH = 64  # evaluation batch size (greedy generation)
MAX_NEW_TOKENS = 8  # answers are one word; queries three
ANSWER_FORMS = {  # --answer-form: the target text around the answer word (the warm start's clean rows are "think")
    "word": "{}",
    "short-think": "<think> read it </think>\n<answer> {} </answer>",
    "think": "<think> The image has no issues, so I can read the answer directly. </think>\n<answer> {} </answer>",
}
PROBE_LABELS = ("dark", "overexposure", "noise", "blur", "rotation90", "rotation180")  # applied to every
# non-zoom held-out image in the coding matrix


# ------------------------------------------------------------------------------------------------ model I/O
def load_seeing(seed: int, size: str = "seeing"):
    """The random `seeing` (or `seeing-grid`) Qwen2.5-VL (cached build) and its processor, float32, train mode."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from arftlib.models import tiny_model_path

    path = tiny_model_path("qwen2_5_vl", seed=seed, size=size)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    return model, processor


def _prompts(processor, questions: Sequence[str], with_image: bool = True) -> list[str]:
    out = []
    for q in questions:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": q}]
        out.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False))
    return out


def encode_train(processor, images: Sequence[Any], questions: Sequence[str], targets: Sequence[str]):
    """A training batch: prompt + target + <|im_end|>, labels only on the target tokens (left padding)."""
    import torch

    tok = processor.tokenizer
    texts = [p + t + "<|im_end|>" for p, t in zip(_prompts(processor, questions), targets)]
    enc = processor(text=texts, images=list(images), padding=True, return_tensors="pt")
    labels = torch.full_like(enc["input_ids"], -100)
    for i, t in enumerate(targets):
        n = len(tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"])
        labels[i, -n:] = enc["input_ids"][i, -n:]  # left padding: the target is the last n tokens
    enc["labels"] = labels
    return enc


def answer_word(text: str) -> str:
    """The answer of a generated target: the `<answer>` payload when there is one, else the text (stripped).

    >>> answer_word("<think> read it </think> <answer> red </answer>"), answer_word("red")
    ('red', 'red')
    """
    m = re.search(r"<answer>(.*?)</answer>", text, re.S)
    return (m.group(1) if m else text).strip()


def answer(model, processor, images: Sequence[Any], questions: Sequence[str]) -> list[str]:
    """Greedy answers (decoded, stripped, the `<answer>` payload when the target form has one), batched."""
    import torch

    from arftlib.models import suppressed_token_ids

    bad = [[i] for i in suppressed_token_ids(processor)]
    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(questions), EVAL_BATCH):
            enc = processor(text=_prompts(processor, questions[s:s + EVAL_BATCH]), images=list(images[s:s + EVAL_BATCH]),
                            padding=True, return_tensors="pt")
            gen = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, bad_words_ids=bad,
                                 pad_token_id=processor.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [answer_word(x) for x in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    model.train()
    return out


def train(model, processor, samples: list[tuple[Any, str, str]], minutes: float, seed: int,
          max_steps: int | None = None, log_every: int = 50, evaluate=None) -> dict[str, Any]:
    """AdamW on (image, question, target) samples for `minutes` of wall-clock (or `max_steps`, whichever comes
    first); returns the loss curve (the periodic evaluations' time is excluded from `train_s`)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    t0 = time.perf_counter()
    step, curve, order, eval_s = 0, [], [], 0.0
    while time.perf_counter() - t0 - eval_s < minutes * 60 and (max_steps is None or step < max_steps):
        if len(order) < BATCH:
            order += rng.sample(range(len(samples)), len(samples))
        idx, order = order[:BATCH], order[BATCH:]
        batch = [samples[i] for i in idx]
        enc = encode_train(processor, [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch])
        loss = model(**enc).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % log_every == 0:
            row = {"step": step, "train_s": round(time.perf_counter() - t0 - eval_s, 1),
                   "loss": round(float(loss.detach()), 4)}
            if evaluate is not None:
                te = time.perf_counter()
                row.update(evaluate())
                eval_s += time.perf_counter() - te
            curve.append(row)
            print(json.dumps(row), flush=True)
    el = time.perf_counter() - t0 - eval_s
    return {"steps": step, "seconds": round(el, 1), "s_per_step": round(el / max(1, step), 3), "curve": curve}


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(a))


def _em(preds: Sequence[str], golds: Sequence[str]) -> float:
    return round(100.0 * sum(p.lower() == g.lower() for p, g in zip(preds, golds)) / max(1, len(golds)), 1)


# ------------------------------------------------------------------------------------------------ coding
def _run_gold(code: str, img: np.ndarray, tmp: Path) -> np.ndarray:
    """The gold code's output for `img`, run in the sandbox (as the environment would)."""
    from arftlib.data.render import load_rgb, save_png
    from arftlib.tools.sandbox import run_image_code

    src = save_png(img, tmp / "in.png")
    res = run_image_code(code, str(src), timeout_s=30.0)
    if not res.ok or res.output_image is None:
        raise RuntimeError(f"gold code failed in the sandbox: {res.error}\n{code}")
    try:
        return load_rgb(res.output_image)
    finally:
        Path(res.output_image).unlink(missing_ok=True)


def zoom_target(clean: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """What the gold crop code produces from a clean image (crop by the box, enlarged, as `cv2.resize` does)."""
    import cv2

    from arftlib.data import micro_coding as MC
    from arftlib.types import grid_box_to_pixels

    x0, y0, x1, y1 = grid_box_to_pixels(box, clean.shape[1], clean.shape[0])
    return cv2.resize(np.ascontiguousarray(clean[y0:y1, x0:x1]), (MC.ZOOM_SIDE, MC.ZOOM_SIDE))


def probe_coding(args) -> dict[str, Any]:
    from arftlib.data import micro_coding as MC
    from arftlib.data.build import build_dataset, load_built
    from arftlib.data.render import load_rgb

    out = Path(args.out)
    t0 = time.perf_counter()
    build = build_dataset("micro-coding", args.n, args.seed, out / "micro-coding", overwrite=True, verify=False)
    tasks = load_built(build)
    types = set(args.types.split(",")) if args.types else set(MC.QUESTION_TYPES)
    if not types <= set(MC.QUESTION_TYPES):
        raise ValueError(f"--types: unknown {sorted(types - set(MC.QUESTION_TYPES))}; use {MC.QUESTION_TYPES}")
    train_tasks = [t for t in tasks if t.split == "train" and t.metadata["question_type"] in types][: args.max_train]
    test_tasks = [t for t in tasks if t.split == "test" and t.metadata["question_type"] in types][: args.n_test]
    t_build = time.perf_counter() - t0

    def clean_view(t) -> np.ndarray:
        clean = load_rgb(t.clean_image)
        return zoom_target(clean, t.metadata["box"]) if t.metadata["question_type"] == "zoom" else clean

    form = ANSWER_FORMS[args.answer_form]
    samples = [(_pil(clean_view(t)), t.question, form.format(t.answers[0])) for t in train_tasks]
    # the held-out conditions: (question type, condition, image, question, answer)
    rng = np.random.default_rng([args.seed, 77])
    rows: list[tuple[str, str, Any, str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="micro-probe-"))
    t1 = time.perf_counter()
    for t in test_tasks:
        qt, q, a = t.metadata["question_type"], t.question, t.answers[0]
        clean = load_rgb(t.clean_image)
        rows.append((qt, "clean", _pil(clean_view(t)), q, a))
        if qt == "zoom":
            for labels in (["crop"], ["crop", "dark"], ["crop", "noise"]):
                params = {lab: MC.sample_params(lab, rng) for lab in labels}
                deg = MC.degrade(clean, labels, params, rng)
                name = "+".join(x for x in labels if x != "crop") or "crop"
                rows.append((qt, name, _pil(deg), q, a))
                rows.append((qt, f"{name} fixed", _pil(_run_gold(MC.restoration_code(labels, params, t.metadata["box"]),
                                                                  deg, tmp)), q, a))
            continue
        for lab in PROBE_LABELS:
            params = {lab: MC.sample_params(lab, rng)}
            deg = MC.degrade(clean, [lab], params, rng)
            rows.append((qt, lab, _pil(deg), q, a))
            rows.append((qt, f"{lab} fixed", _pil(_run_gold(MC.restoration_code([lab], params), deg, tmp)), q, a))
        if qt == "position":  # the hard pairs: a rotation and a photometric label together
            for labels in (["dark", "rotation180"], ["overexposure", "rotation90"]):
                params = {lab: MC.sample_params(lab, rng) for lab in labels}
                deg = MC.degrade(clean, labels, params, rng)
                rows.append((qt, "+".join(labels), _pil(deg), q, a))
                rows.append((qt, "+".join(labels) + " fixed", _pil(_run_gold(MC.restoration_code(labels, params), deg, tmp)), q, a))
    t_conditions = time.perf_counter() - t1

    model, processor = load_seeing(args.seed, args.size)
    n_params = sum(p.numel() for p in model.parameters())

    by_type: dict[str, list] = {}
    for r in rows:
        if r[1] == "clean":
            by_type.setdefault(r[0], []).append(r)
    sub = [r for rs in by_type.values() for r in rs[:48]]  # a fixed slice per question type for the curve

    def quick_eval() -> dict[str, float]:
        preds = answer(model, processor, [r[2] for r in sub], [r[3] for r in sub])
        return {f"clean_{qt}": _em([p for p, r in zip(preds, sub) if r[0] == qt], [r[4] for r in sub if r[0] == qt])
                for qt in by_type}

    print(f"model: {n_params:,} parameters; {len(samples)} training samples; {len(rows)} held-out rows", flush=True)
    tr = train(model, processor, samples, args.minutes, args.seed, args.max_steps, args.log_every, quick_eval)
    t2 = time.perf_counter()
    preds = answer(model, processor, [r[2] for r in rows], [r[3] for r in rows])
    t_eval = time.perf_counter() - t2
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for (qt, cond, _img, _q, a), p in zip(rows, preds):
        cell = table.setdefault(qt, {}).setdefault(cond, {"n": 0, "correct": 0, "answers": {}})
        cell["n"] += 1
        cell["correct"] += int(p.lower() == a.lower())
        cell["answers"][p] = cell["answers"].get(p, 0) + 1  # what the model says (a constant = blind)
    for qt, conds in table.items():
        for cell in conds.values():
            cell["em"] = round(100.0 * cell["correct"] / cell["n"], 1)
    result = {"kind": "coding", "seed": args.seed, "n_build": args.n, "n_train": len(samples),
              "types": sorted(types), "answer_form": args.answer_form,
              "n_test_tasks": len(test_tasks), "parameters": n_params, "train": tr,
              "chance": {qt: round(100.0 / len(MC.CHOICES[qt]), 1) for qt in MC.QUESTION_TYPES},
              "table": table, "timing_s": {"build": round(t_build, 1), "conditions": round(t_conditions, 1),
                                           "eval": round(t_eval, 1)}}
    print_coding_table(result)
    return result


def print_coding_table(result: dict[str, Any]) -> None:
    print(f"\nmicro-coding probe: {result['train']['steps']} steps in {result['train']['seconds']} s "
          f"({result['train']['s_per_step']} s/step), {result['n_train']} clean training images; held-out EM %")
    for qt, conds in result["table"].items():
        print(f"\n{qt} (chance {result['chance'][qt]}):")
        names = [c for c in conds if not c.endswith(" fixed")]
        for c in names:
            fixed = conds.get(f"{c} fixed")
            print(f"  {c:26s} {conds[c]['em']:6.1f}  (n={conds[c]['n']})"
                  + (f"   fixed {fixed['em']:6.1f}" if fixed else ""))


# ------------------------------------------------------------------------------------------------ search
def probe_search(args) -> dict[str, Any]:
    from arftlib.data.build import build_dataset, load_built
    from arftlib.data.render import load_rgb
    from arftlib.prompts import render_search_hits
    from arftlib.tools.search import load_search

    out = Path(args.out)
    build = build_dataset("micro-search", args.n, args.seed, out / "micro-search", overwrite=True)
    tasks = load_built(build)
    search = load_search("local", corpus=tasks[0].metadata["corpus"], cache_root=Path(tempfile.mkdtemp()))

    def info(t) -> str:
        return "\n".join(render_search_hits(search.search(s["content"], k=4), 4)
                         for s in t.gold_chain if s["action"] == "search")

    def rows_of(split: str) -> dict[str, list[tuple[Any, str, str]]]:
        sel = [t for t in tasks if t.split == split]
        imgs = {t.id: _pil(load_rgb(t.images[0])) for t in sel}
        return {
            "query": [(imgs[t.id], t.question, t.gold_chain[0]["content"]) for t in sel],
            "copy": [(imgs[t.id], f"{t.question}\n{info(t)}", t.answers[0]) for t in sel],
            "direct": [(imgs[t.id], t.question, t.answers[0]) for t in sel],
        }

    tr_rows, te_rows = rows_of("train"), rows_of("test")
    samples = tr_rows["query"] + tr_rows["copy"] + tr_rows["direct"]
    model, processor = load_seeing(args.seed, args.size)

    def ev(rows: list[tuple[Any, str, str]]) -> float:
        return _em(answer(model, processor, [r[0] for r in rows], [r[1] for r in rows]), [r[2] for r in rows])

    def quick_eval() -> dict[str, float]:
        return {"heldout_query_em": ev(te_rows["query"][:64]), "heldout_copy_em": ev(te_rows["copy"][:64])}

    print(f"{len(samples)} training samples ({len(tr_rows['query'])} per skill)", flush=True)
    before = {k: ev(v) for k, v in te_rows.items()}
    tr = train(model, processor, samples, args.minutes, args.seed, args.max_steps, args.log_every, quick_eval)
    after = {k: ev(v) for k, v in te_rows.items()}
    after_train = {k: ev(v[:200]) for k, v in tr_rows.items()}
    by_hops = {}
    for hops in (1, 2):
        sel = [r for r, t in zip(te_rows["copy"], [t for t in tasks if t.split == "test"]) if t.metadata["hops"] == hops]
        by_hops[f"copy_{hops}hop"] = ev(sel) if sel else None
    result = {"kind": "search", "seed": args.seed, "n_build": args.n, "train": tr,
              "heldout_before": before, "heldout_after": after, "heldout_copy_by_hops": by_hops,
              "train_after_first200": after_train, "n_test": len(te_rows["query"])}
    print(f"\nmicro-search probe: {tr['steps']} steps in {tr['seconds']} s; held-out EM % (n={len(te_rows['query'])})")
    for k in ("query", "copy", "direct"):
        print(f"  {k:8s} before {before[k]:6.1f}  after {after[k]:6.1f}   (train after {after_train[k]:6.1f})")
    print(f"  copy by hops: {by_hops}")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("coding", "search"))
    ap.add_argument("--minutes", type=float, default=3.0, help="wall-clock training budget (evaluations excluded)")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (on a busy machine, "
                    "a step budget compares runs better than wall-clock)")
    ap.add_argument("--log-every", type=int, default=50, help="steps between loss / held-out curve points")
    ap.add_argument("--n", type=int, default=None, help="tasks to build (default: coding 3000, search 2000)")
    ap.add_argument("--n-test", type=int, default=240, help="coding: held-out tasks to evaluate (each in many conditions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="seeing", choices=("seeing", "seeing-grid"),
                    help="tiny model size: seeing-grid has the rotary layout that lets it learn position")
    ap.add_argument("--types", default="", help="coding: question types to train and evaluate, comma-separated "
                    "(default: all of color, shape, position, zoom)")
    ap.add_argument("--max-train", type=int, default=None, help="coding: use at most this many training tasks")
    ap.add_argument("--answer-form", choices=sorted(ANSWER_FORMS), default="word",
                    help="coding: the target text — the word alone, or behind a short / the warm start's think")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "micro-probe"))
    args = ap.parse_args(argv)
    args.n = args.n or (3000 if args.kind == "coding" else 2000)
    if args.answer_form != "word":  # the think costs tokens before the answer
        global MAX_NEW_TOKENS
        MAX_NEW_TOKENS = 40
    import torch

    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = probe_coding(args) if args.kind == "coding" else probe_search(args)
    path = Path(args.out) / f"probe_{args.kind}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
