"""The real-size path's commands, checked on the tiny model on CPU (the real figures are in the README):

* `python -m arftlib bench real-size` — real GRPO steps through `arftlib.train.train` with the 3B QLoRA
  profile's settings (4-bit language model, bf16 vision tower and lm_head, LoRA r=64 on all seven projections,
  gradient checkpointing) shrunk to 2 generations, 8 tokens and 112-pixel images: the JSON report's shape, the
  loaded model's make-up (nothing of the vision tower quantised, LoRA on every targeted language-model linear),
  token counts consistent with the processor, and the CLI's user errors;
* `scripts/gpu_check.sh --cpu-smoke` — the GPU check's driver, subprocesses and JSON table end to end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("trl")
pytest.importorskip("bitsandbytes")

from arftlib.__main__ import main  # noqa: E402
from arftlib.paths import REPO_ROOT  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_bench_real_size_runs_the_qlora_profile_on_the_tiny_model(tmp_path):
    mode = "stepwise"  # the agentic mode runs in the GPU check's CPU smoke test below
    rc, out, err = _cli(["bench", "real-size", "--model", "tiny", "--mode", mode, "--steps", "1",
                         "--max-completion-length", "8", "--image-size", "112", "--n-tasks", "4",
                         "--out", str(tmp_path)])
    assert rc == 0, err[-2000:]
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["profile"] == "qwen2.5-vl-3b-qlora-24gb" and rep["mode"] == mode and rep["steps"] == 1
    s = rep["settings"]
    assert (s["num_generations"], s["per_device_train_batch_size"], s["gradient_accumulation_steps"]) == (2, 2, 1)
    assert s["quantization"] == "4bit" and s["unquantised_dtype"] == "bfloat16" and s["gradient_checkpointing"]
    assert rep["load_s"] > 0 and rep["first_step_s"] > 0 and rep["steady_step_s"] is None  # one step: no steady
    assert rep["peak_rss_mb"] >= rep["peak_rss_load_mb"] > 0 and rep["peak_rss_anon_mb"] > 0
    m = rep["loaded_model"]
    assert m["quantized_linears_vision"] == 0 and m["plain_linears_vision"] > 0  # vision tower unquantised
    assert m["quantized_linears_language"] == 2 * 7  # 2 layers × q/k/v/o/gate/up/down in 4-bit
    assert m["lora_modules"] == 2 * 7 and m["trainable_params"] > 0  # the profile's targets all resolved
    tok = rep["tokens_per_episode"]
    assert rep["episodes"] == 2 == tok["prompt"]["n"]
    assert tok["prompt_image"]["min"] == tok["prompt_image"]["max"] == 16  # 112×112 → 8×8 patches → 16 tokens
    assert tok["prompt"]["min"] > 16 and 1 <= tok["completion_sampled"]["max"] <= 8
    assert (tmp_path / f"bench_realsize-{mode}.json").is_file()


@pytest.mark.parametrize("tool_format", ["tags", "json"])
def test_prompt_token_counts_match_trl_rendering(tmp_path, tool_format):
    """The bench's prompt count is what TRL's GRPOTrainer tokenises for the same row (agentic: with the tool form's
    template and tools)."""
    from arftlib import train as T
    from arftlib.config import get_config
    from arftlib.data.build import build_dataset
    from experiments.bench_realsize import prompt_token_counts, training_tools

    data = build_dataset("coding", 4, 0, tmp_path / "data", verify=False)
    cfg = get_config("tiny-cpu", max_steps=1, report_to="none", tool_format=tool_format)
    b = T.build_trainer(cfg, "agentic", data=data, out_dir=tmp_path / "run")
    tr = b.trainer
    row = b.train_dataset[0]
    from trl.data_utils import prepare_multimodal_messages

    prompt = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    tr._batch_environments = [next(iter(tr._env_tools))]  # what TRL sets per batch (one environment kind)
    ids, _, _ = tr._tokenize_prompts([prompt])
    got = prompt_token_counts(row, b.processor, training_tools(cfg))
    assert got["prompt_tokens"] == len(ids[0])
    assert got["prompt_image_tokens"] == ids[0].count(b.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))


def test_bench_real_size_user_errors(tmp_path):
    rc, _, err = _cli(["bench", "real-size", "--model", "tiny", "--generations", "1", "--out", str(tmp_path)])
    assert rc == 2 and "arft: error:" in err and "generations" in err
    rc, _, err = _cli(["bench", "real-size", "--model", "tiny", "--generations", "4", "--batch", "2",
                       "--out", str(tmp_path)])
    assert rc == 2 and "multiple of generations" in err
    rc, _, err = _cli(["bench", "real-size", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert rc == 2 and "does not exist" in err


def test_gpu_check_cpu_smoke_writes_the_table(tmp_path):
    """`scripts/gpu_check.sh --cpu-smoke`: the GPU check's driver end to end on the tiny model."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}
    p = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--work",
                        str(tmp_path / "work")], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    table = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert table["mode"] == "cpu-smoke" and table["environment"]["torch"]
    rows = {r["key"]: r for r in table["rows"]}
    assert list(rows) == ["build:qwen2.5-vl-3b", "kv_reuse:qwen2.5-vl-3b",
                          "train:qwen2.5-vl-3b-qlora-24gb:stepwise", "train:qwen2.5-vl-3b-qlora-24gb:agentic"]
    assert all(r["status"] == "ok" for r in rows.values()), rows
    kv = rows["kv_reuse:qwen2.5-vl-3b"]
    assert kv["identical_turns"] == kv["turns"] > 0 and kv["turns_with_reuse"] > 0
    for mode in ("stepwise", "agentic"):
        r = rows[f"train:qwen2.5-vl-3b-qlora-24gb:{mode}"]
        assert r["first_step_s"] > 0 and r["peak_gpu_gib"] is None  # CPU: no GPU memory to measure
        assert r["estimate"]["total_gib"] > 0 and r["estimate"]["label"].startswith("estimate")
        assert r["loaded_model"]["quantized_linears_vision"] == 0
    assert [s["key"] for s in table["summary"]] == list(rows)
