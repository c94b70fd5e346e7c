"""Tasks → TRL-ready training datasets: the paper's step-wise samples and one-row-per-task episodes.

What it does
------------
* `expand_stepwise(task)` decomposes a task's gold chain (`Task.gold_chain`, entries
  `{"action": "problem"|"code"|"search"|"answer", "content": payload, optional "think"}`) into one sample per
  gold step, the way Visual-ARFT trains (`grpo_agent_code.py` / `grpo_agent_search.py`):

  - coding → `pre_problem` (prompt: the question; solution: `<think> … </think>\\n<problem> {…} </problem>`),
    `pre_code` (prompt: question + the diagnosis turn + the reference's `<tips>`; solution: the code turn),
    `pre_answer` (prompt: the whole chain so far; solution: the answer turn). A `none` item has no code step,
    so it gives two rows.
  - search / multihop → one sample per `<search>` step and one for the final `<answer>`, each with the
    partial chain in the prompt: earlier turns followed by their `<information> … </information> ` results.

  Prompts are `prompts.stepwise_messages` (verbatim training head `SYSTEM + "\\n" + "<query> q </query>"`,
  then `"\\n" + context`), with the image block reduced to the `{"type": "image"}` placeholder: TRL's VLM
  path puts the `image` column's PIL image into it (`trl.data_utils.prepare_multimodal_messages`).

* Which image each step sees. `pre_problem` and `pre_code` see the task's input image (`task.images[0]`;
  for crop items that is the original image, as in the reference). `pre_answer` sees the image the gold code
  produced, because the reference evaluation replaces the image in the message with
  `path_to_output_image.jpg` once code has run (prompts.py, "tags" protocol), so the answer step is taken
  after the repair. It is looked up, first found wins: the code step's own `output_image`/`image` entry,
  `task.metadata` keys `restored_image`, `processed_image`, `output_image`, `gold_output_image`, then
  `task.clean_image` (cropped to `metadata["target_box"]` and enlarged ×2 in memory, as the gold crop code
  does, when the task has one) — for `arftlib.data.build` tasks (which store no sandbox output) that is
  the ideal repair, not the gold code's actual JPEG output. A chain without a code step (`none`) keeps the
  input image. The reference's
  released rows carry their own `image_path` per row, so `load_paper_stepwise` uses those as they are.
  Search steps all see the input image (search never changes it).

* Search results in the partial chain, first found wins: the search step's `information` /
  `observation` text, its `hits` (rendered top `k` like the reference), `task.metadata["observations"][i]`
  or `["search_results"][i]` aligned with the chain, else a live query to a search backend (`search=`, a
  `tools.search.Search`; default `load_search("local", corpus=task.metadata.get("corpus"))`, where
  `"wiki"` means the default corpus, as in `arftlib.data.build`).

* Missing `<think>` texts are written from deterministic templates (the generators store payloads only);
  a chain entry with a `think` key, or whose content is already a whole turn (contains its action tag), is
  used as given.

* `stepwise_dataset(tasks, seed)` / `episode_dataset(tasks, seed, protocol)` build `datasets.Dataset`s with
  fixed features; rows are shuffled by `random.Random(seed)`. Images are stored as PNG bytes encoded here
  (no file paths inside the `image` column), so a dataset does not depend on where the images lie.
  `save_datasets` writes both with `save_to_disk` plus `manifest.json` holding `dataset_sha256` digests:
  images hashed by mode, size and pixel bytes, everything else as canonical JSON, with the common folder
  of the tasks' image paths replaced by `<root>` so that the same build in another folder hashes the same.

* `load_paper_stepwise(path, image_root)` reads the paper's own training files (`rft_agent_code_1_2k.json`:
  `{type, image_path, problem, context, solution, gt}`; `rft_agent_search_20.json`:
  `{image_path, problem, solution}`) into the same columns, prompt texts exactly as the reference builds
  them, images resized to 720×720 as the reference does. Records are validated by `arftlib.data.loaders`
  (its `DataError` names file, record and field); a solution that lacks its row's action fails loud too.

Columns (step-wise): `prompt`, `image`, `task` (JSON of the row's `Task`: rewards read the gold step as
`task.gold_chain[step_index]`, never the prompt), `solution`, `step_type` (`pre_problem`/`pre_code`/`pre_answer` for
coding, `search` for every search-family step, as in `prompts.STEP_TYPES`), `gold_action` (the solution's
action: problem/code/search/answer — what rewards dispatch on), `step_index`, `n_steps`, `kind`,
`task_id`, `row_id` (`task_id/step_index`), `benchmark`, `split`, `answers`, `gt` (first answer, the
reference's column), `gold_query` (search steps, else ""), `gold_problem` (diagnosis steps, the canonical
set literal, else ""), `degradations`, `clean_image` (path or None), `input_image` (path of the image in
this row), `context` (the chain text after the query block). Episode rows: `prompt` (initial messages,
`prompts.build_messages(task, protocol, [])`), `image`, `task` (JSON of `Task.to_dict()`), `task_id`,
`kind`, `benchmark`, `split`, `answers`, `degradations`, `clean_image`, `input_image`, `protocol` — the
rows are `arftlib.rows.task_to_row`'s (the environment's `reset(**row)` contract lives there, not here);
extra plain columns it may add later are carried with inferred features.

What it leaves out / reconstructs: the reference's `context` strings and the search rows' partial chains
live only on the model hub; here they are RECONSTRUCTED as the evaluation history at that point (see
prompts.py), so the `<tips>` after a diagnosis and the `<information>` rendering follow the reference
evaluation, not necessarily the released rows byte for byte. The think texts of generated chains are ours.
Tool outputs are pre-computed (nothing is executed here). Images of generated tasks keep their size unless
`image_size=` is given (the reference squashes every training image to 720×720).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from arftlib import prompts as P
from arftlib.parse import parse_action, reference_problems, reference_search_query, reference_turn
from arftlib.rows import placeholder_messages, task_column, task_to_row
from arftlib.turns import gold_turn, problem_labels
from arftlib.types import Task, allowed_actions, grid_box_to_pixels, task_family

__all__ = [
    "CODING_STEP_TYPES",
    "EPISODE_COLUMNS",
    "PAPER_IMAGE_SIZE",
    "STEPWISE_COLUMNS",
    "StepwiseError",
    "dataset_sha256",
    "episode_dataset",
    "episode_row",
    "expand_stepwise",
    "load_datasets",
    "load_paper_stepwise",
    "save_datasets",
    "step_counts",
    "stepwise_dataset",
]

CODING_STEP_TYPES = ("pre_problem", "pre_code", "pre_answer")
_CODING_STEP_OF = {"problem": "pre_problem", "code": "pre_code", "answer": "pre_answer"}
PAPER_IMAGE_SIZE = (720, 720)  # grpo_agent_*.py: PIL.Image.open(image_path).resize((720,720))

STEPWISE_COLUMNS = (
    "prompt", "image", "task", "solution", "step_type", "gold_action", "step_index", "n_steps", "kind", "task_id",
    "row_id", "benchmark", "split", "answers", "gt", "gold_query", "gold_problem", "degradations",
    "clean_image", "input_image", "context",
)
EPISODE_COLUMNS = (
    "prompt", "image", "task", "task_id", "kind", "benchmark", "split", "answers", "degradations",
    "clean_image", "input_image", "protocol",
)
_PATH_COLUMNS = ("clean_image", "input_image")
_OUTPUT_IMAGE_KEYS = ("restored_image", "processed_image", "output_image", "gold_output_image")


class StepwiseError(ValueError):
    """A task cannot be expanded (bad gold chain, missing image or tool output); the message names the
    task id and the chain entry/field."""


# ----------------------------------------------------------------------------------------------------------
# Gold chains
# ----------------------------------------------------------------------------------------------------------
def _check_chain(task: Task) -> list[dict[str, Any]]:
    fam = task_family(task.kind)
    chain = task.gold_chain
    where = f"task {task.id!r}"
    if not isinstance(chain, list) or not chain:
        raise StepwiseError(f"{where}: gold_chain is empty; step-wise expansion needs a gold chain")
    allowed = allowed_actions(task.kind)
    for i, step in enumerate(chain):
        if not isinstance(step, Mapping):
            raise StepwiseError(f"{where}: gold_chain[{i}] is {type(step).__name__}, not a dict")
        if step.get("action") not in allowed:
            raise StepwiseError(f"{where}: gold_chain[{i}]: field 'action' is {step.get('action')!r}; a "
                                f"{task.kind} chain allows {allowed}")
        if not isinstance(step.get("content"), str) or not step["content"].strip():
            raise StepwiseError(f"{where}: gold_chain[{i}]: field 'content' must be a non-empty string")
        if (step["action"] == "answer") != (i == len(chain) - 1):
            raise StepwiseError(f"{where}: gold_chain[{i}]: the chain must end with exactly one 'answer' step")
    if fam == "coding" and chain[0]["action"] != "problem":
        raise StepwiseError(f"{where}: gold_chain[0]: a coding chain starts with a 'problem' step")
    if fam == "coding" and any(s["action"] == "problem" for s in chain[1:]):
        raise StepwiseError(f"{where}: gold_chain: a coding chain has exactly one 'problem' step")
    return [dict(s) for s in chain]


# ----------------------------------------------------------------------------------------------------------
# Images and tool outputs
# ----------------------------------------------------------------------------------------------------------
def _load_image(path: str, size: Sequence[int] | None, where: str) -> Image.Image:
    """RGB copy of an image file (no `filename`, so `datasets` embeds pixels, not a path), optionally resized."""
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise StepwiseError(f"{where}: cannot read image {path!r}: {e}") from None
    if size is not None:
        img = img.resize((int(size[0]), int(size[1])))
    return img


def _crop_enlarge(img: Image.Image, box: Sequence[int]) -> Image.Image:
    """The gold crop code's output in memory: 0–1000 box → pixels with `int(v / 1000 * size)`, ×2 bicubic."""
    out = img.crop(grid_box_to_pixels(box, *img.size))
    return out.resize((out.width * 2, out.height * 2), Image.Resampling.BICUBIC)


def _code_output(task: Task, i: int, step: Mapping[str, Any]) -> tuple[str, Sequence[int] | None]:
    """(path, crop box or None) of the image the model sees after gold code step i (see module docstring)."""
    for key in ("output_image", "image"):
        if step.get(key):
            return str(step[key]), None
    for key in _OUTPUT_IMAGE_KEYS:
        val = task.metadata.get(key)
        if isinstance(val, str) and val:
            return val, None
    if task.clean_image:
        box = task.metadata.get("target_box")
        return task.clean_image, (list(box) if box else None)
    raise StepwiseError(
        f"task {task.id!r}: gold_chain[{i}] is a code step but no processed image is known: give the step an "
        f"'output_image', set task.metadata['restored_image'] or task.clean_image")


def _search_observation(task: Task, i: int, step: Mapping[str, Any], backends: dict[str, Any], search: Any,
                        k: int, with_title: bool = False) -> str:
    for key in ("information", "observation"):
        val = step.get(key)
        if isinstance(val, str) and val:
            return P.format_observation_search(val)
    if isinstance(step.get("hits"), list):
        return P.render_search_hits(step["hits"], k)
    for key in ("observations", "search_results"):
        seq = task.metadata.get(key)
        if isinstance(seq, list) and i < len(seq) and seq[i] is not None:
            val = seq[i]
            return P.render_search_hits(val, k) if isinstance(val, list) else P.format_observation_search(str(val))
    query = parse_action(gold_turn(step, task)).content or str(step["content"]).strip()
    if search is None:
        corpus = task.metadata.get("corpus")
        if corpus in ("wiki", "default", ""):  # build.py's name for the default (Wikipedia) corpus
            corpus = None
        ck = str(corpus or "")
        if ck not in backends:
            from arftlib.tools.search import load_search

            backends[ck] = load_search("local", **({"corpus": corpus} if corpus else {}))
        search = backends[ck]
    try:
        hits = search.search(query, k)
    except Exception as e:  # noqa: BLE001 - data building fails loud, naming the task
        raise StepwiseError(f"task {task.id!r}: gold_chain[{i}]: search for {query!r} failed: {e}") from e
    return P.render_search_hits(hits, k, with_title=with_title)


# ----------------------------------------------------------------------------------------------------------
# Expansion
# ----------------------------------------------------------------------------------------------------------
def _base_row(task: Task) -> dict[str, Any]:
    return {
        "task": task_column(task),
        "kind": task.kind, "task_id": str(task.id), "benchmark": task.benchmark, "split": task.split,
        "answers": [str(a) for a in task.answers], "gt": str(task.answers[0]) if task.answers else "",
        "degradations": [str(d) for d in task.degradations], "clean_image": task.clean_image,
    }


def expand_stepwise(task: Task, *, search: Any = None, k: int = 4, search_with_title: bool = False,
                    image_size: Sequence[int] | None = None, style: str = "reference",
                    _backends: dict | None = None) -> list[dict[str, Any]]:
    """One training row per gold step of `task` (columns: see module docstring; `image` is a PIL image or
    None for text-only tasks). `search` answers search steps whose results the task does not store;
    `k` results are shown per search (the reference and `env.AgentEnv` show 4); `search_with_title` renders
    live hits as `Content:<title>: <text>` (env.py's opt-in variant, not the reference);
    `image_size` resizes every image (None keeps its size)."""
    chain = _check_chain(task)
    fam = task_family(task.kind)
    backends = {} if _backends is None else _backends
    input_path = task.images[0] if task.images else None
    if fam == "coding" and input_path is None:
        raise StepwiseError(f"task {task.id!r}: field 'images' is empty; a coding task needs an input image")
    cache: dict[tuple[str, Any], Image.Image] = {}

    def image_for(path: str | None, box: Sequence[int] | None = None) -> Image.Image | None:
        if path is None:
            return None
        key = (path, tuple(box) if box else None)
        if key not in cache:
            img = _load_image(path, None, f"task {task.id!r}")
            if box:
                img = _crop_enlarge(img, box)
            cache[key] = img.resize((int(image_size[0]), int(image_size[1]))) if image_size else img
        return cache[key]

    labels: list[str] = []
    if fam == "coding":
        labels = problem_labels(gold_turn(chain[0], task))
    context: list[tuple[str, str]] = []
    cur_path, cur_box = input_path, None
    rows: list[dict[str, Any]] = []
    for i, step in enumerate(chain):
        action = step["action"]
        turn = gold_turn(step, task, labels)
        step_type = _CODING_STEP_OF[action] if fam == "coding" else "search"
        ctx = list(context) or None
        messages = P.stepwise_messages(step_type, task, ctx, image=cur_path, style=style)
        head_len = len(P.stepwise_prompt("pre_problem" if fam == "coding" else "search", task, style=style))
        prompt_text = P.stepwise_prompt(step_type, task, ctx, style)
        parsed = parse_action(turn)
        if parsed.kind != action:
            raise StepwiseError(f"task {task.id!r}: gold_chain[{i}]: the gold turn does not parse as "
                                f"{action!r} ({parsed.error or parsed.kind}): {turn[:200]!r}")
        row = {
            "prompt": placeholder_messages(messages),
            "image": image_for(cur_path, cur_box),
            "solution": turn,
            "step_type": step_type,
            "gold_action": action,
            "step_index": i,
            "n_steps": len(chain),
            **_base_row(task),
            "row_id": f"{task.id}/{i}",
            "gold_query": parsed.content if action == "search" else "",
            "gold_problem": parsed.content if action == "problem" else "",
            "input_image": cur_path,
            "context": prompt_text[head_len + 1:] if len(prompt_text) > head_len else "",
        }
        rows.append({c: row[c] for c in STEPWISE_COLUMNS})
        if action == "problem":
            context.append((turn, P.tips_text(reference_problems(turn), style)))
        elif action == "code":
            context.append((turn, ""))
            cur_path, cur_box = _code_output(task, i, step)
        elif action == "search":
            context.append((turn, _search_observation(task, i, step, backends, search, k, search_with_title)))
    return rows


def step_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Rows per `step_type:gold_action` (e.g. `pre_code:code`, `search:search`, `search:answer`), sorted."""
    c = Counter(f"{r['step_type']}:{r['gold_action']}" for r in rows)
    return dict(sorted(c.items()))


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------
def _message_feature():
    from datasets import List, Value

    return List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})


def stepwise_features():
    """The fixed `datasets.Features` of a step-wise dataset."""
    from datasets import Features, Image as ImageF, List, Value

    s = Value("string")
    return Features({
        "prompt": _message_feature(), "image": ImageF(), "task": s, "solution": s, "step_type": s, "gold_action": s,
        "step_index": Value("int32"), "n_steps": Value("int32"), "kind": s, "task_id": s, "row_id": s,
        "benchmark": s, "split": s, "answers": List(s), "gt": s, "gold_query": s, "gold_problem": s,
        "degradations": List(s), "clean_image": s, "input_image": s, "context": s,
    })


def episode_features(extra: Mapping[str, Any] | None = None):
    """The fixed `datasets.Features` of an episode dataset (`extra`: features of columns env.py adds)."""
    from datasets import Features, Image as ImageF, List, Value

    s = Value("string")
    f = {
        "prompt": _message_feature(), "image": ImageF(), "task": s, "task_id": s, "kind": s, "benchmark": s,
        "split": s, "answers": List(s), "degradations": List(s), "clean_image": s, "input_image": s,
        "protocol": s,
    }
    f.update(extra or {})
    return Features(f)


def _png(img: Image.Image | None) -> dict[str, Any] | None:
    """PNG bytes encoded here (deterministic for one Pillow/zlib), stored without a path."""
    if img is None:
        return None
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _encode_images(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    memo: dict[int, dict[str, Any] | None] = {}
    out = []
    for r in rows:
        img = r.get("image")
        if isinstance(img, Image.Image):
            if id(img) not in memo:
                memo[id(img)] = _png(img)
            r = {**r, "image": memo[id(img)]}
        out.append(r)
    return out


def _shuffled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order]


def stepwise_dataset(tasks: Sequence[Task], seed: int, *, search: Any = None, k: int = 4,
                     search_with_title: bool = False, image_size: Sequence[int] | None = None,
                     shuffle: bool = True, style: str = "reference"):
    """All tasks' step-wise rows as a `datasets.Dataset`, in an order shuffled by `random.Random(seed)`."""
    from datasets import Dataset

    from tqdm.auto import tqdm

    backends: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for task in tqdm(list(tasks), desc="step-wise rows", leave=False):
        if str(task.id) in seen:
            raise StepwiseError(f"task id {task.id!r} occurs twice; task ids must be unique")
        seen.add(str(task.id))
        rows.extend(_encode_images(expand_stepwise(task, search=search, k=k, search_with_title=search_with_title,
                                                   image_size=image_size, style=style, _backends=backends)))
    if shuffle:
        rows = _shuffled(rows, seed)
    return Dataset.from_list(rows, features=stepwise_features())


def episode_row(task: Task, protocol: str = "tags", *, image_size: Sequence[int] | None = None,
                style: str = "reference") -> dict[str, Any]:
    """One multi-turn training row for `task`: `arftlib.rows.task_to_row(task, protocol)` — the environment's
    own row format, so `AgentEnv.reset(**row)` rebuilds the task from the `task` JSON column — checked to hold
    every column of `EPISODE_COLUMNS`. Errors name the task."""
    task_family(task.kind)
    try:
        row = task_to_row(task, protocol, image_size=tuple(image_size) if image_size else None, style=style)
    except OSError as e:
        raise StepwiseError(f"task {task.id!r}: {e}") from None
    missing = [c for c in EPISODE_COLUMNS if c not in row]
    if missing:
        raise StepwiseError(f"task {task.id!r}: rows.task_to_row gave no column(s) {missing}")
    return row


def _infer_feature(key: str, value: Any):
    from datasets import List, Value

    if isinstance(value, bool):
        return Value("bool")
    if isinstance(value, int):
        return Value("int64")
    if isinstance(value, float):
        return Value("float64")
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return List(Value("string"))
    if value is None or isinstance(value, str):
        return Value("string")
    raise StepwiseError(f"episode row column {key!r} from rows.task_to_row has type {type(value).__name__}; "
                        f"only str, int, float, bool and list[str] columns are supported here")


def episode_dataset(tasks: Sequence[Task], seed: int, protocol: str = "tags", *,
                    image_size: Sequence[int] | None = None, shuffle: bool = True, style: str = "reference"):
    """One row per task for multi-turn (environment) training, shuffled by `random.Random(seed)`."""
    from datasets import Dataset

    rows = []
    seen: set[str] = set()
    for task in tasks:
        if str(task.id) in seen:
            raise StepwiseError(f"task id {task.id!r} occurs twice; task ids must be unique")
        seen.add(str(task.id))
        rows.append(episode_row(task, protocol, image_size=image_size, style=style))
    rows = _encode_images(rows)
    extra = {}
    for r in rows:
        for key, val in r.items():
            if key not in EPISODE_COLUMNS and key not in extra and val is not None:
                extra[key] = _infer_feature(key, val)
    for r in rows:
        for key in extra:
            r.setdefault(key, None)
    if shuffle:
        rows = _shuffled(rows, seed)
    return Dataset.from_list(rows, features=episode_features(extra))


# ----------------------------------------------------------------------------------------------------------
# Hashing and saving
# ----------------------------------------------------------------------------------------------------------
def _canon(value: Any, root: str | None) -> Any:
    if isinstance(value, Image.Image):
        h = hashlib.sha256(f"{value.mode}|{value.size[0]}x{value.size[1]}|".encode())
        h.update(value.tobytes())
        return {"__image_sha256__": h.hexdigest()}
    if isinstance(value, str):
        return value.replace(root, "<root>") if root else value
    if isinstance(value, Mapping):
        return {str(k): _canon(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v, root) for v in value]
    return value


def dataset_sha256(ds: Any, *, path_root: str | None = None) -> str:
    """SHA-256 of a dataset's canonical serialisation: its features, then every row in order as canonical
    JSON (sorted keys), images replaced by the SHA-256 of their mode, size and pixel bytes, and the folder
    `path_root` (if given) replaced by `<root>` inside every string."""
    h = hashlib.sha256()
    h.update(json.dumps(ds.features.to_dict(), sort_keys=True).encode())
    root = str(path_root).rstrip(os.sep) if path_root else None
    for row in ds:
        h.update(b"\n")
        h.update(json.dumps(_canon(row, root), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
    return h.hexdigest()


def _tasks_root(tasks: Sequence[Task]) -> str | None:
    paths = []
    for t in tasks:
        paths += [os.path.abspath(p) for p in t.images]
        if t.clean_image:
            paths.append(os.path.abspath(t.clean_image))
    if not paths:
        return None
    root = os.path.commonpath(paths)
    return os.path.dirname(root) if len(set(paths)) == 1 else root


def save_datasets(tasks: Sequence[Task], out_dir: str | os.PathLike, seed: int, *, protocol: str = "tags",
                  search: Any = None, k: int = 4, search_with_title: bool = False,
                  image_size: Sequence[int] | None = None) -> dict[str, Any]:
    """Write `out_dir/stepwise` and `out_dir/episodes` (`Dataset.save_to_disk`) and `out_dir/manifest.json`
    (seed, protocol, row counts, step counts and `dataset_sha256` of each, hashed with the tasks' common
    image folder as `<root>`). Returns the manifest. Existing `stepwise`/`episodes` folders are replaced."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = _tasks_root(tasks)
    sw = stepwise_dataset(tasks, seed, search=search, k=k, search_with_title=search_with_title,
                          image_size=image_size)
    ep = episode_dataset(tasks, seed, protocol, image_size=image_size)
    manifest: dict[str, Any] = {"seed": seed, "protocol": protocol, "n_tasks": len(tasks), "search_k": k,
                                "search_with_title": search_with_title,
                                "image_size": list(image_size) if image_size else None}
    for name, ds in (("stepwise", sw), ("episodes", ep)):
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        ds.save_to_disk(str(target))
        manifest[name] = {"rows": len(ds), "sha256": dataset_sha256(ds, path_root=root)}
    manifest["stepwise"]["step_counts"] = step_counts(sw.select_columns(["step_type", "gold_action"]))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def load_datasets(out_dir: str | os.PathLike):
    """`(stepwise, episodes, manifest)` as written by `save_datasets`."""
    from datasets import load_from_disk

    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return load_from_disk(str(out / "stepwise")), load_from_disk(str(out / "episodes")), manifest


# ----------------------------------------------------------------------------------------------------------
# The paper's own training files
# ----------------------------------------------------------------------------------------------------------
_QUERY_RE = re.compile(r"<query>(.*?)</query>", re.DOTALL)


def _paper_kind(path: Path) -> str:
    """"coding" when the file's first record has a `type` field, else "search" (errors: the loaders')."""
    from arftlib.data.loaders import DataError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(path, None, None, None, f"cannot read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, list) or not data:
        raise DataError(path, None, None, None, "expected a non-empty JSON list of records")
    if not isinstance(data[0], dict):
        raise DataError(path, 0, None, None, f"record must be a JSON object, got {type(data[0]).__name__}")
    return "coding" if "type" in data[0] else "search"


def load_paper_stepwise(path: str | os.PathLike, image_root: str | os.PathLike | None = None, *,
                        image_size: Sequence[int] | None = PAPER_IMAGE_SIZE, kind: str | None = None):
    """The paper's step-wise training file as a `datasets.Dataset` with the step-wise columns, in file order.

    Records are read and validated by `arftlib.data.loaders` (`load_code_train` / `load_search_train`:
    `DataError` naming file, record and field; image paths tried under `image_root`, the benchmark image
    folder next to the file, the file's folder, then by file name). On top of that a solution must hold
    the action of its row (`<problem>` for `pre_problem`, …; `<search>`/`<answer>` for search rows).

    Prompt texts are the reference's `make_conversation_image`, verbatim: coding
    `CODING_SYSTEM_PROMPT + "\\n" + problem` for `pre_problem`, `+ "\\n" + context` for `pre_code` /
    `pre_answer` (a list `context` is joined with newlines); search `SEARCH_SYSTEM_PROMPT + "\\n" + problem`.
    `solution` is the row's own text; coding `answers` = `gt`; a search row's `gold_query` is its `<search>`
    and the `answers` of every row of a question are that question's `<answer>` rows. Rows of one question
    share a `task_id` (`<file stem>-<n>`): coding rows are grouped by (problem, gt), search rows by (image
    file name, question inside `<query> … </query>`). Images are resized to `image_size` (the reference's
    720×720; None keeps them). `kind` ("coding" / "search") is inferred from the `type` field when None."""
    from datasets import Dataset

    from arftlib.data.loaders import DataError, load_code_train, load_search_train

    path = Path(path)
    kind = kind or _paper_kind(path)
    if kind not in ("coding", "search"):
        raise ValueError(f"kind must be 'coding' or 'search', not {kind!r}")
    loader = load_code_train if kind == "coding" else load_search_train
    tasks = loader(path, image_root=image_root)
    recs = []
    for t in tasks:
        md = t.metadata
        i = int(md["index"])
        sol = str(md["solution"])
        action = reference_turn(sol).step(kind)  # the reference's reading of its solution
        want = t.gold_chain[0]["action"]
        if action != want:
            raise DataError(path, i, None, "solution", f"a {md.get('step_type')!r} row needs a <{want}> turn, but "
                            f"the reference would read it as {('<' + action + '>') if action else 'nothing'}")
        problem = str(md["problem"])
        if kind == "coding":
            stype = md["step_type"]
            ctx = md.get("context")
            if ctx is None and stype != "pre_problem":
                raise DataError(path, i, None, "context", f"missing field (a {stype!r} row needs its context)")
            if isinstance(ctx, list):
                ctx = "\n".join(str(x) for x in ctx)
            ctx = "" if ctx is None else str(ctx)
            text = P.CODING_SYSTEM_PROMPT + "\n" + problem + ("" if stype == "pre_problem" else "\n" + ctx)
            key = json.dumps([problem, t.answers])
        else:
            stype, ctx = "search", ""
            m = _QUERY_RE.search(problem)
            if m:
                ctx = problem[m.end():].lstrip("\n")
            text = P.SEARCH_SYSTEM_PROMPT + "\n" + problem
            key = json.dumps([Path(t.images[0]).name, t.question])
        recs.append({"i": i, "task": t, "action": action, "solution": sol, "step_type": stype, "context": ctx,
                     "text": text, "key": key})

    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in recs:
        groups.setdefault(rec["key"], []).append(rec)
    gid = {key: n for n, key in enumerate(groups)}
    cache: dict[str, dict[str, Any] | None] = {}
    rows = []
    for rec in recs:
        t: Task = rec["task"]
        group = groups[rec["key"]]
        if kind == "search":
            answers = list(dict.fromkeys(a for g in group for a in g["task"].answers))
            degr: list[str] = []
        else:
            answers = list(t.answers)
            degr = next((reference_problems(g["solution"]) for g in group if g["action"] == "problem"), [])
        img_path = t.images[0]
        if img_path not in cache:
            cache[img_path] = _png(_load_image(img_path, image_size, f"{path}: record {rec['i']}"))
        sol = rec["solution"]
        gold_query = (reference_search_query(sol) or parse_action(sol).content) if rec["action"] == "search" else ""
        gold_problem = ""
        if rec["action"] == "problem":
            gold_problem = "{" + ", ".join(f"'{x}'" for x in reference_problems(sol)) + "}"
        tid = f"{path.stem}-{gid[rec['key']]:04d}"
        step_index = next(n for n, g in enumerate(group) if g is rec)
        # the question's rows as one task whose gold chain is its solutions in file order, so the row's gold step
        # is `gold_chain[step_index]` (rewards read it from the task, as for generated rows)
        group_task = Task(id=tid, question=t.question, images=[img_path], answers=answers, kind=kind, split="train",
                          degradations=list(degr), benchmark=f"paper:{path.name}",
                          gold_chain=[{"action": g["action"], "content": g["solution"]} for g in group],
                          metadata={"source_records": [g["i"] for g in group]})
        rows.append({
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": rec["text"]}]}],
            "image": cache[img_path], "task": task_column(group_task), "solution": sol, "step_type": rec["step_type"], "gold_action": rec["action"],
            "step_index": step_index, "n_steps": len(group), "kind": kind, "task_id": tid,
            "row_id": f"{tid}/{step_index}", "benchmark": f"paper:{path.name}", "split": "train",
            "answers": answers, "gt": answers[0] if answers else "", "gold_query": gold_query,
            "gold_problem": gold_problem, "degradations": degr, "clean_image": None, "input_image": img_path,
            "context": rec["context"],
        })
    return Dataset.from_list(rows, features=stepwise_features())
