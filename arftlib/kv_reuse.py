"""Batched generation that keeps each episode's KV cache between turns (the engine behind `HFPolicy`).

Why: a multi-turn episode re-sends its whole prompt every turn — the reference evaluation re-encodes ~725 tokens
of instructions, image and history per turn — and prefill (attention is O(prompt²) per sequence) is what a
batch cannot share. Between two turns of one episode the new prompt starts with most of the old one (the tags
protocol appends history to the user message; the chat protocol appends the model's turn and a tool turn), so
its keys and values are already known. This module keeps them, per episode id, and runs only the new tokens.

How (one `generate` call over a batch of rows, each row = one episode's current prompt)
-----------------------------------------------------------------------------------------
1. `prepare`: chat-template text → token ids with the image placeholders expanded exactly as the processor
   does (`processor.replace_image_token`); each image is run through the image processor once and remembered
   by a hash of its content (file bytes, or a PIL image's pixels), within a byte budget; the 3-D rope
   positions of the whole prompt come from the model's own `get_rope_index`.
2. Reuse: the longest common token prefix between the prompt and what the episode's cache holds (never the
   whole prompt: the last token must be run to get logits; never half an image: a cut inside an image's
   placeholder run moves back to its start, so the vision tower always sees whole images).
3. One batched forward over the new tokens only: row layout `[pad | cached prefix | pad | new tokens]` in the
   key/value axis, the padding masked out, explicit position ids (so nothing depends on where the padding is),
   pixel values for the images that are new in this turn (the model's forward runs the vision tower, so
   architectures that inject vision features in several layers — Qwen3-VL's deepstack — stay correct).
4. Decode steps for the whole batch with `transformers`' logits processors (suppressed tokens, repetition
   penalty, temperature / top-k / top-p), greedy by default — the same processing `model.generate` applies,
   so greedy output matches `generate` token for token up to float rounding (tested).
5. Each row's real keys/values (prompt + the generated tokens that were fed back) are cut out of the batch
   and stored under its key, for the next turn. A least-recently-used budget in tokens bounds the memory;
   `forget(keys)` drops finished episodes.

Left out: continuous batching (a call runs until its longest row finishes; finished rows are fed padding
and masked out of the stored cache), sharing a prefix between *different* episodes (the image comes before
the instructions in the reference prompt, so episodes share only the ~20-token system header), paged
memory, and speculative decoding. Models whose backbone has no `get_rope_index` (non-Qwen-VL) are not
supported here; `HFPolicy` falls back to `model.generate` for them.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["KVReuseEngine", "PreparedPrompt", "supports_kv_reuse"]


def _backbone(model: Any) -> Any:
    """The module that owns `get_rope_index` (unwraps PEFT), or None."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    inner = getattr(m, "model", None)
    if inner is not None and hasattr(inner, "get_rope_index"):
        return inner
    return None


_MASKABLE = ("sdpa", "eager")  # attention implementations that take an explicit 4-D mask


def supports_kv_reuse(model: Any) -> bool:
    """True for the Qwen-VL family (a backbone with `get_rope_index`) with SDPA or eager attention (the
    engine passes its own 4-D masks, which flash-attention kernels do not take) and no sliding-window layers."""
    if _backbone(model) is None:
        return False
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None) or "sdpa"
    text = config.get_text_config(decoder=True) if config is not None else None
    sliding = "sliding_attention" in (getattr(text, "layer_types", None) or [])
    return impl in _MASKABLE and not sliding


@dataclass
class PreparedPrompt:
    """One row's prompt: token ids, the images in placeholder order, and rope positions."""

    ids: list[int]
    image_keys: list[Any]  # content keys of the images, in order of their placeholder runs
    images: list[tuple[Any, Any]]  # (pixel rows, grid_thw [1, 3]) of each image, in the same order
    positions: Any  # LongTensor [3, len(ids)] (rope positions of every prompt token)
    next_position: int  # rope position of the first generated token (max position + 1)
    image_tokens: int = 0


@dataclass
class _EpisodeCache:
    ids: list[int]
    image_keys: list[Any]  # the images behind the placeholder runs in `ids`, in order
    keys: list[Any]  # per layer: [kv_heads, n, head_dim]
    values: list[Any]


@dataclass
class _Row:
    prompt: PreparedPrompt
    key: Any
    reuse: int  # prompt tokens taken from the cache
    cache: _EpisodeCache | None


class KVReuseEngine:
    """Batched multi-turn generation with per-episode KV reuse (see the module docstring).

    Args:
        model, processor: a Qwen-VL model (optionally PEFT-wrapped or quantised) and its processor.
        budget_tokens: most prompt+generated tokens kept across all episodes (least recently used dropped
            first). 0 disables reuse (every call prefills everything, like `generate`).
        image_cache_mb: processed images remembered (pixel rows), in MiB; least recently used dropped first
            (a dropped image is processed again when it comes back).
    """

    def __init__(self, model: Any, processor: Any, *, budget_tokens: int = 1 << 20, image_cache_mb: int = 512):
        backbone = _backbone(model)
        if backbone is None or not supports_kv_reuse(model):
            raise ValueError(f"{type(model).__name__}: KV reuse needs a Qwen-VL backbone with get_rope_index, "
                             "SDPA or eager attention and no sliding-window layers")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._rope = backbone.get_rope_index
        self.image_token = processor.image_token
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(self.image_token))
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(getattr(processor, "video_token", "<|video_pad|>"))
        self.budget_tokens = int(budget_tokens)
        self._episodes: collections.OrderedDict[Any, _EpisodeCache] = collections.OrderedDict()
        self._images: collections.OrderedDict[Any, tuple[Any, Any]] = collections.OrderedDict()
        self._image_cache_bytes = int(image_cache_mb) << 20
        self.stats = {"prompt_tokens": 0, "reused_tokens": 0, "prefilled_tokens": 0, "decode_steps": 0, "calls": 0}

    # ---------------------------------------------------------------------------------------------- prompts
    @staticmethod
    def image_key(img: Any) -> tuple[str, str]:
        """A content key: the hash of a file's bytes, or of a PIL image's mode, size and pixels (an object id or
        a file's mtime could name other pixels later, and a wrong match would reuse the wrong keys/values)."""
        h = hashlib.blake2b(digest_size=16)
        if isinstance(img, (str, os.PathLike)):
            with open(os.fspath(img), "rb") as f:
                h.update(f.read())
            return ("file", h.hexdigest())
        h.update(f"{img.mode}{img.size}".encode())
        h.update(img.tobytes())
        return ("pil", h.hexdigest())

    def _image(self, img: Any) -> tuple[Any, Any, Any]:
        """(key, pixel rows, grid_thw [1, 3]) of one image, processed once while it stays in the cache."""
        key = self.image_key(img)
        hit = self._images.get(key)
        if hit is None:
            from PIL import Image

            if isinstance(img, Image.Image):
                pil = img if img.mode == "RGB" else img.convert("RGB")
            else:
                with Image.open(os.fspath(img)) as im:
                    pil = im.convert("RGB")
            out = self.processor.image_processor(images=[pil], return_tensors="pt")
            hit = (out["pixel_values"], out["image_grid_thw"])
            self._images[key] = hit
            total = sum(v[0].numel() * v[0].element_size() for v in self._images.values())
            while total > self._image_cache_bytes and len(self._images) > 1:
                _, old = self._images.popitem(last=False)
                total -= old[0].numel() * old[0].element_size()
        else:
            self._images.move_to_end(key)
        return key, hit[0], hit[1]

    def prepare(self, text: str, images: Sequence[Any]) -> PreparedPrompt:
        """Token ids of a chat-templated `text` with its `images` (one per image placeholder, in order)."""
        import torch

        parts = text.split(self.image_token)
        if len(parts) - 1 != len(images):
            raise ValueError(f"the prompt has {len(parts) - 1} image placeholders but {len(images)} images")
        keys, grids, processed = [], [], []
        for img in images:
            k, pixels, grid = self._image(img)
            keys.append(k)
            grids.append(grid)
            processed.append((pixels, grid))
        if images:
            grid_all = torch.cat(grids, dim=0)
            expanded = parts[0]
            for i, part in enumerate(parts[1:]):
                expanded += self.processor.replace_image_token({"image_grid_thw": grid_all}, i) + part
        else:
            grid_all, expanded = None, text
        ids = self.tokenizer(expanded, add_special_tokens=False)["input_ids"]
        ids_t = torch.tensor([ids], dtype=torch.long)
        n_img = int((ids_t == self.image_token_id).sum())
        if images:
            types = (ids_t == self.image_token_id).to(torch.int) + 2 * (ids_t == self.video_token_id).to(torch.int)
            pos, _ = self._rope(ids_t, mm_token_type_ids=types, image_grid_thw=grid_all)
            pos = pos[:, 0, :]
        else:
            pos = torch.arange(len(ids)).view(1, -1).expand(3, -1)
        return PreparedPrompt(ids=ids, image_keys=keys, images=processed, positions=pos, next_position=int(pos.max()) + 1,
                              image_tokens=n_img)

    # ---------------------------------------------------------------------------------------------- cache
    def forget(self, keys: Sequence[Any]) -> None:
        """Drop the caches of these episodes (finished ones)."""
        for k in keys:
            self._episodes.pop(k, None)

    def cached_tokens(self) -> int:
        return sum(len(c.ids) for c in self._episodes.values())

    def _reuse_length(self, prompt: PreparedPrompt, cache: _EpisodeCache | None) -> int:
        if cache is None or self.budget_tokens <= 0:
            return 0
        ids, old = prompt.ids, cache.ids
        n = min(len(ids) - 1, len(old))  # the last prompt token always runs (its logits start the turn)
        p = 0
        while p < n and ids[p] == old[p]:
            p += 1
        while p > 0 and ids[p - 1] == self.image_token_id and ids[p] == self.image_token_id:
            p -= 1  # never split an image's placeholder run
        for j, start in enumerate(self._image_run_starts(ids, p)):  # same placeholder tokens, other image?
            if j >= len(cache.image_keys) or cache.image_keys[j] != prompt.image_keys[j]:
                return start
        return p

    def _image_run_starts(self, ids: Sequence[int], end: int) -> list[int]:
        tid = self.image_token_id
        return [i for i in range(end) if ids[i] == tid and (i == 0 or ids[i - 1] != tid)]

    def _store(self, key: Any, entry: _EpisodeCache) -> None:
        self._episodes[key] = entry
        self._episodes.move_to_end(key)
        total = self.cached_tokens()
        while total > self.budget_tokens and self._episodes:
            _, dropped = self._episodes.popitem(last=False)
            total -= len(dropped.ids)

    # ---------------------------------------------------------------------------------------------- generate
    def generate(self, prompts: Sequence[PreparedPrompt], keys: Sequence[Any], *, max_new_tokens: int,
                 eos_ids: set[int], pad_id: int, logits_processor: Any = None, do_sample: bool = False,
                 ) -> list[tuple[list[int], int]]:
        """Generate for every row; returns per row (new token ids up to and including EOS, reused prompt tokens).

        `keys[i]` names row i's episode (None = no reuse, nothing stored)."""
        import torch

        if len(prompts) != len(keys):
            raise ValueError("one key per prompt")
        device = self.model.device
        self.stats["calls"] += 1
        rows: list[_Row] = []
        for prompt, key in zip(prompts, keys):
            cache = self._episodes.get(key) if key is not None else None
            rows.append(_Row(prompt=prompt, key=key, reuse=self._reuse_length(prompt, cache), cache=cache))
        for r in rows:
            self.stats["prompt_tokens"] += len(r.prompt.ids)
            self.stats["reused_tokens"] += r.reuse
            self.stats["prefilled_tokens"] += len(r.prompt.ids) - r.reuse
        with torch.inference_mode():
            if all(r.reuse == 0 for r in rows):
                cache, valid, last_logits = self._prefill_fresh(rows, pad_id, int(max_new_tokens))
            else:
                cache, valid, last_logits = self._prefill_reusing(rows, pad_id, int(max_new_tokens))
            generated, fed = self._decode(rows, cache, valid, last_logits, int(max_new_tokens), eos_ids, pad_id,
                                          logits_processor, do_sample)
            if self.budget_tokens > 0:
                for b, r in enumerate(rows):
                    if r.key is None:
                        continue
                    idx = valid[b].nonzero().squeeze(1).to(device)
                    ks = [lay.keys[b].index_select(1, idx) for lay in cache.layers]
                    vs = [lay.values[b].index_select(1, idx) for lay in cache.layers]
                    ids = list(r.prompt.ids) + generated[b][:fed[b]]
                    if len(ids) != int(idx.numel()):
                        raise RuntimeError(f"KV bookkeeping: {len(ids)} tokens but {int(idx.numel())} cached entries")
                    self._store(r.key, _EpisodeCache(ids=ids, image_keys=list(r.prompt.image_keys), keys=ks, values=vs))
        return [(generated[b], rows[b].reuse) for b in range(len(rows))]

    # ---- the pieces of one call
    def _new_images(self, r: _Row) -> list[tuple[Any, Any]]:
        first_new = len(self._image_run_starts(r.prompt.ids, r.reuse))  # images inside the reused prefix
        return r.prompt.images[first_new:]

    def _vision_kwargs(self, rows: list[_Row]) -> dict[str, Any]:
        import torch

        new = [img for r in rows for img in self._new_images(r)]
        pixels, grids = [p for p, _ in new], [g for _, g in new]
        if not pixels:
            return {}
        return {"pixel_values": torch.cat(pixels, dim=0).to(self.model.device),
                "image_grid_thw": torch.cat(grids, dim=0).to(self.model.device)}

    def _static_cache(self, like_keys: Sequence[Any], batch: int, capacity: int):
        """A preallocated cache of `capacity` positions (decode steps write in place, no re-allocation)."""
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        for layer, k in zip(cache.layers, like_keys):
            shape = (batch, k.shape[-3], 1, k.shape[-1])
            layer.lazy_initialization(k.new_zeros(shape), k.new_zeros(shape))
        return cache

    def _prefill_fresh(self, rows: list[_Row], pad_id: int, max_new: int):
        """No row has cached tokens: right-padded batch, plain causal attention (no mask: SDPA's causal kernel
        skips the upper triangle), then the keys/values move into a preallocated cache for decoding."""
        import torch
        from transformers import DynamicCache

        device = self.model.device
        B = len(rows)
        lengths = [len(r.prompt.ids) for r in rows]
        S = max(lengths)
        input_ids = torch.full((B, S), pad_id, dtype=torch.long)
        positions = torch.zeros((3, B, S), dtype=torch.long)
        for b, r in enumerate(rows):
            input_ids[b, :lengths[b]] = torch.tensor(r.prompt.ids, dtype=torch.long)
            positions[:, b, :lengths[b]] = r.prompt.positions
            if lengths[b] < S:  # pads continue the positions (they are never attended to by real tokens)
                positions[:, b, lengths[b]:] = r.prompt.next_position + torch.arange(S - lengths[b])
        last = torch.tensor([n - 1 for n in lengths])
        keep = torch.unique(last)
        dyn = DynamicCache(config=self.model.config)
        out = self.model(input_ids=input_ids.to(device), attention_mask=None, position_ids=positions.to(device),
                         cache=dyn, use_cache=True, logits_to_keep=keep.to(device), **self._vision_kwargs(rows))
        col = torch.searchsorted(keep, last)
        logits = out.logits[torch.arange(B, device=device), col.to(device)]
        cache = self._static_cache([lay.keys for lay in dyn.layers], B, S + max_new)
        for src, dst in zip(dyn.layers, cache.layers):
            dst.keys[:, :, :S] = src.keys
            dst.values[:, :, :S] = src.values
            dst.cumulative_length.fill_(S)
        valid = torch.zeros((B, S + max_new), dtype=torch.bool)
        for b, n in enumerate(lengths):
            valid[b, :n] = True
        return cache, valid, logits

    def _prefill_reusing(self, rows: list[_Row], pad_id: int, max_new: int):
        """Some rows continue from cached tokens: layout `[pad | cached | pad | new]`, an explicit mask."""
        import torch

        device = self.model.device
        B = len(rows)
        P = max(r.reuse for r in rows)
        S = max(len(r.prompt.ids) - r.reuse for r in rows)
        C = P + S + max_new
        ref = next(r for r in rows if r.reuse > 0).cache
        cache = self._static_cache(ref.keys, B, C)  # type: ignore[union-attr]
        input_ids = torch.full((B, S), pad_id, dtype=torch.long)
        positions = torch.zeros((3, B, S), dtype=torch.long)
        valid = torch.zeros((B, C), dtype=torch.bool)
        for b, r in enumerate(rows):
            s = len(r.prompt.ids) - r.reuse
            input_ids[b, S - s:] = torch.tensor(r.prompt.ids[r.reuse:], dtype=torch.long)
            positions[:, b, S - s:] = r.prompt.positions[:, r.reuse:]
            valid[b, P - r.reuse:P] = True
            valid[b, P + S - s:P + S] = True
            if r.reuse:
                for layer, dst in enumerate(cache.layers):
                    dst.keys[b, :, P - r.reuse:P] = r.cache.keys[layer][:, :r.reuse]  # type: ignore[union-attr]
                    dst.values[b, :, P - r.reuse:P] = r.cache.values[layer][:, :r.reuse]  # type: ignore[union-attr]
        for dst in cache.layers:
            dst.cumulative_length.fill_(P)
        q = torch.arange(P, P + S)
        k = torch.arange(C)
        mask = valid[:, None, None, :] & (k[None, :] <= q[:, None])[None, None]
        mask |= (~valid[:, P:P + S])[:, None, :, None] & (k[None, :] == q[:, None])[None, None]  # pads see themselves
        out = self.model(input_ids=input_ids.to(device), attention_mask=self._additive(mask),
                         position_ids=positions.to(device), cache=cache, use_cache=True, logits_to_keep=1,
                         **self._vision_kwargs(rows))
        return cache, valid, out.logits[:, -1]

    def _decode(self, rows: list[_Row], cache: Any, valid: Any, logits: Any, max_new: int, eos_ids: set[int],
                pad_id: int, logits_processor: Any, do_sample: bool) -> tuple[list[list[int]], list[int]]:
        import torch

        device = self.model.device
        B = len(rows)
        write = int(cache.layers[0].cumulative_length)  # where the next fed token goes
        finished = torch.zeros(B, dtype=torch.bool)
        fed = [0] * B  # generated tokens fed back as input (their keys/values exist)
        generated: list[list[int]] = [[] for _ in range(B)]
        next_pos = torch.tensor([r.prompt.next_position for r in rows], dtype=torch.long)
        history = self._history(rows, pad_id, logits_processor)  # None: no processor reads the input ids
        no_history = torch.zeros((B, 0), dtype=torch.long, device=device)
        for step in range(max_new):
            logits = logits.float()
            if logits_processor is not None:
                logits = logits_processor(history.to(device) if history is not None else no_history, logits)
            if do_sample:
                tok = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)
            else:
                tok = logits.argmax(dim=-1)
            tok = torch.where(finished, torch.full_like(tok, pad_id), tok.cpu())
            alive = ~finished
            for b in alive.nonzero().squeeze(1).tolist():
                t = int(tok[b])
                generated[b].append(t)
                if t in eos_ids:
                    finished[b] = True
            self.stats["decode_steps"] += 1
            if bool(finished.all()) or step == max_new - 1:
                break
            feed = ~finished  # rows that go on: their token is fed and its keys/values kept
            for b in feed.nonzero().squeeze(1).tolist():
                fed[b] += 1
            valid[:, write] = feed
            if history is not None:
                history = torch.cat([history, tok.view(B, 1)], dim=1)
            allowed = valid.clone()  # positions past `write` are not written yet (False)
            allowed[:, write] = True  # a finished row's pad token attends to itself at least (no empty rows)
            out = self.model(input_ids=tok.view(B, 1).to(device),
                             attention_mask=self._additive(allowed[:, None, None, :]),
                             position_ids=(next_pos + step).view(1, B, 1).expand(3, B, 1).to(device), cache=cache,
                             use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
            write += 1
        return generated, fed

    def _additive(self, allowed: Any) -> Any:
        """A boolean 4-D mask (True = may attend) as the additive float mask both SDPA and eager attention take."""
        import torch

        dtype = self.model.dtype
        out = torch.zeros(allowed.shape, dtype=dtype)
        out.masked_fill_(~allowed, torch.finfo(dtype).min)
        return out.to(self.model.device)

    @staticmethod
    def _history(rows: list[_Row], pad_id: int, logits_processor: Any):
        """What `logits_processor` sees as input ids: the prompts (left-padded) when a repetition penalty needs
        them (the generated tokens are appended as decoding goes), else None."""
        import torch
        from transformers import RepetitionPenaltyLogitsProcessor

        if logits_processor is not None and any(isinstance(p, RepetitionPenaltyLogitsProcessor)
                                                for p in logits_processor):
            width = max(len(r.prompt.ids) for r in rows)
            hist = torch.full((len(rows), width), pad_id, dtype=torch.long)
            for b, r in enumerate(rows):
                hist[b, width - len(r.prompt.ids):] = torch.tensor(r.prompt.ids, dtype=torch.long)
            return hist
        return None
