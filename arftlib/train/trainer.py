"""GRPO on TRL's `GRPOTrainer`: building the trainer for a run config, and running it.

Two modes, one entry point (`train(cfg, mode, ...)`, also `python -m arftlib train`):

* `stepwise` (the paper). Every gold chain is cut into single steps (`data.stepwise.stepwise_dataset`:
  diagnosis / code / search / answer, earlier steps pasted into the prompt, the task serialised in the row) and
  GRPO runs single-turn over them with the paper's per-step rewards (`rewards.paper_stepwise_rubric(kind)`;
  components that cannot apply to any training row are left out). `reward="executed"` swaps the flat code
  reward for ours — the code is run by the environment and rewarded by what it produced
  (`rewards.executed_stepwise_rubric(kind)`).
* `agentic` (beyond the paper). Whole episodes with live tools through TRL's `environment_factory`, using the
  shared `env.AgentEnv` (chat protocol; tools `search`, `run_code`, `diagnose`, `answer`). `run_code` returns
  the processed image as an image block, which TRL feeds back to the VLM in generation AND in the training
  forward pass; tool-output tokens (the tool turn, its image tokens included) get TRL's `tool_mask = 0` and are
  excluded from the loss. Rewards: `rewards.agentic_rubric(kind)` on the environment's finished trajectory.

Either way the rubric reaches TRL through ONE adapter (`rewards.trl.TRLRewards`: one reward function per
component, so each is logged as `rewards/<name>`); the trajectories it scored are the ones the log writes.

Model and memory: LoRA (`models.lora_config_for`), QLoRA (`cfg.quantization="4bit"`: NF4 language model, vision
tower and lm_head unquantised — the model is passed to TRL as a path with `quantization_config`, as TRL wants
it) or full fine-tuning (`cfg.finetune="full"`). Multi-GPU: the same call under `accelerate launch`.

Run directory (`out_dir`)::

    config.json              the RunConfig + mode + call arguments
    checkpoint-N/            TRL/transformers checkpoints (save_steps); resume continues from the last
    trajectories/            every step's rollouts (trajectories.py format), written as training goes
    tb/                      TensorBoard event files (report_to="tensorboard"; local, no account)
    final/                   the trained adapter (LoRA/QLoRA) or model (full) + processor
    metrics.json             what `train()` returns

`ArftGRPOTrainer` is TRL's `GRPOTrainer` with ONE observation hook: after TRL's own
`_generate_and_score_completions` has generated, scored and computed advantages, the hook writes each rollout
(task, turns, parsed actions, tool results and images, reward per component, total reward, TRL's advantage) to
`trajectories/`. Each record's `training_step` is the optimizer step that trains on it (`global_step + 1` at
generation time). Under several processes the records are gathered and rank 0 writes them. On resume, records
past the checkpoint's step are removed first, so the log has every step exactly once.

Left out: reward models (all rewards are rule-based) and benchmark evaluation (evaluate.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arftlib.models import TRAINED_FORM_FILE, trained_form
from arftlib.train.args import check_vllm, cuda, grpo_config, torch_dtype
from arftlib.train.datasets import make_dataset
from arftlib.train.trajlog import TrajectoryLog, truncate_trajectories

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.config import RunConfig
    from arftlib.types import Task

log = logging.getLogger(__name__)

__all__ = ["FINAL_DIR", "KINDS", "MODES", "REWARD_VARIANTS", "TRAJECTORY_DIR", "TrainerBundle", "adapter_weights",
           "build_trainer", "current_rss_mb", "is_main_process", "json_safe", "last_checkpoint", "load_task_splits",
           "load_training_processor", "make_dataset", "max_abs_diff", "peak_rss_mb", "rubric_for", "tool_use_monitor",
           "train", "wall_clock_stop", "write_json"]

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


def is_main_process() -> bool:
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


def json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON (non-finite floats → null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def adapter_weights(model) -> dict[str, Any]:
    """CPU copies of a PeftModel's LoRA weights (by name, adapter name stripped)."""
    return {n.replace(".default", ""): p.detach().float().cpu().clone()
            for n, p in model.named_parameters() if "lora_" in n}


def max_abs_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Largest absolute difference between same-named tensors of two weight dicts (NaN when none is shared)."""
    keys = set(a) & set(b)
    if not keys:
        return float("nan")
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------
def load_task_splits(data: str | os.PathLike | None, cfg: "RunConfig", kind: str = "coding",
                     build_dir: str | os.PathLike | None = None, *, verify: bool = True,
                     benchmark: str | None = None) -> tuple[list["Task"], list["Task"], str]:
    """`(train_tasks, heldout_tasks, source)`.

    `data` is a built procedural folder (`data.build.build_dataset` output: `tasks.jsonl`), or None to build
    `cfg.n_coding_tasks` / `cfg.n_search_tasks` tasks of `benchmark` (default: the synth benchmark of `kind`)
    with `cfg.seed` into `build_dir` (reused when already built there; `verify=False` skips the build's sandbox
    check of the gold code). Tasks whose split is "test" are held out; everything else trains."""
    from arftlib.data import build as B

    if data is None:
        if build_dir is None:
            raise ValueError("no data folder and no build_dir to build procedural tasks into")
        out = Path(build_dir)
        n = int(cfg.n_coding_tasks if kind == "coding" else cfg.n_search_tasks)
        build_kind = benchmark.removeprefix("synth-") if benchmark else kind
        if not (out / "tasks.jsonl").is_file():
            B.build_dataset(build_kind, n, cfg.seed, out, **({} if verify else {"verify": False}))
        tasks = list(B.load_built(out))
        source = f"built {build_kind} n={n} seed={cfg.seed} at {out}"
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


def load_training_processor(path: str, cfg: "RunConfig", mode: str):
    """The model's processor with the profile's pixel budget; for the tool loop (agentic mode, and chat step-wise
    rows, which are its prefixes) with the chat and response templates of the config's tool form."""
    from transformers import AutoProcessor, ProcessorMixin

    from arftlib.models import set_pixel_budget
    from arftlib.tool_format import prepare_processor

    processor = AutoProcessor.from_pretrained(path)
    if not isinstance(processor, ProcessorMixin):
        raise TypeError(f"{path}: AutoProcessor gave {type(processor).__name__}, not a multimodal processor")
    set_pixel_budget(processor, cfg.min_pixels, cfg.max_pixels)
    if mode == "agentic" or cfg.protocol == "chat":
        prepare_processor(processor, cfg.tool_format)  # the tool form's chat + response templates (tool_format.py)
    return processor


# --------------------------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------------------------
# step-wise components that apply only to rows whose gold step is this action (None for every other row)
_COMPONENT_ACTION = {"paper_answer_f1": "answer", "paper_code_flat": "code", "executed_code": "code",
                     "paper_diagnosis": "problem", "paper_search_similarity": "search"}


def rubric_for(mode: str, kind: str, reward: str = "paper", dataset: Any = None,
               weights: Mapping[str, float] | None = None):
    """The rubric a run trains on. Step-wise: the paper's (or the executed-code ablation), without components that
    apply to no row of `dataset` (they would only log NaN; needs its `gold_action` column); agentic: ours, with
    `weights` over `rewards.AGENTIC_WEIGHTS` (the config's `agentic_weights`)."""
    from arftlib import rewards

    if mode == "agentic":
        return rewards.agentic_rubric(kind, weights)
    rubric = rewards.paper_stepwise_rubric(kind) if reward == "paper" else rewards.executed_stepwise_rubric(kind)
    if dataset is None or "gold_action" not in getattr(dataset, "column_names", []):
        return rubric
    actions = set(dataset["gold_action"])
    keep = [(c.fn, c.weight) for c in rubric.components
            if _COMPONENT_ACTION.get(c.name) is None or _COMPONENT_ACTION[c.name] in actions]
    return rewards.Rubric(keep, name=rubric.name)


# --------------------------------------------------------------------------------------------------------------
# the trainer (TRL's, plus the logging hook) and callbacks
# --------------------------------------------------------------------------------------------------------------
_TRAINER_CLASS = None


def trainer_class():
    """`ArftGRPOTrainer`: TRL's `GRPOTrainer` with the trajectory-log hook (built on first use: TRL is heavy)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from trl import GRPOTrainer

    class ArftGRPOTrainer(GRPOTrainer):
        """TRL's `GRPOTrainer`, unchanged except for one observation hook: after each generation batch is
        generated and scored (by TRL), its rollouts are written to the run's trajectory store with the
        advantages TRL computed. Nothing the trainer computes is altered."""

        arft_log: TrajectoryLog | None = None
        arft_masks: dict[str, Any] | None = None  # the opt-in loss masks (filled by build_trainer)
        arft_last_batch: dict[str, Any] | None = None  # (inputs, output) of the latest batch, for tests
        arft_keep_last_batch: bool = False
        arft_merge_for_generation: bool = False  # cfg.merge_lora_for_generation (checked in build_trainer)

        def _generate_single_turn(self, *args, **kwargs):
            """TRL's sampling call; with `arft_merge_for_generation` the LoRA adapter is folded into the weights
            for its duration (`merge_adapter`, then `unmerge_adapter` even on error): the same policy, sampled
            without the LoRA branch's extra matmuls and dropout."""
            if not self.arft_merge_for_generation:
                return super()._generate_single_turn(*args, **kwargs)
            peft_model = self.accelerator.unwrap_model(self.model)
            peft_model.merge_adapter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                peft_model.unmerge_adapter()

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if self.model.training and self.arft_masks and self.arft_log is not None:
                self._arft_apply_masks(output)
            log_ = self.arft_log
            if self.model.training and log_ is not None and log_.enabled:
                from accelerate.utils import gather_object

                step = int(self.state.global_step) + 1
                trajs = log_.records(output, step, self.accelerator.process_index)
                if self.accelerator.num_processes > 1:
                    trajs = gather_object(trajs)
                if self.accelerator.is_main_process:
                    log_.write(trajs)
            if self.arft_keep_last_batch:
                self.arft_last_batch = {"inputs": inputs, "output": output}
            return output

        def _arft_apply_masks(self, output: dict[str, Any]) -> None:
            """The opt-in loss masks: samples of zero-variance GRPO groups and unfinished episodes get no gradient
            (their rows of the loss mask are zeroed; TRL's token normaliser is recomputed to match). Logged as
            `arft/masked_zero_variance` and `arft/masked_unfinished` (shares of the batch)."""
            import torch

            m = self.arft_masks
            trajs = self.arft_log.rewards.last_trajectories
            totals = [s["total"] for s in self.arft_log.rewards.last_scores]
            n = len(trajs)
            drop_zero = [False] * n
            if m["filter_zero_variance_groups"]:
                g = m["num_generations"]
                for start in range(0, n, g):
                    group = [t for t in totals[start:start + g] if t is not None]
                    if len(group) == g and max(group) - min(group) < 1e-9:
                        drop_zero[start:start + g] = [True] * g
            drop_unfinished = [False] * n
            if m["mask_unfinished_episodes"]:
                drop_unfinished = [t.start_step is None and t.final_answer is None
                                   and t.metrics.get("turns", 0) >= m["max_turns"] for t in trajs]
            drop = [a or b for a, b in zip(drop_zero, drop_unfinished)]
            mode = "train"
            self._metrics[mode]["arft/masked_zero_variance"].append(sum(drop_zero) / max(1, n))
            self._metrics[mode]["arft/masked_unfinished"].append(sum(drop_unfinished) / max(1, n))
            for t, z, u in zip(trajs, drop_zero, drop_unfinished):
                if z or u:
                    t.metrics["loss_masked"] = "zero_variance_group" if z else "unfinished_episode"
            if not any(drop):
                return
            keep = torch.tensor([not d for d in drop], device=output["completion_mask"].device).int().unsqueeze(1)
            tool_mask = output.get("tool_mask")
            output["tool_mask"] = (tool_mask if tool_mask is not None else torch.ones_like(
                output["completion_mask"])) * keep
            loss_mask = output["completion_mask"] * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

    _TRAINER_CLASS = ArftGRPOTrainer
    return ArftGRPOTrainer


def step_timer():
    """A TrainerCallback recording the wall time of every optimizer step (`.times`)."""
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


def wall_clock_stop(minutes: float):
    """A TrainerCallback that ends training once `minutes` of wall clock have passed since it began (checked after
    each optimizer step): a run sized by time, as the CPU learning checks are."""
    from transformers import TrainerCallback

    class WallClockStop(TrainerCallback):
        t0: float = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.t0 >= minutes * 60:
                control.should_training_stop = True

    return WallClockStop()


def tool_use_monitor(warn_ratio: float):
    """A TrainerCallback watching the tool calls per episode (`episode/tool_calls`, logged by the reward adapter):
    when the mean of the last 3 logged steps falls below `warn_ratio` × the mean of the first 3, it warns in the log
    and records the step in `.warnings` (tool-use collapse: the policy learned to stop calling tools)."""
    from transformers import TrainerCallback

    class ToolUseMonitor(TrainerCallback):
        def __init__(self):
            self.values: list[float] = []
            self.warnings: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kw):
            v = (logs or {}).get("episode/tool_calls")
            if v is None:
                return
            self.values.append(float(v))
            if len(self.values) < 6:
                return
            first = sum(self.values[:3]) / 3
            last = sum(self.values[-3:]) / 3
            if first > 0 and last < warn_ratio * first:
                msg = (f"tool-use collapse at step {state.global_step}: {last:.2f} tool calls per episode over the "
                       f"last 3 steps vs {first:.2f} at the start (< {warn_ratio:g}×)")
                if not self.warnings or self.warnings[-1]["step"] < state.global_step - 5:
                    log.warning(msg)
                self.warnings.append({"step": int(state.global_step), "tool_calls": last, "start": first,
                                      "message": msg})

    return ToolUseMonitor()


def lora_snapshot():
    """A TrainerCallback keeping CPU copies of the LoRA weights at the start (`.start`) and end (`.end`) of
    training — the "adapter changed" check after a run."""
    from transformers import TrainerCallback

    class LoraSnapshot(TrainerCallback):
        start: dict = {}
        end: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.start = adapter_weights(model)

        def on_train_end(self, args, state, control, model=None, **kw):
            self.end = adapter_weights(model)

    return LoraSnapshot()


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
    rewards: Any  # the rubric's TRL adapter
    traj_log: TrajectoryLog
    timer: Any
    run_dir: Path
    data_source: str
    monitor: Any = None  # the tool-use collapse monitor (agentic mode)


def build_trainer(cfg: "RunConfig", mode: str = "stepwise", data: str | os.PathLike | None = None,
                  model: str | None = None, out_dir: str | os.PathLike = "runs/train", *, kind: str = "coding",
                  reward: str = "paper", adapter: str | os.PathLike | None = None, train_dataset: Any = None,
                  tasks: tuple[list, list] | None = None, callbacks: Sequence[Any] = (),
                  log_trajectories: bool = True, env_options: Mapping[str, Any] | None = None,
                  rubric: Any = None, **grpo_overrides: Any) -> TrainerBundle:
    """Everything `train()` needs, built but not started: TRL `GRPOTrainer` (with the logging hook), its dataset,
    rubric and run folder. `adapter` continues training a saved LoRA adapter (e.g. an SFT warm start) instead of a
    fresh one. `tasks=(train, heldout)` or `train_dataset` skip data loading. `env_options` go to the environment
    (`env.AgentEnv` keyword arguments over the config's, e.g. `code_runner=` or `search=`); `rubric` replaces the
    mode's default rubric."""
    _check(mode, reward, kind)
    check_vllm(cfg)  # vLLM asked for but unusable here: say so before any data or model is loaded
    import torch  # noqa: F401  (fail early if torch is missing)

    from arftlib.env import AgentEnv, env_factory
    from arftlib.models import lora_config_for, model_path_for, quantization_config, suppressed_token_ids
    from arftlib.rewards.trl import TRLRewards

    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = model_path_for(cfg, model)
    processor = load_training_processor(path, cfg, mode)

    # data: built once when several processes run — the first process to take the lock builds, the others then
    # load that build. A lock file, not accelerate's `main_process_first`: a PartialState made here, before the
    # TrainingArguments set up the CPU (gloo) backend, sees one process per rank on CPU, so every rank built.
    with _build_lock(run_dir):
        if tasks is not None:
            train_tasks, heldout, source = list(tasks[0]), list(tasks[1]), "given tasks"
        elif train_dataset is None:
            train_tasks, heldout, source = load_task_splits(data, cfg, kind, build_dir=run_dir / "data")
        else:
            train_tasks, heldout, source = [], [], "given dataset"
        if train_dataset is None:
            train_dataset = make_dataset(train_tasks, cfg, mode)

    # rewards: one adapter between the rubric and TRL; its trajectories are the ones the log writes
    if rubric is None:
        rubric = rubric_for(mode, kind, reward, train_dataset, cfg.agentic_weights)
    env_settings = AgentEnv.settings_from_config(cfg, work_dir=str(run_dir / "env_tmp"), **dict(env_options or {}))
    # step-wise samples are acted on in the rows' own form: the paper's tags protocol, or the tool loop's chat form
    step_settings = {**env_settings, "protocol": cfg.protocol,
                     "tool_calls": cfg.tool_format if cfg.protocol == "chat" else False}
    episode_settings = {**env_settings, "protocol": "chat", "tool_calls": cfg.tool_format}
    adapter_ = TRLRewards(rubric, env_factory=env_factory(**step_settings), num_generations=cfg.num_generations,
                          max_turns=cfg.max_turns)
    traj_log = TrajectoryLog(run_dir / TRAJECTORY_DIR, adapter_, cfg.num_generations, enabled=log_trajectories)
    args = grpo_config(cfg, mode, run_dir, suppress_ids=suppressed_token_ids(processor),
                       reward_weights=adapter_.weights, **grpo_overrides)

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
        # a caller's `model_init_kwargs=` (a GRPOConfig override, e.g. bf16 unquantised parts on CPU) wins
        args.model_init_kwargs = {"dtype": torch_dtype(cfg.torch_dtype) if quant is None else (
            torch_dtype("bfloat16") if cuda() else torch_dtype("float32")),
            "attn_implementation": cfg.attn_implementation, **dict(args.model_init_kwargs or {})}
        if quant is not None:
            trainer_kwargs["quantization_config"] = quant
        peft_config = lora_config_for(cfg)
        if quant is not None and peft_config is None:
            raise ValueError("a quantised model can only be trained with LoRA adapters (finetune='lora')")

    timer = step_timer()
    monitor = tool_use_monitor(cfg.tool_collapse_warn_ratio) if mode == "agentic" else None
    env_kwargs = {}
    if mode == "agentic":
        env_kwargs["environment_factory"] = env_factory(**episode_settings)

    Trainer = trainer_class()
    old_tb = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / TB_DIR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        trainer = Trainer(model=model_arg, reward_funcs=adapter_.reward_funcs(), args=args,
                          train_dataset=train_dataset, processing_class=processor, peft_config=peft_config,
                          callbacks=[timer, *([monitor] if monitor else []), *callbacks], **env_kwargs,
                          **trainer_kwargs)
    finally:
        if old_tb is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old_tb
    trainer.arft_log = traj_log
    if cfg.merge_lora_for_generation and cfg.finetune == "lora":  # full fine-tuning has no adapter to fold
        if cfg.quantization:
            raise ValueError(f"merge_lora_for_generation folds the LoRA adapter into the weights, which is lossy for "
                             f"quantization={cfg.quantization!r} (profile {cfg.profile!r}); set "
                             "merge_lora_for_generation=False")
        trainer.arft_merge_for_generation = not cfg.use_vllm  # vLLM samples from its own copy of the weights
    trainer.arft_masks = {"filter_zero_variance_groups": bool(cfg.filter_zero_variance_groups),
                          "mask_unfinished_episodes": bool(cfg.mask_unfinished_episodes),
                          "num_generations": int(cfg.num_generations), "max_turns": int(cfg.max_turns)}
    if cfg.filter_zero_variance_groups and cfg.per_device_train_batch_size % cfg.num_generations:
        raise ValueError("filter_zero_variance_groups needs whole GRPO groups on each process: "
                         f"per_device_train_batch_size ({cfg.per_device_train_batch_size}) must be a multiple of "
                         f"num_generations ({cfg.num_generations})")
    return TrainerBundle(trainer=trainer, processor=processor, train_dataset=train_dataset, heldout_tasks=heldout,
                         train_tasks=train_tasks, rubric=rubric, rewards=adapter_, traj_log=traj_log, timer=timer,
                         run_dir=run_dir, data_source=source, monitor=monitor)


@contextlib.contextmanager
def _build_lock(run_dir: Path):
    """An exclusive lock on `run_dir/.data.lock` (fcntl) for the duration of the block."""
    import fcntl

    with open(run_dir / ".data.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


# --------------------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------------------
def train(cfg: "RunConfig", mode: str = "stepwise", data: str | os.PathLike | None = None, model: str | None = None,
          resume: bool = False, out_dir: str | os.PathLike = "runs/train", *, kind: str = "coding",
          reward: str = "paper", adapter: str | os.PathLike | None = None, max_steps: int | None = None,
          callbacks: Sequence[Any] = (), save_final: bool = True, tasks: tuple[list, list] | None = None,
          train_dataset: Any = None, env_options: Mapping[str, Any] | None = None, rubric: Any = None,
          **grpo_overrides: Any) -> dict[str, Any]:
    """Run GRPO (TRL `GRPOTrainer`) for `cfg` in `mode` ("stepwise" | "agentic") and return a summary dict.

    `data`: a built procedural folder (None: build `kind` tasks into `out_dir/data`). `model`: hub id or local
    path overriding `cfg.model_id`. `resume`: continue from the newest complete checkpoint in `out_dir`
    (trajectory records past it are dropped first). `kind`: "coding" | "search". `reward`: "paper" | "executed"
    (stepwise). `adapter`: start from a saved LoRA adapter. `max_steps` overrides `cfg.max_steps`.
    `tasks=(train, heldout)` / `train_dataset` replace the data loading; `env_options` go to the environment;
    `rubric` replaces the mode's rubric; `callbacks` are extra `TrainerCallback`s; further keyword arguments go to
    `GRPOConfig`.

    Returns `run_dir`, `mode`, `steps`, `s_per_step` (mean wall time per optimizer step, first step excluded when
    there are more than two), `first_step_s`, `peak_rss_mb`, `peak_gpu_mb` (None on CPU), `train_runtime_s`,
    `final_reward` (mean reward of the last logged step), `log_history`, `final_dir`, `trajectories`,
    `resumed_from`."""
    import torch
    import trl  # noqa: F401  (imported before the baseline below, so it measures the libraries, not the model)

    from arftlib.config import apply_threads

    rss_start = current_rss_mb()
    apply_threads(cfg)
    if max_steps is not None:
        cfg = cfg.replace(max_steps=int(max_steps))
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, ckpt_step = (last_checkpoint(run_dir) if resume else (None, 0))
    if resume and ckpt is None:
        log.warning("--resume: no complete checkpoint in %s; starting from scratch", run_dir)
    traj_dir = run_dir / TRAJECTORY_DIR
    truncated = None
    if is_main_process():
        if resume:
            truncated = truncate_trajectories(traj_dir, ckpt_step)
        else:  # a fresh run: no records or checkpoints from an earlier run in this folder
            stale = [d for d in run_dir.iterdir() if d.is_dir() and CHECKPOINT_RE.match(d.name)]
            if (traj_dir / "trajectories.jsonl").exists():
                stale.append(traj_dir)
            if stale:
                log.warning("%s: a fresh run (no --resume) removes the earlier run's %s", run_dir,
                            ", ".join(sorted(d.name for d in stale)))
            for d in stale:
                shutil.rmtree(d)
        write_json(run_dir / "config.json", {"config": cfg.to_dict(), "mode": mode, "kind": kind, "reward": reward,
                                             "data": None if data is None else str(data), "model": model,
                                             "adapter": None if adapter is None else str(adapter),
                                             "resume": resume})
    bundle = build_trainer(cfg, mode, data, model, run_dir, kind=kind, reward=reward, adapter=adapter,
                           callbacks=callbacks, tasks=tasks, train_dataset=train_dataset, env_options=env_options,
                           rubric=rubric, **grpo_overrides)
    trainer = bundle.trainer
    if cuda():
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
            # the form the episodes were trained in: evaluation reads it to warn when it is asked for another
            write_json(final_dir / TRAINED_FORM_FILE, trained_form(cfg, mode))
    times = bundle.timer.times
    steady = times[1:] if len(times) > 2 else times
    hist = [h for h in trainer.state.log_history if "reward" in h]
    summary = {
        "run_dir": str(run_dir), "mode": mode, "kind": kind, "reward_variant": reward, "profile": cfg.profile,
        "finetune": cfg.finetune, "quantization": cfg.quantization, "model": model or cfg.model_id,
        "steps": int(trainer.state.global_step), "steps_this_run": len(times),
        "num_processes": int(trainer.accelerator.num_processes),  # data-parallel ranks (accelerate launch)
        "s_per_step": (sum(steady) / len(steady)) if steady else None,
        "first_step_s": times[0] if times else None,
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_model_mb": round(rss_start, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda() else None,
        "train_runtime_s": round(runtime, 3), "train_loss": getattr(result, "training_loss", None),
        "final_reward": hist[-1]["reward"] if hist else None,
        "rubric": bundle.rubric.name, "reward_components": bundle.rewards.names,
        "reward_weights": bundle.rewards.weights,
        "log_history": trainer.state.log_history, "final_dir": None if final_dir is None else str(final_dir),
        "trajectories": str(traj_dir), "tensorboard": str(run_dir / TB_DIR),
        "resumed_from": None if ckpt is None else str(ckpt), "trajectories_truncated": truncated,
        "data": bundle.data_source, "n_train_rows": len(bundle.train_dataset),
        "advantages": "read from TRL's GRPOTrainer output (its scale_rewards computation)",
        "tool_collapse_warnings": list(bundle.monitor.warnings) if bundle.monitor is not None else [],
        "loss_masks": dict(trainer.arft_masks or {}),
    }
    if trainer.accelerator.is_main_process:
        write_json(run_dir / "metrics.json", summary)
    return summary
