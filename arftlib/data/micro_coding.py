"""`micro-coding`: a procedural MAT-Coding in miniature that a few-million-parameter VLM can learn to see.

Why it exists: the workbench's CPU policy (a ~5 M-parameter Qwen2.5-VL, `arftlib.models.build_tiny_vlm(size=
"seeing")`) cannot read text, so `synth-coding` is out of its reach. This world asks what such a model CAN learn
from a clean image in a minute or two of supervised training — the colour of a shape, its type, on which side
it is — and then degrades the image so that the answer is destroyed or flipped, with a short OpenCV repair that
brings it back (see `experiments/micro_probe.py` for the measurements behind every pairing below).

The scene: a `SIZE`×`SIZE` canvas (the policy's processor downsizes it to 112×112), a light grey background
and a dark "ground" band along the bottom edge. The band is the orientation cue: in a rotated image it lies
on another edge, so a policy can diagnose the rotation (and its direction) from the pixels. Objects are flat
shapes (`SHAPES`) in one of `COLORS`, drawn without antialiasing (byte-stable).

Question types (answers are single words; `CHOICES` lists each type's answer set) and the degradations they
are paired with (each one destroys or flips the answer of its question; `SIMPLE_PAIRS`, `HARD_PAIRS`):

  type         scene                                   question                          degradations
  color        one large shape (half the canvas)        "What color is the figure?"       dark, overexposure
  shape        one large shape                          "What shape is the figure?"       noise
  position     one shape next to the top / bottom /     "What side is the figure on?"     rotation90, rotation180;
               left / right edge                                                          hard: a rotation + dark
                                                                                          or overexposure
  zoom         small shapes (`SMALL_R`) of different    "What color is the figure within  crop; hard: crop + dark
               colours; the question names one by its   the [x1, y1, x2, y2] of the       or crop + noise
               0–1000 box                               image?"
  (any of color / shape / position)                                                       none (clean image)

`crop`: nothing is done to the pixels; the boxed shape is a 5-pixel blob at the policy's 112×112, one of 4–6
blobs of different colours (the distractors never share the target's colour), so an answer from the whole image
must pick the right blob; the gold code crops the box and enlarges it to `ZOOM_SIDE`×`ZOOM_SIDE`, where the
target fills the view as in the `color` questions. The crop code names the box by the question's own four numbers
and writes the 0–1000 → pixel rule out (`y1 * 224 // 1000`, the reference's `int(v / 1000 * size)` on integers),
so a policy copies numbers instead of converting them in its head (a 5 M-parameter model cannot multiply; it can
copy).

What the CPU policy can learn to see, measured (`experiments/micro_probe.py`; the plain supervised loop on clean
images, lr 1e-3, batch 32, 2 cores): colour — a property of the whole image — is learned in about a hundred steps
(with the zoom questions asking colour, colour 72 % and zoom 76 % held-out after 150 mixed steps). WHERE a thing
is is out of reach of the default `seeing` build, and the cause is its rotary layout (found 2026-12-07,
`arftlib.models`, size `seeing-grid`): with the 3B's M-RoPE sections halved ([8, 12, 12], theta 1e6) the 16 image
tokens of a 112×112 input differ only in frequencies under 0.03 rad per row, and `position` stayed at its majority
answer after 450 steps (also top/bottom alone, rope_theta 100 with those sections, and the Qwen3-VL `seeing` model for
200 steps). The same model fed 1-D positions learned the four sides to 100 % in 300 steps, sections [0, 16, 16] at
theta 10 to 96 % in ~370 (all types mixed: colour 98 %, zoom 85 %, position 92 % after 350 steps), and a rotated
image then flips the answer (rotation180: 6 %, restored: 96 %) — the rotation premise of MAT-Coding. `shape` stays
≈ chance (held-out shapes come in colour × shape combinations training never shows). So the zoom questions ask
colour (until 2026-12 they asked shape): crop and enlarge is then a tool whose result the policy can read; `shape`
stays in the world, as the paper's noise case, for policies that can see it.

Degradation strengths (`sample_params`, drawn from the task's seeded generator) are stronger than
`synth-coding`'s, because a 112×112 policy input forgives mild ones: dark ×[0.08, 0.18]; overexposure toward
white ×[0.1, 0.2]; noise: salt-and-pepper on [30, 50] % of the pixels ([20, 35] % with a crop); rotations as the paper. The gold code
(`restoration_code`) is 3–5 lines, the same template per label with only the numbers changing:

    import cv2
    img = cv2.imread('path_to_input_image.jpg')
    img = cv2.convertScaleAbs(img, alpha=7.7, beta=0)
    cv2.imwrite('path_to_output_image.jpg', img)

Gold chains: `problem → code → answer` (`none`: `problem → answer`), the problem text being
`degrade.problem_text(labels)`. The build (`arftlib.data.build`) runs every gold code step in the sandbox and
checks its output against the clean image (crop: the clean crop, resized to `ZOOM_SIDE` as the gold code
resizes it: `metadata["target_size"]`) with `degrade.restoration_quality`.

Train/test: the entities are (colour, shape) combinations. `TEST_COMBOS` holds out six of the 24, one per
colour, every shape among them; every object drawn in a test image is a held-out combination and every
object in a train image a training one, so each colour and shape occurs in train but test shows new
combinations. The partition is fixed (independent of the build seed), so builds with different seeds share it.
Question wordings are NOT split-disjoint (`TEMPLATES`: one per type; see the comment there for the measurement),
so the card's leakage report shows shared templates and questions and zero shared entities.

Left out: blur (a blur that a short unsharp mask can verifiably undo does not change what a 112×112 policy
sees, and one strong enough to matter cannot be undone: see the probe; `sample_params` still knows it for
callers), counting (learned too slowly at this scale: ~80 % after 7 minutes of supervised training), text,
real photos, crops combined with rotations (the box is given on the original image, as in MAT-Coding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from arftlib.data import degrade as D
from arftlib.turns import short_think
from arftlib.types import Task, grid_box_to_pixels

BENCHMARK = "micro-coding"
SIZE = 224  # canvas side in pixels; the policy's processor (max_pixels 112*112) sees it at 112×112
POLICY_SIDE = 112  # what the policy's image processor downsizes to (documentation and tests)
ZOOM_SIDE = 112  # the gold crop code enlarges the box to this side (= the policy's full resolution)
GROUND = 24  # height in pixels of the dark ground band along the bottom edge (the orientation cue)
BACKGROUND = (228, 228, 228)  # light grey canvas (dark and overexposure both have room to act on it)
GROUND_COLOR = (70, 70, 70)  # the band: dark grey, visible on every degraded image

# Six well-separated colours (hue and brightness) and four shapes; their names are the answers.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 185),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIDES = ("top", "bottom", "left", "right")
# The held-out (colour, shape) combinations: colour i with shape i mod 4 (each colour once; every shape at
# least once). Fixed, so every build shares it.
TEST_COMBOS = tuple((c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLORS))
ALL_COMBOS = tuple((c, s) for c in COLORS for s in SHAPES)


def split_combos(split: str) -> list[tuple[str, str]]:
    """The (colour, shape) combinations objects of `split` are drawn from."""
    if split == "test":
        return list(TEST_COMBOS)
    if split == "train":
        return [c for c in ALL_COMBOS if c not in TEST_COMBOS]
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def combo_name(combo: tuple[str, str]) -> str:
    """An entity name for the leakage report: 'red circle'."""
    return f"{combo[0]} {combo[1]}"


QUESTION_TYPES = ("color", "shape", "position", "zoom")
CHOICES: dict[str, list[str]] = {  # every answer a question type can have (chance = 1 / len)
    "color": list(COLORS), "shape": list(SHAPES), "position": list(SIDES), "zoom": list(COLORS),
}
# Question wordings per type and split (disjoint; checked below). `{side}` / `{box}` are filled in.
# One wording per type, the SAME in both splits (by design: the leakage report counts them as shared templates
# and questions). A tiny model keys on surface words: in the probe, with split-disjoint wordings (train "What
# color is the figure?" / "Name the color of the figure.", test "Which color does the figure have?") the model
# answered 75 % of held-out colour questions in a training wording and 9 % in the test wording after 400 steps.
# The micro world tests seeing, not paraphrase: the held-out split is new colour × shape combinations (and the
# wordings carry no answer). Each wording holds its type's keyword and no other's; the object is "the figure"
# ("the shape" would carry the shape questions' keyword into the others). Zoom asks colour too, so it shares the
# colour questions' keyword and adds its box.
TEMPLATES: dict[str, str] = {
    "color": "What color is the figure?",
    "shape": "What shape is the figure?",
    "position": "What side is the figure on?",
    "zoom": "What color is the figure within the {box} of the image?",
}
assert set(TEMPLATES) == set(QUESTION_TYPES) == set(CHOICES)

# (label(s), question types it is paired with). Simple items draw a pair in turn (balanced), then a question
# type of the pair; hard items the same from HARD_PAIRS.
SIMPLE_PAIRS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("none",), ("color", "shape", "position")),
    (("dark",), ("color",)),
    (("overexposure",), ("color",)),
    (("noise",), ("shape",)),
    (("rotation90",), ("position",)),
    (("rotation180",), ("position",)),
    (("crop",), ("zoom",)),
)
HARD_PAIRS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("dark", "rotation90"), ("position",)),
    (("dark", "rotation180"), ("position",)),
    (("overexposure", "rotation90"), ("position",)),
    (("overexposure", "rotation180"), ("position",)),
    (("crop", "dark"), ("zoom",)),
    (("crop", "noise"), ("zoom",)),
)
for _labels, _ in SIMPLE_PAIRS + HARD_PAIRS:
    assert list(_labels) == sorted(_labels) and set(_labels) <= set(D.THRESHOLDS), _labels

BIG_R = (48, 64)  # radius range (px at SIZE) of the single shape of color / shape questions (half the canvas:
# the probe learns colour several times faster from large shapes than from 60–80 px ones)
SIDE_R = (30, 38)  # radius range of position shapes
SMALL_R = 5  # radius of the small shapes of zoom questions: 10 px wide at 224 → 5 px at the policy's 112
ZOOM_BOX_GRID = (112, 134)  # side range of a zoom box on the 0–1000 grid (25–30 px at 224: the enlarged crop
# shows the 10-px shape ~40 px wide at 112, as large as a position question's shape)
ZOOM_DISTRACTORS = (3, 5)  # how many other small shapes a zoom scene holds (inclusive range)


# ------------------------------------------------------------------------------------------------ drawing
def draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Sequence[int]) -> None:
    """A flat `shape` centred at (cx, cy) whose bounding box is about 2r wide (no antialiasing)."""
    fill = tuple(fill)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85  # a little smaller than the circle, for similar areas
        d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":  # pointing up in a clean image (a second orientation cue)
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.36  # arm half-width
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def render(objects: Sequence[dict[str, Any]], size: int = SIZE) -> np.ndarray:
    """The clean scene: background, ground band, then each object `{color, shape, cx, cy, r}` in order."""
    im = Image.new("RGB", (size, size), BACKGROUND)
    d = ImageDraw.Draw(im)
    d.rectangle([0, size - GROUND, size - 1, size - 1], fill=GROUND_COLOR)
    for o in objects:
        draw_shape(d, o["shape"], o["cx"], o["cy"], o["r"], COLORS[o["color"]])
    return np.asarray(im)


def _obj(combo: tuple[str, str], cx: float, cy: float, r: float) -> dict[str, Any]:
    return {"color": combo[0], "shape": combo[1], "cx": round(float(cx), 1), "cy": round(float(cy), 1),
            "r": round(float(r), 1)}


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


# Usable area above the ground band, with a margin.
_TOP, _BOTTOM = 8, SIZE - GROUND - 8
_MID_Y = (_TOP + _BOTTOM) / 2


def scene_single(rng: np.random.Generator, combo: tuple[str, str]) -> list[dict[str, Any]]:
    """One large shape somewhere around the middle (color / shape questions)."""
    r = float(rng.uniform(*BIG_R))
    cx = float(rng.uniform(SIZE / 2 - 30, SIZE / 2 + 30))
    cy = float(rng.uniform(_MID_Y - 24, _MID_Y + 24))
    return [_obj(combo, cx, cy, r)]


def _side_centre(side: str, r: float, rng: np.random.Generator) -> tuple[float, float]:
    jitter = float(rng.uniform(-20, 20))
    if side == "top":
        return SIZE / 2 + jitter, _TOP + r + float(rng.uniform(0, 8))
    if side == "bottom":
        return SIZE / 2 + jitter, _BOTTOM - r - float(rng.uniform(0, 8))
    if side == "left":
        return 8 + r + float(rng.uniform(0, 8)), _MID_Y + jitter
    return SIZE - 8 - r - float(rng.uniform(0, 8)), _MID_Y + jitter


def scene_position(rng: np.random.Generator, combo: tuple[str, str], side: str) -> list[dict[str, Any]]:
    """One shape next to `side` (position questions)."""
    r = float(rng.uniform(*SIDE_R))
    return [_obj(combo, *_side_centre(side, r, rng), r)]


def _grid_box(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random square-ish 0–1000 box above the ground band."""
    side = int(rng.integers(ZOOM_BOX_GRID[0], ZOOM_BOX_GRID[1] + 1))
    lo, hi_x = 20, 1000 - 20 - side
    hi_y = int((SIZE - GROUND - 6) / SIZE * 1000) - side
    return (x := int(rng.integers(lo, hi_x + 1)), y := int(rng.integers(lo, hi_y + 1)), x + side, y + side)


def scene_zoom(rng: np.random.Generator, combos: Sequence[tuple[str, str]]) -> tuple[list[dict[str, Any]], tuple[int, int, int, int]]:
    """Small shapes scattered over the canvas; the first is the target, centred in a random 0–1000 box that no
    other shape touches. Returns (objects, grid box)."""
    box = _grid_box(rng)
    x0, y0, x1, y1 = grid_box_to_pixels(box, SIZE, SIZE)
    target = combos[0]
    objs = [_obj(target, (x0 + x1) / 2 + float(rng.uniform(-3, 3)), (y0 + y1) / 2 + float(rng.uniform(-3, 3)), SMALL_R)]
    n_other = len(combos) - 1
    for combo in combos[1:]:
        for _ in range(200):  # rejection sampling: outside the box (with margin) and apart from the others
            cx = float(rng.uniform(12, SIZE - 12))
            cy = float(rng.uniform(12, SIZE - GROUND - 12))
            outside = cx < x0 - SMALL_R - 4 or cx > x1 + SMALL_R + 4 or cy < y0 - SMALL_R - 4 or cy > y1 + SMALL_R + 4
            apart = all((cx - o["cx"]) ** 2 + (cy - o["cy"]) ** 2 > (4 * SMALL_R) ** 2 for o in objs)
            if outside and apart:
                objs.append(_obj(combo, cx, cy, SMALL_R))
                break
        else:
            raise RuntimeError(f"could not place {n_other} distractors around box {box}")
    return objs, box


# ------------------------------------------------------------------------------------- degrade and repair
def sample_params(label: str, rng: np.random.Generator, with_crop: bool = False) -> dict[str, Any]:
    """Strength of one label for the micro world (rounded so the gold code's numbers are short). With a crop in the
    same task, noise is lighter ([0.2, 0.35]): a 5×5 median cannot clean a 27-pixel box of heavier salt and pepper
    well enough to pass the build's check (17.9 dB at 47 % was seen)."""
    if label == "dark":
        return {"mode": "linear", "a": round(float(rng.uniform(0.08, 0.18)), 3)}
    if label == "overexposure":
        return {"mode": "linear", "a": round(float(rng.uniform(0.1, 0.2)), 3)}
    if label == "noise":
        lo, hi = (0.2, 0.35) if with_crop else (0.3, 0.5)
        return {"mode": "salt_pepper", "amount": round(float(rng.uniform(lo, hi)), 3)}
    if label == "blur":
        return {"sigma": round(float(rng.uniform(1.0, 1.8)), 2)}
    if label == "rotation90":
        return {"direction": "cw" if rng.random() < 0.5 else "ccw"}
    if label in ("rotation180", "crop", "none"):
        return {}
    raise ValueError(f"unknown degradation label {label!r}; use one of {tuple(D.THRESHOLDS)}")


def _code_line(label: str, p: dict[str, Any], box: Sequence[int] | None) -> str:
    if label == "rotation90":  # undo: turn the other way
        flag = "ROTATE_90_COUNTERCLOCKWISE" if p["direction"] == "cw" else "ROTATE_90_CLOCKWISE"
        return f"img = cv2.rotate(img, cv2.{flag})"
    if label == "rotation180":
        return "img = cv2.rotate(img, cv2.ROTATE_180)"
    if label == "dark":
        return f"img = cv2.convertScaleAbs(img, alpha={round(1.0 / p['a'], 1):g}, beta=0)"
    if label == "overexposure":
        alpha = round(1.0 / p["a"], 1)
        return f"img = cv2.convertScaleAbs(img, alpha={alpha:g}, beta={int(round(-255.0 * (alpha - 1.0)))})"
    if label == "noise":
        return "img = cv2.medianBlur(img, 5)"
    if label == "blur":
        return f"img = cv2.addWeighted(img, 2.5, cv2.GaussianBlur(img, (0, 0), {p['sigma']:g}), -1.5, 0)"
    if label == "crop":
        if box is None:
            raise ValueError("a crop label needs its 0-1000 box")
        # the box's own numbers, copied from the question, and the grid → pixel rule written out
        # (`v * SIZE // 1000`, = `types.grid_box_to_pixels` on integers): a policy copies four numbers instead of
        # doing arithmetic in its head; the build checks the crop against grid_box_to_pixels' crop
        x1, y1, x2, y2 = (int(v) for v in box)
        return (f"x1, y1, x2, y2 = {x1}, {y1}, {x2}, {y2}\n"
                f"img = cv2.resize(img[y1 * {SIZE} // 1000:y2 * {SIZE} // 1000, x1 * {SIZE} // 1000:x2 * {SIZE} // 1000], "
                f"({ZOOM_SIDE}, {ZOOM_SIDE}))")
    raise ValueError(f"no repair for label {label!r}")


def restoration_code(labels: Sequence[str], params: dict[str, dict[str, Any]], box: Sequence[int] | None = None) -> str:
    """The gold repair: read, undo the rotation, then the photometric label, then crop + enlarge, write.
    Empty for ["none"]."""
    labs = [x for x in labels if x != "none"]
    if not labs:
        return ""
    order = sorted(labs, key=lambda x: (x != "rotation90" and x != "rotation180", x == "crop"))
    body = [_code_line(lab, params.get(lab, {}), box) for lab in order]
    return "\n".join(["import cv2", "img = cv2.imread('path_to_input_image.jpg')", *body,
                      "cv2.imwrite('path_to_output_image.jpg', img)"]) + "\n"


def degrade(clean: np.ndarray, labels: Sequence[str], params: dict[str, dict[str, Any]],
            rng: np.random.Generator) -> np.ndarray:
    """Apply the labels (photometric first, then the rotation) with `arftlib.data.degrade.apply_one`."""
    return D.degrade(clean, labels, params, rng)


def rotate_side(side: str, labels: Sequence[str], params: dict[str, dict[str, Any]]) -> str:
    """Where an object next to `side` of the clean image lies in the degraded image (a direct answer that
    trusts the degraded image says this)."""
    if "rotation180" in labels:
        return {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[side]
    if "rotation90" in labels:
        cw = {"top": "right", "right": "bottom", "bottom": "left", "left": "top"}
        if params["rotation90"]["direction"] == "cw":
            return cw[side]
        return {v: k for k, v in cw.items()}[side]
    return side


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class MicroItem:
    """One generated task before it is written: the Task plus the arrays the build saves and verifies."""

    task: Task
    clean: np.ndarray
    degraded: np.ndarray


def plan(n: int, seed: int, test_fraction: float = 0.2, hard_fraction: float = 0.25) -> list[dict[str, Any]]:
    """Split, difficulty, labels and question type for `n` tasks, balanced over the pairings, seeded."""
    rng = np.random.default_rng([seed, 0x31C0])
    n_test = int(round(n * test_fraction))
    splits = ["train"] * (n - n_test) + ["test"] * n_test
    rng.shuffle(splits)
    order = {"simple": list(rng.permutation(len(SIMPLE_PAIRS))), "hard": list(rng.permutation(len(HARD_PAIRS)))}
    counters = {"simple": 0, "hard": 0}
    out = []
    for i in range(n):
        diff = "hard" if rng.random() < hard_fraction else "simple"
        table = HARD_PAIRS if diff == "hard" else SIMPLE_PAIRS
        k = counters[diff]
        counters[diff] += 1
        labels, qtypes = table[order[diff][k % len(table)]]
        out.append({"index": i, "split": splits[i], "difficulty": diff, "labels": list(labels),
                    "question_type": qtypes[int(rng.integers(len(qtypes)))]})
    return out


def _ask(qtype: str, **fmt: Any) -> tuple[str, str, str]:
    """(question, template id, template) of a question type."""
    return TEMPLATES[qtype].format(**fmt), f"micro.{qtype}", TEMPLATES[qtype]


def make_item(spec: dict[str, Any], seed: int) -> MicroItem:
    """Generate one task from its plan entry (deterministic in seed and index)."""
    i, split, labels, qtype = spec["index"], spec["split"], list(spec["labels"]), spec["question_type"]
    rng = np.random.default_rng([seed, 0x31C1, i])
    combos = split_combos(split)
    box = None
    fmt: dict[str, Any] = {}
    if qtype in ("color", "shape"):
        objs = scene_single(rng, _pick(rng, combos))
        answer = objs[0][qtype]
    elif qtype == "position":
        side = _pick(rng, SIDES)
        objs = scene_position(rng, _pick(rng, combos), side)
        answer = side
    elif qtype == "zoom":
        n_other = int(rng.integers(ZOOM_DISTRACTORS[0], ZOOM_DISTRACTORS[1] + 1))
        target = _pick(rng, combos)
        others = [c for c in combos if c[0] != target[0]]  # distractors never share the target's colour
        picked = [target] + [_pick(rng, others) for _ in range(n_other)]
        objs, box = scene_zoom(rng, picked)
        fmt["box"] = f"[{box[0]}, {box[1]}, {box[2]}, {box[3]}]"
        answer = objs[0]["color"]
    else:
        raise ValueError(f"unknown question type {qtype!r}; use one of {QUESTION_TYPES}")
    if ("crop" in labels) != (qtype == "zoom"):
        raise ValueError(f"task {i}: crop goes with zoom questions only (labels {labels}, type {qtype})")
    question, template_id, template = _ask(qtype, **fmt)
    clean = render(objs)
    params = {lab: sample_params(lab, rng, with_crop="crop" in labels) for lab in labels}
    degraded = degrade(clean, labels, params, rng)
    code = restoration_code(labels, params, box)
    chain = [{"action": "problem", "content": D.problem_text(labels), "think": short_think("problem", labels)}]
    if code:
        chain.append({"action": "code", "content": code, "think": short_think("code")})
    chain.append({"action": "answer", "content": answer, "think": short_think("answer")})
    # what a policy that answers from the degraded image as if it were clean would say (position questions
    # flip deterministically; for the others the answer is destroyed, not flipped)
    naive = rotate_side(answer, labels, params) if qtype == "position" else None
    task = Task(
        id=f"mc{i:05d}", question=question, images=[], answers=[answer], kind="coding", split=split,
        degradations=labels, benchmark=BENCHMARK, clean_image=None, gold_chain=chain,
        metadata={"difficulty": spec["difficulty"], "question_type": qtype, "choices": CHOICES[qtype],
                  "template_id": template_id, "template": template,
                  "entities": sorted({combo_name((o["color"], o["shape"])) for o in objs}),
                  "objects": objs, "params": params, "box": list(box) if box else None,
                  "target_box": list(box) if box else None, "target_scale": 1,
                  "target_size": [ZOOM_SIDE, ZOOM_SIDE] if box else None,
                  "needs_tool": labels != ["none"], "flipped_answer": naive, "scene": f"micro.{qtype}",
                  "source": "rendered", "seed": seed, "size": [SIZE, SIZE]},
    )
    return MicroItem(task, clean, degraded)


def downscaled(img: np.ndarray, side: int = POLICY_SIDE) -> np.ndarray:
    """`img` as the policy sees it: resized to side×side (area filter; the processor uses bicubic)."""
    import cv2

    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


def tokenizer_corpus() -> list[str]:
    """Text of this world for a tokenizer: every question wording, answer, problem text and gold code line
    (with example numbers), and the gold turns of a few generated tasks as `arftlib.turns` writes them (think
    templates included), so the `seeing` tiny model spends few tokens on a micro turn."""
    from arftlib.turns import gold_turns

    rng = np.random.default_rng(0)
    lines: list[str] = []
    for spec in plan(2 * (len(SIMPLE_PAIRS) + len(HARD_PAIRS)), seed=0, hard_fraction=0.5):
        lines += gold_turns(make_item(spec, seed=0).task)
    for t in TEMPLATES.values():
        for _ in range(3):
            box = _grid_box(rng)
            lines.append(t.format(box=f"[{box[0]}, {box[1]}, {box[2]}, {box[3]}]"))
    for ans in list(COLORS) + list(SHAPES) + list(SIDES):
        lines += [f"<answer>{ans}</answer>", f"<think>The {ans} shape.</think>"]
    for labels, _ in SIMPLE_PAIRS + HARD_PAIRS:
        lines.append(f"<problem>{D.problem_text(labels)}</problem>")
        for _ in range(4):
            params = {lab: sample_params(lab, rng, with_crop="crop" in labels) for lab in labels}
            box = _grid_box(rng) if "crop" in labels else None
            code = restoration_code(labels, params, box)
            if code:
                lines.append(f"<code>\n```python\n{code}```\n</code>")
    return lines
