"""Real GRPO steps at published size: `python -m arftlib bench real-size --model DIR --profile P --mode M --steps N`.

What it does
- Runs `arftlib.train.train` — the training code every run uses (TRL `GRPOTrainer`, our rubric adapter,
  trajectory log) — on a model folder (typically a published-size build with random weights:
  `python -m arftlib build-model --config qwen2.5-vl-3b DIR`) with a GPU profile's settings, shrunk only where
  a CPU needs it: `--generations` completions per prompt (one GRPO group per step: per-device batch =
  generations, one micro-batch per step), `--max-completion-length` tokens, `--image-size` pixels a side.
  Everything else is the profile's: 4-bit NF4 language model with the vision tower and lm_head unquantised,
  LoRA rank/targets, gradient checkpointing, learning rate, loss, pixel budget, chat template.
- On CPU the unquantised parts are loaded in bf16 (`--dtype`, a `model_init_kwargs` override): the training
  code's CPU default is float32, which holds the 3B's vision tower and embeddings at twice the memory.
- Tasks: a small procedural build (`data.build.build_dataset(kind, n, seed, verify=False)`).
- Reports ONE JSON object: load time (the `train()` call until the first step begins: processor, dataset rows,
  model load + quantisation, LoRA wrap, trainer set-up), seconds per step (first, and the median of the rest),
  peak RSS (after loading, and overall), tokens per episode (prompt text + image tokens from the processor on
  the rows the trajectory log names; sampled completion tokens and masked tool tokens from the log; tool-image
  tokens from the logged tool images), and what the loaded model looks like (4-bit linears in the language
  model and the vision tower, LoRA-wrapped modules, trainable parameters) — so a profile whose LoRA targets
  or skip list do not resolve on the real module names shows it here.

What it leaves out
- Quality: the weights are random, so rewards are noise and the policy never calls a tool by itself (agentic
  episodes end after one turn, their prompts carry the tool schemas). No checkpoint or final adapter is saved.
- GPU specifics (see `experiments/gpu_check.py`); throughput tuning (threads stay torch's default).

Figures measured on the project's CPU machine are in the README ("The real-size path").
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_bench_realsize_arguments", "bench_realsize", "bench_realsize_from_args", "prompt_token_counts",
           "training_tools"]

DEFAULT_PROFILE = "qwen2.5-vl-3b-qlora-24gb"  # the single-24-GB-GPU QLoRA profile


def _fill_images(messages: Sequence[Mapping[str, Any]], images: Sequence[Any]) -> list[dict[str, Any]]:
    """A row's conversational prompt with its image placeholders (`{"type": "image"}`) filled in order — what
    TRL's `prepare_multimodal_messages` hands the processor."""
    pending = list(images)
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            blocks = []
            for b in content:
                b = {k: v for k, v in dict(b).items() if v is not None}
                if b.get("type") == "image" and b.get("image") is None:
                    if not pending:
                        raise ValueError("a prompt has more image placeholders than its row has images")
                    b["image"] = pending.pop(0)
                blocks.append(b)
            out.append({**dict(m), "content": blocks})
        else:
            out.append(dict(m))
    if pending:
        raise ValueError(f"a row has {len(pending)} image(s) more than its prompt has placeholders")
    return out


def prompt_token_counts(row: Mapping[str, Any], processor: Any, tools: Sequence[Any] | None = None) -> dict[str, int]:
    """`{"prompt_tokens", "prompt_image_tokens"}` of one training row as TRL renders it: the chat template
    (with `tools` in agentic mode) over the row's prompt with its image(s), tokenised by the processor."""
    imgs = row.get("images", row.get("image"))
    imgs = [] if imgs is None else (list(imgs) if isinstance(imgs, (list, tuple)) else [imgs])
    msgs = _fill_images(row["prompt"], imgs)
    enc = processor.apply_chat_template(msgs, tools=list(tools) if tools else None, add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    ids = enc["input_ids"][0] if isinstance(enc["input_ids"][0], (list, tuple)) else enc["input_ids"]
    ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {"prompt_tokens": len(ids), "prompt_image_tokens": sum(1 for t in ids if t == pad)}


def training_tools(cfg: Any) -> list[Any]:
    """The tools TRL renders into an agentic prompt: the methods of the environment of the config's tool form
    (`make_env(protocol="chat", tool_calls=cfg.tool_format)`; the "tags" form's template shows no schemas)."""
    from arftlib.env.core import make_env, tool_functions

    return tool_functions(make_env(protocol="chat", tool_calls=getattr(cfg, "tool_format", "json")))


def _image_tokens(processor: Any, path: str) -> int:
    """LLM tokens of one image file under the processor's pixel budget (grid t·h·w / merge²)."""
    from PIL import Image

    with Image.open(path) as im:
        grid = processor.image_processor(images=[im.convert("RGB")], return_tensors="pt")["image_grid_thw"]
    return int(grid.prod()) // int(processor.image_processor.merge_size) ** 2


def _stats(xs: Sequence[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"mean": round(statistics.fmean(xs), 1), "min": min(xs), "max": max(xs), "n": len(xs)}


def _model_report(model: Any) -> dict[str, Any]:
    """What the loaded (quantised, LoRA-wrapped) model is made of, by module path."""
    n4_lang = n4_vis = lora = lin_vis = 0
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        visual = ".visual." in f".{name}."
        if kind in ("Linear4bit", "Linear8bitLt") and type(mod).__module__.startswith("bitsandbytes"):  # not PEFT's
            if visual:
                n4_vis += 1
            elif "language_model" in name:
                n4_lang += 1
        if visual and kind == "Linear":
            lin_vis += 1
        if hasattr(mod, "lora_A") and hasattr(mod, "base_layer"):
            lora += 1
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtypes: dict[str, int] = {}
    for p in model.parameters():
        dtypes[str(p.dtype).removeprefix("torch.")] = dtypes.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
    return {"quantized_linears_language": n4_lang, "quantized_linears_vision": n4_vis,
            "plain_linears_vision": lin_vis, "lora_modules": lora, "trainable_params": trainable,
            "param_elements_by_dtype": dtypes}


class _AnonPeak:
    """Samples this process's anonymous resident memory (`RssAnon` in /proc/self/status) every `every_s` seconds
    in a daemon thread and keeps the peak: the kernel's peak RSS (`ru_maxrss`) also counts the pages of the
    memory-mapped safetensors file that loading touched, which the page cache can drop at will."""

    def __init__(self, every_s: float = 0.5):
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._every = float(every_s)
        self._thread = threading.Thread(target=self._run, name="rss-anon-sampler", daemon=True)

    @staticmethod
    def now_mb() -> float:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self._stop.wait(self._every)

    def __enter__(self) -> "_AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


def _probe_callback():
    """A TrainerCallback recording when training begins (load time), the peak RSS then, and the model's make-up."""
    from transformers import TrainerCallback

    from arftlib.train.trainer import current_rss_mb, peak_rss_mb

    class Probe(TrainerCallback):
        def __init__(self):
            self.t_begin: float | None = None
            self.rss_after_load_mb = self.peak_rss_load_mb = self.rss_anon_after_load_mb = None
            self.model: dict[str, Any] = {}

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.t_begin = time.perf_counter()
            self.rss_after_load_mb = round(current_rss_mb(), 1)
            self.rss_anon_after_load_mb = round(_AnonPeak.now_mb(), 1)
            self.peak_rss_load_mb = round(peak_rss_mb(), 1)
            if model is not None:
                self.model = _model_report(model)

    return Probe()


def bench_realsize(model: str, profile: str = DEFAULT_PROFILE, mode: str = "stepwise", steps: int = 1, *,
                   generations: int = 2, max_completion_length: int = 16, image_size: int = 224,
                   batch: int | None = None, grad_accum: int = 1, dtype: str | None = None, kind: str = "coding",
                   n_tasks: int = 8, seed: int = 0, out_dir: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run `steps` real GRPO steps of `profile` on `model` in `mode` and return the report (module docstring).

    `batch`: completions per micro-batch (default `generations`: one GRPO group); `grad_accum`: micro-batches per
    step; `dtype`: dtype of the unquantised parts (default bfloat16 for a quantised profile, else the profile's);
    `overrides`: further RunConfig fields. Writes `bench_realsize.json` (and the run) under `out_dir`."""
    import tempfile

    import torch

    from arftlib.config import get_config
    from arftlib.data.build import build_dataset, load_built
    from arftlib.models import resolve_model_path
    from arftlib.published import read_marker
    from arftlib.train import load_training_processor, make_dataset, step_timer, train, write_json
    from arftlib.train.trainer import MODES
    from arftlib.trajectories import read_trajectories

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if steps < 1 or generations < 2:
        raise ValueError(f"need steps >= 1 and generations >= 2 (GRPO compares completions), got {steps}, "
                         f"{generations}")
    per_device = int(batch or generations)
    if (per_device * grad_accum) % generations:
        raise ValueError(f"batch × grad_accum ({per_device} × {grad_accum}) must be a multiple of generations "
                         f"({generations}): TRL generates whole groups")
    path = resolve_model_path(model)
    bench_over = dict(
        num_generations=int(generations),  # completions per prompt (the GRPO group)
        per_device_train_batch_size=per_device,  # completions per micro-batch
        gradient_accumulation_steps=int(grad_accum),  # micro-batches per optimizer step
        max_completion_length=int(max_completion_length),  # tokens sampled per episode
        image_size=int(image_size),  # training images resized to this square
        max_steps=int(steps),
        save_steps=10 ** 9,  # no checkpoints: the bench measures steps, not saving
        report_to="none",  # no TensorBoard files
        n_coding_tasks=int(n_tasks), n_search_tasks=int(n_tasks),
        seed=int(seed),
    )
    cfg = get_config(profile, **{**bench_over, **dict(overrides or {})})
    init_dtype = dtype or ("bfloat16" if cfg.quantization else cfg.torch_dtype)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="arft-realsize-"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / f"data-{kind}-{n_tasks}-{seed}"
    if not (data_dir / "tasks.jsonl").is_file():
        build_dataset(kind, int(n_tasks), int(seed), data_dir, verify=False, overwrite=True)
    run_dir = out / f"run-{mode}"
    timer, probe = step_timer(), _probe_callback()
    load_start = os.getloadavg()[0]
    t_call = time.perf_counter()
    with _AnonPeak() as anon:
        summary = train(cfg, mode, data=str(data_dir), model=path, out_dir=run_dir, kind=kind, save_final=False,
                        callbacks=[timer, probe], model_init_kwargs={"dtype": init_dtype})
    wall = time.perf_counter() - t_call
    times = list(timer.times)

    # tokens per episode: the rows the log names, rendered as TRL renders them
    processor = load_training_processor(path, cfg, mode)
    tasks = [t for t in load_built(data_dir) if t.split != "test"]
    rows = make_dataset(tasks, cfg, mode)
    tools = training_tools(cfg) if mode == "agentic" else None
    by_key: dict[tuple[str, int | None], int] = {}
    for i, (tid, si) in enumerate(zip(rows["task_id"], rows["step_index"] if "step_index" in rows.column_names
                                      else [None] * len(rows))):
        by_key[(str(tid), None if si is None else int(si))] = i
    trajs = read_trajectories(run_dir / "trajectories")
    counted: dict[int, dict[str, int]] = {}
    prompt_tok, prompt_img, sampled, masked, tool_img = [], [], [], [], []
    for t in trajs:
        key = (str(t.task.id), None if mode == "agentic" else t.start_step)
        if key not in by_key:
            raise KeyError(f"trajectory {t.episode_id}: no training row for task {key[0]!r} step {key[1]}")
        i = by_key[key]
        if i not in counted:
            counted[i] = prompt_token_counts(rows[i], processor, tools)
        prompt_tok.append(counted[i]["prompt_tokens"])
        prompt_img.append(counted[i]["prompt_image_tokens"])
        sampled.append(int(t.metrics.get("sampled_tokens", 0)))
        masked.append(int(t.metrics.get("masked_tool_tokens", 0)))
        tool_img.append(sum(_image_tokens(processor, s.observation.image) for s in t.steps
                            if s.observation is not None and s.observation.image
                            and Path(s.observation.image).is_file()))
    marker = read_marker(path) or {}
    steady = times[1:]
    report = {
        "what": "real GRPO steps through arftlib.train.train (TRL GRPOTrainer)",
        "model": str(path), "model_name": marker.get("name"), "random_weights": marker.get("random_weights"),
        "model_parameters": marker.get("parameters"),
        "profile": profile, "mode": mode, "kind": kind, "steps": summary["steps"],
        "settings": {"num_generations": cfg.num_generations, "per_device_train_batch_size": cfg.per_device_train_batch_size,
                     "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                     "max_completion_length": cfg.max_completion_length, "image_size": cfg.image_size,
                     "quantization": cfg.quantization, "finetune": cfg.finetune, "lora_r": cfg.lora_r,
                     "lora_target_modules": list(cfg.lora_target_modules),
                     "gradient_checkpointing": cfg.gradient_checkpointing, "unquantised_dtype": init_dtype,
                     "min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels},
        "load_s": round(probe.t_begin - t_call, 1) if probe.t_begin is not None else None,
        "first_step_s": round(times[0], 1) if times else None,
        "steady_step_s": round(statistics.median(steady), 1) if steady else None,  # median of steps 2..N
        "step_s": [round(x, 1) for x in times],
        "wall_s": round(wall, 1),
        "rss_after_load_mb": probe.rss_after_load_mb, "peak_rss_load_mb": probe.peak_rss_load_mb,
        "peak_rss_mb": summary["peak_rss_mb"],  # kernel peak RSS: includes touched pages of the mmapped weights
        "rss_anon_after_load_mb": probe.rss_anon_after_load_mb,
        "peak_rss_anon_mb": round(anon.peak_mb, 1),  # sampled every 0.5 s: the process's own memory
        "peak_gpu_mb": summary["peak_gpu_mb"],
        "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1) if torch.cuda.is_available() else None,
        "episodes": len(trajs),
        "tokens_per_episode": {"prompt": _stats(prompt_tok), "prompt_image": _stats(prompt_img),
                               "completion_sampled": _stats(sampled), "tool_masked": _stats(masked),
                               "tool_image": _stats(tool_img)},
        "loaded_model": probe.model,
        "final_reward": summary["final_reward"],
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "loadavg_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "run_dir": str(run_dir),
    }
    write_json(out / f"bench_realsize-{mode}.json", report)
    return report


def add_bench_realsize_arguments(p: Any) -> None:
    """Arguments of `python -m arftlib bench real-size`."""
    from arftlib.config import PROFILES

    p.add_argument("--model", required=True, help="model folder (e.g. a `build-model --config qwen2.5-vl-3b` "
                                                   "build), hub id, or tiny")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"profile whose settings run ({', '.join(PROFILES)})")
    p.add_argument("--mode", default="stepwise", choices=["stepwise", "agentic"])
    p.add_argument("--steps", type=int, default=1, help="optimizer steps to run")
    p.add_argument("--generations", type=int, default=2, help="completions per prompt (GRPO group size)")
    p.add_argument("--max-completion-length", type=int, default=16, help="tokens sampled per episode")
    p.add_argument("--image-size", type=int, default=224, help="training images resized to this square")
    p.add_argument("--batch", type=int, default=None, help="completions per micro-batch (default: --generations)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--dtype", default=None, help="dtype of the unquantised parts (default bfloat16 when quantised)")
    p.add_argument("--kind", default="coding", choices=["coding", "search"], help="procedural task family")
    p.add_argument("--n-tasks", type=int, default=8, help="procedural tasks to build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for the data, the run and the JSON (default: a temp dir)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override another RunConfig field (repeatable)")


def bench_realsize_from_args(args: Any) -> dict[str, Any]:
    from arftlib.config import parse_set_overrides

    return bench_realsize(args.model, args.profile, args.mode, args.steps, generations=args.generations,
                          max_completion_length=args.max_completion_length, image_size=args.image_size,
                          batch=args.batch, grad_accum=args.grad_accum, dtype=args.dtype, kind=args.kind,
                          n_tasks=args.n_tasks, seed=args.seed, out_dir=args.out,
                          overrides=parse_set_overrides(args.set))


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bench_realsize_arguments(parser)
    print(json.dumps(bench_realsize_from_args(parser.parse_args())))
