"""Multi-process training on accelerate (2 CPU processes, gloo), and the options that need what CPU CI lacks.

* `accelerate launch --config_file configs/accelerate_cpu2.yaml -m arftlib.train ...` with the tiny model:
  - stepwise: both ranks train (the global batch of 2 GRPO groups is one group per rank: 4 completions per
    device × 2 processes, every step's 8 records in the log once, episode ids 0–7, `num_processes` = 2), the
    run is killed hard (launcher and both workers) after a checkpoint, and `--resume` continues from it: every
    step is in the log exactly once, the steps past the checkpoint regenerated;
  - agentic: whole episodes with the environment's tools under two processes, every episode logged once, a
    checkpoint written.
* DeepSpeed ZeRO-2 / ZeRO-3 on the CPU accelerator (`DS_ACCELERATOR=cpu`): runs only where deepspeed is
  installed (not in CI's requirements; README "The real-size path" has the command and what it took).
* vLLM (`use_vllm=True`) fails with a clear message where vLLM or CUDA is missing — in the training config, in
  the CLI (`arft: error: …`, status 2) and in the evaluation policy — and never falls back silently.

The launches take ~1 minute each on 2 cores (process start, imports and a few tiny steps).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")

from arftlib.paths import REPO_ROOT  # noqa: E402

CPU2 = REPO_ROOT / "configs" / "accelerate_cpu2.yaml"
TINY = ["--profile", "tiny-cpu", "--set", "per_device_train_batch_size=4", "--set", "num_generations=4",
        "--set", "report_to=none", "--set", "n_coding_tasks=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra):
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.update(extra)
    return env


def _launch_cmd(config: Path, *train_args: str) -> list[str]:
    """`accelerate launch` with `config` on 2 processes (the shipped DeepSpeed configs are sized for 8 GPUs) and a
    free rendezvous port (another run on this machine may hold the default 29500)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
            "--main_process_port", str(_free_port()), "-m", "arftlib.train", *train_args]


def _launch(config: Path, *train_args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    return subprocess.run(_launch_cmd(config, *train_args), cwd=REPO_ROOT, env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _records(run: Path):
    from arftlib.trajectories import read_trajectories

    return read_trajectories(run / "trajectories")


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in new sessions, so killing
    the launcher's group alone would leave them running)."""
    import psutil

    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in [psutil.Process(proc.pid), *kids] if psutil.pid_exists(proc.pid) else kids:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(kids, timeout=30)


def _last_complete_checkpoint(run: Path) -> int:
    done = [int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, default=0)


def test_shipped_cpu_config_is_two_processes():
    text = CPU2.read_text()
    assert "num_processes: 2" in text and "use_cpu: true" in text


def test_stepwise_two_processes_kill_and_resume(tmp_path):
    run = tmp_path / "run"
    args = ["--mode", "stepwise", "--out", str(run), "--set", "save_steps=2", *TINY]
    with open(tmp_path / "first.err", "w") as err:
        proc = subprocess.Popen(_launch_cmd(CPU2, *args, "--max-steps", "50"), cwd=REPO_ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 600
            while _last_complete_checkpoint(run) < 2:
                assert proc.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint within 10 minutes"
                time.sleep(0.2)
        finally:
            _kill_tree(proc)  # a hard crash after (at least) one checkpoint
    ckpt = _last_complete_checkpoint(run)
    assert not (run / "metrics.json").exists(), "the first run was killed before it finished"
    target = ckpt + 2
    p = _launch(CPU2, *args, "--resume", "--max-steps", str(target))
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["num_processes"] == 2 and m["steps"] == target and m["steps_this_run"] == target - ckpt
    assert m["resumed_from"].endswith(f"checkpoint-{ckpt}")
    trajs = _records(run)
    per_step = Counter(t.training_step for t in trajs)
    assert per_step == {s: 8 for s in range(1, target + 1)}, per_step  # global batch = 2 ranks × 4, once each
    assert len({t.episode_id for t in trajs}) == len(trajs)
    for step in range(1, target + 1):
        ids = sorted(int(t.episode_id.rsplit("-", 1)[1]) for t in trajs if t.training_step == step)
        assert ids == list(range(8))  # 0–3 from rank 0, 4–7 from rank 1
        groups = Counter(t.group_id for t in trajs if t.training_step == step)
        assert sorted(groups.values()) == [4, 4]  # one GRPO group per rank


def test_agentic_two_processes(tmp_path):
    run = tmp_path / "run"
    p = _launch(CPU2, "--mode", "agentic", "--out", str(run), "--max-steps", "2", "--set", "save_steps=2",
                "--set", "max_completion_length=48", *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["num_processes"] == 2 and m["steps"] == 2
    assert (run / "checkpoint-2" / "trainer_state.json").is_file()
    trajs = _records(run)
    assert Counter(t.training_step for t in trajs) == {1: 8, 2: 8}
    assert len({t.episode_id for t in trajs}) == 16
    assert all(t.protocol == "chat" and t.steps for t in trajs)
    # the two ranks' groups hold different tasks (the sampler shards the prompts)
    for step in (1, 2):
        tasks = {t.group_id: t.task.id for t in trajs if t.training_step == step}
        assert len(tasks) == 2


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (README 'The real-size path' has the CPU recipe)")
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_on_the_cpu_accelerator(tmp_path, stage):  # pragma: no cover - opt-in
    run = tmp_path / "run"
    p = _launch(REPO_ROOT / "configs" / f"accelerate_{stage}.yaml", "--mode", "stepwise", "--out", str(run),
                "--max-steps", "2", *TINY, timeout=900, DS_ACCELERATOR="cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    assert list((run / "checkpoint-2").glob("global_step2/zero_pp_rank_1_*optim_states.pt"))
    assert Counter(t.training_step for t in _records(run)) == {1: 8, 2: 8}


# ---------------------------------------------------------------------------------------------- vLLM
def test_vllm_absent_fails_clearly_everywhere(tmp_path, monkeypatch):
    from arftlib.__main__ import main
    from arftlib.config import get_config
    from arftlib.policies import VLLMPolicy, load_policy_for_eval
    from arftlib.train import args as A

    cfg = get_config("tiny-cpu", use_vllm=True)
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="vllm package is not installed.*use_vllm=False"):
            A.grpo_config(cfg, "stepwise", tmp_path)
        with pytest.raises(ImportError, match="pip install vllm"):
            VLLMPolicy("tiny")
        with pytest.raises(ImportError, match="vllm"):
            load_policy_for_eval("tiny", use_vllm=True)
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["train", "--profile", "tiny-cpu", "--out", str(tmp_path / "r"), "--set", "use_vllm=true",
                       "--max-steps", "1"])
        assert rc == 2 and err.getvalue().startswith("arft: error:") and "vllm" in err.getvalue()
    # vLLM present but no CUDA: the other clear error (simulated), never a silent fallback
    monkeypatch.setattr(A, "vllm_available", lambda: True)
    monkeypatch.setattr(A, "cuda", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        A.grpo_config(cfg, "stepwise", tmp_path)
    assert A.check_vllm(cfg.replace(use_vllm=False)) is False
