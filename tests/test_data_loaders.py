"""Loaders: the six real MAT-Coding demo examples load; every malformed input fails loud naming the file, the
record (index and id) and the field; MAT-Search, the training step files and FlashRAG multi-hop JSONL load."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from arftlib.data.loaders import DataError, load_benchmark, load_multihop
from arftlib.paths import MAT_CODING_DEMO
from arftlib.types import Task

DEMO = MAT_CODING_DEMO


def _png(path: Path, size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)
    return path


def _coding_record(i: int, **over) -> dict:
    rec = {"id": i, "question": f"Q{i}?", "answers": [f"a{i}"], "ori_image_path": f"ori_{i}.png",
           "processed_image_path": f"proc_{i}.png", "type": ["dark"], "split": "simple"}
    rec.update(over)
    return rec


@pytest.fixture()
def mat_coding_dir(tmp_path: Path) -> Path:
    """A MAT-Coding layout: MAT-Coding.json + MAT-Coding-image/ with three good records."""
    d = tmp_path / "MAT"
    for i in range(3):
        _png(d / "MAT-Coding-image" / f"ori_{i}.png")
        _png(d / "MAT-Coding-image" / f"proc_{i}.png")
    (d / "MAT-Coding.json").write_text(json.dumps([_coding_record(i) for i in range(3)]))
    return d


def _write(d: Path, records) -> Path:
    p = d / "MAT-Coding.json"
    p.write_text(json.dumps(records))
    return p


# ------------------------------------------------------------------------------------ the real demo
def test_six_real_demo_examples_load(caplog):
    with caplog.at_level(logging.WARNING, logger="arftlib.data"):
        tasks = load_benchmark("mat-coding", DEMO)
    assert [t.id for t in tasks] == ["12", "22", "63", "71", "119", "124"]
    assert all(isinstance(t, Task) and t.kind == "coding" and t.benchmark == "mat-coding" for t in tasks)
    by = {t.id: t for t in tasks}
    # crop items read the ORIGINAL image; the others the processed one
    assert by["119"].images[0].endswith("crop_8_ori.png") and by["119"].clean_image.endswith("crop_8_ori.png")
    assert by["12"].images[0].endswith("rotation180_1_proc.png")
    assert by["71"].degradations == ["rotation90", "dark"] and by["71"].split == "hard"
    assert by["124"].answers == ["Spaghetti\nGOEMON"]
    assert all(Path(t.images[0]).is_file() for t in tasks)
    # the four non-crop items ship no original: clean_image None, reported and logged with the count
    missing = [t.id for t in tasks if t.clean_image is None]
    assert missing == ["12", "22", "63", "71"]
    assert [m["id"] for m in tasks.report.missing_optional] == missing
    assert all(m["field"] == "ori_image_path" for m in tasks.report.missing_optional)
    assert "4 of 6 records have no clean image" in caplog.text
    assert by["12"].metadata["processed_image_path"] == "rotation180_1_proc.png"


def test_good_layout_loads_with_clean_images(mat_coding_dir):
    tasks = load_benchmark("mat-coding", mat_coding_dir)
    assert len(tasks) == 3 and not tasks.report.missing_optional
    assert tasks[0].clean_image.endswith("MAT-Coding-image/ori_0.png")
    assert tasks[0].images[0].endswith("MAT-Coding-image/proc_0.png")


# ------------------------------------------------------------------------------------ bad inputs
def _expect(path_or_dir, match_field: str, match_text: str, *, index: int, rid, name="mat-coding") -> DataError:
    with pytest.raises(DataError) as ei:
        load_benchmark(name, path_or_dir)
    e = ei.value
    msg = str(e)
    assert "MAT-Coding.json" in msg or name != "mat-coding"
    assert f"record {index}" in msg and e.index == index
    if rid is not None:
        assert f"id={rid!r}" in msg and e.record_id == rid
    assert f"field '{match_field}'" in msg and e.field == match_field
    assert match_text in msg
    return e


def test_missing_field(mat_coding_dir):
    recs = [_coding_record(i) for i in range(3)]
    del recs[1]["answers"]
    _write(mat_coding_dir, recs)
    _expect(mat_coding_dir, "answers", "missing field", index=1, rid=1)


def test_wrong_type(mat_coding_dir):
    recs = [_coding_record(i) for i in range(3)]
    recs[2]["type"] = "dark"  # a str where a list is required
    _write(mat_coding_dir, recs)
    _expect(mat_coding_dir, "type", "wrong type: expected list, got str", index=2, rid=2)
    recs[2]["type"] = ["dark"]
    recs[0]["answers"] = ["ok", 7]
    _write(mat_coding_dir, recs)
    _expect(mat_coding_dir, "answers", "item 1 must be str", index=0, rid=0)


def test_unknown_label_and_split(mat_coding_dir):
    recs = [_coding_record(i) for i in range(3)]
    recs[1]["type"] = ["rotation45"]
    _write(mat_coding_dir, recs)
    _expect(mat_coding_dir, "type", "unknown degradation label 'rotation45'", index=1, rid=1)
    recs[1]["type"] = ["dark"]
    recs[1]["split"] = "medium"
    _write(mat_coding_dir, recs)
    _expect(mat_coding_dir, "split", "must be 'simple' or 'hard'", index=1, rid=1)


def test_missing_needed_image(mat_coding_dir):
    (mat_coding_dir / "MAT-Coding-image" / "proc_1.png").unlink()
    _expect(mat_coding_dir, "processed_image_path", "image file not found", index=1, rid=1)


def test_crop_needs_the_original(mat_coding_dir):
    recs = [_coding_record(i) for i in range(3)]
    recs[2]["type"] = ["crop"]
    _write(mat_coding_dir, recs)
    (mat_coding_dir / "MAT-Coding-image" / "proc_2.png").unlink()  # not needed for crop
    tasks = load_benchmark("mat-coding", mat_coding_dir)
    assert tasks[2].images[0].endswith("ori_2.png")
    (mat_coding_dir / "MAT-Coding-image" / "ori_2.png").unlink()
    _expect(mat_coding_dir, "ori_image_path", "image file not found", index=2, rid=2)


def test_unreadable_image(mat_coding_dir):
    (mat_coding_dir / "MAT-Coding-image" / "proc_0.png").write_bytes(b"this is not an image at all")
    _expect(mat_coding_dir, "processed_image_path", "image cannot be read", index=0, rid=0)
    # an optional clean image that exists but is broken is an error too (not silently None)
    _png(mat_coding_dir / "MAT-Coding-image" / "proc_0.png")
    (mat_coding_dir / "MAT-Coding-image" / "ori_0.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    _expect(mat_coding_dir, "ori_image_path", "image cannot be read", index=0, rid=0)


def test_missing_optional_clean_is_counted(mat_coding_dir):
    (mat_coding_dir / "MAT-Coding-image" / "ori_1.png").unlink()
    tasks = load_benchmark("mat-coding", mat_coding_dir)
    assert tasks[1].clean_image is None and len(tasks) == 3
    assert tasks.report.missing_optional == [{"index": 1, "id": "1", "field": "ori_image_path", "path": "ori_1.png"}]
    assert "ori_image_path ×1" in tasks.report.summary()


def test_duplicate_id(mat_coding_dir):
    recs = [_coding_record(i) for i in range(3)]
    recs[2]["id"] = 0
    _write(mat_coding_dir, recs)
    e = _expect(mat_coding_dir, "id", "duplicate id '0' (first used by record 0)", index=2, rid=0)
    assert e.file.endswith("MAT-Coding.json")


def test_bad_json_file(mat_coding_dir):
    (mat_coding_dir / "MAT-Coding.json").write_text('[{"id": 1,,}]')
    with pytest.raises(DataError, match=r"MAT-Coding.json:1: not valid JSON"):
        load_benchmark("mat-coding", mat_coding_dir)


# ------------------------------------------------------------------------------------ MAT-Search
def test_mat_search_positional_split_and_errors(tmp_path):
    d = tmp_path / "S"
    recs = []
    for i in range(80):
        _png(d / "MAT-Search-image" / f"{i}.png")
        recs.append({"id": i + 1, "question": f"q{i}", "answer": f"a{i}", "image_path": f"{i}.png"})
    (d / "MAT-Search.json").write_text(json.dumps(recs))
    tasks = load_benchmark("mat-search", d)
    assert [t.split for t in tasks].count("simple") == 75 and tasks[-1].split == "hard"
    assert tasks[0].answers == ["a0"] and tasks[0].kind == "search" and tasks[0].id == "1"
    recs[5]["answer"] = 3
    (d / "MAT-Search.json").write_text(json.dumps(recs))
    with pytest.raises(DataError, match=r"MAT-Search.json: record 5 \(id=6\): field 'answer': wrong type"):
        load_benchmark("mat-search", d)


# ------------------------------------------------------------------------------------ training files
def test_training_step_files(tmp_path):
    _png(tmp_path / "img" / "a.png")
    search_rows = [
        {"image_path": "img/a.png", "problem": "<query> Who built it? </query>",
         "solution": "<think>x</think><search>builder of the tower</search>"},
        {"image_path": "/somewhere/else/a.png", "problem": "<query> Who built it? </query>",
         "solution": "<answer>Eiffel</answer>"},
    ]
    (tmp_path / "rft_agent_search_20.json").write_text(json.dumps(search_rows))
    st = load_benchmark("rft-agent-search", tmp_path / "rft_agent_search_20.json", image_root=tmp_path / "img")
    assert st[0].gold_chain == [{"action": "search", "content": "builder of the tower"}]
    assert st[0].question == "Who built it?" and st[1].answers == ["Eiffel"]
    assert Path(st[1].images[0]).is_file()  # found by file name
    code_rows = [
        {"type": "pre_problem", "image_path": "img/a.png", "problem": "<query> What? </query>", "context": "",
         "solution": "<think>t</think><problem> {'rotation90', 'dark'} </problem>", "gt": "A"},
        {"type": "pre_code", "image_path": "img/a.png", "problem": "<query> What? </query>",
         "context": "<problem> {'dark'} </problem>",
         "solution": "<code>```python\nimport cv2\n```</code>", "gt": ["A"]},
    ]
    (tmp_path / "rft_agent_code_1_2k.json").write_text(json.dumps(code_rows))
    ct = load_benchmark("rft-agent-code", tmp_path)
    assert ct[0].gold_chain[0]["action"] == "problem" and ct[0].degradations == ["rotation90", "dark"]
    assert ct[1].gold_chain == [{"action": "code", "content": "import cv2"}] and ct[1].degradations == ["dark"]
    code_rows[1]["type"] = "pre_search"
    (tmp_path / "rft_agent_code_1_2k.json").write_text(json.dumps(code_rows))
    with pytest.raises(DataError, match=r"record 1: field 'type': must be one of"):
        load_benchmark("rft-agent-code", tmp_path)


# ------------------------------------------------------------------------------------ multi-hop
def test_multihop_jsonl_loads_from_file_and_flashrag_folder(tmp_path):
    rows = [{"id": "dev_0", "question": "Who?", "golden_answers": ["X", "Mr X"], "metadata": {"type": "bridge"}},
            {"id": "dev_1", "question": "When?", "golden_answers": ["1999"]}]
    f = tmp_path / "hotpotqa" / "dev.jsonl"
    f.parent.mkdir()
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    for path in (f, tmp_path):
        tasks = load_benchmark("hotpotqa", path)
        assert [t.id for t in tasks] == ["dev_0", "dev_1"]
        assert tasks[0].kind == "multihop" and tasks[0].split == "dev" and tasks[0].images == []
        assert tasks[0].answers == ["X", "Mr X"] and tasks[0].metadata["type"] == "bridge"
    (tmp_path / "bamboogle").mkdir()
    shutil.copy(f, tmp_path / "bamboogle" / "test.jsonl")
    assert load_benchmark("bamboogle", tmp_path)[0].split == "test"


def test_multihop_bad_line_and_fields(tmp_path):
    f = tmp_path / "musique.jsonl"
    good = json.dumps({"id": "a", "question": "q", "golden_answers": ["x"]})
    f.write_text(good + "\n" + '{"id": "b", "question": \n')
    with pytest.raises(DataError) as ei:
        load_multihop(f, "musique")
    assert ei.value.line == 2 and "musique.jsonl:2: record 1: not valid JSON" in str(ei.value)
    f.write_text(good + "\n" + json.dumps({"id": "b", "question": "q", "golden_answers": "x"}) + "\n")
    with pytest.raises(DataError, match=r"musique.jsonl:2: record 1 \(id='b'\): field 'golden_answers': wrong type"):
        load_multihop(f, "musique")
    f.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataError, match=r"record 1 \(id='a'\): field 'id': duplicate id"):
        load_multihop(f, "musique")
    f.write_text(good + "\n" + json.dumps({"id": "c", "golden_answers": ["x"]}) + "\n")
    with pytest.raises(DataError, match=r"record 1 \(id='c'\): field 'question': missing field"):
        load_multihop(f, "musique")


def test_unknown_benchmark_name():
    with pytest.raises(ValueError, match="unknown benchmark 'mat-codin'"):
        load_benchmark("mat-codin", DEMO)
