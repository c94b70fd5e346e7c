"""The one batched multi-turn rollout loop for evaluation, and the policies it drives.

Loop (`run_episodes`)
---------------------
Up to `batch_size` episodes are live at once, each an `env.AgentEnv`. Every round, ALL live episodes
generate together — one `policy.generate` call over the batch (left-padded by the HF policy) — then the
batch's turns are acted on concurrently in a `ThreadPoolExecutor` (`env.step`: parsing, code in the sandbox,
search), episodes that answered or ran out of turns leave the batch, their trajectories are written
(`trajectories.TrajectoryWriter`, flushed per round) and waiting tasks take their places. `sequential=True`
runs the same episodes one question at a time, each turn generated alone and its tool call run inline — the
way the reference evaluation scripts work; the same environment, tools and policy are used, so the two
modes produce the same trajectories with a deterministic policy (tested with `ScriptedPolicy`).

Policies (the `Policy` protocol: `generate(batch_of_messages, contexts=None) -> list[Generation]`)
------------------------------------------------------------------------------------------------
* `HFPolicy` — transformers. With episode contexts (as `run_episodes` passes them) and a Qwen-VL model it
  generates through `kv_reuse.KVReuseEngine`: each episode's keys/values are kept between its turns and only
  the new prompt tokens are run (greedy output identical to `model.generate` on the whole prompt — tested).
  Otherwise (`kv_reuse=False`, no contexts, other architectures): the processor's chat template over each
  message list, images loaded from the image blocks (paths or PIL), one left-padded `model.generate` per
  call (optionally in sub-batches of `max_batch_size`). Either way the vision placeholder tokens are
  suppressed (`models.suppressed_token_ids`: a sampled `<|video_pad|>` breaks Qwen's rope index), greedy by
  default or sampled with `temperature`/`top_p`/`top_k`. `Generation.seconds` is the call's wall time
  divided by the sequences in it (amortised share).
* `VLLMPolicy` — vLLM's offline `LLM.chat` (imported only when constructed; a clear ImportError when missing).
* `ScriptedPolicy` — replays turns without a model: each task's gold chain rendered as model turns in the
  reference's tag format (`<think> … </think>\\n<problem> … </problem>`, … — `data.stepwise.gold_turn`, the
  same renderer the step-wise training data uses) or turns given per task id. With gold chains it is the
  oracle that checks environment + tools + scoring end to end.

`bench_rollout()` times the batched loop against the sequential, reference-style loop (whole prompt
re-encoded with `model.generate` every turn) on the same tasks, model and settings, and also the batched loop
without KV reuse (see its docstring). What it found for the tiny model on 2 CPU cores (tags prompts of ~725
tokens — the tiny tokenizer spends ~2.5 characters per token on the reference prompt — 5 turns, 64 new
tokens, one thread, 32 tasks): batching alone ≈ 2.6× sequential; batching + KV reuse ≈ 9×. A lone sequence
costs ~20 ms of prefill plus ~1.1 ms per generated token, nearly all of it fixed per-step overhead, which
batching amortises (a decode step for 32 sequences costs ~3–4 ms). Prefill is what a batch cannot share
(attention is O(prompt²) per sequence): re-encoding 32 prompts costs ~0.9 s of a ~1.1 s batched round,
which KV reuse removes from every round but the first (and the first uses the causal kernel without a
padding mask: right-padded rows). Two intra-op threads help a batch on an idle machine but make every call
several times slower when other processes hold a core — bench with `--threads 1 --repeats 2` here.

Left out: continuous batching inside a round (a round waits for its longest completion), prefix sharing
between different episodes, several samples per prompt in one call (pass a task several times instead), and
multi-GPU data parallelism (run one process per GPU on a shard of the tasks).
"""

from __future__ import annotations

import collections
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from arftlib.env import AgentEnv
from arftlib.trajectories import TrajectoryWriter
from arftlib.types import Task, Trajectory

__all__ = [
    "EpisodeContext",
    "Generation",
    "HFPolicy",
    "Policy",
    "ScriptedPolicy",
    "VLLMPolicy",
    "bench_rollout",
    "fixture_tasks",
    "gold_tool_turns",
    "gold_turns",
    "load_policy_for_eval",
    "run_episodes",
    "summarize",
]


# --------------------------------------------------------------------------------------------------------------
# policy protocol
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Generation:
    """One generated turn. `seconds` is this sequence's share of the generate call's wall time."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    image_tokens: int = 0
    seconds: float = 0.0
    reused_tokens: int = 0  # prompt tokens whose keys/values came from this episode's earlier turns


@dataclass
class EpisodeContext:
    """Who a message list belongs to (scripted policies need it; model policies ignore it)."""

    task: Task
    turn: int
    episode_id: str
    protocol: str
    tool_calls: bool = False  # chat turns are TRL-style tool calls (prompt rendered with the tool schemas)


class Policy(Protocol):
    def generate(self, batch: Sequence[list[dict[str, Any]]],
                 contexts: Sequence[EpisodeContext] | None = None) -> list[Generation]: ...


# --------------------------------------------------------------------------------------------------------------
# scripted policy (oracle)
# --------------------------------------------------------------------------------------------------------------
def gold_turns(task: Task) -> list[str]:
    """The task's gold chain as model turns in the reference's tag format (`data.stepwise.gold_turn`)."""
    from arftlib.data.stepwise import gold_turn
    from arftlib.parse import parse_diagnosis

    if not task.gold_chain:
        raise ValueError(f"task {task.id!r} has no gold_chain; the scripted oracle needs one")
    labels: list[str] = []
    turns = []
    for i, step in enumerate(task.gold_chain):
        if not isinstance(step, Mapping) or "action" not in step or "content" not in step:
            raise ValueError(f"task {task.id!r}: gold_chain[{i}] must be a dict with 'action' and 'content'")
        if step["action"] == "problem":
            labels = sorted(parse_diagnosis(str(step["content"])))
        turns.append(gold_turn(step, task, labels))
    return turns


def gold_tool_turns(task: Task) -> list[str]:
    """The gold chain as TRL-style tool-call turns (`<think> … </think>` + one `<tool_call>` JSON block, the
    form Qwen's template renders): problem → `diagnose`, code → `run_code`, search → `search`, answer →
    `answer`."""
    import json

    from arftlib.parse import parse_action

    names = {"problem": ("diagnose", "problem"), "code": ("run_code", "code"), "search": ("search", "query"),
             "answer": ("answer", "answer")}
    turns = []
    for step, text in zip(task.gold_chain or [], gold_turns(task)):
        action = parse_action(text)
        if action.kind not in names:
            raise ValueError(f"task {task.id!r}: gold step {step.get('action')!r} has no tool-call form")
        name, arg = names[action.kind]
        call = json.dumps({"name": name, "arguments": {arg: action.content}}, ensure_ascii=False)
        turns.append(f"<think> {action.think} </think>\n<tool_call>\n{call}\n</tool_call>")
    return turns


def _gold_answer(task: Task) -> str:
    for step in reversed(task.gold_chain or []):
        if isinstance(step, Mapping) and step.get("action") == "answer":
            return str(step["content"])
    if task.answers:
        return str(task.answers[0])
    raise ValueError(f"task {task.id!r} has neither an answer step nor answers")


class ScriptedPolicy:
    """Replays turns: `turns[task.id]` when given (a list of model texts), else the task's gold chain
    (`gold_turns`). Past the end of its script it writes `fallback` (an invalid turn by default). In the
    `direct` protocol it answers the gold answer as plain text."""

    def __init__(self, turns: Mapping[str, Sequence[str]] | None = None, *, fallback: str = ""):
        self.turns = {str(k): list(v) for k, v in (turns or {}).items()}
        self.fallback = fallback
        self._cache: dict[tuple[str, bool], list[str]] = {}
        self.calls = 0

    def script(self, task: Task, tool_calls: bool = False) -> list[str]:
        key = str(task.id)
        if key in self.turns:
            return self.turns[key]
        if (key, tool_calls) not in self._cache:
            self._cache[(key, tool_calls)] = gold_tool_turns(task) if tool_calls else gold_turns(task)
        return self._cache[(key, tool_calls)]

    def generate(self, batch: Sequence[list[dict[str, Any]]],
                 contexts: Sequence[EpisodeContext] | None = None) -> list[Generation]:
        if contexts is None or len(contexts) != len(batch):
            raise ValueError("ScriptedPolicy.generate needs one EpisodeContext per message list")
        self.calls += 1
        out = []
        for ctx in contexts:
            if ctx.protocol == "direct":
                text = _gold_answer(ctx.task)
            else:
                script = self.script(ctx.task, ctx.tool_calls)
                text = script[ctx.turn] if ctx.turn < len(script) else self.fallback
            out.append(Generation(text=text))
        return out


# --------------------------------------------------------------------------------------------------------------
# transformers policy
# --------------------------------------------------------------------------------------------------------------
def _load_image(x: Any, cache: dict[str, Any]):
    from PIL import Image

    if isinstance(x, Image.Image):
        return x if x.mode == "RGB" else x.convert("RGB")
    path = os.fspath(x)
    img = cache.get(path)
    if img is None:
        with Image.open(path) as im:
            img = im.convert("RGB")
        cache[path] = img
    return img


def _images_of(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    found = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for b in content:
                if isinstance(b, Mapping) and b.get("type") == "image":
                    img = b.get("image")
                    if img is None:
                        raise ValueError("an image block without its image (placeholder) reached the policy")
                    found.append(img)
    return found


class HFPolicy:
    """A transformers VLM as a batched policy (see the module docstring).

    Args:
        model, processor: as returned by `models.load_policy`.
        max_new_tokens: tokens generated per turn.
        temperature: 0 = greedy (default); > 0 samples with `top_p` / `top_k`.
        max_batch_size: split larger batches into generate calls of at most this many sequences.
        suppress_vision_tokens: never sample image/video placeholder tokens (default True).
        seed: seeds torch once at construction (sampling reproducibility).
        kv_reuse: keep each episode's keys/values between its turns and run only the new prompt tokens
            (`kv_reuse.KVReuseEngine`; needs `contexts` with episode ids and a Qwen-VL model, else falls back
            to `model.generate`). False = re-encode the whole prompt every turn, like the reference scripts.
        kv_budget_tokens: most tokens kept across all cached episodes (least recently used dropped first).
    """

    def __init__(self, model: Any, processor: Any, *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int | None = None, repetition_penalty: float | None = None,
                 max_batch_size: int | None = None, suppress_vision_tokens: bool = True, seed: int | None = None,
                 kv_reuse: bool = True, kv_budget_tokens: int = 1 << 20):
        import torch

        from arftlib.models import suppressed_token_ids

        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # decoder-only batching: pad on the left
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.max_batch_size = max_batch_size
        self.suppress = suppressed_token_ids(processor) if suppress_vision_tokens else []
        vocab = self.tokenizer.get_vocab()
        self.image_token_id = vocab.get("<|image_pad|>")
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids))
        if seed is not None:
            torch.manual_seed(int(seed))
        self.calls = 0
        self._tools: list[Any] | None = None
        self.engine = None
        if kv_reuse:
            from arftlib.kv_reuse import KVReuseEngine, supports_kv_reuse

            if supports_kv_reuse(model):
                self.engine = KVReuseEngine(model, processor, budget_tokens=kv_budget_tokens)

    def chat_text(self, messages: list[dict[str, Any]], context: EpisodeContext | None = None) -> str:
        """The prompt text: the processor's chat template, with the environment's tool schemas when the episode
        runs TRL-style tool calls (as TRL renders the prompt in agentic training)."""
        tools = None
        if context is not None and context.tool_calls:
            if self._tools is None:
                from arftlib.env import tool_functions
                from arftlib.models import ensure_tool_chat_template

                ensure_tool_chat_template(self.processor)  # as training does (stock Qwen2.5-VL cannot render tools)
                self._tools = tool_functions()
            tools = self._tools
        return self.processor.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)

    def without_kv_reuse(self) -> "HFPolicy":
        """The same model and settings, re-encoding every prompt with `model.generate` (the reference way)."""
        import copy

        twin = copy.copy(self)
        twin.engine = None
        twin.calls = 0
        return twin

    def forget(self, episode_ids: Sequence[str]) -> None:
        """Drop finished episodes' cached keys/values (called by `run_episodes`)."""
        if self.engine is not None:
            self.engine.forget(list(episode_ids))

    def logits_processor(self):
        """The logits processors `model.generate` would apply with `generation_kwargs()`, in its order."""
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                  SuppressTokensLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                                  TopPLogitsWarper)

        procs = LogitsProcessorList()
        if self.repetition_penalty is not None:
            procs.append(RepetitionPenaltyLogitsProcessor(penalty=float(self.repetition_penalty)))
        if self.suppress:
            procs.append(SuppressTokensLogitsProcessor(list(self.suppress), device=self.model.device))
        if self.temperature > 0:
            if self.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k is not None:
                procs.append(TopKLogitsWarper(top_k=int(self.top_k)))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(top_p=self.top_p))
        return procs

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = "tiny", *, load_kwargs: Mapping[str, Any] | None = None,
                        **gen_kwargs: Any) -> "HFPolicy":
        """`models.load_policy(model_id_or_path, **load_kwargs)` wrapped as a policy."""
        from arftlib.models import load_policy

        model, processor = load_policy(model_id_or_path, **dict(load_kwargs or {}))
        return cls(model, processor, **gen_kwargs)

    def generation_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.pad_id}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            if self.top_k is not None:
                kw["top_k"] = int(self.top_k)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.repetition_penalty is not None:
            kw["repetition_penalty"] = float(self.repetition_penalty)
        if self.suppress:
            kw["suppress_tokens"] = list(self.suppress)
        return kw

    def generate(self, batch: Sequence[list[dict[str, Any]]],
                 contexts: Sequence[EpisodeContext] | None = None) -> list[Generation]:
        batch = list(batch)
        if not batch:
            return []
        step = self.max_batch_size or len(batch)
        out: list[Generation] = []
        for i in range(0, len(batch), step):
            ctx = list(contexts[i:i + step]) if contexts is not None else None
            if self.engine is not None and ctx is not None:
                out.extend(self._generate_reusing(batch[i:i + step], ctx))
            else:
                out.extend(self._generate(batch[i:i + step], ctx))
        return out

    def _generate_reusing(self, batch: list[list[dict[str, Any]]], contexts: list[EpisodeContext]) -> list[Generation]:
        t0 = time.perf_counter()
        self.calls += 1
        eng = self.engine
        assert eng is not None
        prompts = []
        for m, c in zip(batch, contexts):
            prompts.append(eng.prepare(self.chat_text(m, c), _images_of(m)))
        results = eng.generate(prompts, [c.episode_id for c in contexts], max_new_tokens=self.max_new_tokens,
                               eos_ids=self.eos_ids, pad_id=self.pad_id, logits_processor=self.logits_processor(),
                               do_sample=self.temperature > 0)
        dt = time.perf_counter() - t0
        gens = []
        for p, (ids, reused) in zip(prompts, results):
            text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            gens.append(Generation(text=text, prompt_tokens=len(p.ids), completion_tokens=len(ids),
                                   image_tokens=p.image_tokens, seconds=dt / len(results), reused_tokens=reused))
        return gens

    def _generate(self, batch: list[list[dict[str, Any]]],
                  contexts: list[EpisodeContext] | None = None) -> list[Generation]:
        import torch

        t0 = time.perf_counter()
        self.calls += 1
        cache: dict[str, Any] = {}
        texts = [self.chat_text(m, contexts[i] if contexts is not None else None) for i, m in enumerate(batch)]
        images = [_load_image(x, cache) for m in batch for x in _images_of(m)]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        prompt_len = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generation_kwargs())
        new = out[:, prompt_len:].tolist()
        dt = time.perf_counter() - t0
        gens = []
        ids_in = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        for r, ids in enumerate(new):
            n = len(ids)
            for j, tok in enumerate(ids):
                if tok in self.eos_ids:
                    n = j + 1
                    break
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            p_tok = int(mask[r].sum()) if mask is not None else int(ids_in.shape[1])
            i_tok = int((ids_in[r] == self.image_token_id).sum()) if self.image_token_id is not None else 0
            gens.append(Generation(text=text, prompt_tokens=p_tok, completion_tokens=n, image_tokens=i_tok,
                                   seconds=dt / len(new)))
        return gens


# --------------------------------------------------------------------------------------------------------------
# vLLM policy
# --------------------------------------------------------------------------------------------------------------
class VLLMPolicy:
    """vLLM offline inference (`vllm.LLM.chat`) as a batched policy. vLLM is imported here only; without it
    construction raises ImportError with the install hint. Image blocks (paths or PIL) are passed as PIL
    images; `max_pixels` goes to the Qwen processor. Greedy by default. (Not exercised by the test suite:
    vLLM needs Linux + CUDA.)"""

    def __init__(self, model: str, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, max_images_per_prompt: int = 6, max_pixels: int | None = None,
                 gpu_memory_utilization: float = 0.85, **llm_kwargs: Any):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ImportError(
                "VLLMPolicy needs the `vllm` package (Linux with a CUDA GPU): pip install vllm. "
                "Use HFPolicy (transformers) otherwise."
            ) from e
        from arftlib.models import resolve_model_path

        mm_kwargs = {"max_pixels": int(max_pixels)} if max_pixels else None
        self.llm = LLM(model=resolve_model_path(model), seed=seed, limit_mm_per_prompt={"image": max_images_per_prompt},
                       mm_processor_kwargs=mm_kwargs, gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        self.sampling = SamplingParams(max_tokens=int(max_new_tokens), temperature=float(temperature),
                                       top_p=float(top_p) if temperature > 0 else 1.0, seed=seed)
        tok = self.llm.get_tokenizer()
        self.image_token_id = tok.get_vocab().get("<|image_pad|>")
        self.calls = 0

    @staticmethod
    def _convert(messages: Sequence[Mapping[str, Any]], cache: dict[str, Any]) -> list[dict[str, Any]]:
        conv = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                blocks = []
                for b in content:
                    if b.get("type") == "image":
                        blocks.append({"type": "image_pil", "image_pil": _load_image(b["image"], cache)})
                    else:
                        blocks.append({"type": "text", "text": str(b.get("text", ""))})
                conv.append({"role": m["role"], "content": blocks})
            else:
                conv.append({"role": m["role"], "content": content})
        return conv

    def generate(self, batch: Sequence[list[dict[str, Any]]],
                 contexts: Sequence[EpisodeContext] | None = None) -> list[Generation]:
        batch = list(batch)
        if not batch:
            return []
        if contexts is not None and any(c.tool_calls for c in contexts):
            raise NotImplementedError("tool-call episodes (chat with tool_calls=True) are not wired to vLLM here; "
                                      "evaluate them with HFPolicy")
        t0 = time.perf_counter()
        self.calls += 1
        cache: dict[str, Any] = {}
        outs = self.llm.chat([self._convert(m, cache) for m in batch], self.sampling, use_tqdm=False)
        dt = time.perf_counter() - t0
        gens = []
        for o in outs:
            c = o.outputs[0]
            p_ids = list(o.prompt_token_ids or [])
            gens.append(Generation(text=c.text, prompt_tokens=len(p_ids), completion_tokens=len(c.token_ids),
                                   image_tokens=p_ids.count(self.image_token_id) if self.image_token_id is not None else 0,
                                   seconds=dt / len(batch)))
        return gens


def load_policy_for_eval(model: str, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                         max_batch_size: int | None = None, use_vllm: bool = False, seed: int = 0,
                         load_kwargs: Mapping[str, Any] | None = None) -> Policy:
    """"oracle" → `ScriptedPolicy()` (gold chains); otherwise an `HFPolicy` (or `VLLMPolicy` with use_vllm)
    for a hub id, local folder or "tiny"."""
    if model == "oracle":
        return ScriptedPolicy()
    if use_vllm:
        return VLLMPolicy(model, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    return HFPolicy.from_pretrained(model, load_kwargs=load_kwargs, max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, max_batch_size=max_batch_size, seed=seed)


# --------------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------------
def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, leave=False)


def _episode_ids(tasks: Sequence[Task], given: Sequence[str] | None) -> list[str]:
    if given is not None:
        ids = [str(x) for x in given]
        if len(ids) != len(tasks):
            raise ValueError(f"episode_ids has {len(ids)} entries for {len(tasks)} tasks")
    else:
        seen: collections.Counter[str] = collections.Counter()
        ids = []
        for t in tasks:
            k = seen[str(t.id)]
            ids.append(str(t.id) if k == 0 else f"{t.id}#{k}")
            seen[str(t.id)] += 1
    if len(set(ids)) != len(ids):
        raise ValueError("episode ids must be unique")
    return ids


def run_episodes(
    tasks: Sequence[Task],
    policy: Policy,
    *,
    protocol: str = "tags",
    max_turns: int = 5,
    image_budget: int = 4,
    batch_size: int = 16,
    sequential: bool = False,
    env_factory: Callable[[], AgentEnv] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    writer: TrajectoryWriter | str | os.PathLike | None = None,
    tool_workers: int = 8,
    episode_ids: Sequence[str] | None = None,
    progress: bool = True,
    desc: str | None = None,
    stats: dict[str, Any] | None = None,
) -> list[Trajectory]:
    """Run every task as one episode and return the finished trajectories in task order.

    `env_factory()` makes the environments (default `AgentEnv(protocol=…, max_turns=…, image_budget=…,
    **env_kwargs)`). `writer` is a `TrajectoryWriter` or a folder for a new one (closed at the end);
    trajectories are written as they finish, and the returned trajectories' tool images then point at the
    stored copies. Without a writer, tool image files are removed with their environment (paths dangle).
    `sequential=True` is the one-question-at-a-time loop.
    `stats`, when given, is filled with counters: episodes, rounds, generate_calls, generate_s,
    tool_wall_s, wall_s, cpu_s (this process's CPU time), turns.
    """
    tasks = list(tasks)
    ids = _episode_ids(tasks, episode_ids)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if env_factory is None:
        kw = dict(env_kwargs or {})

        def env_factory() -> AgentEnv:
            return AgentEnv(protocol=protocol, max_turns=max_turns, image_budget=image_budget, **kw)

    own_writer = writer is not None and not isinstance(writer, TrajectoryWriter)
    w: TrajectoryWriter | None = TrajectoryWriter(writer) if own_writer else writer  # type: ignore[assignment]
    st = stats if stats is not None else {}
    st.update(episodes=0, rounds=0, generate_calls=0, generate_s=0.0, tool_wall_s=0.0, wall_s=0.0, cpu_s=0.0, turns=0,
              reused_prompt_tokens=0)
    results: list[Trajectory | None] = [None] * len(tasks)
    bar = _progress(len(tasks), desc or ("episodes (sequential)" if sequential else "episodes"), progress)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    pool = None if sequential else ThreadPoolExecutor(max_workers=max(1, tool_workers), thread_name_prefix="tools")

    def start(i: int) -> AgentEnv:
        env = env_factory()
        env.reset(task=tasks[i], episode_id=ids[i])
        return env

    def finish(i: int, env: AgentEnv) -> None:
        traj = env.trajectory
        if w is not None:
            rec = w.write(traj)
            for step, d in zip(traj.steps, rec["steps"]):  # point at the stored copies (the env's go away)
                if step.observation is not None and step.observation.image:
                    step.observation.image = str(w.dir / d["observation"]["image"])
        env.close()
        forget = getattr(policy, "forget", None)
        if forget is not None:  # a policy that caches per episode (HFPolicy's KV reuse) frees it now
            forget([traj.episode_id])
        results[i] = traj
        st["episodes"] += 1
        bar.update(1)

    def context(env: AgentEnv) -> EpisodeContext:
        return EpisodeContext(task=env.task, turn=len(env.trajectory.steps), episode_id=env.trajectory.episode_id,
                              protocol=env.protocol, tool_calls=getattr(env, "tool_calls", False))

    def act(env: AgentEnv, g: Generation) -> None:
        env.step(g.text, prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens,
                 image_tokens=g.image_tokens, generate_s=g.seconds)

    def generate(envs: list[AgentEnv]) -> list[Generation]:
        t0 = time.perf_counter()
        gens = policy.generate([e.messages for e in envs], [context(e) for e in envs])
        st["generate_s"] += time.perf_counter() - t0
        st["generate_calls"] += 1
        st["reused_prompt_tokens"] += sum(g.reused_tokens for g in gens)
        if len(gens) != len(envs):
            raise RuntimeError(f"policy returned {len(gens)} generations for {len(envs)} prompts")
        return gens

    try:
        if sequential:
            for i in range(len(tasks)):
                env = start(i)
                while not env.done:
                    g = generate([env])[0]
                    t0 = time.perf_counter()
                    act(env, g)
                    st["tool_wall_s"] += time.perf_counter() - t0
                    st["turns"] += 1
                    st["rounds"] += 1
                finish(i, env)
        else:
            queue = collections.deque(range(len(tasks)))
            live: list[tuple[int, AgentEnv]] = []
            while queue or live:
                while queue and len(live) < batch_size:
                    i = queue.popleft()
                    live.append((i, start(i)))
                gens = generate([e for _, e in live])
                t0 = time.perf_counter()
                if len(live) == 1:
                    act(live[0][1], gens[0])
                else:
                    list(pool.map(act, [e for _, e in live], gens))  # re-raises the first exception
                st["tool_wall_s"] += time.perf_counter() - t0
                st["turns"] += len(live)
                st["rounds"] += 1
                still = []
                for i, env in live:
                    if env.done:
                        finish(i, env)
                    else:
                        still.append((i, env))
                live = still
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        bar.close()
        if own_writer and w is not None:
            w.close()
        st["wall_s"] = time.perf_counter() - t_start
        st["cpu_s"] = time.process_time() - cpu_start  # this process only (sandbox children not included)
    return [r for r in results if r is not None]


def summarize(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Totals and means over trajectories: episodes, answered, turns, tool calls/errors, tokens, f1/em."""
    n = len(trajs)
    tot: collections.Counter[str] = collections.Counter()
    for t in trajs:
        for k, v in t.metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                tot[k] += v
    out: dict[str, Any] = {"episodes": n}
    for k in ("answered", "turns", "tool_calls", "tool_errors", "invalid_turns", "searches", "code_runs",
              "diagnoses", "images_shown", "image_budget_refusals", "prompt_tokens", "completion_tokens",
              "image_tokens"):
        out[k] = int(tot[k])
    for k in ("f1", "em", "f1_corrected", "em_corrected"):
        if n and all(k in t.metrics for t in trajs):
            out[k] = round(100 * tot[k] / n, 2)
    return out


# --------------------------------------------------------------------------------------------------------------
# benchmark: batched vs one-at-a-time
# --------------------------------------------------------------------------------------------------------------
def _bench_tasks(n: int, kind: str, seed: int, work: Path, data: str | os.PathLike | None) -> tuple[list[Task], str]:
    """Tasks for the benchmark: an existing build (`data`), a fresh small procedural build, or (when the
    builders are not importable) `fixture_tasks`."""
    bench = "synth-coding" if kind == "coding" else "synth-search"
    if data is not None:
        from arftlib.data.loaders import load_benchmark

        tasks = list(load_benchmark(bench, data))
        source = f"{bench} build at {data}"
    else:
        try:
            from arftlib.data.build import build_dataset, load_built
        except ImportError:
            return fixture_tasks(n, work / "fixture", kind), "fixture (arftlib.data.build not available)"
        out = work / bench
        build_dataset(kind, n=n, seed=seed, out=out, overwrite=True, verify=False)  # timing only: no need to verify
        tasks = list(load_built(out))
        source = f"{bench} built here (n={n}, seed={seed})"
    if len(tasks) < n:
        raise ValueError(f"the benchmark needs {n} tasks; {source} holds {len(tasks)}")
    return tasks[:n], source


_FIX_WORDS = ("ALPHA", "BRAVO", "CEDAR", "DELTA", "EMBER", "FJORD", "GAMMA", "HAZEL", "IVORY", "JOULE", "KAPPA",
              "LEMON", "MANGO", "NOVA", "OLIVE", "PIXEL")
_FIX_TOWN_A = ("Bra", "Cor", "Dun", "Esk", "Fal", "Gor", "Hal", "Ith", "Jor", "Kel", "Lum", "Mor", "Nar", "Ost",
               "Pel", "Quar")
_FIX_TOWN_B = ("dane", "mere", "holt", "wick", "ford", "vale", "stead", "burg")
_FIX_FIRST = ("Anja", "Bertil", "Cosima", "Dagny", "Emrys", "Fenna", "Gideon", "Hedda", "Ilsa", "Jasper", "Kirsi",
              "Leander", "Maren", "Nils", "Oona", "Pascal")
_FIX_LAST = ("Quillfeather", "Rosewarne", "Silverthorn", "Tallowmere", "Umberfield", "Vantongeren", "Whitlock",
             "Yarrowby")


def fixture_tasks(n: int, out: str | os.PathLike, kind: str = "coding") -> list[Task]:
    """`n` small hand-made tasks with gold chains, written under `out` — a fallback when the procedural
    builders are not available, and the tests' fixture.

    coding: a rendered word (a different one per task) on a light card, degraded by `rotation180` or `dark`,
    or shown whole with a `crop` question naming the word's box on the 0–1000 grid; gold chain problem →
    code → answer. search: a card naming an invented town; a JSONL corpus (`out/corpus.jsonl`, named in
    `metadata["corpus"]`) holds one passage per town with its invented mayor; gold chain search → answer,
    `metadata["needed_passages"]` the town's passage id."""
    from PIL import Image, ImageDraw, ImageOps

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind not in ("coding", "search"):
        raise ValueError(f"kind must be 'coding' or 'search', not {kind!r}")
    if n > len(_FIX_TOWN_A) * len(_FIX_TOWN_B):
        raise ValueError(f"at most {len(_FIX_TOWN_A) * len(_FIX_TOWN_B)} fixture tasks")
    tasks = []
    if kind == "search":
        import json

        towns = [a + b for b in _FIX_TOWN_B for a in _FIX_TOWN_A][:n]
        mayors = [f"{_FIX_FIRST[i % 16]} {_FIX_LAST[(i // 16) % 8]}" for i in range(n)]
        corpus = out / "corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as fh:
            for i, (town, mayor) in enumerate(zip(towns, mayors)):
                fh.write(json.dumps({"id": f"p{i}", "title": town,
                                     "text": f"{town} is a small river town. Its mayor is {mayor}."}) + "\n")
        for i, (town, mayor) in enumerate(zip(towns, mayors)):
            img = Image.new("RGB", (256, 160), (230, 240, 250))
            ImageDraw.Draw(img).text((30, 70), f"Welcome to {town}", fill=(10, 40, 10))
            path = out / f"s{i}.png"
            img.save(path)
            tasks.append(Task(
                id=f"fs{i}", question="Who is the mayor of the town named on the sign?", images=[str(path)],
                answers=[mayor], kind="search", split="simple", benchmark="fixture-search",
                gold_chain=[{"action": "search", "content": f"mayor of {town}"}, {"action": "answer", "content": mayor}],
                metadata={"corpus": str(corpus), "needed_passages": [f"p{i}"], "hops": 1},
            ))
        return tasks
    for i in range(n):
        word = f"{_FIX_WORDS[i % 16]} {100 + i}"
        img = Image.new("RGB", (320, 200), (235, 235, 225))
        ImageDraw.Draw(img).text((40, 90), word, fill=(20, 20, 90))
        label = ("rotation180", "dark", "crop")[i % 3]
        head = "import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
        tail = "cv2.imwrite('path_to_output_image.jpg', img)\n"
        question = "What text is written in the image?"
        if label == "rotation180":
            shown = ImageOps.flip(ImageOps.mirror(img))
            code = head + "img = cv2.rotate(img, cv2.ROTATE_180)\n" + tail
        elif label == "dark":
            shown = img.point(lambda v: int(v * 0.4))
            code = head + "img = cv2.convertScaleAbs(img, alpha=2.5, beta=0)\n" + tail
        else:
            shown = img
            box = (100, 400, 600, 550)  # the word at (40, 90) on a 320x200 card, on the 0-1000 grid
            question = f"What text is written within the {list(box)} region of the image?"
            code = (head + "h, w = img.shape[:2]\n"
                    f"x1, y1, x2, y2 = {box[0]}, {box[1]}, {box[2]}, {box[3]}\n"
                    "x_min, y_min = int(x1 / 1000 * w), int(y1 / 1000 * h)\n"
                    "x_max, y_max = int(x2 / 1000 * w), int(y2 / 1000 * h)\n"
                    "img = img[y_min:y_max, x_min:x_max]\n" + tail)
        clean, path = out / f"{i}_clean.png", out / f"{i}.png"
        img.save(clean)
        shown.save(path)
        tasks.append(Task(
            id=f"fx{i}", question=question, images=[str(path)], answers=[word], kind="coding",
            split="hard" if i % 4 == 0 else "simple", degradations=[label], benchmark="fixture-coding",
            clean_image=str(clean),
            gold_chain=[{"action": "problem", "content": "{'" + label + "'}"}, {"action": "code", "content": code},
                        {"action": "answer", "content": word}],
            metadata={"target_box": list(box)} if label == "crop" else {},
        ))
    return tasks


def bench_rollout(
    n_tasks: int = 32,
    *,
    max_turns: int = 5,
    max_new_tokens: int = 64,
    kind: str = "coding",
    protocol: str = "tags",
    model: str = "tiny",
    batch_size: int | None = None,
    tool_workers: int = 8,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    repeats: int = 1,
    policy: Policy | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Time the batched loop against a one-question-at-a-time loop on the same tasks, in one process.

    Both loops use the same model and generation settings (greedy decoding, same `max_new_tokens`, vision
    tokens suppressed): the sequential loop through `policy.without_kv_reuse()` (`model.generate` on the whole
    prompt each turn, like the reference), the batched loop through `policy` (KV reuse across turns when the
    model supports it; then a third loop, batched without KV reuse, is timed too and reported as
    `batched_no_kv_reuse` / `ratio_no_kv_reuse`). Same `AgentEnv` settings and tool implementations (sandbox, search), the same
    `n_tasks` procedural tasks (`synth-coding` for kind="coding", `synth-search` for kind="search"; a fresh
    small build unless `data=` names one) and the same `max_turns`. The sequential loop generates one
    episode's turn at a time and runs its tool inline, like the reference evaluation scripts; the batched loop
    is `run_episodes` with `batch_size` (default: all tasks). One untimed warm-up turn (model, processor,
    sandbox server) precedes both. `model="oracle"` replays the gold chains instead of generating, which
    times the environment and tools alone (code runs concurrently in the batched loop). With `repeats` > 1
    the two loops run alternately that many times and the fastest run of each counts (robust to other
    processes on a shared machine; `loadavg_1min` reports the machine's load before and after). `threads` sets torch's intra-op threads (default: torch's own).
    Returns episodes per second for each, their ratio, and where the time went (generate / tools / other).
    The procedural build (when one is made here) skips its sandbox verification: only timing matters here.
    """
    import torch

    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="arft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks, source = _bench_tasks(n_tasks, kind, seed, work, data)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if policy is None:
        if model == "oracle":  # no model: times the environment and tools alone (gold chains)
            policy = ScriptedPolicy()
        else:
            policy = HFPolicy.from_pretrained(model, max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)
    elif isinstance(policy, HFPolicy):  # a loaded policy (tests, notebooks): same settings for both loops
        policy.max_new_tokens, policy.temperature = int(max_new_tokens), 0.0
    bs = int(batch_size or len(tasks))
    env_kwargs = {"work_dir": str(work / "episodes")}
    # the reference way: every turn re-encodes the whole prompt with model.generate (no KV kept between turns)
    reference = policy.without_kv_reuse() if isinstance(policy, HFPolicy) else policy
    loops: dict[str, tuple[Policy, dict[str, Any]]] = {
        "sequential": (reference, {"sequential": True}),
        "batched": (policy, {"batch_size": bs}),
    }
    if isinstance(policy, HFPolicy) and policy.engine is not None:  # what batching alone buys (no KV reuse)
        loops["batched_no_kv_reuse"] = (reference, {"batch_size": bs})
    # warm-up: one generation per policy and one environment step (starts the sandbox / search index)
    warm = AgentEnv(protocol=protocol, max_turns=max_turns, **env_kwargs)
    warm.reset(task=tasks[0], episode_id="warmup")
    for pol in {id(p): p for p, _ in loops.values()}.values():
        g = pol.generate([warm.messages], [EpisodeContext(tasks[0], 0, "warmup", protocol)])[0]
    forget = getattr(policy, "forget", None)
    if forget is not None:
        forget(["warmup"])
    warm.step(g.text)
    warm.close()

    common = dict(protocol=protocol, max_turns=max_turns, env_kwargs=env_kwargs, tool_workers=tool_workers,
                  progress=progress)
    load_start = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, dict[str, Any], list[Trajectory]]]] = {name: [] for name in loops}
    for _ in range(max(1, int(repeats))):  # alternate the loops; the fastest run of each counts
        for name, (pol, kw) in loops.items():
            st: dict[str, Any] = {}
            trajs = run_episodes(tasks, pol, stats=st, **common, **kw)
            runs[name].append((st["wall_s"], st, trajs))
    load_end = os.getloadavg()[0]
    best = {name: min(r, key=lambda x: x[0]) for name, r in runs.items()}
    _, s_seq, seq = best["sequential"]
    _, s_bat, bat = best["batched"]

    def part(st: dict[str, Any], trajs: list[Trajectory], name: str) -> dict[str, Any]:
        s = summarize(trajs)
        return {
            "wall_s": round(st["wall_s"], 3), "all_wall_s": [round(r[0], 3) for r in runs[name]],
            "cpu_s": round(st["cpu_s"], 3),
            "generate_calls": st["generate_calls"],
            "generate_s": round(st["generate_s"], 3), "tool_wall_s": round(st["tool_wall_s"], 3),
            "other_s": round(st["wall_s"] - st["generate_s"] - st["tool_wall_s"], 3),
            "turns": s["turns"], "tool_calls": s["tool_calls"], "tool_errors": s["tool_errors"],
            "invalid_turns": s["invalid_turns"], "answered": s["answered"],
            "completion_tokens": s["completion_tokens"], "prompt_tokens": s["prompt_tokens"],
            "reused_prompt_tokens": st.get("reused_prompt_tokens", 0),
        }

    b_eps = len(bat) / s_bat["wall_s"]
    s_eps = len(seq) / s_seq["wall_s"]
    def same_as_sequential(trajs: list[Trajectory]) -> int:
        return sum(1 for a, b in zip(seq, trajs) if [x.model_text for x in a.steps] == [x.model_text for x in b.steps])

    extra: dict[str, Any] = {}
    if "batched_no_kv_reuse" in best:
        _, s_nr, nr = best["batched_no_kv_reuse"]
        extra = {"batched_no_kv_reuse_eps_per_s": round(len(nr) / s_nr["wall_s"], 3),
                 "ratio_no_kv_reuse": round(len(nr) / s_nr["wall_s"] / s_eps, 2),
                 "batched_no_kv_reuse": part(s_nr, nr, "batched_no_kv_reuse"),
                 "identical_episodes_no_kv_reuse": same_as_sequential(nr)}
    return {
        "batched_eps_per_s": round(b_eps, 3),
        "sequential_eps_per_s": round(s_eps, 3),
        "ratio": round(b_eps / s_eps, 2),
        # the same ratio on CPU time: what the loops cost without waiting for other processes on a shared
        # machine (meaningful with threads=1; spinning OpenMP threads count as CPU time too)
        "ratio_cpu_time": round(s_seq["cpu_s"] / s_bat["cpu_s"], 2) if s_bat["cpu_s"] > 0 else None,
        "n_tasks": len(tasks),
        "max_turns": max_turns,
        "max_new_tokens": max_new_tokens,
        "batch_size": bs,
        "protocol": protocol,
        "kind": kind,
        "model": model,
        "tasks": source,
        "repeats": max(1, int(repeats)),
        "torch_threads": torch.get_num_threads(),
        "device": str(policy.model.device) if isinstance(policy, HFPolicy) else "cpu (no model)",
        "loadavg_1min": [round(load_start, 2), round(load_end, 2)],
        "batched": part(s_bat, bat, "batched"),
        "sequential": part(s_seq, seq, "sequential"),
        "identical_episodes": same_as_sequential(bat),
        "kv_reuse": isinstance(policy, HFPolicy) and policy.engine is not None,
        **extra,
    }

