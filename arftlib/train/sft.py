"""Cold-start supervised fine-tuning (the warm start GRPO begins from), on TRL's `SFTTrainer`.

`sft_warm_start(cfg, dataset, out_dir)` trains on prompt/completion rows with the loss on the completion only and
saves the result (a LoRA adapter, or with `full=True` the whole model + processor). Rows are step-wise rows
(`prompt`, `image` or `images`, `solution`: the gold step becomes the assistant completion) or rows that already hold a
`completion` (then used as they are, e.g. chat-templated text ending in `<|im_end|>`). It is reported as what it
is — supervised learning on gold data — wherever a "before" number is measured after it.

`row_mean_loss=True` averages the loss over each row's completion tokens first, then over the rows, so every row
weighs the same (TRL averages over all completion tokens of the batch, so a short answer row counts less than a
long code row; `row_mean_nll`). Measured on the micro warm start: it did not make the policy see (README).

Left out: packing, multi-image rows beyond TRL's own support, and any schedule but a constant learning rate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arftlib.train.args import cuda, torch_dtype
from arftlib.train.trainer import load_training_processor

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.config import RunConfig

__all__ = ["lora_config", "row_mean_nll", "sft_warm_start"]


def row_mean_nll(token_log_probs: Any, label_mask: Any) -> Any:
    """Mean over rows of each row's mean negative log-likelihood on its trained tokens; rows without one are left
    out (a batch without any gives 0, differentiable).

    >>> import torch
    >>> lp = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.0, 0.0]]).clamp(min=1e-30))
    >>> mask = torch.tensor([[True, True, False], [True, False, False]])
    >>> round(float(row_mean_nll(lp * mask, mask)), 4)  # (ln 2 + ln 4) / 2, not (2 ln 2 + ln 4) / 3
    1.0397
    """
    n = label_mask.sum(-1)
    rows = n > 0
    if not bool(rows.any()):
        return (token_log_probs * 0).sum()
    return (-(token_log_probs * label_mask).sum(-1)[rows] / n[rows]).mean()


def _row_mean_trainer():
    from trl import SFTTrainer

    class RowMeanSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer with every row weighted the same (`row_mean_nll` on the fused LM head's per-token log
        probabilities, the same forward pass TRL's own loss uses). TRL's entropy / token-accuracy metrics are not
        logged by it."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:
                raise ValueError("RowMeanSFTTrainer computes the loss only (no evaluation outputs)")
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            return row_mean_nll(outputs.log_probs, outputs.label_mask)

    return RowMeanSFTTrainer


def lora_config(cfg: "RunConfig", modules_to_save: Sequence[str] | None = None):
    """`models.lora_config_for(cfg)`, plus `modules_to_save` (whole modules trained and saved with the adapter,
    e.g. the language model's final RMSNorm `norm`); None for full fine-tuning."""
    from arftlib.models import lora_config_for

    lc = lora_config_for(cfg)
    if lc is not None and modules_to_save:
        lc.modules_to_save = list(modules_to_save)
    return lc


def sft_warm_start(cfg: "RunConfig", dataset: Any, out_dir: str | os.PathLike, *, max_steps: int = 30,
                   learning_rate: float | None = None, batch_size: int = 8, model: str | None = None,
                   modules_to_save: Sequence[str] | None = None, full: bool = False,
                   callbacks: Sequence[Any] = (), row_mean_loss: bool = False) -> dict[str, Any]:
    """A short supervised warm start (see the module docstring). Saves to `out_dir/adapter` (or `out_dir/model`
    with `full=True`) and returns `{"adapter"|"model": path, "steps", "seconds", "loss", "loss_curve"}`."""
    from trl import SFTConfig, SFTTrainer

    from arftlib.config import apply_threads
    from arftlib.models import model_path_for

    apply_threads(cfg)
    out = Path(out_dir)
    if "completion" in dataset.column_names:
        ds = dataset
    else:
        ds = dataset.map(lambda r: {"completion": [{"role": "assistant", "content": r["solution"]}]})
    image_col = "images" if "images" in ds.column_names else "image"  # several images (chat rows) or one
    ds = ds.select_columns(["prompt", "completion", image_col])
    path = model_path_for(cfg, model)
    processor = load_training_processor(path, cfg, "stepwise")
    args = SFTConfig(
        output_dir=str(out / "sft"), max_steps=int(max_steps), per_device_train_batch_size=batch_size,
        learning_rate=learning_rate or cfg.learning_rate, lr_scheduler_type="constant",
        logging_steps=max(1, min(10, max_steps // 10)), save_strategy="no",
        report_to=[], bf16=cuda() and cfg.torch_dtype in ("bfloat16", "bf16"), use_cpu=not cuda(),
        activation_checkpointing=False, seed=cfg.seed, completion_only_loss=True, max_length=None,
        dataset_num_proc=None, disable_tqdm=False, dataloader_num_workers=0,
        model_init_kwargs={"dtype": torch_dtype(cfg.torch_dtype), "attn_implementation": cfg.attn_implementation},
    )
    trainer_cls = _row_mean_trainer() if row_mean_loss else SFTTrainer
    trainer = trainer_cls(model=path, args=args, train_dataset=ds, processing_class=processor,
                         peft_config=None if full else lora_config(cfg, modules_to_save), callbacks=list(callbacks))
    t0 = time.perf_counter()
    result = trainer.train()
    secs = time.perf_counter() - t0
    saved = out / ("model" if full else "adapter")
    trainer.model.save_pretrained(str(saved))
    if full:
        processor.save_pretrained(str(saved))
    return {("model" if full else "adapter"): str(saved), "steps": int(trainer.state.global_step),
            "seconds": round(secs, 2), "loss": float(result.training_loss), "full": full, "row_mean_loss": row_mean_loss,
            "loss_curve": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
