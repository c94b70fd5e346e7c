"""Rewards from images: how well a processed image restores the clean one, and the `executed_code` component.

`restoration_score(output, clean, degraded, target_box=)` compares SSIM_SIZE² greyscale versions with SSIM
(scikit-image), clipped to [0, 1], and the normalised gain over the degraded input. `executed_code(traj)` reads
the image the environment's code tool produced (it never runs code itself): the last successful code
observation of the trajectory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from arftlib.rewards.common import gold_action
from arftlib.types import Trajectory, grid_box_to_pixels

__all__ = ["RAN_CREDIT", "SSIM_SIZE", "executed_code", "restoration_score", "task_restoration_quality"]

RAN_CREDIT = 0.1  # executed_code: code that ran and wrote a valid image, before quality
SSIM_SIZE = 256  # images are compared as SSIM_SIZE x SSIM_SIZE greyscale


def _grey_small(img: Any, box: Sequence[int] | None = None) -> np.ndarray:
    """An image (path, PIL image or RGB/grey array) as SSIM_SIZE x SSIM_SIZE greyscale floats in [0, 1],
    optionally cropped first by a 0-1000 grid box."""
    from PIL import Image

    if isinstance(img, (str, os.PathLike)):
        with Image.open(img) as im:
            pil = im.convert("L")
    elif isinstance(img, Image.Image):
        pil = img.convert("L")
    elif isinstance(img, np.ndarray):
        arr = img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr).convert("L")
    else:
        raise TypeError(f"cannot read an image from {type(img).__name__}")
    if box is not None:
        pil = pil.crop(grid_box_to_pixels(box, *pil.size))
    pil = pil.resize((SSIM_SIZE, SSIM_SIZE), Image.Resampling.BOX)
    return np.asarray(pil, dtype=np.float64) / 255.0


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.clip(structural_similarity(a, b, data_range=1.0), 0.0, 1.0))


def restoration_score(output: Any, clean: Any, degraded: Any = None, *,
                      target_box: Sequence[int] | None = None) -> dict[str, float]:
    """How well `output` restores `clean` (cropped to `target_box`, a 0-1000 grid box, when given): SSIM of
    SSIM_SIZE² greyscale versions, clipped to [0, 1], and the normalised gain over the `degraded` input,
    `(ssim_out - ssim_in) / (1 - ssim_in)` clipped to [0, 1]. `quality` = mean of the two (just `ssim_out`
    without a degraded image). Images are paths, PIL images or arrays (RGB).

    >>> x = (np.indices((64, 64)).sum(0) % 16 * 16).astype(np.uint8)
    >>> restoration_score(x, x, x[::-1, ::-1])["quality"]
    1.0
    """
    out_g = _grey_small(output)
    clean_g = _grey_small(clean, target_box)
    s_out = _ssim(out_g, clean_g)
    res = {"ssim_out": s_out}
    if degraded is None:
        res["quality"] = s_out
        return res
    s_in = _ssim(_grey_small(degraded), clean_g)
    gain = float(np.clip((s_out - s_in) / (1.0 - s_in), 0.0, 1.0)) if s_in < 1.0 - 1e-9 else s_out
    res.update(ssim_in=s_in, gain=gain, quality=0.5 * s_out + 0.5 * gain)
    return res


def executed_code(traj: Trajectory) -> float | None:
    """Code that actually ran: the image of the trajectory's last successful code observation (the environment
    ran it; a step-wise code sample is run by the rubric's TRL adapter through the environment). 0 if no code
    produced an image; else RAN_CREDIT (0.1) + 0.9 · `restoration_score(...)["quality"]` against the task's
    clean image (cropped to `metadata["target_box"]`), with the task's input image as the degraded one; just
    RAN_CREDIT when no clean image is known. None for search tasks, step-wise rows whose gold step is not
    code, and episodes that need no tool (`Task.needs_tool`)."""
    task = traj.task
    if task.family != "coding":
        return None
    gold = gold_action(traj)
    if traj.start_step is not None and gold != "code":
        return None
    if traj.start_step is None and not task.needs_tool:
        return None
    last = next((s.observation for s in reversed(traj.scored_steps)
                 if s.observation is not None and s.observation.tool == "code" and s.observation.is_evidence), None)
    if last is None:
        return 0.0
    if not os.path.exists(str(last.image)):
        raise FileNotFoundError(f"reward component 'executed_code': the code output image {last.image!r} of "
                                f"trajectory {traj.episode_id!r} no longer exists (the environment must keep it "
                                "until rewards are computed)")
    if not task.clean_image:
        return RAN_CREDIT
    return RAN_CREDIT + (1.0 - RAN_CREDIT) * task_restoration_quality(task, last.image)


def task_restoration_quality(task: Any, output: Any) -> float:
    """`restoration_score(...)["quality"]` of a code output for a coding task: against its clean image (cropped to
    `metadata["target_box"]`), with its input image as the degraded one."""
    degraded = task.images[0] if task.images else None
    return restoration_score(output, task.clean_image, degraded,
                             target_box=(task.metadata or {}).get("target_box"))["quality"]


executed_code.needs_observations = True  # the TRL adapter runs step-wise code through the environment for it
