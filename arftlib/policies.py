"""The policies the rollout loop drives: `generate(batch_of_messages, contexts=None) -> list[Generation]`.

* `HFPolicy` — transformers. With episode contexts (as `rollout.run_episodes` passes them) and a Qwen-VL model it
  generates through `kv_reuse.KVReuseEngine`: each episode's keys/values are kept between its turns and only the
  new prompt tokens are run (greedy output identical to `model.generate` on the whole prompt — tested).
  Otherwise (`kv_reuse=False`, no contexts, other architectures): the processor's chat template over each
  message list, images loaded from the image blocks (paths or PIL), one left-padded `model.generate` per call
  (optionally in sub-batches of `max_batch_size`). Either way the vision placeholder tokens are suppressed
  (`models.suppressed_token_ids`: a sampled `<|video_pad|>` breaks Qwen's rope index), greedy by default or
  sampled with `temperature`/`top_p`/`top_k`. `Generation.seconds` is the call's wall time divided by the
  sequences in it (amortised share).
* `VLLMPolicy` — vLLM's offline `LLM.chat` (imported only when constructed; a clear ImportError when missing).
* `ScriptedPolicy` — replays turns without a model: each task's gold chain as model turns (`turns.gold_turns`,
  the same renderer the step-wise training data uses; `turns.gold_tool_turns` for tool-call episodes) or turns
  given per task id. With gold chains it is the oracle that checks environment + tools + scoring end to end.

`load_policy_for_eval(model, cfg-derived settings)` picks one of them for a model name ("oracle" → scripted).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from arftlib.turns import gold_tool_turns, gold_turns
from arftlib.types import Task

__all__ = ["EpisodeContext", "Generation", "HFPolicy", "Policy", "ScriptedPolicy", "VLLMPolicy",
           "images_of", "load_image", "load_policy_for_eval"]


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
    tool_format: str | None = None  # chat turns in a TRL tool-call form ("tags" | "json"), None for text turns

    @property
    def tool_calls(self) -> bool:
        return self.tool_format is not None


class Policy(Protocol):
    def generate(self, batch: Sequence[list[dict[str, Any]]],
                 contexts: Sequence[EpisodeContext] | None = None) -> list[Generation]: ...


# --------------------------------------------------------------------------------------------------------------
# scripted policy (oracle)
# --------------------------------------------------------------------------------------------------------------
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

    def script(self, task: Task, tool_format: str | None = None) -> list[str]:
        """The turns for `task`: given ones, else its gold chain — as tag turns, or as JSON tool calls for the
        "json" tool form (in the "tags" form the gold tag turns are the calls)."""
        key = str(task.id)
        if key in self.turns:
            return self.turns[key]
        form = "json" if tool_format == "json" else "tags"
        if (key, form) not in self._cache:
            self._cache[(key, form)] = gold_tool_turns(task) if form == "json" else gold_turns(task)
        return self._cache[(key, form)]

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
                script = self.script(ctx.task, ctx.tool_format)
                text = script[ctx.turn] if ctx.turn < len(script) else self.fallback
            out.append(Generation(text=text))
        return out


# --------------------------------------------------------------------------------------------------------------
# transformers policy
# --------------------------------------------------------------------------------------------------------------
def load_image(x: Any, cache: dict[str, Any]):
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


def images_of(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
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
        self._form: str | None = None  # the tool form the processor's templates are set for
        self.engine = None
        if kv_reuse:
            from arftlib.kv_reuse import KVReuseEngine, supports_kv_reuse

            if supports_kv_reuse(model):
                self.engine = KVReuseEngine(model, processor, budget_tokens=kv_budget_tokens)

    def chat_text(self, messages: list[dict[str, Any]], context: EpisodeContext | None = None) -> str:
        """The prompt text: the processor's chat template — for an episode in a TRL tool-call form, the template (and,
        for the JSON form, the environment's tool schemas) that TRL renders the prompt with in agentic training."""
        tools = None
        form = context.tool_format if context is not None else None
        if form is not None:
            from arftlib.tool_format import prepare_processor

            if self._form != form:
                prepare_processor(self.processor, form)  # as training does
                self._form = form
            if form == "json":
                if self._tools is None:
                    from arftlib.env import tool_functions

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
            prompts.append(eng.prepare(self.chat_text(m, c), images_of(m)))
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
        images = [load_image(x, cache) for m in batch for x in images_of(m)]
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
                        blocks.append({"type": "image_pil", "image_pil": load_image(b["image"], cache)})
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


