"""Training: GRPO on TRL (`trainer.py`), its TRL arguments (`args.py`), the run's trajectory log (`trajlog.py`),
the cold-start SFT (`sft.py`) and the command line (`cli.py`). See `trainer.py` for the two modes.

Importing this package is cheap: torch, transformers and TRL are imported by the functions that need them.
"""

from arftlib.train.args import deepspeed_config_path, grpo_config
from arftlib.train.trainer import (FINAL_DIR, KINDS, MODES, REWARD_VARIANTS, TRAJECTORY_DIR, TrainerBundle,
                                   adapter_weights, build_trainer, last_checkpoint, load_task_splits,
                                   load_training_processor, lora_snapshot, make_dataset, max_abs_diff, rubric_for,
                                   step_timer, train, trainer_class, wall_clock_stop, write_json)
from arftlib.train.trajlog import TrajectoryLog, truncate_trajectories

__all__ = ["FINAL_DIR", "KINDS", "MODES", "REWARD_VARIANTS", "TRAJECTORY_DIR", "TrainerBundle", "TrajectoryLog",
           "adapter_weights", "build_trainer", "deepspeed_config_path", "grpo_config", "last_checkpoint",
           "load_task_splits", "load_training_processor", "lora_snapshot", "make_dataset", "max_abs_diff",
           "rubric_for", "step_timer", "train", "trainer_class", "truncate_trajectories", "wall_clock_stop",
           "write_json"]
