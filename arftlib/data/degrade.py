"""Image degradations with the paper's label set, the code that undoes them, and how "restored" is measured.

Labels (MAT-Coding's `type`): rotation90, rotation180, dark, overexposure, blur, noise, crop, none. Every
degradation is randomised in strength by a seeded `numpy.random.Generator` and described by a small params
dict, from which `restoration_code` writes the Python a model would write for it (reads
`path_to_input_image.jpg`, writes `path_to_output_image.jpg`, OpenCV idioms: `cv2.rotate`,
`cv2.convertScaleAbs`, a gamma lookup table, an unsharp mask, `cv2.fastNlMeansDenoisingColored`,
`cv2.medianBlur`, a 0–1000 box crop). The code is run in the sandbox by the generator and the result is
scored against the clean image with `restoration_quality`.

Degradations (strength drawn uniformly in the stated range):
  rotation90    rotated by 90° clockwise or counter-clockwise (direction random); undone by the inverse rotation
  rotation180   rotated by 180°
  dark          linear: x·a, a ∈ [0.2, 0.5]
  overexposure  linear toward white: 255 − (255 − x)·a, a ∈ [0.35, 0.6] (60 %)  |  gamma 255·(x/255)^g,
                g ∈ [0.4, 0.6] (40 %)
  blur          Gaussian, σ ∈ [1.0, 1.8] px (crop combos: [0.6, 1.1], the text is small)
  noise         Gaussian, σ ∈ [10, 25] grey levels (photos: [15, 28]) (75 %)  |  salt-and-pepper, 1–4 %
                of pixels (25 %);
                crop combos: Gaussian σ ∈ [8, 18] only (a median filter thins small serif strokes)
  crop          nothing is done to the pixels: the question names a box on the 0–1000 grid
  none          nothing

Acceptance (`THRESHOLDS`): SSIM and PSNR on the luma channel (ITU-R 601, `skimage.metrics`) between the gold
code's output (decoded from the JPEG q95 the code writes, as the environment sees it) and its target: the clean
image, or for crop items the exact crop of the clean image (`target_image`; crop combos enlarge the crop ×2
before the photometric fix, and the target is enlarged the same way). Photometric repairs cannot be exact
(quantisation of dark pixels, detail lost to blur and to denoising), so they must ALSO beat the degraded image
(geometry undone, `baseline_image`): SSIM is nearly blind to a monotone brightness change on text, so
dark/overexposure must gain PSNR; blur must gain both; noise must gain SSIM (non-local means trades a little
PSNR for structure on textured photos, so PSNR may fall by up to 3 dB). A combined item must pass the weakest
floor and the strictest gain of its labels. The numbers come from measured distributions (a 1,000-task build,
seed 1, worst case per type in brackets):

  label                        SSIM ≥   PSNR ≥    gain over degraded          worst seen (SSIM, PSNR, gains)
  rotation90/180, crop, none   0.95     30 dB     —                           0.989, 43.3 dB (only JPEG loss)
  dark, overexposure           0.85     24 dB     PSNR +6 dB                  0.970, 33.8 dB, +11.9 dB
  blur                         0.75     19 dB     SSIM +0.005 and PSNR +0.5   0.814, 20.1 dB, +0.0096, +0.86 dB
  noise                        0.60     20 dB     SSIM +0.02, PSNR ≥ −3 dB    0.676, 25.3 dB, +0.062

Left out: motion blur, JPEG blocking, perspective warps and other labels the paper does not use; restoring
the exact original (the gold code uses rounded parameters, as a model reading the image would).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from arftlib.types import DEGRADATIONS, grid_box_to_pixels

GEOMETRIC = ("rotation90", "rotation180")
PHOTOMETRIC = ("dark", "overexposure", "blur", "noise")

THRESHOLDS: dict[str, dict[str, float | None]] = {  # None = not checked
    "none": {"min_ssim": 0.95, "min_psnr": 30.0, "min_gain_ssim": None, "min_gain_psnr": None},
    "crop": {"min_ssim": 0.95, "min_psnr": 30.0, "min_gain_ssim": None, "min_gain_psnr": None},
    "rotation90": {"min_ssim": 0.95, "min_psnr": 30.0, "min_gain_ssim": None, "min_gain_psnr": None},
    "rotation180": {"min_ssim": 0.95, "min_psnr": 30.0, "min_gain_ssim": None, "min_gain_psnr": None},
    "dark": {"min_ssim": 0.85, "min_psnr": 24.0, "min_gain_ssim": None, "min_gain_psnr": 6.0},
    "overexposure": {"min_ssim": 0.85, "min_psnr": 24.0, "min_gain_ssim": None, "min_gain_psnr": 6.0},
    "blur": {"min_ssim": 0.75, "min_psnr": 19.0, "min_gain_ssim": 0.005, "min_gain_psnr": 0.5},
    "noise": {"min_ssim": 0.60, "min_psnr": 20.0, "min_gain_ssim": 0.02, "min_gain_psnr": -3.0},
}
assert set(THRESHOLDS) == set(DEGRADATIONS)

# Combinations allowed in hard items: a geometric or crop label with one photometric label. (Crop boxes are
# given on the original image, so crop is never combined with a rotation.)
HARD_COMBOS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a in ("rotation90", "rotation180", "crop") for b in PHOTOMETRIC
)


def problem_text(labels: Sequence[str]) -> str:
    """The `<problem>` payload for a label list, canonical as `parse.py` writes it: `{'dark', 'rotation90'}`."""
    return "{" + ", ".join(f"'{x}'" for x in sorted(labels)) + "}"


# ----------------------------------------------------------------------------------------------- degrade
def sample_params(label: str, rng: np.random.Generator, small_text: bool = False, photo: bool = False) -> dict[str, Any]:
    """Random strength parameters for one label (rounded, so they are stable in JSON). `small_text`
    (crop combos: the question is about a small region) keeps blur and noise milder and noise Gaussian,
    so the enlarged crop stays legible after repair; `photo` draws Gaussian noise stronger than the
    photos' own grain (below σ ≈ 15 a denoiser cannot tell the two apart, so no repair is verifiable)."""
    if label == "rotation90":
        return {"direction": "cw" if rng.random() < 0.5 else "ccw"}
    if label == "dark":  # (a gamma darkening crushes dark ink irreversibly; under-exposure is ~linear)
        return {"mode": "linear", "a": round(float(rng.uniform(0.2, 0.5)), 3)}
    if label == "overexposure":
        if rng.random() < 0.6:
            return {"mode": "linear", "a": round(float(rng.uniform(0.35, 0.6)), 3)}
        return {"mode": "gamma", "g": round(float(rng.uniform(0.4, 0.6)), 3)}
    if label == "blur":
        lo, hi = (0.6, 1.1) if small_text else (1.0, 1.8)
        return {"sigma": round(float(rng.uniform(lo, hi)), 3)}
    if label == "noise":
        if small_text:
            return {"mode": "gaussian", "sigma": round(float(rng.uniform(8.0, 18.0)), 2)}
        if rng.random() < 0.75:
            lo, hi = (15.0, 28.0) if photo else (10.0, 25.0)
            return {"mode": "gaussian", "sigma": round(float(rng.uniform(lo, hi)), 2)}
        return {"mode": "salt_pepper", "amount": round(float(rng.uniform(0.01, 0.04)), 4)}
    if label in ("rotation180", "crop", "none"):
        return {}
    raise ValueError(f"unknown degradation label {label!r}; use one of {DEGRADATIONS}")


def _gamma(img: np.ndarray, g: float) -> np.ndarray:
    table = np.round(((np.arange(256) / 255.0) ** g) * 255.0).clip(0, 255).astype(np.uint8)
    return table[img]


def apply_one(img: np.ndarray, label: str, params: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Apply one degradation to an H×W×3 uint8 array (returns a new array)."""
    import cv2

    if label == "rotation90":
        return np.ascontiguousarray(np.rot90(img, k=-1 if params["direction"] == "cw" else 1))
    if label == "rotation180":
        return np.ascontiguousarray(img[::-1, ::-1])
    if label in ("crop", "none"):
        return img.copy()
    if label == "dark":
        if params["mode"] == "linear":
            return np.round(img.astype(np.float32) * params["a"]).clip(0, 255).astype(np.uint8)
        return _gamma(img, params["g"])
    if label == "overexposure":
        if params["mode"] == "linear":
            return np.round(255.0 - (255.0 - img.astype(np.float32)) * params["a"]).clip(0, 255).astype(np.uint8)
        return _gamma(img, params["g"])
    if label == "blur":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=params["sigma"], sigmaY=params["sigma"])
    if label == "noise":
        if params["mode"] == "gaussian":
            noisy = img.astype(np.float32) + rng.normal(0.0, params["sigma"], size=img.shape).astype(np.float32)
            return np.round(noisy).clip(0, 255).astype(np.uint8)
        out = img.copy()
        mask = rng.random(img.shape[:2])
        out[mask < params["amount"] / 2] = 0
        out[mask > 1 - params["amount"] / 2] = 255
        return out
    raise ValueError(f"unknown degradation label {label!r}; use one of {DEGRADATIONS}")


def degrade(img: np.ndarray, labels: Sequence[str], params: dict[str, dict[str, Any]],
            rng: np.random.Generator) -> np.ndarray:
    """Apply the photometric labels first, then the geometric one (a photo taken badly, then stored rotated)."""
    out = img
    for lab in sorted(labels, key=lambda x: x in GEOMETRIC):
        out = apply_one(out, lab, params.get(lab, {}), rng)
    return out


def crop_array(img: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """The pixels inside a 0–1000 grid box."""
    x0, y0, x1, y1 = grid_box_to_pixels(box, img.shape[1], img.shape[0])
    return np.ascontiguousarray(img[y0:y1, x0:x1])


def target_image(clean: np.ndarray, box: Sequence[int] | None = None, scale: int = 1) -> np.ndarray:
    """What the gold code should produce from the clean image: itself, or its crop by `box` (0–1000 grid),
    enlarged ×`scale` with cubic interpolation when the gold code enlarges it (crop combos)."""
    if box is None:
        return clean
    img = crop_array(clean, box)
    if scale != 1:
        import cv2

        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    return img


def baseline_image(degraded: np.ndarray, labels: Sequence[str], params: dict[str, dict[str, Any]],
                   box: Sequence[int] | None = None) -> np.ndarray:
    """The degraded image with only its geometry undone in-process (rotation back, crop taken): what the
    photometric repair is compared against in the gain check."""
    img = degraded
    if "rotation90" in labels:
        img = np.ascontiguousarray(np.rot90(img, k=1 if params["rotation90"]["direction"] == "cw" else -1))
    elif "rotation180" in labels:
        img = np.ascontiguousarray(img[::-1, ::-1])
    if "crop" in labels:
        assert box is not None
        img = crop_array(img, box)
        if len(labels) > 1:  # the gold code enlarges the crop before its photometric fix: do the same
            import cv2

            img = cv2.resize(img, None, fx=CROP_SCALE, fy=CROP_SCALE, interpolation=cv2.INTER_CUBIC)
    return img


# ------------------------------------------------------------------------------------ restoration code
def _fmt(x: float, nd: int = 2) -> str:
    return f"{round(float(x), nd):g}"


def _code_lines(label: str, p: dict[str, Any], box: Sequence[int] | None, scale: int = 1) -> list[str]:
    """Code for one label; `scale` = how much the image was enlarged before this step (crop combos)."""
    if label == "rotation90":
        flag = "cv2.ROTATE_90_COUNTERCLOCKWISE" if p["direction"] == "cw" else "cv2.ROTATE_90_CLOCKWISE"
        return ["# the content is turned sideways: rotate it back upright", f"img = cv2.rotate(img, {flag})"]
    if label == "rotation180":
        return ["# the image is upside down", "img = cv2.rotate(img, cv2.ROTATE_180)"]
    if label == "dark":
        if p["mode"] == "linear":
            return ["# brighten the under-exposed image",
                    f"img = cv2.convertScaleAbs(img, alpha={_fmt(1.0 / p['a'])}, beta=0)"]
        return ["# gamma correction to lift the shadows",
                f"gamma = {_fmt(p['g'])}",
                "table = np.array([((i / 255.0) ** (1.0 / gamma)) * 255 for i in range(256)]).clip(0, 255).astype('uint8')",
                "img = cv2.LUT(img, table)"]
    if label == "overexposure":
        if p["mode"] == "linear":
            alpha = 1.0 / p["a"]
            return ["# stretch the washed-out range back down from white",
                    f"img = cv2.convertScaleAbs(img, alpha={_fmt(alpha)}, beta={_fmt(-255.0 * (alpha - 1.0), 1)})"]
        return ["# gamma correction to recover the highlights",
                f"gamma = {_fmt(p['g'])}",
                "table = np.array([((i / 255.0) ** (1.0 / gamma)) * 255 for i in range(256)]).clip(0, 255).astype('uint8')",
                "img = cv2.LUT(img, table)"]
    if label == "blur":
        return ["# sharpen with an unsharp mask",
                f"blurred = cv2.GaussianBlur(img, (0, 0), {_fmt(p['sigma'] * scale, 1)})",
                "img = cv2.addWeighted(img, 2.5, blurred, -1.5, 0)"]
    if label == "noise":
        if p["mode"] == "gaussian":
            h = int(round(p["sigma"] * (0.8 if scale == 1 else 0.6)))
            return ["# remove the grain with non-local means",
                    f"img = cv2.fastNlMeansDenoisingColored(img, None, {h}, {h}, 7, 21)"]
        return ["# remove salt-and-pepper specks", f"img = cv2.medianBlur(img, {3 if scale == 1 else 5})"]
    if label == "crop":
        assert box is not None
        x1, y1, x2, y2 = box
        lines = ["# crop the region named by the 0-1000 box",
                 "h, w = img.shape[:2]",
                 f"x1, y1, x2, y2 = {x1}, {y1}, {x2}, {y2}",
                 "x_min, y_min = int(x1 / 1000 * w), int(y1 / 1000 * h)",
                 "x_max, y_max = int(x2 / 1000 * w), int(y2 / 1000 * h)",
                 "img = img[y_min:y_max, x_min:x_max]"]
        if scale > 1:
            lines += ["# enlarge the small region before cleaning it up",
                      f"img = cv2.resize(img, None, fx={scale}, fy={scale}, interpolation=cv2.INTER_CUBIC)"]
        return lines
    if label == "none":
        return []
    raise ValueError(f"unknown degradation label {label!r}; use one of {DEGRADATIONS}")


CROP_SCALE = 2  # crop combos enlarge the crop before the photometric fix (small text)


def restoration_code(labels: Sequence[str], params: dict[str, dict[str, Any]], box: Sequence[int] | None = None) -> str:
    """Python source that undoes `labels`: the rotation first, or the crop first (enlarged ×2 when a
    photometric fix follows), then the photometric fix."""
    order = sorted(labels, key=lambda x: x not in GEOMETRIC and x != "crop")
    scale = CROP_SCALE if "crop" in labels and len(labels) > 1 else 1
    body: list[str] = []
    for lab in order:
        body += _code_lines(lab, params.get(lab, {}), box, scale if lab == "crop" or "crop" in labels else 1)
    uses_np = any("np." in ln for ln in body)
    head = ["import cv2"] + (["import numpy as np"] if uses_np else []) + ["",
            "img = cv2.imread('path_to_input_image.jpg')"]
    return "\n".join(head + body + ["cv2.imwrite('path_to_output_image.jpg', img)"]) + "\n"


# ------------------------------------------------------------------------------------------- measuring
def luma(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of an RGB uint8 array, float64 in 0–255."""
    a = img.astype(np.float64)
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(SSIM, PSNR dB) of two RGB arrays on luma; `a` is resized (area) to `b`'s size when they differ."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if a.shape[:2] != b.shape[:2]:
        import cv2

        a = cv2.resize(a, (b.shape[1], b.shape[0]), interpolation=cv2.INTER_AREA)
    la, lb = luma(a), luma(b)
    ssim = float(structural_similarity(la, lb, data_range=255.0))
    mse = float(np.mean((la - lb) ** 2))
    psnr = 99.0 if mse == 0 else float(peak_signal_noise_ratio(lb, la, data_range=255.0))
    return ssim, min(psnr, 99.0)


@dataclass
class Quality:
    ssim: float
    psnr: float
    baseline_ssim: float | None  # degraded image (geometry undone) vs target; None when no gain is required
    baseline_psnr: float | None
    ok: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        r = lambda x, nd: None if x is None else round(x, nd)  # noqa: E731
        return {"ssim": r(self.ssim, 4), "psnr": r(self.psnr, 2), "baseline_ssim": r(self.baseline_ssim, 4),
                "baseline_psnr": r(self.baseline_psnr, 2), "ok": self.ok, "reason": self.reason}


def thresholds_for(labels: Sequence[str]) -> dict[str, float | None]:
    """The acceptance rule for a label set: the weakest floors and the strictest gains among its labels
    (a gain that no label asks for is None = not checked)."""
    labs = list(labels) or ["none"]

    def strictest(key: str) -> float | None:
        vals = [THRESHOLDS[x][key] for x in labs if THRESHOLDS[x][key] is not None]
        return max(vals) if vals else None

    return {"min_ssim": min(THRESHOLDS[x]["min_ssim"] for x in labs),
            "min_psnr": min(THRESHOLDS[x]["min_psnr"] for x in labs),
            "min_gain_ssim": strictest("min_gain_ssim"), "min_gain_psnr": strictest("min_gain_psnr")}


def restoration_quality(restored: np.ndarray, target: np.ndarray, labels: Sequence[str],
                        baseline: np.ndarray | None = None) -> Quality:
    """Score a restored image against its target (the clean image, or the clean crop) under `thresholds_for`;
    `baseline` (see `baseline_image`) is needed when a label requires a gain."""
    th = thresholds_for(labels)
    ssim, psnr = similarity(restored, target)
    bs = bp = None
    problems = []
    if th["min_gain_ssim"] is not None or th["min_gain_psnr"] is not None:
        if baseline is None:
            raise ValueError(f"labels {list(labels)} need a baseline image for the gain check")
        bs, bp = similarity(baseline, target)
        if th["min_gain_ssim"] is not None and ssim - bs < th["min_gain_ssim"]:
            problems.append(f"SSIM gain {ssim - bs:.4f} over the degraded image < {th['min_gain_ssim']}")
        if th["min_gain_psnr"] is not None and psnr - bp < th["min_gain_psnr"]:
            problems.append(f"PSNR gain {psnr - bp:.2f} dB over the degraded image < {th['min_gain_psnr']}")
    if ssim < th["min_ssim"]:
        problems.insert(0, f"SSIM {ssim:.4f} < {th['min_ssim']}")
    if psnr < th["min_psnr"]:
        problems.insert(0, f"PSNR {psnr:.2f} < {th['min_psnr']}")
    return Quality(ssim, psnr, bs, bp, not problems, "; ".join(problems) or "ok")
