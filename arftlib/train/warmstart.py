"""The cold-start warm start, cached: supervised fine-tuning on gold data before RL, done once per recipe.

Agentic RL of a policy that never acts well gets no signal (DeepEyesV2: "RL alone fails" without a cold start);
the field's remedy is a short supervised stage on gold behaviour first. `warm_start(cfg, tasks, recipe)` builds
its supervised data from the training tasks' gold chains — as the step-wise rows of the run's format
(`train.datasets.make_dataset(..., "stepwise")`: each gold turn with the conversation before it, tools replayed) —
chooses which steps to keep (`WarmStartRecipe`: the whole gold episode of only `tool_episode_fraction` of the
tasks, so tool use is shown but not mastered; optionally every other task's answer step too), adds clean-image
direct answers (`clean_answers`: each question on its clean image, answered at once — the policy learns to see
from short rows), fine-tunes (`train.sft.sft_warm_start`) — after an optional first "seeing" stage on the clean
answers alone (`seeing_steps`; a random policy needs hundreds of steps before its answers depend on the image at
all, and these short rows are the cheap way to give them; the stage is cached on its own) — and caches the result under
`cache_dir("warm-starts", <key>)`, the key hashing the recipe, the model, the config fields that shape the data
and the tasks. A second call with the same inputs returns the cached model at once (`reused: True`), which is
how `make reproduce`, the notebooks and the tests share one warm start.

It is reported as what it is — supervised learning on gold episodes — with its data and steps in `warm_start.json`
next to the weights; every "before" number measured after it is the warm start's.

Left out: rejection-sampled or self-generated SFT data, and mixing tool forms (tag actions vs JSON tool calls) in
one warm start; the two layouts of the tag actions (chat and the paper's tags) can be mixed (`tags_rows`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from arftlib.config import RunConfig
    from arftlib.types import Task

__all__ = ["WarmStartRecipe", "warm_start", "warm_start_key"]

MARKER = "warm_start.json"  # written last: its presence means the warm start completed


@dataclasses.dataclass(frozen=True)
class WarmStartRecipe:
    steps: int = 150  # optimizer steps of supervised fine-tuning (~7 min for the micro world on 2 cores)
    learning_rate: float = 1e-3  # AdamW, constant (a policy trained from scratch wants large steps)
    batch_size: int = 32  # rows per step
    tool_episode_fraction: float = 0.15  # share of tasks whose tool steps (diagnosis, code, search) and answer
    # after them are shown: tool use is shown, not mastered, so RL has something to improve
    answer_steps: bool = False  # True: also every OTHER task's answer step after its gold tools (long rows; a
    # 250-step warm start with them was measured worse, see the README's learning table)
    diagnosis_steps: bool = False  # True: also every OTHER task's diagnosis step (`<problem>`: the degraded image and
    # the question → the degradation labels; short rows). With 15 % of episodes shown, the default warm start never
    # named rotation180 (0 of 8 held-out) and added labels that are not there, and its code follows its diagnosis.
    # Measured (notebook 04's recipe, 8-min agentic draw): the 680 short rows dilute the code rows, so the warm start's
    # code turns break (6 of 33 run; F1 8.33, was 23.33) and GRPO mends them (57 of 57 run; F1 23.33, +15.0)
    clean_answers: bool = True  # add, per task with a clean image (not a zoom task), the question on the CLEAN
    # image answered at once: teaches the policy to see (short rows, cheap) without showing it tool use
    seeing_steps: int = 0  # a first stage of this many steps on the clean-image answers ALONE (short rows, ~2.5× cheaper
    # per step than the mixed rows): a random policy needs hundreds of steps before its answers depend on the image
    # (measured: 150 mixed steps left it answering one word per question type, at chance on clean images)
    seeing_batch_size: int = 32  # rows per step of the seeing stage
    seeing_filler_words: int = 0  # > 0: each seeing row gets 0..N neutral words (`FILLER_WORDS`, drawn per row) between
    # the image and the question, in `seeing_copies` copies of every clean question, so the answer is read at varied
    # distances from the image, as the answer turn of an episode reads it. Measured (README "Where the reading is
    # tied", 350 steps, 60 words, 3 copies): Qwen3-VL `seeing` (position in its patches' content) 100 % position at
    # turn one and 69 of 70 after a gold repair; `seeing-grid` (position only as rotary phase) did not learn position
    seeing_copies: int = 1  # each clean question this many times in the seeing stage (with its own filler each time)
    seeing_bare_answers: bool = True  # the seeing stage's rows are "<answer> X </answer>", no think before the word
    # (a think there slows learning to see several times: `experiments/micro_probe.py --answer-form`); the gold-steps
    # stage then teaches the think-first format. Measured (150 seeing steps, 136 s): clean colour 57 % bare vs one
    # answer per type with the think; 60 % still after the 150 gold-steps steps
    reading_steps: int = 0  # micro-search: a first stage of this many steps on the answer steps ALONE (question, gold
    # searches and their hits → the answer), each row's names re-drawn from the world's pools
    # (`micro_search.relabel_names`): only reading the hits answers such a row — memorising the training facts, which
    # the gold-steps stage alone invites (the answer step of `experiments/reading_probe.py --names fixed`: train 100 %,
    # held-out 0 %), does not
    reading_batch_size: int = 32  # rows per step of the reading stage
    row_mean_loss: bool = False  # True: every row weighs the same in the loss (`train.sft.row_mean_nll`); False: TRL's
    # mean over all completion tokens, where a clean answer row counts ~1/5 of a code row. Measured (micro-coding seed 0,
    # 60 held-out): True left the 150-step warm start as blind (one answer per type) and moved F1 20.0 → 26.7 (noise)
    tags_rows: bool = False  # chat runs: ALSO every kept gold step (not the clean answers) written in the paper's `tags`
    # protocol (the whole history in one user message, the image replaced by the one the gold code produced), so the
    # policy acts in both layouts and `eval --protocol tags` scores it in the reference's own form; agentic GRPO then
    # trains the chat layout only. False: chat rows only (such a policy scores 0 in the tags layout)
    full: bool = True  # full fine-tuning (a random tiny model cannot learn through LoRA alone); False = LoRA
    seed: int = 0  # which tasks show their tool steps, and the SFT data order


# recipe fields added after key version 1, with their defaults (a field at its default stays out of the key)
_LATER_FIELDS = {"reading_steps": 0, "reading_batch_size": 32, "tags_rows": False, "seeing_filler_words": 0,
                 "seeing_copies": 1, "diagnosis_steps": False}
# neutral words (no answer, colour, shape or side among them) a seeing row's filler is drawn from
FILLER_WORDS = tuple("look at the image and read it then answer step code restore tool turn".split())


def _task_digest(tasks: Sequence["Task"]) -> str:
    h = hashlib.sha256()
    for t in tasks:
        d = t.to_dict()
        d["images"] = [Path(p).name for p in d["images"]]  # where a build lies must not change the key
        d["clean_image"] = Path(d["clean_image"]).name if d.get("clean_image") else None
        if isinstance(d.get("metadata"), dict) and "corpus" in d["metadata"]:
            d["metadata"] = {**d["metadata"], "corpus": Path(str(d["metadata"]["corpus"])).name}
        h.update(json.dumps(d, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Process-pool initializer: a daemon thread ends this worker once its parent `parent_pid` is gone. A killed
    notebook kernel or script must not leave its isolated warm start training on, holding the cores (one did,
    for 40 minutes, beside a CI run)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _config_digest(model_path: str | os.PathLike) -> str:
    """SHA-256 of a model folder's `config.json` (sorted keys; the transformers version that wrote it left out)."""
    file = Path(model_path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: a warm start's model folder needs its config.json")
    config = json.loads(file.read_text(encoding="utf-8"))
    config.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def warm_start_key(cfg: "RunConfig", tasks: Sequence["Task"], recipe: WarmStartRecipe, model_path: str) -> str:
    """The cache key: recipe, model (its weights and its architecture config), data-shaping config fields and
    tasks. The config counts because two models can share every weight and differ in what has none: the `seeing`
    and `seeing-grid` tiny models differ only in their rotary layout."""
    from arftlib.models import weights_digest

    fields = {k: getattr(cfg, k) for k in ("protocol", "prompt_style", "tool_format", "image_size", "min_pixels",
                                           "max_pixels", "max_turns", "search_k", "torch_dtype", "lora_r",
                                           "lora_alpha", "lora_target_modules")}
    if cfg.question_after_image:  # shapes the gold rows' code observations; keys cached without it stay valid
        fields["question_after_image"] = True
    spec = {k: v for k, v in dataclasses.asdict(recipe).items()  # fields added later enter the key only when set,
            if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}  # so every warm start cached before stays valid
    blob = json.dumps({"recipe": spec, "fields": fields, "tasks": _task_digest(tasks),
                       "model": weights_digest(model_path), "model_config": _config_digest(model_path), "version": 1},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def bare_answer_task(clean: "Task") -> "Task":
    """A clean-answer task whose gold turn is `<answer> X </answer>` alone, no think before it (the seeing stage's
    `seeing_bare_answers` rows)."""
    step = {"action": "answer", "content": f"<answer> {clean.answers[0]} </answer>"}
    return dataclasses.replace(clean, gold_chain=[step])


def seeing_rows_tasks(clean: Sequence["Task"], recipe: WarmStartRecipe) -> list["Task"]:
    """The seeing stage's tasks: each clean question `recipe.seeing_copies` times (bare answers when
    `seeing_bare_answers`), with `0..seeing_filler_words` words of `FILLER_WORDS` before the question (drawn per
    row, seeded by `recipe.seed`), so the image-to-answer distance varies from row to row.

    >>> from arftlib.types import Task
    >>> t = Task(id="a~clean", question="What colour?", images=["x.png"], answers=["red"], kind="coding")
    >>> rows = seeing_rows_tasks([t], WarmStartRecipe(seeing_filler_words=5, seeing_copies=3))
    >>> [r.id for r in rows], all(r.question.endswith("What colour?") for r in rows)
    (['a~clean~c0', 'a~clean~c1', 'a~clean~c2'], True)
    """
    if recipe.seeing_copies < 1 or recipe.seeing_filler_words < 0:
        raise ValueError(f"WarmStartRecipe: seeing_copies must be >= 1 and seeing_filler_words >= 0, not "
                         f"{recipe.seeing_copies} / {recipe.seeing_filler_words}")
    rng = random.Random(recipe.seed)
    out = []
    for copy in range(recipe.seeing_copies):
        for c in clean:
            row = bare_answer_task(c) if recipe.seeing_bare_answers else c
            n = rng.randint(0, recipe.seeing_filler_words) if recipe.seeing_filler_words else 0
            question = " ".join([rng.choice(FILLER_WORDS) for _ in range(n)] + [row.question])
            out.append(dataclasses.replace(row, id=f"{row.id}~c{copy}" if recipe.seeing_copies > 1 else row.id,
                                           question=question))
    return out


def clean_answer_task(task: "Task") -> "Task | None":
    """`task` asked on its clean image and answered at once (one gold step, no tool): a warm-start row that
    teaches seeing. None when the task has no clean image or needs a crop (its clean image is the whole scene,
    where the boxed detail is too small to see)."""
    if not task.clean_image or "crop" in task.degradations:
        return None
    meta = {**task.metadata, "needs_tool": False, "params": {}}
    return dataclasses.replace(task, id=f"{task.id}~clean", images=[task.clean_image], degradations=[],
                               gold_chain=[{"action": "answer", "content": task.answers[0]}], metadata=meta)


def _select(ds: Any, recipe: WarmStartRecipe) -> Any:
    """Every answer step (when `answer_steps`), every diagnosis step (when `diagnosis_steps`), and every step of
    `tool_episode_fraction` of the tasks."""
    ids = sorted(set(ds["task_id"]))
    rng = random.Random(recipe.seed)
    rng.shuffle(ids)
    shown = set(ids[: int(round(recipe.tool_episode_fraction * len(ids)))])
    keep = [i for i, (tid, action) in enumerate(zip(ds["task_id"], ds["gold_action"]))
            if tid in shown or (recipe.answer_steps and action == "answer")
            or (recipe.diagnosis_steps and action == "problem")]
    if not keep:
        raise ValueError("the warm-start recipe keeps no row (no answer steps and no tool episodes)")
    return ds.select(keep)


def _reading_rows(all_rows: Any, recipe: WarmStartRecipe) -> Any:
    """`recipe.reading_steps × reading_batch_size` answer-step rows drawn from `all_rows` (every task's), each
    relabelled with its own random name permutation (`micro_search.relabel_names`) over its prompt's texts, its
    gold step and its answers."""
    from arftlib.data.micro_search import BENCHMARK, relabel_names

    answers = [i for i, a in enumerate(all_rows["gold_action"]) if a == "answer"]
    others = sorted({b for b in all_rows["benchmark"] if b != BENCHMARK})
    if others or not answers:
        raise ValueError(f"reading_steps needs micro-search tasks (their names come from its pools), not {others or 'none'}")
    rng = random.Random(recipe.seed)
    idx: list[int] = []
    while len(idx) < recipe.reading_steps * recipe.reading_batch_size:  # every answer step once per pass
        idx += rng.sample(answers, len(answers))
    idx = idx[: recipe.reading_steps * recipe.reading_batch_size]

    def relabel(row: dict[str, Any], i: int) -> dict[str, Any]:
        blocks = [(m, j) for m in row["prompt"] for j, b in enumerate(m["content"]) if b.get("text") is not None]
        texts = [m["content"][j]["text"] for m, j in blocks] + [row["solution"], row["task"], *row["answers"]]
        new = relabel_names(texts, random.Random(recipe.seed * 1_000_003 + i))
        for (m, j), t in zip(blocks, new):
            m["content"][j]["text"] = t
        k = len(blocks)
        return {"prompt": row["prompt"], "solution": new[k], "task": new[k + 1], "answers": new[k + 2:],
                "gold_action": "answer_relabelled"}

    return all_rows.select(idx).map(relabel, with_indices=True, desc="reading rows (names re-drawn)")


def _as_chat_columns(tags_rows: Any, like: Any) -> Any:
    """Step-wise rows of the `tags` protocol (one `image`) in the chat rows' columns (`images` list, `protocol`), so
    both layouts train in one SFT stage."""
    def convert(r: dict[str, Any]) -> dict[str, Any]:
        return {"images": [r["image"]], "row_id": f"{r['row_id']}/tags", "protocol": "tags"}

    return tags_rows.map(convert, desc="tags rows").select_columns(list(like.features)).cast(like.features)


def _publish(src: str | os.PathLike, final: Path) -> None:
    """Move a finished model folder to its cache place (replacing an unfinished one left there)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(src, final)


def _seeing_stage(cfg: "RunConfig", clean: Sequence["Task"], clean_rows: Any, tasks: Sequence["Task"],
                  recipe: WarmStartRecipe, base: str, *, cache: bool, work: Path,
                  callbacks: Sequence[Any]) -> dict[str, Any]:
    """The seeing stage (clean-image answers alone, `recipe.seeing_steps` steps), cached on its own under
    `cache_dir("warm-starts", "seeing-<key>")` so recipes that differ only in the later stage share it."""
    from arftlib.paths import cache_dir
    from arftlib.train.sft import sft_warm_start

    stage_recipe = WarmStartRecipe(steps=0, learning_rate=recipe.learning_rate, batch_size=recipe.seeing_batch_size,
                                   tool_episode_fraction=0.0, answer_steps=False, clean_answers=True,
                                   seeing_steps=recipe.seeing_steps, seeing_bare_answers=recipe.seeing_bare_answers,
                                   seeing_filler_words=recipe.seeing_filler_words, seeing_copies=recipe.seeing_copies,
                                   row_mean_loss=recipe.row_mean_loss, full=True, seed=recipe.seed)
    # its rows are one turn (no tool observation): question_after_image does not shape them, so keep it out of the key
    key = warm_start_key(cfg.replace(question_after_image=False), tasks, stage_recipe, base)
    final = cache_dir("warm-starts") / f"seeing-{key}"
    marker = final / MARKER
    if cache and marker.is_file():  # the folder, not the path recorded in it: a moved cache still works
        return {**json.loads(marker.read_text(encoding="utf-8")), "model": str(final), "reused": True}
    if recipe.seeing_bare_answers or recipe.seeing_filler_words or recipe.seeing_copies > 1:  # built only when the
        from arftlib.train.datasets import make_dataset  # stage runs (a cached stage needs no rows)

        clean_rows = make_dataset(seeing_rows_tasks(clean, recipe), cfg, "stepwise", seed=recipe.seed)
    res = sft_warm_start(cfg, clean_rows, work / "seeing", max_steps=recipe.seeing_steps,
                         learning_rate=recipe.learning_rate, batch_size=recipe.seeing_batch_size, model=base, full=True,
                         callbacks=callbacks, row_mean_loss=recipe.row_mean_loss)
    info = {"stage": "seeing", "rows": len(clean_rows), "steps": res["steps"], "seconds": res["seconds"],
            "loss": res["loss"], "loss_curve": res["loss_curve"], "model": res["model"]}
    if not cache:
        return {**info, "reused": False}
    _publish(res["model"], final)
    info["model"] = str(final)
    marker.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return {**info, "reused": False}


def warm_start(cfg: "RunConfig", tasks: Sequence["Task"], recipe: WarmStartRecipe = WarmStartRecipe(), *,
               model: str | None = None, cache: bool = True, out_dir: str | os.PathLike | None = None,
               callbacks: Sequence[Any] = (), isolated: bool = False) -> dict[str, Any]:
    """Fine-tune the run's model on gold steps of `tasks` (see the module docstring) and return `{"model": path,
    "adapter": path or None (LoRA warm starts), "reused": bool, "key", "rows", "rows_by_action", "steps", "seconds", "loss", "loss_curve", "recipe"}` (also in
    `<path>/warm_start.json`). `cache=False` always trains (into `out_dir`); `callbacks` go to the SFT trainer
    (e.g. a wall-clock stop). `isolated=True` trains in a fresh child process (spawn) and returns its result: a
    process that goes on to GRPO after training the warm start itself ran its agentic steps 1.28× slower (median
    per step over the same, seed-identical episodes: notebook 04 in `make reproduce` with the cache empty vs
    `python -m arftlib compare` reusing the cached warm start) — fewer steps in a wall-clock budget."""
    if isolated and callbacks:
        raise ValueError("isolated=True trains in a child process: callbacks cannot go there")
    from arftlib.models import model_path_for
    from arftlib.paths import cache_dir
    from arftlib.train.datasets import make_dataset
    from arftlib.train.sft import sft_warm_start

    base = model_path_for(cfg, model)
    key = warm_start_key(cfg, tasks, recipe, base)
    final = Path(out_dir) if (out_dir is not None and not cache) else cache_dir("warm-starts") / key
    marker = final / MARKER
    if cache and marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        return {**info, "reused": True}
    if isolated:  # the child finds no cached copy either and trains
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            return pool.submit(warm_start, cfg, list(tasks), recipe, model=model, cache=cache,
                               out_dir=out_dir).result()
    if recipe.tags_rows and cfg.protocol != "chat":
        raise ValueError(f"tags_rows adds the tags layout to a chat run; this run's protocol is {cfg.protocol!r}")
    if (recipe.seeing_steps or recipe.reading_steps) and not recipe.full:
        raise ValueError("seeing_steps / reading_steps need full=True (those stages fine-tune the whole model)")
    t0 = time.perf_counter()
    all_rows = make_dataset(list(tasks), cfg, "stepwise", seed=recipe.seed)
    rows = _select(all_rows, recipe)
    clean_rows = None
    if recipe.clean_answers or recipe.seeing_steps:
        clean = [c for c in (clean_answer_task(t) for t in tasks) if c is not None]
        if not clean and recipe.seeing_steps:
            raise ValueError("seeing_steps needs tasks with a clean image (none of these has one)")
        if clean:
            clean_rows = make_dataset(clean, cfg, "stepwise", seed=recipe.seed)
            clean_rows = clean_rows.map(lambda r: {"gold_action": "answer_clean"}).cast(rows.features)
    from datasets import concatenate_datasets

    if recipe.clean_answers and clean_rows is not None:
        rows = concatenate_datasets([rows, clean_rows]).shuffle(seed=recipe.seed)
    if recipe.tags_rows:
        tags = _select(make_dataset(list(tasks), cfg.replace(protocol="tags"), "stepwise", seed=recipe.seed), recipe)
        rows = concatenate_datasets([rows, _as_chat_columns(tags, rows)]).shuffle(seed=recipe.seed)
    counts: dict[str, int] = {}
    forms = rows["protocol"] if "protocol" in rows.column_names else [cfg.protocol] * len(rows)
    for a, form in zip(rows["gold_action"], forms):
        name = a if form == cfg.protocol else f"{a} ({form})"
        counts[name] = counts.get(name, 0) + 1
    work = final.parent / f".{final.name}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    sft_cfg = cfg.replace(seed=recipe.seed)
    stages: list[dict[str, Any]] = []
    start_model = base
    if recipe.seeing_steps:
        seen = _seeing_stage(sft_cfg, clean, clean_rows, tasks, recipe, base, cache=cache, work=work,
                             callbacks=callbacks)
        stages.append(seen)
        start_model = seen["model"]
    if recipe.reading_steps:
        reading = _reading_rows(all_rows, recipe)
        res = sft_warm_start(sft_cfg, reading, work / "reading", max_steps=recipe.reading_steps,
                             learning_rate=recipe.learning_rate, batch_size=recipe.reading_batch_size,
                             model=start_model, full=True, callbacks=callbacks)
        stages.append({"stage": "reading", "rows": len(reading), "steps": res["steps"], "seconds": res["seconds"],
                       "loss": res["loss"], "loss_curve": res["loss_curve"]})
        start_model = res["model"]
    result = sft_warm_start(sft_cfg, rows, work, max_steps=recipe.steps, learning_rate=recipe.learning_rate,
                            batch_size=recipe.batch_size, model=start_model, full=recipe.full, callbacks=callbacks,
                            row_mean_loss=recipe.row_mean_loss)
    stages.append({"stage": "gold steps", "rows": len(rows), "steps": result["steps"], "seconds": result["seconds"],
                   "loss": result["loss"], "loss_curve": result["loss_curve"]})
    saved = Path(result["model" if recipe.full else "adapter"])
    _publish(saved, final)
    shutil.rmtree(work, ignore_errors=True)
    info = {"model": str(final) if recipe.full else base, "adapter": None if recipe.full else str(final),
            "key": key, "base_model": base, "recipe": dataclasses.asdict(recipe),
            "rows": len(rows), "rows_by_action": dict(sorted(counts.items())), "n_tasks": len(tasks),
            "steps": sum(st["steps"] for st in stages), "seconds": round(time.perf_counter() - t0, 1),
            "sft_seconds": round(sum(st["seconds"] for st in stages), 2), "loss": result["loss"],
            "loss_curve": [x for st in stages for x in st["loss_curve"]], "full": recipe.full,
            "stages": [{k: v for k, v in st.items() if k not in ("loss_curve", "model")} for st in stages],
            "what": "supervised fine-tuning on gold steps (cold start); numbers measured after it are its own"}
    from arftlib.models import TRAINED_FORM_FILE, trained_form
    from arftlib.train.trainer import write_json

    form = trained_form(cfg, "sft")
    if recipe.tags_rows:
        form["also_protocols"] = ["tags"]  # eval --protocol tags is this policy's form too (no warning)
    write_json(final / TRAINED_FORM_FILE, form)
    marker.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return {**info, "reused": False}
