"""Training speed and memory: seconds per optimizer step and peak RSS of `train()` for each (mode, variant), each
in a fresh subprocess so the peak RSS is that run's alone.

Run: `python -c "from experiments.measure import measure; print(measure('tiny-cpu', steps=4))"`. The README's
"Training" table holds the figures measured on the project's CPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arftlib.paths import REPO_ROOT
from arftlib.train import MODES, write_json

__all__ = ["measure"]


def measure(profile: str = "tiny-cpu", *, modes: Sequence[str] = MODES,
            variants: Sequence[str] = ("lora", "qlora", "full"), steps: int = 4, out_dir: str | os.PathLike =
            "runs/tiny-cpu/measure", n_tasks: int = 16, timeout_s: float = 900) -> list[dict[str, Any]]:
    """Seconds per optimizer step and peak memory of `train()` for each (mode, variant), each in a fresh
    subprocess (so the peak RSS is that run's alone). Variants: lora, qlora (4-bit language model), full.
    Rows: `mode`, `variant`, `s_per_step` (mean, first step excluded), `first_step_s`, `peak_rss_mb` (whole
    process), `rss_before_model_mb` (the process after importing torch/transformers/trl, before data and model),
    `peak_gpu_mb` (CUDA only), `steps`."""
    rows = []
    out = Path(out_dir)
    for mode in modes:
        for variant in variants:
            over = {"finetune": "full" if variant == "full" else "lora",
                    "quantization": "4bit" if variant == "qlora" else None,
                    "n_coding_tasks": n_tasks, "save_steps": 10_000}
            run_dir = out / f"{mode}-{variant}"
            sets = []
            for k, v in over.items():
                sets += ["--set", f"{k}={json.dumps(v)}"]
            cmd = [sys.executable, "-m", "arftlib.train", "--profile", profile, "--mode", mode, "--out", str(run_dir),
                   "--max-steps", str(steps), *sets]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=str(REPO_ROOT))
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                rows.append({"mode": mode, "variant": variant, "error": proc.stderr[-2000:], "wall_s": wall})
                continue
            m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            rows.append({"mode": mode, "variant": variant, "s_per_step": m["s_per_step"],
                         "first_step_s": m["first_step_s"], "peak_rss_mb": m["peak_rss_mb"],
                         "rss_before_model_mb": m.get("rss_before_model_mb"),
                         "peak_gpu_mb": m["peak_gpu_mb"], "steps": m["steps"], "wall_s": round(wall, 1)})
    write_json(out / "measure.json", rows)
    return rows
