"""GRPO fine-tuning on TRL's `GRPOTrainer`: the paper's step-wise protocol and live multi-turn episodes.

Two modes, one entry point (`train(cfg, mode, ...)`, also `python -m arftlib train`):

* `stepwise` (the paper). Every gold chain is cut into single steps (`data.stepwise.stepwise_dataset`:
  diagnosis / code / search / answer, earlier steps pasted into the prompt) and GRPO runs single-turn over them
  with the paper's per-step rewards (`rewards.paper_stepwise_rubric(kind)`: the reference's format regex, exact
  diagnosis labels, a flat 0.9 for a code step, MiniLM similarity for search queries, answer F1; components
  that cannot apply to any training row are left out). `reward="executed"` swaps the flat
  code reward for ours — the code is run in the sandbox and rewarded by what it produced
  (`rewards.executed_stepwise_rubric(kind)`).
* `agentic` (beyond the paper). Whole episodes with live tools through TRL's `environment_factory`, using the
  shared `env.AgentEnv` (chat protocol; tools `search`, `run_code`, `diagnose`, `answer`). `run_code` returns
  the processed image as an image block, which TRL feeds back to the VLM in generation AND in the training
  forward pass. Tool-output tokens (the tool turn, its image tokens included) get TRL's `tool_mask = 0` and are
  excluded from the loss (`tests/test_train.py` checks the mask of a real rollout span by span). Rewards:
  `rewards.agentic_rubric(kind)` scored on the environment's finished trajectory, one TRL reward function per
  component (so each is logged separately).

Model and memory: LoRA (`models.lora_config_for`), QLoRA (`cfg.quantization="4bit"`: NF4 language model,
vision tower and lm_head unquantised — the model is passed to TRL as a path with `quantization_config`, as
TRL wants it) or full fine-tuning (`cfg.finetune="full"`). Multi-GPU: the same call under `accelerate launch`;
a profile's `deepspeed` json (`configs/zero3.json`, `configs/zero2.json`) goes to `GRPOConfig.deepspeed`
unless the launcher already configured DeepSpeed. vLLM generation (`cfg.use_vllm`, colocated) where installed.

Run directory (`out_dir`)::

    config.json              the RunConfig + mode + call arguments
    checkpoint-N/            TRL/transformers checkpoints (save_steps); --resume continues from the last
    trajectories/            every step's rollouts (trajectories.py format), written as training goes
    tb/                      TensorBoard event files (report_to="tensorboard"; local, no account)
    final/                   the trained adapter (LoRA/QLoRA) or model (full) + processor
    metrics.json             what `train()` returns

Trajectory logging. `ArftGRPOTrainer` is TRL's `GRPOTrainer` with ONE observation hook: after TRL's own
`_generate_and_score_completions` has generated, scored and computed advantages, the hook writes each rollout
(task, turns, parsed actions, tool results and images, reward per component, total reward, advantage) to
`trajectories/`. Per-component rewards are recorded by thin wrappers around the reward functions (they see
exactly what TRL passes); **advantages are read from the trainer's own output** (`output["advantages"]`, i.e.
TRL's computation with the configured `scale_rewards`, after its NaN handling), not recomputed. Each record's
`training_step` is the optimizer step that trains on it (`global_step + 1` at generation time), so with
`num_iterations=1` steps are numbered 1..max_steps. Under several processes the records are gathered and rank
0 writes them. On `resume`, records with `training_step` beyond the checkpoint's step (rollouts whose update
was lost) are removed before training continues, so the log has every step exactly once.

Also here: `sft_warm_start` (TRL `SFTTrainer` on gold steps), `heldout_reward` (a rubric's mean on held-out
step-wise rows, seeded sampling), `learning_demo` (warm start → GRPO → held-out reward before/after) and
`measure` (s/step and peak memory per mode × LoRA/QLoRA/full, each in a fresh process).

What it leaves out: reward models (all rewards are rule-based), the tag protocol inside TRL's tool loop (TRL
parses `<tool_call>` JSON; agentic mode trains the `chat` protocol, the `tags` protocol is trained step-wise),
and benchmark evaluation (evaluate.py; an agentic adapter is evaluated with `eval --protocol chat --tool-calls`,
which renders and parses turns as TRL's loop does here). GPU memory targets of the big profiles are not measured here (no GPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import resource
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arftlib.paths import REPO_ROOT

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.config import RunConfig
    from arftlib.types import Task, Trajectory

log = logging.getLogger(__name__)

__all__ = [
    "LEARNING_DEMO_CONFIG",
    "LEARNING_DEMO_FULL",
    "LEARNING_DEMO_SHORT",
    "MODES",
    "REWARD_VARIANTS",
    "ArftGRPOTrainer",
    "LoraSnapshot",
    "SimulatedCrash",
    "StopAfterSteps",
    "TrainingEnv",
    "add_train_arguments",
    "build_trainer",
    "deepspeed_config_path",
    "grpo_config",
    "heldout_reward",
    "last_checkpoint",
    "demo_setup",
    "learning_demo",
    "load_task_splits",
    "lora_config",
    "make_dataset",
    "measure",
    "run_from_args",
    "score_stepwise_texts",
    "sft_warm_start",
    "train",
    "truncate_trajectories",
]

MODES = ("stepwise", "agentic")
REWARD_VARIANTS = ("paper", "executed")
KINDS = ("coding", "search")
TRAJECTORY_DIR = "trajectories"
TB_DIR = "tb"
FINAL_DIR = "final"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------
def _check(mode: str, reward: str, kind: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if reward not in REWARD_VARIANTS:
        raise ValueError(f"reward must be one of {REWARD_VARIANTS}, not {reward!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """This process's resident set size now (MiB), from /proc (0.0 where unavailable)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return str(obj)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _resolve_repo_path(p: str | os.PathLike | None) -> str | None:
    if p is None:
        return None
    path = Path(p)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"DeepSpeed config {p} not found (looked in the working directory and {REPO_ROOT})")
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------
def _n_tasks(cfg: "RunConfig", kind: str) -> int:
    return int(cfg.n_coding_tasks if kind == "coding" else cfg.n_search_tasks)


def load_task_splits(data: str | os.PathLike | None, cfg: "RunConfig", kind: str = "coding",
                     build_dir: str | os.PathLike | None = None, *, verify: bool = True,
                     ) -> tuple[list["Task"], list["Task"], str]:
    """`(train_tasks, heldout_tasks, source)`.

    `data` is a built procedural folder (`data.build.build_dataset` output: `tasks.jsonl`), or None to build
    `cfg.n_coding_tasks` / `cfg.n_search_tasks` tasks of `kind` with `cfg.seed` into `build_dir` (reused when
    already built there; `verify=False` skips the build's sandbox check of the gold code). Tasks whose split is
    "test" are held out; everything else trains."""
    from arftlib.data import build as B

    if data is None:
        if build_dir is None:
            raise ValueError("no data folder and no build_dir to build procedural tasks into")
        out = Path(build_dir)
        marker = out / "tasks.jsonl"
        if not marker.is_file():
            B.build_dataset(kind, _n_tasks(cfg, kind), cfg.seed, out, **({} if verify else {"verify": False}))
        tasks = list(B.load_built(out))
        source = f"built {kind} n={_n_tasks(cfg, kind)} seed={cfg.seed} at {out}"
    else:
        folder = Path(data)
        if not folder.exists():
            raise FileNotFoundError(f"data folder {folder} does not exist")
        tasks = list(B.load_built(folder))
        source = str(folder)
    if not tasks:
        raise ValueError(f"no tasks in {source}")
    train_tasks = [t for t in tasks if t.split != "test"]
    heldout = [t for t in tasks if t.split == "test"]
    if not train_tasks:
        raise ValueError(f"{source}: every task is in the test split; nothing to train on")
    return train_tasks, heldout, source


def _image_size(cfg: "RunConfig") -> tuple[int, int] | None:
    return (int(cfg.image_size), int(cfg.image_size)) if cfg.image_size else None


def make_dataset(tasks: Sequence["Task"], cfg: "RunConfig", mode: str, *, seed: int | None = None,
                 shuffle: bool = True):
    """The TRL dataset for `mode`: step-wise rows or episode rows (chat protocol, for the tool loop)."""
    from arftlib.data.stepwise import episode_dataset, stepwise_dataset

    seed = cfg.seed if seed is None else seed
    if mode == "stepwise":
        return stepwise_dataset(list(tasks), seed, k=cfg.search_k, image_size=_image_size(cfg), shuffle=shuffle)
    return episode_dataset(list(tasks), seed, "chat", image_size=_image_size(cfg), shuffle=shuffle)


# --------------------------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------------------------
def _rubric_parts(rubric: Any) -> list[tuple[str, Callable, float]]:
    """`(name, trl_reward_function, weight)` for each component of a `rewards.Rubric`."""
    parts = []
    for comp in rubric.components:
        parts.append((str(comp.name), comp.fn, float(comp.weight)))
    if not parts:
        raise ValueError(f"rubric {rubric!r} has no components")
    return parts


# step-wise components that apply only to rows whose gold step is this action (None for every other row)
_COMPONENT_ACTION = {"paper_answer_f1": "answer", "paper_code_flat": "code", "executed_code": "code",
                     "paper_diagnosis": "problem", "paper_search_similarity": "search"}


def _applicable_parts(parts, dataset) -> list:
    """Drop step-wise components that can apply to no row of `dataset` (e.g. the code reward when training on
    diagnosis steps only): they would only log NaN. Needs a `gold_action` column; otherwise all are kept."""
    if dataset is None or "gold_action" not in getattr(dataset, "column_names", []):
        return parts
    actions = set(dataset["gold_action"])
    return [p for p in parts if _COMPONENT_ACTION.get(p[0]) is None or _COMPONENT_ACTION[p[0]] in actions]


def stepwise_rubric(kind: str, reward: str = "paper"):
    from arftlib import rewards

    if reward == "paper":
        return rewards.paper_stepwise_rubric(kind)
    return rewards.executed_stepwise_rubric(kind)


class _Recorder:
    """Collects what the reward functions saw and returned for the batch being scored (local process)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list[float | None]] = {}
        self.completions: list[Any] | None = None
        self.completion_ids: list[list[int]] | None = None
        self.episodes: list[Any] | None = None  # agentic: the environments' trajectories (scored)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def reward_fn(prompts=None, completions=None, completion_ids=None, **kwargs):
            out = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
            out = list(out)
            self.values[name] = [None if v is None else float(v) for v in out]
            if self.completions is None:
                self.completions = completions
                self.completion_ids = completion_ids
            return out

        reward_fn.__name__ = name  # TRL names the logged metric `rewards/<__name__>/mean`
        reward_fn.__qualname__ = name
        return reward_fn


# --------------------------------------------------------------------------------------------------------------
# agentic environment
# --------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _env_class():
    from arftlib.env import AgentEnv

    class TrainingEnv(AgentEnv):
        """`env.AgentEnv` as TRL's environment in training. `get_reward` is switched off: the episode is scored
        by train.py's per-component reward functions instead (same rubric, same `score_trajectory`, but each
        component becomes its own TRL reward column and is logged separately)."""

        get_reward = None  # not a function → TRL adds no env reward column

    return TrainingEnv


def __getattr__(name: str):  # lazy module attributes (keep `import arftlib.train` free of torch/trl)
    if name == "TrainingEnv":
        return _env_class()
    if name == "ArftGRPOTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _assistant_text(msg: Mapping[str, Any]) -> str:
    """An assistant message of TRL's tool loop as the model wrote it, minus the tool calls: TRL's response parser
    moves a leading `<think>…</think>` into `reasoning_content`; it is put back in front of the content."""
    content = msg.get("content") or ""
    if isinstance(content, list):
        content = "".join(b.get("text", "") for b in content if isinstance(b, Mapping))
    reasoning = msg.get("reasoning_content")
    if reasoning:
        content = f"<think> {reasoning} </think>\n" + content
    return content


def _final_text(completion: Any) -> str | None:
    """The text of the last assistant message of a TRL tool-loop completion when it made no tool call."""
    if not isinstance(completion, list) or not completion:
        return completion if isinstance(completion, str) else None
    last = completion[-1]
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return None
    return _assistant_text(last)


def _attach_assistant_text(traj: "Trajectory", completion: Any) -> None:
    """Prefix each tool-call step's `model_text` with the assistant text that issued it (TRL hands the env only
    the call's arguments), so the viewer shows the whole turn."""
    if not isinstance(completion, list):
        return
    ptr = 0
    steps = traj.steps
    for msg in completion:
        if msg.get("role") != "assistant":
            continue
        calls = msg.get("tool_calls") or []
        content = _assistant_text(msg)
        for k, _ in enumerate(calls):
            if ptr >= len(steps):
                return
            if k == 0 and content.strip():
                steps[ptr].model_text = content + "\n" + steps[ptr].model_text
            ptr += 1


class _EpisodeScorer:
    """Scores each rollout's environment once per batch and serves one component at a time to TRL."""

    def __init__(self, rubric: Any, recorder: _Recorder):
        self.rubric = rubric
        self.recorder = recorder
        self._key = None
        self._scores: list[dict[str, float]] = []

    def scores(self, completions: list, environments: list) -> list[dict[str, float]]:
        key = (id(completions), len(completions))
        if key == self._key:
            return self._scores
        from arftlib import rewards
        from arftlib.parse import parse_action
        from arftlib.types import Step

        if environments is None or len(environments) != len(completions):
            raise RuntimeError("agentic rewards need TRL's `environments` (one per completion); got "
                               f"{None if environments is None else len(environments)} for {len(completions)}")
        out, trajs = [], []
        for comp, env in zip(completions, environments):
            final = _final_text(comp)
            n_before = len(env.trajectory.steps)
            env.finish(final)  # acts on a trailing <answer> text, then closes the episode
            traj = env.trajectory
            res = rewards.score_trajectory(traj, self.rubric)
            traj.reward = float(res["total"])
            traj.reward_components = {k: float(v) for k, v in res.items()
                                      if k != "total" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            _attach_assistant_text(traj, comp)
            if final is not None and len(traj.steps) == n_before and final.strip():
                # a last turn that was neither a tool call nor an answer: shown in the log, not scored
                traj.steps.append(Step(turn=len(traj.steps), model_text=final, action=parse_action(final)))
            out.append(res)
            trajs.append(traj)
        self._key, self._scores = key, out
        self.recorder.episodes = trajs
        return out

    def component(self, name: str) -> Callable:
        def fn(prompts=None, completions=None, completion_ids=None, environments=None, **kwargs):
            # a component that does not apply to an episode is None (TRL: NaN, left out of the sum)
            return [None if s.get(name) is None else float(s[name]) for s in self.scores(completions, environments)]

        fn.__name__ = name
        return fn


def agentic_reward_parts(kind: str, recorder: _Recorder) -> tuple[list[tuple[str, Callable, float]], Any]:
    from arftlib import rewards

    rubric = rewards.agentic_rubric(kind)
    scorer = _EpisodeScorer(rubric, recorder)
    parts = [(name, scorer.component(name), w) for name, _fn, w in _rubric_parts(rubric)]
    return parts, rubric


# --------------------------------------------------------------------------------------------------------------
# trajectory log
# --------------------------------------------------------------------------------------------------------------
_QUERY_RE = re.compile(r"<query>\s*(.*?)\s*</?query>", re.DOTALL)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for m in prompt or []:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts += [b.get("text", "") for b in c if isinstance(b, Mapping) and b.get("type") == "text"]
    return "\n".join(p for p in parts if p)


def _stepwise_trajectory(row: Mapping[str, Any], prompt: Any, completion: Any, n_tokens: int) -> "Trajectory":
    from arftlib.parse import parse_action
    from arftlib.types import Step, Task, Trajectory

    text = completion[-1].get("content", "") if isinstance(completion, list) and completion else str(completion)
    ptxt = _prompt_text(prompt)
    m = _QUERY_RE.search(ptxt)
    task = Task(
        id=str(row.get("task_id", "")), question=m.group(1) if m else "",
        images=[row["input_image"]] if row.get("input_image") else [],
        answers=list(row.get("answers") or []), kind=str(row.get("kind") or "coding"),
        split=str(row.get("split") or ""), degradations=list(row.get("degradations") or []),
        benchmark=str(row.get("benchmark") or ""), clean_image=row.get("clean_image"),
        metadata={k: row.get(k) for k in ("row_id", "step_type", "gold_action", "step_index", "n_steps",
                                          "solution", "context", "gold_query", "gold_problem") if k in row},
    )
    step = Step(turn=int(row.get("step_index") or 0), model_text=text, action=parse_action(text),
                completion_tokens=int(n_tokens))
    return Trajectory(task=task, steps=[step], protocol="tags", finished=True,
                      final_answer=step.action.content if step.action.kind == "answer" else None,
                      metrics={"step_type": row.get("step_type"), "completion_tokens": int(n_tokens)})


class TrajectoryLog:
    """Turns one scored generation batch into `Trajectory` records and appends them to the run's store."""

    def __init__(self, directory: Path, mode: str, weights: Sequence[float], names: Sequence[str],
                 num_generations: int, enabled: bool = True):
        self.dir = Path(directory)
        self.mode = mode
        self.weights = list(weights)
        self.names = list(names)
        self.G = int(num_generations)
        self.enabled = enabled
        self.recorder = _Recorder()
        self._writer = None
        self.steps_written: list[int] = []

    def writer(self):
        from arftlib.trajectories import TrajectoryWriter

        if self._writer is None:
            self._writer = TrajectoryWriter(self.dir, mode="a")
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def records(self, inputs: list[dict], output: Mapping[str, Any], step: int, rank: int) -> list["Trajectory"]:
        rec = self.recorder
        n = len(inputs)
        adv = output["advantages"].detach().float().cpu().tolist()
        cids = rec.completion_ids or [[] for _ in range(n)]
        tool_mask = output.get("tool_mask")
        trajs = []
        for i in range(n):
            comps = {name: rec.values.get(name, [None] * n)[i] for name in self.names}
            valid = [(c, w) for c, w in zip(comps.values(), self.weights) if c is not None and not math.isnan(c)]
            total = sum(c * w for c, w in valid) if valid else None
            gi = rank * n + i
            if self.mode == "agentic" and rec.episodes is not None:
                traj = rec.episodes[i]
            else:
                comp = rec.completions[i] if rec.completions is not None else ""
                traj = _stepwise_trajectory(inputs[i], inputs[i].get("prompt"), comp, len(cids[i]))
            traj.training_step = int(step)
            traj.episode_id = f"s{step:06d}-{gi:05d}"
            traj.group_id = f"s{step:06d}-g{gi // self.G:04d}"
            traj.reward = total
            traj.reward_components = {k: v for k, v in comps.items() if v is not None}
            traj.advantage = float(adv[i])
            if tool_mask is not None:
                traj.metrics["masked_tool_tokens"] = int((tool_mask[i] == 0).sum().item())
            traj.metrics["sampled_tokens"] = int(sum(1 for _ in cids[i])) if tool_mask is None else int(
                output["completion_mask"][i].sum().item() - traj.metrics["masked_tool_tokens"])
            trajs.append(traj)
        return trajs

    def write(self, trajs: list["Trajectory"]) -> None:
        w = self.writer()
        for t in trajs:
            for s in t.steps:  # a tool image on another node cannot be copied: keep the record, drop the path
                if s.observation is not None and s.observation.image and not Path(s.observation.image).is_file():
                    t.errors.append(f"turn {s.turn}: tool image {s.observation.image} not reachable from rank 0")
                    s.observation.image = None
            w.write(t)
        if trajs:
            self.steps_written.append(int(trajs[0].training_step))


def truncate_trajectories(directory: str | os.PathLike, after_step: int) -> dict[str, int]:
    """Drop every record with `training_step > after_step` (and a partial last line left by a killed writer)
    from `directory/trajectories.jsonl`, and delete tool images only those records referenced. Atomic rewrite.
    Returns counts `{"kept": …, "dropped": …, "partial": …}`."""
    from arftlib.trajectories import IMAGES_DIR, TRAJECTORIES_FILE

    d = Path(directory)
    f = d / TRAJECTORIES_FILE
    if not f.is_file():
        return {"kept": 0, "dropped": 0, "partial": 0}
    kept_lines, dropped_images, kept_images = [], set(), set()
    dropped = partial = 0
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines) and not line.endswith("\n"):
                partial += 1  # the writer was killed mid-line
                continue
            raise ValueError(f"{f}:{lineno}: not JSON; refusing to rewrite the trajectory log") from None
        images = {s["observation"]["image"] for s in rec.get("steps", [])
                  if s.get("observation") and s["observation"].get("image")}
        step = rec.get("training_step")
        if step is not None and int(step) > int(after_step):
            dropped += 1
            dropped_images |= images
        else:
            kept_lines.append(line if line.endswith("\n") else line + "\n")
            kept_images |= images
    tmp = f.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept_lines), encoding="utf-8")
    os.replace(tmp, f)
    for rel in dropped_images - kept_images:
        p = d / rel
        if p.is_file() and p.parent.name == IMAGES_DIR:
            p.unlink()
    return {"kept": len(kept_lines), "dropped": dropped, "partial": partial}


# --------------------------------------------------------------------------------------------------------------
# the trainer (TRL's, plus the logging hook)
# --------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _trainer_class():
    from trl import GRPOTrainer

    class ArftGRPOTrainer(GRPOTrainer):
        """TRL's `GRPOTrainer`, unchanged except for one observation hook: after each generation batch is
        generated and scored (by TRL), its rollouts are written to the run's trajectory store with the
        advantages TRL computed. Nothing the trainer computes is altered."""

        arft_log: TrajectoryLog | None = None
        arft_last_batch: dict[str, Any] | None = None  # (inputs, output) of the latest batch, for tests
        arft_keep_last_batch: bool = False

        def _generate_and_score_completions(self, inputs):
            log_ = self.arft_log
            if log_ is not None:
                log_.recorder.reset()
            output = super()._generate_and_score_completions(inputs)
            if self.model.training and log_ is not None and log_.enabled:
                from accelerate.utils import gather_object

                step = int(self.state.global_step) + 1
                trajs = log_.records(inputs, output, step, self.accelerator.process_index)
                if self.accelerator.num_processes > 1:
                    trajs = gather_object(trajs)
                if self.accelerator.is_main_process:
                    log_.write(trajs)
            if self.arft_keep_last_batch:
                self.arft_last_batch = {"inputs": inputs, "output": output,
                                        "recorder": dict(log_.recorder.values) if log_ else None}
            return output

    return ArftGRPOTrainer


class _StepTimer:
    """A TrainerCallback recording the wall time of every optimizer step."""

    def __new__(cls, *args, **kwargs):
        from transformers import TrainerCallback

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.times: list[float] = []
                self._t0 = None

            def on_step_begin(self, args, state, control, **kw):
                self._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if self._t0 is not None:
                    self.times.append(time.perf_counter() - self._t0)
                    self._t0 = None

        return StepTimer()


class StopAfterSteps:
    """A TrainerCallback that raises `SimulatedCrash` at the end of global step `k`, before that step could be
    checkpointed — the resume test's stand-in for a run killed mid-way."""

    def __new__(cls, k: int):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step >= k:
                    raise SimulatedCrash(f"simulated crash after step {state.global_step}")

        return _Stop()


class SimulatedCrash(RuntimeError):
    """Raised by `StopAfterSteps`."""


# --------------------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------------------
def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def deepspeed_config_path(cfg: "RunConfig") -> str | None:
    """The profile's DeepSpeed json as an existing path (relative paths are looked up from the repository)."""
    return _resolve_repo_path(cfg.deepspeed) if cfg.deepspeed else None


def grpo_config(cfg: "RunConfig", mode: str, out_dir: str | os.PathLike, *, suppress_ids: Sequence[int] = (),
                **overrides: Any):
    """The `trl.GRPOConfig` for `cfg` and `mode` (overrides win)."""
    from trl import GRPOConfig

    cuda = _cuda()
    bf16 = cuda and cfg.torch_dtype in ("bfloat16", "bf16")
    use_vllm = bool(cfg.use_vllm and cuda and _vllm_available())
    if cfg.use_vllm and not use_vllm:
        log.warning("use_vllm=True but vLLM %s; generating with transformers", "needs CUDA" if not cuda else
                    "is not installed")
    deepspeed = None
    if cfg.deepspeed and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        deepspeed = deepspeed_config_path(cfg)
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ImportError(f"profile {cfg.profile!r} trains with DeepSpeed ({deepspeed}) but the deepspeed package "
                              f"is not installed: `pip install deepspeed` on the GPU machine, then run it under "
                              f"`accelerate launch --config_file configs/accelerate_8gpu.yaml -m arftlib train ...`")
    gen_kwargs = {"suppress_tokens": list(suppress_ids)} if suppress_ids and not use_vllm else None
    kw: dict[str, Any] = dict(
        output_dir=str(out_dir),
        seed=cfg.seed,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        learning_rate=cfg.learning_rate,
        max_steps=cfg.max_steps,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        num_iterations=cfg.num_iterations,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps,
        report_to=[] if cfg.report_to in (None, "", "none") else [cfg.report_to],
        bf16=bf16,
        activation_checkpointing=bool(cfg.gradient_checkpointing),
        use_cpu=not cuda,
        deepspeed=deepspeed,
        use_vllm=use_vllm,
        generation_kwargs=gen_kwargs,
        log_completions=False,  # the trajectory store is the completion log (and TRL's parquet writer chokes
        # on tool images)
        disable_tqdm=False,  # the console progress bar
        dataloader_num_workers=0,
        remove_unused_columns=False,
        shuffle_dataset=True,
    )
    if use_vllm:
        kw.update(vllm_mode="colocate")
    if mode == "agentic":
        kw["max_tool_calling_iterations"] = max(1, int(cfg.max_turns) - 1)
    if cfg.gradient_checkpointing:
        kw["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    kw.update(overrides)
    return GRPOConfig(**kw)


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float16": torch.float16, "fp16": torch.float16, "auto": "auto"}[name]


def _load_processor(path: str, cfg: "RunConfig", mode: str):
    from transformers import AutoProcessor, ProcessorMixin

    from arftlib.models import ensure_tool_chat_template, set_pixel_budget

    processor = AutoProcessor.from_pretrained(path)
    if not isinstance(processor, ProcessorMixin):
        raise TypeError(f"{path}: AutoProcessor gave {type(processor).__name__}, not a multimodal processor")
    set_pixel_budget(processor, cfg.min_pixels, cfg.max_pixels)
    if mode == "agentic":
        ensure_tool_chat_template(processor)  # stock Qwen2.5-VL's template cannot render tool calls
    return processor


# --------------------------------------------------------------------------------------------------------------
# building the trainer
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainerBundle:
    trainer: Any
    processor: Any
    train_dataset: Any
    heldout_tasks: list
    train_tasks: list
    rubric: Any
    parts: list
    traj_log: TrajectoryLog
    timer: Any
    run_dir: Path
    data_source: str


def build_trainer(cfg: "RunConfig", mode: str = "stepwise", data: str | os.PathLike | None = None,
                  model: str | None = None, out_dir: str | os.PathLike = "runs/train", *, kind: str = "coding",
                  reward: str = "paper", adapter: str | os.PathLike | None = None, train_dataset: Any = None,
                  tasks: tuple[list, list] | None = None, callbacks: Sequence[Any] = (),
                  log_trajectories: bool = True, env_options: Mapping[str, Any] | None = None,
                  **grpo_overrides: Any) -> TrainerBundle:
    """Everything `train()` needs, built but not started: TRL `GRPOTrainer` (with the logging hook), its
    dataset, rubric and run folder. `adapter` continues training a saved LoRA adapter (e.g. an SFT warm start)
    instead of a fresh one. `tasks=(train, heldout)` or `train_dataset` skip data loading. `env_options` go to
    the agentic environment (`env.AgentEnv` keyword arguments, e.g. `code_runner=` or `search=`)."""
    _check(mode, reward, kind)
    import torch  # noqa: F401  (fail early if torch is missing)

    from arftlib.models import lora_config_for, quantization_config, resolve_model_path, suppressed_token_ids

    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_id = model or cfg.model_id
    path = resolve_model_path(f"tiny:{cfg.arch}" if model_id == "tiny" else model_id)
    processor = _load_processor(path, cfg, mode)

    # data (built once, by the main process, when several processes run)
    from accelerate import PartialState

    with PartialState().main_process_first():
        if tasks is not None:
            train_tasks, heldout, source = list(tasks[0]), list(tasks[1]), "given tasks"
        elif train_dataset is None:
            train_tasks, heldout, source = load_task_splits(data, cfg, kind, build_dir=run_dir / "data")
        else:
            train_tasks, heldout, source = [], [], "given dataset"
        if train_dataset is None:
            train_dataset = make_dataset(train_tasks, cfg, mode)

    # rewards
    traj_log = TrajectoryLog(run_dir / TRAJECTORY_DIR, mode, [], [], cfg.num_generations, enabled=log_trajectories)
    if mode == "stepwise":
        rubric = stepwise_rubric(kind, reward)
        parts = _applicable_parts(_rubric_parts(rubric), train_dataset)
    else:
        parts, rubric = agentic_reward_parts(kind, traj_log.recorder)
    traj_log.names = [n for n, _, _ in parts]
    traj_log.weights = [w for _, _, w in parts]
    reward_funcs = [traj_log.recorder.wrap(n, fn) for n, fn, _ in parts]

    args = grpo_config(cfg, mode, run_dir, suppress_ids=suppressed_token_ids(processor),
                       reward_weights=traj_log.weights, **grpo_overrides)

    # model: a path (TRL loads it, quantised when asked) or, to continue an adapter, a PeftModel
    peft_config = None
    quant = quantization_config(cfg.quantization)
    trainer_kwargs: dict[str, Any] = {}
    if adapter is not None:
        from arftlib.models import load_policy

        model_obj, _ = load_policy(path, quantization=cfg.quantization, adapter=adapter, torch_dtype=cfg.torch_dtype,
                                   attn_implementation=cfg.attn_implementation, trainable_adapter=True)
        model_arg: Any = model_obj
    else:
        model_arg = path
        args.model_init_kwargs = {"dtype": _torch_dtype(cfg.torch_dtype) if quant is None else (
            _torch_dtype("bfloat16") if _cuda() else _torch_dtype("float32")),
            "attn_implementation": cfg.attn_implementation}
        if quant is not None:
            trainer_kwargs["quantization_config"] = quant
        peft_config = lora_config_for(cfg)
        if quant is not None and peft_config is None:
            raise ValueError("a quantised model can only be trained with LoRA adapters (finetune='lora')")

    timer = _StepTimer()
    env_kwargs = {}
    if mode == "agentic":
        TrainingEnv = _env_class()
        settings = dict(protocol="chat", max_turns=cfg.max_turns, image_budget=cfg.image_budget,
                        search_backend=cfg.search_backend, search_k=cfg.search_k,
                        sandbox_timeout_s=cfg.sandbox_timeout_s, sandbox_memory_mb=cfg.sandbox_memory_mb,
                        work_dir=str(run_dir / "env_tmp"))
        settings.update(env_options or {})
        env_kwargs["environment_factory"] = TrainingEnv.factory(**settings)

    Trainer = _trainer_class()
    old_tb = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / TB_DIR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        trainer = Trainer(model=model_arg, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                          processing_class=processor, peft_config=peft_config,
                          callbacks=[timer, *callbacks], **env_kwargs, **trainer_kwargs)
    finally:
        if old_tb is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old_tb
    trainer.arft_log = traj_log
    return TrainerBundle(trainer=trainer, processor=processor, train_dataset=train_dataset, heldout_tasks=heldout,
                         train_tasks=train_tasks, rubric=rubric, parts=parts, traj_log=traj_log, timer=timer,
                         run_dir=run_dir, data_source=source)


def last_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, int]:
    """The newest `checkpoint-N` folder of a run that finished saving (has `trainer_state.json`), and N."""
    best, best_n = None, -1
    d = Path(run_dir)
    if d.is_dir():
        for p in d.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / "trainer_state.json").is_file() and int(m.group(1)) > best_n:
                best, best_n = p, int(m.group(1))
    return best, max(best_n, 0)


def _max_abs_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    keys = set(a) & set(b)
    if not keys:
        return float("nan")
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


# --------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------
def train(cfg: "RunConfig", mode: str = "stepwise", data: str | os.PathLike | None = None, model: str | None = None,
          resume: bool = False, out_dir: str | os.PathLike = "runs/train", *, kind: str = "coding",
          reward: str = "paper", adapter: str | os.PathLike | None = None, max_steps: int | None = None,
          callbacks: Sequence[Any] = (), save_final: bool = True, tasks: tuple[list, list] | None = None,
          train_dataset: Any = None, env_options: Mapping[str, Any] | None = None,
          **grpo_overrides: Any) -> dict[str, Any]:
    """Run GRPO (TRL `GRPOTrainer`) for `cfg` in `mode` ("stepwise" | "agentic") and return a summary dict.

    `data`: a built procedural folder (None: build `kind` tasks into `out_dir/data`). `model`: hub id or local
    path overriding `cfg.model_id`. `resume`: continue from the newest complete checkpoint in `out_dir`
    (trajectory records past it are dropped first). `kind`: "coding" | "search". `reward`: "paper" (the
    paper's step rewards) | "executed" (our executed-code reward; stepwise mode). `adapter`: start from a saved
    LoRA adapter. `max_steps` overrides `cfg.max_steps`. `tasks=(train, heldout)` / `train_dataset` replace
    the data loading (a prepared dataset wins); `env_options` go to the agentic environment; `callbacks` are
    extra `TrainerCallback`s; further keyword arguments go to `GRPOConfig`.

    Returns `run_dir`, `mode`, `steps`, `s_per_step` (mean wall time per optimizer step, first step
    excluded when there are more than two), `first_step_s`, `peak_rss_mb`, `peak_gpu_mb` (None on CPU),
    `train_runtime_s`, `final_reward` (mean reward of the last logged step), `log_history`, `final_dir`,
    `trajectories`, `resumed_from`."""
    from arftlib.config import RunConfig  # noqa: F401

    import torch
    import trl  # noqa: F401  (imported before the baseline below, so it measures the libraries, not the model)

    rss_start = current_rss_mb()
    if max_steps is not None:
        cfg = cfg.replace(max_steps=int(max_steps))
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, ckpt_step = (last_checkpoint(run_dir) if resume else (None, 0))
    if resume and ckpt is None:
        log.warning("--resume: no complete checkpoint in %s; starting from scratch", run_dir)
    traj_dir = run_dir / TRAJECTORY_DIR
    truncated = None
    if _is_main_process():
        if resume:
            truncated = truncate_trajectories(traj_dir, ckpt_step)
        elif (traj_dir / "trajectories.jsonl").exists():
            shutil.rmtree(traj_dir)  # a fresh run: no records from an earlier run in this folder
        _write_json(run_dir / "config.json", {"config": cfg.to_dict(), "mode": mode, "kind": kind, "reward": reward,
                                              "data": None if data is None else str(data), "model": model,
                                              "adapter": None if adapter is None else str(adapter),
                                              "resume": resume})
    bundle = build_trainer(cfg, mode, data, model, run_dir, kind=kind, reward=reward, adapter=adapter,
                           callbacks=callbacks, tasks=tasks, train_dataset=train_dataset, env_options=env_options,
                           **grpo_overrides)
    trainer = bundle.trainer
    if _cuda():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    finally:
        bundle.traj_log.close()
    runtime = time.perf_counter() - t0
    final_dir = None
    if save_final:
        final_dir = run_dir / FINAL_DIR
        trainer.save_model(str(final_dir))
        if trainer.accelerator.is_main_process:
            bundle.processor.save_pretrained(str(final_dir))
    times = bundle.timer.times
    steady = times[1:] if len(times) > 2 else times
    hist = [h for h in trainer.state.log_history if "reward" in h]
    summary = {
        "run_dir": str(run_dir), "mode": mode, "kind": kind, "reward_variant": reward, "profile": cfg.profile,
        "finetune": cfg.finetune, "quantization": cfg.quantization, "model": model or cfg.model_id,
        "steps": int(trainer.state.global_step), "steps_this_run": len(times),
        "s_per_step": (sum(steady) / len(steady)) if steady else None,
        "first_step_s": times[0] if times else None,
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_model_mb": round(rss_start, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if _cuda() else None,
        "train_runtime_s": round(runtime, 3), "train_loss": getattr(result, "training_loss", None),
        "final_reward": hist[-1]["reward"] if hist else None,
        "reward_components": bundle.traj_log.names, "reward_weights": bundle.traj_log.weights,
        "log_history": trainer.state.log_history, "final_dir": None if final_dir is None else str(final_dir),
        "trajectories": str(traj_dir), "tensorboard": str(run_dir / TB_DIR),
        "resumed_from": None if ckpt is None else str(ckpt), "trajectories_truncated": truncated,
        "data": bundle.data_source, "n_train_rows": len(bundle.train_dataset),
        "advantages": "read from TRL's GRPOTrainer output (its scale_rewards computation)",
    }
    if trainer.accelerator.is_main_process:
        _write_json(run_dir / "metrics.json", summary)
    return summary


# --------------------------------------------------------------------------------------------------------------
# held-out score, SFT warm start, learning demo, measurements
# --------------------------------------------------------------------------------------------------------------
def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def score_stepwise_texts(rows: Sequence[Mapping[str, Any]], texts: Sequence[str], parts, processor=None) -> dict:
    """Score completions of step-wise rows with a rubric's TRL reward functions, called exactly as TRL calls
    them (conversational completions, every dataset column by name). Returns `mean` (weighted total, the
    same sum TRL trains on), `components` (mean of each), `totals` (per completion)."""
    rows = list(rows)
    if len(rows) != len(texts):
        raise ValueError(f"{len(rows)} rows but {len(texts)} completions")
    tok = getattr(processor, "tokenizer", processor)
    prompts = [r.get("prompt") for r in rows]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    completion_ids = [tok.encode(t, add_special_tokens=False) if tok is not None else [] for t in texts]
    cols = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
    totals = [0.0] * len(rows)
    comps: dict[str, float] = {}
    for name, fn, w in parts:
        vals = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, trainer_state=None,
                  log_extra=_noop, log_metric=_noop, **cols)
        vals = [float("nan") if v is None else float(v) for v in vals]
        ok = [v for v in vals if not math.isnan(v)]
        comps[name] = sum(ok) / len(ok) if ok else float("nan")
        for i, v in enumerate(vals):
            if not math.isnan(v):
                totals[i] += w * v
    return {"mean": sum(totals) / len(totals) if totals else float("nan"), "components": comps, "totals": totals,
            "n": len(totals)}


def heldout_reward(model: Any, processor: Any, dataset: Any, parts, *, seed: int = 0, samples_per_row: int = 1,
                   max_new_tokens: int = 48, temperature: float = 1.0, batch_size: int = 16) -> dict[str, Any]:
    """Mean rubric reward of `model` on step-wise rows `dataset` (held-out tasks): `samples_per_row` sampled
    completions per row with torch seeded by `seed` before generating (same seed → same sampling stream for a
    before/after comparison), scored by `score_stepwise_texts`. Generation is `rollout.HFPolicy` (the vision
    placeholder tokens suppressed, as in training)."""
    from trl.data_utils import prepare_multimodal_messages

    from arftlib.rollout import HFPolicy

    rows = [dict(dataset[i]) for i in range(len(dataset))] * int(samples_per_row)
    was_training = model.training
    model.eval()
    policy = HFPolicy(model, processor, max_new_tokens=max_new_tokens, temperature=temperature,
                      max_batch_size=batch_size, seed=seed)
    batch = [prepare_multimodal_messages([dict(m) for m in r["prompt"]], images=[r["image"]] if r.get("image")
                                         is not None else []) for r in rows]
    t0 = time.perf_counter()
    gens = policy.generate(batch)
    gen_s = time.perf_counter() - t0
    if was_training:
        model.train()
    texts = [g.text for g in gens]
    res = score_stepwise_texts(rows, texts, parts, processor)
    res.update(texts=texts, generate_s=round(gen_s, 3), seed=seed, samples_per_row=samples_per_row)
    return res


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
                   modules_to_save: Sequence[str] | None = None, full: bool = False) -> dict[str, Any]:
    """A short supervised warm start on gold steps with TRL's `SFTTrainer` (LoRA from `cfg`), loss on the
    completion only. `dataset` holds step-wise rows (`prompt`, `image`, `solution`); the gold step
    (`solution`) becomes the assistant completion — or rows that already have `completion` (then `prompt` and
    `completion` are used as they are, e.g. chat-templated text ending in `<|im_end|>`). Saves the adapter to `out_dir` and returns
    `{"adapter": path, "steps", "seconds", "loss"}`."""
    from trl import SFTConfig, SFTTrainer

    from arftlib.models import resolve_model_path

    out = Path(out_dir)
    if "completion" in dataset.column_names:  # already prompt/completion (e.g. rendered text with tool schemas)
        ds = dataset
    else:
        ds = dataset.map(lambda r: {"completion": [{"role": "assistant", "content": r["solution"]}]})
    ds = ds.select_columns(["prompt", "completion", "image"])
    path = resolve_model_path(f"tiny:{cfg.arch}" if (model or cfg.model_id) == "tiny" else (model or cfg.model_id))
    processor = _load_processor(path, cfg, "stepwise")
    args = SFTConfig(
        output_dir=str(out / "sft"), max_steps=int(max_steps), per_device_train_batch_size=batch_size,
        learning_rate=learning_rate or cfg.learning_rate, lr_scheduler_type="constant",
        logging_steps=max(1, max_steps // 10), save_strategy="no",
        report_to=[], bf16=_cuda() and cfg.torch_dtype in ("bfloat16", "bf16"), use_cpu=not _cuda(),
        activation_checkpointing=False, seed=cfg.seed, completion_only_loss=True, max_length=None,
        dataset_num_proc=None, disable_tqdm=False, dataloader_num_workers=0,
        model_init_kwargs={"dtype": _torch_dtype(cfg.torch_dtype), "attn_implementation": cfg.attn_implementation},
    )
    trainer = SFTTrainer(model=path, args=args, train_dataset=ds, processing_class=processor,
                         peft_config=None if full else lora_config(cfg, modules_to_save))
    t0 = time.perf_counter()
    result = trainer.train()
    secs = time.perf_counter() - t0
    saved = out / ("model" if full else "adapter")
    trainer.model.save_pretrained(str(saved))
    if full:
        processor.save_pretrained(str(saved))
    return {("model" if full else "adapter"): str(saved), "steps": int(trainer.state.global_step),
            "seconds": round(secs, 2), "loss": float(result.training_loss), "full": full,
            "loss_curve": [h["loss"] for h in trainer.state.log_history if "loss" in h]}


# The learning check's settings (tiny-cpu, 2 shared cores). Full (the defaults of `learning_demo`): data build
# ~80 s, then warm start + GRPO + evaluations ~3 min uncontended (measured: 0.51 -> 0.72 held-out).
LEARNING_DEMO_FULL = dict(n_tasks=300, sft_steps=225, grpo_steps=60, heldout_rows=32, samples_per_row=4)
# CI's shorter version (direction with a margin): smaller build without the sandbox check, fewer steps, ~2.5 min
# uncontended (measured: 0.59 -> 0.83 held-out).
LEARNING_DEMO_SHORT = dict(n_tasks=200, sft_steps=180, grpo_steps=40, heldout_rows=32, samples_per_row=4,
                           verify_build=False)
# What the demo changes in the tiny-cpu profile, and why:
LEARNING_DEMO_CONFIG = dict(
    max_completion_length=80,  # gold diagnosis steps are 34-69 tokens with the tiny tokenizer (= the profile)
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    lora_r=16, lora_alpha=32,  # LoRA on every language-model linear of the 64-wide tiny model
    learning_rate=1e-3,  # GRPO learning rate of the LoRA adapter
    per_device_train_batch_size=16, num_generations=8,  # 2 prompts × 8 samples per step
    save_steps=10_000,  # no intermediate checkpoints
)


def demo_setup(out_dir: str | os.PathLike, profile: str, demo_config: Mapping[str, Any],
               config_overrides: Mapping[str, Any] | None, *, n_tasks: int, seed: int,
               data: str | os.PathLike | None, verify_build: bool):
    """What the learning demos share: the run folder, the profile with the demo's settings (then the caller's
    overrides) applied, and the procedural coding tasks split into train / held-out.
    Returns `(out, cfg, overrides, train_tasks, heldout_tasks, source)`."""
    from arftlib.config import get_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    over = {**demo_config, **dict(config_overrides or {})}
    cfg = get_config(profile, seed=seed, n_coding_tasks=n_tasks, **over)
    train_tasks, heldout_tasks, source = load_task_splits(data, cfg, "coding", build_dir=out / "data",
                                                          verify=verify_build)
    return out, cfg, over, train_tasks, heldout_tasks, source


def learning_demo(out_dir: str | os.PathLike = "runs/tiny-cpu/learning-demo", *, profile: str = "tiny-cpu",
                  n_tasks: int = 300, step_types: Sequence[str] = ("pre_problem",), sft_steps: int = 225,
                  sft_learning_rate: float = 3e-3, grpo_steps: int = 60, heldout_rows: int = 32,
                  samples_per_row: int = 4, seed: int = 0, eval_seed: int = 1234,
                  data: str | os.PathLike | None = None, verify_build: bool = True,
                  config_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Does GRPO learn? Procedural MAT-Coding-style tasks (`synth-coding`), step-wise, the diagnosis step
    (`step_types`; short turns, and the paper's rubric for it: `paper_format` + `paper_diagnosis`), `tiny-cpu`
    with `LEARNING_DEMO_CONFIG` applied:

    1. Warm start (reported as such): a short supervised fine-tune of the random tiny model on the TRAIN
       tasks' gold steps (TRL `SFTTrainer`, `sft_steps`, full fine-tuning — the random tiny model's
       lm_head/norm cannot produce confident tokens through LoRA alone) → checkpoint S.
    2. "before": held-out reward of S — the same rubric on the TEST tasks' rows, `samples_per_row` samples at
       the profile's temperature, torch seeded with `eval_seed`.
    3. GRPO (`train`, stepwise mode, `grpo_steps`, a fresh LoRA adapter on S).
    4. "after": held-out reward of S + adapter, same rows, same seed, same rubric, same sampling.

    Returns `heldout_reward_before`, `heldout_reward_after`, `gain`, component means before/after,
    `adapter_changed` (the LoRA weights at the start vs the end of GRPO differ), `adapter_max_abs_diff`,
    timings (`build_s`, `sft_s`, `grpo_s`, `eval_s`, `run_s` = warm start + GRPO + both evaluations, `total_s`)
    and the GRPO run summary; also written to `out_dir/metrics.json`."""
    from arftlib.models import load_policy

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    out, cfg, over, train_tasks, heldout_tasks, source = demo_setup(
        out_dir, profile, LEARNING_DEMO_CONFIG, config_overrides, n_tasks=n_tasks, seed=seed, data=data,
        verify_build=verify_build)
    keep = set(step_types)
    train_ds = make_dataset(train_tasks, cfg, "stepwise").filter(lambda r: r["step_type"] in keep)
    test_ds = make_dataset(heldout_tasks, cfg, "stepwise", shuffle=False).filter(lambda r: r["step_type"] in keep)
    if len(test_ds) == 0:
        raise ValueError(f"no held-out rows of step types {sorted(keep)} in {source}")
    test_ds = test_ds.select(range(min(heldout_rows, len(test_ds))))
    build_s = time.perf_counter() - t0
    parts = _rubric_parts(stepwise_rubric("coding", "paper"))

    def evaluate(model_dir: str, adapter: str | None) -> dict:
        m, proc = load_policy(model_dir, adapter=adapter, torch_dtype=cfg.torch_dtype, min_pixels=cfg.min_pixels,
                              max_pixels=cfg.max_pixels)
        return heldout_reward(m, proc, test_ds, parts, seed=eval_seed, samples_per_row=samples_per_row,
                              max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature)

    # 1. warm start
    sft = sft_warm_start(cfg, train_ds, out / "warm_start", max_steps=sft_steps, learning_rate=sft_learning_rate,
                         full=True)
    # 2. before
    t0 = time.perf_counter()
    before = evaluate(sft["model"], None)
    eval_s = time.perf_counter() - t0
    # 3. GRPO from the warm start, a fresh LoRA adapter
    snap = LoraSnapshot()
    t0 = time.perf_counter()
    run = train(cfg, "stepwise", model=sft["model"], out_dir=out / "grpo", max_steps=grpo_steps,
                train_dataset=train_ds, tasks=(train_tasks, heldout_tasks), callbacks=[snap])
    grpo_s = time.perf_counter() - t0
    # 4. after
    t0 = time.perf_counter()
    after = evaluate(sft["model"], run["final_dir"])
    eval_s += time.perf_counter() - t0
    diff = _max_abs_diff(snap.start, snap.end)
    result = {
        "task": f"synth-coding step-wise {sorted(keep)} (paper rubric: {', '.join(n for n, _, _ in parts)})",
        "data": source, "profile": profile, "config_overrides": over,
        "n_train_rows": len(train_ds), "n_heldout_rows": len(test_ds), "samples_per_row": samples_per_row,
        "temperature": cfg.temperature,
        "heldout_reward_before": before["mean"], "heldout_reward_after": after["mean"],
        "gain": after["mean"] - before["mean"],
        "components_before": before["components"], "components_after": after["components"],
        "adapter_changed": bool(diff > 0), "adapter_max_abs_diff": diff, "n_adapter_tensors": len(snap.start),
        "sft": {k: v for k, v in sft.items()}, "sft_s": sft["seconds"], "grpo_s": round(grpo_s, 2),
        "eval_s": round(eval_s, 2), "build_s": round(build_s, 2),
        "run_s": round(sft["seconds"] + grpo_s + eval_s, 2),
        "grpo_steps": run["steps"], "grpo_s_per_step": run["s_per_step"],
        "total_s": round(time.perf_counter() - t_start, 2), "eval_seed": eval_seed, "seed": seed,
        "before_is": "the supervised warm start (gold steps, TRL SFTTrainer); the gain is GRPO's",
        "examples_before": before["texts"][:4], "examples_after": after["texts"][:4],
        "grpo_run": {k: v for k, v in run.items() if k != "log_history"},
        "train_reward_curve": [h.get("reward") for h in run["log_history"] if "reward" in h],
    }
    _write_json(out / "metrics.json", result)
    return result


class LoraSnapshot:
    """A TrainerCallback keeping CPU copies of the LoRA weights at the start and at the end of training."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Snap(TrainerCallback):
            start: dict = {}
            end: dict = {}

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.start = _adapter_weights(model)

            def on_train_end(self, args, state, control, model=None, **kw):
                self.end = _adapter_weights(model)

        return _Snap()


def _adapter_weights(model) -> dict[str, Any]:
    """CPU copies of a PeftModel's LoRA weights (by name, adapter name stripped)."""
    return {n.replace(".default", ""): p.detach().float().cpu().clone()
            for n, p in model.named_parameters() if "lora_" in n}


def measure(profile: str = "tiny-cpu", *, modes: Sequence[str] = MODES,
            variants: Sequence[str] = ("lora", "qlora", "full"), steps: int = 4, out_dir: str | os.PathLike =
            "runs/tiny-cpu/measure", n_tasks: int = 16, timeout_s: float = 900) -> list[dict[str, Any]]:
    """Seconds per optimizer step and peak memory of `train()` for each (mode, variant), each in a fresh
    subprocess (so the peak RSS is that run's alone). Variants: lora, qlora (4-bit language model), full.
    Rows: `mode`, `variant`, `s_per_step` (mean, first step excluded), `first_step_s`, `peak_rss_mb` (whole
    process), `rss_before_model_mb` (the process after importing torch/transformers/trl, before data and model),
    `peak_gpu_mb` (CUDA only), `steps`."""
    import subprocess

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
    _write_json(out / "measure.json", rows)
    return rows


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def add_train_arguments(p) -> None:
    """The `python -m arftlib train` arguments (see `run_from_args`)."""
    p.add_argument("--profile", default="auto", help="profile name (tiny-cpu, qwen2.5-vl-3b-qlora-24gb, "
                   "qwen2.5-vl-7b-lora-80gb, paper-8gpu) or auto")
    p.add_argument("--mode", default="stepwise", choices=list(MODES),
                   help="stepwise = the paper's single-step GRPO; agentic = whole episodes with live tools")
    p.add_argument("--data", default=None, help="built procedural task folder (default: build into OUT/data)")
    p.add_argument("--model", default=None, help="hub id or local path overriding the profile's model")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--out", default=None, help="run directory (default runs/<profile>/train-<mode>)")
    p.add_argument("--kind", default="coding", choices=list(KINDS), help="task family to train on")
    p.add_argument("--reward", default="paper", choices=list(REWARD_VARIANTS),
                   help="stepwise code reward: paper (flat 0.9 for a well-formed code step) or executed")
    p.add_argument("--adapter", default=None, help="start from this saved LoRA adapter (e.g. an SFT warm start)")
    p.add_argument("--max-steps", type=int, default=None, help="override the profile's max_steps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a RunConfig field (repeatable), e.g. --set learning_rate=1e-5")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_from_args(args) -> dict[str, Any]:
    """What `python -m arftlib train` does with parsed arguments; prints the summary as JSON (without the log
    history) and returns it."""
    from arftlib.config import get_config

    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v.strip())
    cfg = get_config(args.profile, **overrides)
    out = args.out or str(REPO_ROOT / "runs" / cfg.profile / f"train-{args.mode}")
    summary = train(cfg, args.mode, data=args.data, model=args.model, resume=args.resume, out_dir=out,
                    kind=args.kind, reward=args.reward, adapter=args.adapter, max_steps=args.max_steps)
    if _is_main_process():
        print(json.dumps(_json_safe({k: v for k, v in summary.items() if k != "log_history"}), indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m arftlib.train", description="GRPO training (TRL GRPOTrainer)")
    add_train_arguments(p)
    run_from_args(p.parse_args(argv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
