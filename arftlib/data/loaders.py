"""Benchmark and training-file loaders: every source becomes a list of `arftlib.types.Task`.

Sources (files the user downloaded; nothing is fetched here):

* MAT-Coding — `MAT-Coding.json` (+ images in `MAT-Coding-image/`): records `{id, question, answers,
  ori_image_path, processed_image_path, type, split}`. The model's input image is `processed_image_path`,
  except for items whose `type` holds `crop`, which are read from `ori_image_path` (the box in the question
  refers to the original). `clean_image` is the original when it exists on disk. The image the model needs
  must exist and open (else `DataError`); a missing *optional* clean image becomes `clean_image=None`, is
  listed in the returned `report` and counted in a logged warning — nothing is dropped silently.
* MAT-Search — `MAT-Search.json` (+ `MAT-Search-image/`): `{id, question, answer, image_path}`. Without a
  `split` field the reference's rule applies: the first 75 records are `simple`, the rest `hard`.
* Training step files — `rft_agent_search_20.json` (`{image_path, problem, solution}`, solution holds one
  `<search>` or `<answer>`) and `rft_agent_code_1_2k.json` (`{type: pre_problem|pre_code|pre_answer,
  image_path, problem, context, solution, gt}`). One row = one step sample = one Task (split "train"); the
  row's step is its one-element `gold_chain`, the raw fields stay in `metadata`.
* Multi-hop QA in FlashRAG's JSONL (`{id, question, golden_answers, metadata}`): 2Wiki, HotpotQA, MuSiQue,
  Bamboogle. A path may be the `.jsonl` file or a folder holding `<dataset>/{dev,test}.jsonl` or
  `{dev,test}.jsonl` (dev is preferred; Bamboogle only has test).
* Procedural benchmarks built by `arftlib.data.build.build_dataset` ("synth-coding", "synth-search").

Image paths are resolved against, in order: `image_root=` if given, the benchmark's image folder next to the
JSON (`MAT-Coding-image/`, `MAT-Search-image/`), the JSON's own folder; a path that is not found there is
tried by its file name alone (absolute paths from the authors' machines). Paths in the Tasks are absolute.

Validation fails loud: a missing field, a wrong type, an unknown degradation label, a missing or unreadable
image (its header is opened with PIL), a duplicate id, or a bad JSON(L) line raises `DataError`, whose message
(and attributes `file`, `index`, `record_id`, `field`, `line`) name the file, the record (index and id) and
the field.

Left out: downloading anything; the released training images' exact folder layout is not known here (hence the
search order above); step-wise expansion of gold chains (a later part of the data module).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from arftlib.types import DEGRADATIONS, Task

log = logging.getLogger("arftlib.data")

MULTIHOP = ("2wiki", "hotpotqa", "musique", "bamboogle")
FLASHRAG_DIRS = {"2wiki": ("2wikimultihopqa", "2wiki", "2WikiMultihopQA"), "hotpotqa": ("hotpotqa", "HotpotQA"),
                 "musique": ("musique", "MuSiQue"), "bamboogle": ("bamboogle", "Bamboogle")}
MAT_SEARCH_SIMPLE = 75  # the reference scores the first 75 MAT-Search records as "simple", the rest as "hard"
STEP_ACTIONS = {"pre_problem": "problem", "pre_code": "code", "pre_answer": "answer"}


class DataError(ValueError):
    """A data file or record is malformed. The message names the file, the record (index and id), the
    field, and (JSONL) the line; the same facts are attributes."""

    def __init__(self, file: str | Path, index: int | None = None, record_id: Any = None, field: str | None = None,
                 problem: str = "invalid", line: int | None = None):
        self.file, self.index, self.record_id, self.field, self.line, self.problem = (
            str(file), index, record_id, field, line, problem)
        where = str(file)
        if line is not None:
            where += f":{line}"
        if index is not None:
            where += f": record {index}" + (f" (id={record_id!r})" if record_id is not None else "")
        if field:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadReport:
    """What a loader saw besides the tasks: the file, the record count, and every optional thing missing."""

    file: str
    benchmark: str
    n_records: int = 0
    missing_optional: list[dict[str, Any]] = field(default_factory=list)  # {index, id, field, path}
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"{self.benchmark}: {self.n_records} records from {self.file}"
        if self.missing_optional:
            by_field: dict[str, int] = {}
            for m in self.missing_optional:
                by_field[m["field"]] = by_field.get(m["field"], 0) + 1
            s += "; missing optional files: " + ", ".join(f"{k} ×{v}" for k, v in sorted(by_field.items()))
        return s

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "benchmark": self.benchmark, "n_records": self.n_records,
                "missing_optional": self.missing_optional, "notes": self.notes}


class LoadedTasks(list):
    """A plain `list[Task]` that also carries the loader's `report` (a `LoadReport`)."""

    report: LoadReport

    def __init__(self, tasks: list[Task], report: LoadReport):
        super().__init__(tasks)
        self.report = report


# ----------------------------------------------------------------------------------------------- helpers
class _Rec:
    """Field access with errors that name file, record and field."""

    def __init__(self, file: Path, index: int, rec: Any, line: int | None = None, id_field: str | None = "id"):
        self.file, self.index, self.line = file, index, line
        if not isinstance(rec, dict):
            raise DataError(file, index, None, None, f"record must be a JSON object, got {type(rec).__name__}", line)
        self.rec = rec
        rid = rec.get(id_field) if id_field else None
        self.id = rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None

    def err(self, fld: str | None, problem: str) -> DataError:
        return DataError(self.file, self.index, self.id, fld, problem, self.line)

    def get(self, fld: str, types: type | tuple[type, ...], *, required: bool = True, nonempty: bool = True) -> Any:
        if fld not in self.rec:
            if required:
                raise self.err(fld, "missing field")
            return None
        val = self.rec[fld]
        types_t = types if isinstance(types, tuple) else (types,)
        if isinstance(val, bool) and bool not in types_t or not isinstance(val, types_t):
            names = " or ".join(t.__name__ for t in types_t)
            raise self.err(fld, f"wrong type: expected {names}, got {type(val).__name__} ({_short(val)})")
        if nonempty and isinstance(val, (str, list)) and len(val) == 0:
            raise self.err(fld, "is empty")
        return val

    def str_list(self, fld: str, *, allow_str: bool = False, required: bool = True) -> list[str] | None:
        val = self.get(fld, (list, str) if allow_str else list, required=required)
        if val is None:
            return None
        if isinstance(val, str):
            return [val]
        for j, x in enumerate(val):
            if not isinstance(x, str):
                raise self.err(fld, f"wrong type: item {j} must be str, got {type(x).__name__} ({_short(x)})")
        return list(val)

    def ident(self, fld: str = "id") -> str:
        val = self.get(fld, (int, str))
        return str(val)


def _short(x: Any, n: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def check_image(path: Path, rec: _Rec, fld: str) -> None:
    """The file exists and PIL can read its header; else DataError naming the record and field."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise rec.err(fld, f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
        if w <= 0 or h <= 0:
            raise ValueError(f"size {w}x{h}")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise rec.err(fld, f"image cannot be read: {path} ({type(e).__name__}: {e})") from None


def _resolve(rel: str, roots: list[Path]) -> Path | None:
    p = Path(rel)
    if p.is_absolute():
        if p.exists():
            return p
        rel = p.name
        p = Path(rel)
    for root in roots:
        if (root / p).exists():
            return root / p
    for root in roots:  # by file name alone
        if (root / p.name).exists():
            return root / p.name
    return None


def _image(rec: _Rec, fld: str, roots: list[Path], *, required: bool) -> Path | None:
    rel = rec.get(fld, str)
    found = _resolve(rel, roots)
    if found is None:
        if required:
            raise rec.err(fld, f"image file not found: {rel!r} (looked in {', '.join(str(r) for r in roots)})")
        return None
    check_image(found, rec, fld)  # an optional image that exists but is broken is an error too
    return found.resolve()


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, None, None, None, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                        e.lineno) from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, None, None, f"not UTF-8 text ({e})") from None
    if not isinstance(data, list):
        raise DataError(path, None, None, None, f"expected a JSON list of records, got {type(data).__name__}")
    return data


def _find_json(path: str | Path, default_name: str) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / default_name).is_file():
            return p / default_name
        cands = sorted(p.glob("*.json"))
        if len(cands) == 1:
            return cands[0]
        raise FileNotFoundError(f"{p}: no {default_name} (and {len(cands)} other .json files, so none is chosen)")
    raise FileNotFoundError(f"not found: {p} (expected {default_name} or a folder holding it)")


def _roots(json_path: Path, image_dir: str, image_root: str | Path | None) -> list[Path]:
    roots = [Path(image_root)] if image_root is not None else []
    return roots + [json_path.parent / image_dir, json_path.parent]


def _check_unique(rec: _Rec, rid: str, seen: dict[str, int]) -> None:
    if rid in seen:
        raise rec.err("id", f"duplicate id {rid!r} (first used by record {seen[rid]})")
    seen[rid] = rec.index


def _extras(rec: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in known}


def _warn_missing(report: LoadReport) -> None:
    if report.missing_optional:
        ids = [m["id"] for m in report.missing_optional]
        log.warning("%s: %d of %d records have no clean image on disk (clean_image=None): ids %s%s",
                    report.file, len(ids), report.n_records, ids[:10], " …" if len(ids) > 10 else "")


_QUERY_RE = re.compile(r"<query>\s*(.*?)\s*</?query>", re.S)
_TAG_RE = {t: re.compile(rf"<{t}>(.*?)</{t}>", re.S) for t in ("search", "answer", "problem", "code")}
_FENCE_RE = re.compile(r"```[A-Za-z0-9_+\-]*[ \t]*\n?(.*?)```", re.S)


def _question_of(problem: str) -> str:
    m = _QUERY_RE.search(problem)
    return m.group(1).strip() if m else problem.strip()


def _labels_in(text: str) -> list[str]:
    m = _TAG_RE["problem"].search(text)
    if not m:
        return []
    return [lab for lab in DEGRADATIONS if re.search(rf"\b{lab}\b", m.group(1))]


# ------------------------------------------------------------------------------------------ MAT-Coding
def load_mat_coding(path: str | Path, *, image_root: str | Path | None = None) -> LoadedTasks:
    """MAT-Coding (`MAT-Coding.json` or its folder) → Tasks (kind coding, split simple/hard); see module doc."""
    jp = _find_json(path, "MAT-Coding.json")
    roots = _roots(jp, "MAT-Coding-image", image_root)
    report = LoadReport(str(jp), "mat-coding")
    known = ("id", "question", "answers", "ori_image_path", "processed_image_path", "type", "split")
    tasks, seen = [], {}
    for i, raw in enumerate(_read_json_list(jp)):
        r = _Rec(jp, i, raw)
        rid = r.ident()
        _check_unique(r, rid, seen)
        question = r.get("question", str)
        answers = r.str_list("answers")
        labels = r.str_list("type")
        for lab in labels:
            if lab not in DEGRADATIONS:
                raise r.err("type", f"unknown degradation label {lab!r}; known: {list(DEGRADATIONS)}")
        split = r.get("split", str)
        if split not in ("simple", "hard"):
            raise r.err("split", f"must be 'simple' or 'hard', got {split!r}")
        r.get("ori_image_path", str)
        r.get("processed_image_path", str)
        crop = "crop" in labels
        input_field = "ori_image_path" if crop else "processed_image_path"
        img = _image(r, input_field, roots, required=True)
        clean = img if crop else _image(r, "ori_image_path", roots, required=False)
        if clean is None:
            report.missing_optional.append({"index": i, "id": rid, "field": "ori_image_path",
                                            "path": raw["ori_image_path"]})
        meta = {"source_file": str(jp), "index": i, "difficulty": split, "input_field": input_field,
                "ori_image_path": raw["ori_image_path"], "processed_image_path": raw["processed_image_path"],
                **_extras(raw, known)}
        tasks.append(Task(id=rid, question=question, images=[str(img)], answers=answers, kind="coding",
                          split=split, degradations=labels, benchmark="mat-coding",
                          clean_image=str(clean) if clean else None, metadata=meta))
    report.n_records = len(tasks)
    _warn_missing(report)
    return LoadedTasks(tasks, report)


# ------------------------------------------------------------------------------------------ MAT-Search
def load_mat_search(path: str | Path, *, image_root: str | Path | None = None) -> LoadedTasks:
    """MAT-Search (`MAT-Search.json` or its folder) → Tasks (kind search, split simple/hard)."""
    jp = _find_json(path, "MAT-Search.json")
    roots = _roots(jp, "MAT-Search-image", image_root)
    report = LoadReport(str(jp), "mat-search")
    known = ("id", "question", "answer", "image_path", "split")
    tasks, seen = [], {}
    records = _read_json_list(jp)
    positional = not any(isinstance(x, dict) and "split" in x for x in records)
    if positional:
        report.notes.append(f"no 'split' field: records 0–{MAT_SEARCH_SIMPLE - 1} are 'simple', the rest 'hard' "
                            "(the reference's scoring rule)")
    for i, raw in enumerate(records):
        r = _Rec(jp, i, raw)
        rid = r.ident()
        _check_unique(r, rid, seen)
        question = r.get("question", str)
        answers = r.str_list("answer", allow_str=True)
        if positional:
            split = "simple" if i < MAT_SEARCH_SIMPLE else "hard"
        else:
            split = r.get("split", str)
            if split not in ("simple", "hard"):
                raise r.err("split", f"must be 'simple' or 'hard', got {split!r}")
        img = _image(r, "image_path", roots, required=True)
        meta = {"source_file": str(jp), "index": i, "difficulty": split, "image_path": raw["image_path"],
                **_extras(raw, known)}
        tasks.append(Task(id=rid, question=question, images=[str(img)], answers=answers, kind="search",
                          split=split, benchmark="mat-search", metadata=meta))
    report.n_records = len(tasks)
    return LoadedTasks(tasks, report)


# --------------------------------------------------------------------------------- training step files
def load_search_train(path: str | Path, *, image_root: str | Path | None = None) -> LoadedTasks:
    """`rft_agent_search_20.json` → one search Task per step row (split "train", id = row index)."""
    jp = _find_json(path, "rft_agent_search_20.json")
    roots = _roots(jp, "MAT-Search-image", image_root)
    report = LoadReport(str(jp), "rft-agent-search")
    tasks = []
    for i, raw in enumerate(_read_json_list(jp)):
        r = _Rec(jp, i, raw, id_field=None)
        problem = r.get("problem", str)
        solution = r.get("solution", str)
        img = _image(r, "image_path", roots, required=True)
        step = None
        for kind in ("search", "answer"):  # a row's solution holds exactly one of them
            m = _TAG_RE[kind].search(solution)
            if m:
                step = {"action": kind, "content": m.group(1).strip()}
                break
        if step is None:
            raise r.err("solution", f"holds neither <search>…</search> nor <answer>…</answer>: {_short(solution)}")
        answers = [step["content"]] if step["action"] == "answer" else []
        meta = {"source_file": str(jp), "index": i, "step_type": "search", "problem": problem, "solution": solution,
                "image_path": raw["image_path"], **_extras(raw, ("image_path", "problem", "solution"))}
        tasks.append(Task(id=str(i), question=_question_of(problem), images=[str(img)], answers=answers,
                          kind="search", split="train", benchmark="rft-agent-search", gold_chain=[step], metadata=meta))
    report.n_records = len(tasks)
    return LoadedTasks(tasks, report)


def load_code_train(path: str | Path, *, image_root: str | Path | None = None) -> LoadedTasks:
    """`rft_agent_code_1_2k.json` → one coding Task per step row (split "train", id = row index)."""
    jp = _find_json(path, "rft_agent_code_1_2k.json")
    roots = _roots(jp, "MAT-Coding-image", image_root)
    report = LoadReport(str(jp), "rft-agent-code")
    tasks = []
    for i, raw in enumerate(_read_json_list(jp)):
        r = _Rec(jp, i, raw, id_field=None)
        step_type = r.get("type", str)
        if step_type not in STEP_ACTIONS:
            raise r.err("type", f"must be one of {list(STEP_ACTIONS)}, got {step_type!r}")
        problem = r.get("problem", str)
        context = r.get("context", (str, list), required=False, nonempty=False)
        solution = r.get("solution", str)
        gt = r.str_list("gt", allow_str=True)
        img = _image(r, "image_path", roots, required=True)
        action = STEP_ACTIONS[step_type]
        m = _TAG_RE[action].search(solution)
        content = m.group(1).strip() if m else solution.strip()
        if action == "code":
            f = _FENCE_RE.search(content)
            content = f.group(1).strip() if f else content
        labels = _labels_in(solution) or _labels_in(context if isinstance(context, str) else json.dumps(context))
        meta = {"source_file": str(jp), "index": i, "step_type": step_type, "problem": problem, "context": context,
                "solution": solution, "image_path": raw["image_path"],
                **_extras(raw, ("type", "image_path", "problem", "context", "solution", "gt"))}
        tasks.append(Task(id=str(i), question=_question_of(problem), images=[str(img)], answers=gt, kind="coding",
                          split="train", degradations=labels, benchmark="rft-agent-code",
                          gold_chain=[{"action": action, "content": content}], metadata=meta))
    report.n_records = len(tasks)
    return LoadedTasks(tasks, report)


# ------------------------------------------------------------------------------------------ multi-hop
def find_multihop_file(name: str, path: str | Path) -> Path:
    """The JSONL file of a FlashRAG dataset given a file or a folder (see module doc)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"{name}: not found: {p}")
    folders = [p / d for d in FLASHRAG_DIRS.get(name, (name,))] + [p]
    order = ("test", "dev") if name == "bamboogle" else ("dev", "test")
    for folder in folders:
        for split in order:
            if (folder / f"{split}.jsonl").is_file():
                return folder / f"{split}.jsonl"
    raise FileNotFoundError(f"{name}: no dev.jsonl or test.jsonl under {p} (looked in {', '.join(map(str, folders))})")


def load_multihop(path: str | Path, name: str = "multihop") -> LoadedTasks:
    """FlashRAG JSONL (`{id, question, golden_answers, metadata}` per line) → Tasks (kind multihop, no image).
    `split` is the file's stem (dev/test); blank lines are skipped; a bad line raises naming its number."""
    jp = find_multihop_file(name, path)
    report = LoadReport(str(jp), name)
    tasks, seen = [], {}
    with open(jp, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            idx = len(tasks)
            try:
                raw = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(jp, idx, None, None, f"not valid JSON ({e})", lineno) from None
            r = _Rec(jp, idx, raw, line=lineno)
            rid = r.ident()
            _check_unique(r, rid, seen)
            question = r.get("question", str)
            answers = r.str_list("golden_answers")
            meta_in = r.get("metadata", dict, required=False, nonempty=False)
            meta = {"source_file": str(jp), "line": lineno, **(meta_in or {}),
                    **_extras(raw, ("id", "question", "golden_answers", "metadata"))}
            tasks.append(Task(id=rid, question=question, images=[], answers=answers, kind="multihop",
                              split=jp.stem, benchmark=name, metadata=meta))
    if not tasks:
        raise DataError(jp, None, None, None, "no records")
    report.n_records = len(tasks)
    return LoadedTasks(tasks, report)


# ------------------------------------------------------------------------------------------ built folders
def load_built(out: str | Path) -> list[Task]:
    """The tasks of a build folder (`data.build.build_dataset` output), with image paths (and a relative corpus) made absolute; checks every line."""
    out = Path(out)
    path = out / "tasks.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no tasks.jsonl (not a build folder?)")
    tasks, seen = [], {}
    fields = set(Task.__dataclass_fields__)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            idx = len(tasks)
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, idx, None, None, f"not valid JSON ({e})", lineno) from None
            if not isinstance(d, dict):
                raise DataError(path, idx, None, None, "line is not a JSON object", lineno)
            missing = {"id", "question", "images", "answers", "kind"} - set(d)
            if missing:
                raise DataError(path, idx, d.get("id"), sorted(missing)[0], "missing field", lineno)
            extra = set(d) - fields
            if extra:
                raise DataError(path, idx, d.get("id"), sorted(extra)[0], "unknown Task field", lineno)
            t = Task.from_dict(d)
            if t.id in seen:
                raise DataError(path, idx, t.id, "id", f"duplicate id (first on record {seen[t.id]})", lineno)
            seen[t.id] = idx
            t.images = [str((out / p).resolve()) for p in t.images]
            if t.clean_image:
                t.clean_image = str((out / t.clean_image).resolve())
            for p in t.images:
                if not Path(p).is_file():
                    raise DataError(path, idx, t.id, "images", f"image file not found: {p}", lineno)
            if t.metadata.get("corpus") == "corpus.jsonl":
                t.metadata["corpus"] = str((out / "corpus.jsonl").resolve())
            tasks.append(t)
    return tasks



# ------------------------------------------------------------------------------------------ dispatch
def built_benchmark(out: str | Path) -> str | None:
    """The benchmark a build folder holds (`micro-coding`, `coding` …) from its data card; None when `out` is not a
    build folder (a loader's file, a hub dataset)."""
    card = Path(out) / "data_card.json"
    if not card.is_file():
        return None
    try:
        return json.loads(card.read_text(encoding="utf-8"))["benchmark"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{card}: unreadable data card (field 'benchmark': {e})") from None


def _built(name: str) -> Callable[..., LoadedTasks]:
    def load(path: str | Path, **kw: Any) -> LoadedTasks:
        tasks = load_built(path)
        wrong = {t.benchmark for t in tasks} - {name}
        if wrong:
            raise DataError(Path(path) / "tasks.jsonl", None, None, "benchmark",
                            f"asked for {name!r} but the build holds {sorted(wrong)}")
        return LoadedTasks(tasks, LoadReport(str(Path(path) / "tasks.jsonl"), name, len(tasks)))
    return load


LOADERS: dict[str, Callable[..., LoadedTasks]] = {
    "mat-coding": load_mat_coding,
    "mat-search": load_mat_search,
    "rft-agent-search": load_search_train,
    "rft-agent-code": load_code_train,
    **{n: (lambda path, _n=n, **kw: load_multihop(path, _n)) for n in MULTIHOP},
    "synth-coding": _built("synth-coding"),
    "synth-search": _built("synth-search"),
    "micro-coding": _built("micro-coding"),
    "micro-search": _built("micro-search"),
}
BENCHMARKS = tuple(LOADERS)


def load_benchmark(name: str, path: str | Path, **options: Any) -> LoadedTasks:
    """Load a benchmark by name: mat-coding, mat-search, rft-agent-search, rft-agent-code, 2wiki, hotpotqa,
    musique, bamboogle (file or FlashRAG folder), synth-coding, synth-search (a built folder). Options
    (`image_root=`) go to the MAT loaders. The result is a list of Tasks with a `.report`."""
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")
    return LOADERS[name](path, **options)
