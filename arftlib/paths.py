"""Where things live: data shipped inside the package, the repository checkout (when there is one) and the
on-disk cache.

`RESOURCES` is the package's own data folder (`arftlib/resources/`, see its README): the reference's published
predictions, the six MAT-Coding demo examples, the photo question file and published model configs. It is
found from this file's location, so a clone, an editable install and an installed wheel all read the same files;
nothing here depends on a folder beside the repository. The cache (search indexes, tiny models, the real Qwen
tokenizer) defaults to `~/.cache/arft` and moves with `ARFT_CACHE_DIR`. Nothing here creates files at import
time.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES = PACKAGE_DIR / "resources"  # data shipped inside the package
REPO_ROOT = PACKAGE_DIR.parent  # the checkout (runs/ and configs/ live here when working from a clone)
REFERENCE_PREDICTIONS = RESOURCES / "reference_predictions"  # the reference's 14 published result files (.json.gz)
MAT_CODING_DEMO = RESOURCES / "mat_coding_demo"  # six real MAT-Coding examples (coding_case.json + images)
MODEL_CONFIGS = RESOURCES / "model_configs"  # published Qwen-VL config.json files


def cache_dir(*parts: str) -> Path:
    """`$ARFT_CACHE_DIR/<parts>` (default `~/.cache/arft/<parts>`), created on demand."""
    root = Path(os.environ.get("ARFT_CACHE_DIR", Path.home() / ".cache" / "arft"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def reference_prediction_files() -> dict[str, list[Path]]:
    """The reference's published prediction files by benchmark folder (`MAT-Coding`, `MAT-Search`, `2wiki`,
    `hotpotqa`, `musique`, `bamboogle`), sorted by name. Raises if the shipped folder is missing."""
    if not REFERENCE_PREDICTIONS.is_dir():
        raise FileNotFoundError(f"the shipped reference predictions are missing: {REFERENCE_PREDICTIONS}")
    return {d.name: sorted(d.glob("*.json.gz")) for d in sorted(REFERENCE_PREDICTIONS.iterdir()) if d.is_dir()}
