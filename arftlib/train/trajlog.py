"""The training run's trajectory log: every generation batch's rollouts, written as training goes.

After TRL has generated and scored a batch (`ArftGRPOTrainer`'s hook), `TrajectoryLog.records` takes the
trajectories the rubric's TRL adapter built and scored (`rewards.trl.TRLRewards.last_trajectories`: the very
objects the rewards were computed from) and adds what only the trainer knows: the training step, episode and
GRPO group ids, the advantage TRL computed (`output["advantages"]`, after its `scale_rewards` and NaN handling —
read, not recomputed) and the masked tool-token count. `write` appends them to `trajectories/` (rank 0 writes
under several processes). `truncate_trajectories` drops records past a checkpoint before a resumed run goes on,
so the log holds every step exactly once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.rewards.trl import TRLRewards
    from arftlib.types import Trajectory

__all__ = ["TrajectoryLog", "truncate_trajectories"]


class TrajectoryLog:
    """Turns one scored generation batch into `Trajectory` records and appends them to the run's store."""

    def __init__(self, directory: str | os.PathLike, rewards: "TRLRewards", num_generations: int,
                 enabled: bool = True):
        self.dir = Path(directory)
        self.rewards = rewards
        self.G = int(num_generations)
        self.enabled = enabled
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

    def records(self, output: dict[str, Any], step: int, rank: int) -> list["Trajectory"]:
        """This process's batch as records for training step `step` (ids are global across ranks)."""
        trajs = self.rewards.last_trajectories
        scores = self.rewards.last_scores
        n = len(trajs)
        adv = output["advantages"].detach().float().cpu().tolist()
        if len(adv) != n:
            raise RuntimeError(f"trajectory log: {len(adv)} advantages for {n} scored trajectories")
        tool_mask = output.get("tool_mask")
        for i, traj in enumerate(trajs):
            gi = rank * n + i
            s = scores[i]
            traj.training_step = int(step)
            traj.episode_id = f"s{step:06d}-{gi:05d}"
            traj.group_id = f"s{step:06d}-g{gi // self.G:04d}"
            traj.reward = s["total"]
            traj.reward_components = {k: v for k, v in s.items() if k != "total" and v is not None}
            traj.advantage = float(adv[i])
            sampled = int(output["completion_mask"][i].sum().item())
            if tool_mask is not None:
                masked = int((tool_mask[i] == 0).sum().item())
                traj.metrics["masked_tool_tokens"] = masked
                sampled -= masked
            traj.metrics["sampled_tokens"] = sampled
        return list(trajs)

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
