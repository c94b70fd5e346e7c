"""The micro benchmarks (`micro-coding`, `micro-search`) and reproducible build folders.

Checks: small builds of both kinds verify, reload and are well-formed (single-word answers, gold chains in the
paper's actions, short same-template gold code); train/test share no entity (the wordings are shared by design)
and the test split shows held-out colour × shape combinations of seen colours and shapes; a zoom question's detail really is
too small at the policy's 112×112 and large after the gold crop; degradations flip or squeeze the answer while
the gold repair restores it; every micro-search gold query finds its passage in the top 4 and its answer can be
copied from it but not guessed; a broken gold repair is a loud BuildError. And for every kind (synth and micro):
two builds with the same seed are byte-identical in every file except `build_log.json`, where timings live.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from arftlib.data import degrade as D
from arftlib.data import micro_coding as MC
from arftlib.data import micro_search as MS
from arftlib.data.build import LOG_FILE, BuildError, build_dataset, load_built, restoration_target
from arftlib.data.render import load_rgb
from arftlib.parse import extract_crop_box
from arftlib.types import grid_box_to_pixels

N_CODING = 40  # covers every simple and hard pairing at the default hard fraction
N_SEARCH = 60


@pytest.fixture(scope="module")
def coding_build(tmp_path_factory) -> Path:
    return build_dataset("micro-coding", N_CODING, seed=3, out=tmp_path_factory.mktemp("micro") / "coding")


@pytest.fixture(scope="module")
def search_build(tmp_path_factory) -> Path:
    return build_dataset("micro-search", N_SEARCH, seed=5, out=tmp_path_factory.mktemp("micro") / "search")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != LOG_FILE}


def _keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


# ------------------------------------------------------------------------------------------- micro-coding
def test_micro_coding_build_verified_and_well_formed(coding_build):
    tasks = load_built(coding_build)
    card = json.loads((coding_build / "data_card.json").read_text())
    verif = [json.loads(x) for x in (coding_build / "verification.jsonl").read_text().splitlines()]
    assert len(tasks) == N_CODING == card["n"] == len(verif)
    assert card["benchmark"] == "micro-coding" and card["kind"] == "coding"
    assert card["verification"]["verified"] and card["verification"]["failures"] == 0 and all(v["ok"] for v in verif)
    pairs = {tuple(a): set(b) for a, b in MC.SIMPLE_PAIRS + MC.HARD_PAIRS}
    assert {tuple(t.degradations) for t in tasks} == set(pairs)  # every pairing is built
    for t in tasks:
        qt = t.metadata["question_type"]
        assert t.benchmark == "micro-coding" and t.kind == "coding" and t.split in ("train", "test")
        assert qt in pairs[tuple(t.degradations)]
        assert re.fullmatch(r"[a-z]+", t.answers[0]) and t.answers[0] in MC.CHOICES[qt] and len(t.answers) == 1
        actions = [s["action"] for s in t.gold_chain]
        assert actions == (["problem", "answer"] if t.degradations == ["none"] else ["problem", "code", "answer"])
        assert t.gold_chain[0]["content"] == D.problem_text(t.degradations)
        assert t.gold_chain[-1]["content"] == t.answers[0]
        assert t.metadata["needs_tool"] == (t.degradations != ["none"])
        assert Path(t.images[0]).is_file() and Path(t.clean_image).is_file()
        assert load_rgb(t.images[0]).shape == (MC.SIZE, MC.SIZE, 3)
        if qt == "zoom":  # the box is in the question, readable by the parser, and is the restoration target
            assert tuple(t.metadata["box"]) == extract_crop_box(t.question)
            assert restoration_target(t).shape[:2] != (MC.SIZE, MC.SIZE)
    md = (coding_build / "data_card.md").read_text()
    assert "micro-coding" in md and "leakage" in md.lower() and "World" in md


def test_micro_gold_code_is_short_and_one_template_per_label(coding_build):
    templates: dict[str, set[str]] = {}
    for t in load_built(coding_build):
        code = next((s["content"] for s in t.gold_chain if s["action"] == "code"), None)
        if code is None:
            continue
        lines = code.strip().splitlines()
        assert 3 <= len(lines) <= 6 and lines[0] == "import cv2", code
        assert lines[1] == "img = cv2.imread('path_to_input_image.jpg')"
        assert lines[-1] == "cv2.imwrite('path_to_output_image.jpg', img)"
        body = lines[2:-1]
        if "crop" in t.degradations:  # the crop is two lines: the question's box copied, then the crop
            box = t.metadata["box"]
            assert body[-2] == f"x1, y1, x2, y2 = {box[0]}, {box[1]}, {box[2]}, {box[3]}", code
            body = body[:-2] + [body[-2] + " / " + body[-1]]
        for lab, line in zip(sorted(t.degradations, key=lambda x: (x not in D.GEOMETRIC, x == "crop")), body):
            templates.setdefault(lab, set()).add(re.sub(r"(?<![\w.])-?\d+(\.\d+)?", "N", line))
    rot90 = templates.pop("rotation90")
    assert rot90 <= {"img = cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)", "img = cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)"}
    assert all(len(v) == 1 for v in templates.values()), templates  # only the numbers change


def test_micro_coding_splits_hold_out_combinations(coding_build):
    tasks = load_built(coding_build)
    card = json.loads((coding_build / "data_card.json").read_text())
    lk = card["leakage"]  # wordings are shared by design (one per type); entities never are
    assert lk["shared_entities"] == 0 and lk["n_test"] > 0 and lk["shared_templates"] == len(MC.TEMPLATES)
    test_names = {MC.combo_name(c) for c in MC.TEST_COMBOS}
    for t in tasks:
        ents = set(t.metadata["entities"])
        assert (ents <= test_names) if t.split == "test" else not (ents & test_names), (t.id, ents)
    train_combos = MC.split_combos("train")
    assert {c for c, _ in MC.TEST_COMBOS} == {c for c, _ in train_combos} == set(MC.COLORS)
    assert {s for _, s in MC.TEST_COMBOS} == {s for _, s in train_combos} == set(MC.SHAPES)


def _ink_bbox(img: np.ndarray, region: tuple[int, int, int, int], min_diff: float = 40.0) -> tuple[int, int]:
    """Width and height of the pixels in `region` that differ from the background."""
    x0, y0, x1, y1 = region
    sub = img[y0:y1, x0:x1].astype(np.float32)
    diff = np.abs(sub - np.array(MC.BACKGROUND, np.float32)).max(axis=-1)
    ys, xs = np.nonzero(diff > min_diff)
    return (int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)) if len(xs) else (0, 0)


def test_zoom_detail_is_too_small_at_policy_resolution_and_large_after_the_gold_crop(tmp_path):
    from arftlib.tools.sandbox import run_image_code

    specs = [s for s in MC.plan(200, 11) if s["labels"] == ["crop"]][:6]
    assert len(specs) == 6
    for spec in specs:
        item = MC.make_item(spec, 11)
        box = item.task.metadata["box"]
        small = MC.downscaled(item.degraded)  # what the policy sees without a tool
        w, h = _ink_bbox(small, grid_box_to_pixels(box, MC.POLICY_SIDE, MC.POLICY_SIDE))
        assert 0 < max(w, h) <= 6, (w, h)  # a 5-pixel blob among others
        objs = item.task.metadata["objects"]
        assert item.task.answers == [objs[0]["color"]] and "color" in item.task.question
        assert all(o["color"] != objs[0]["color"] for o in objs[1:])  # only the boxed blob has the answer colour
        src = tmp_path / f"{item.task.id}.png"
        from arftlib.data.render import save_png

        save_png(item.degraded, src)
        res = run_image_code(item.task.gold_chain[1]["content"], str(src), timeout_s=30)
        assert res.ok, res.error
        out = load_rgb(res.output_image)
        Path(res.output_image).unlink()
        assert out.shape[:2] == (MC.ZOOM_SIDE, MC.ZOOM_SIDE)
        w2, h2 = _ink_bbox(out, (0, 0, MC.ZOOM_SIDE, MC.ZOOM_SIDE))
        assert min(w2, h2) >= 20, (w2, h2)  # as large as a `shape` question's shape at the policy's resolution
        # only the target lies in the box: the other small shapes are outside it
        x0, y0, x1, y1 = grid_box_to_pixels(box, MC.SIZE, MC.SIZE)
        for o in item.task.metadata["objects"][1:]:
            assert not (x0 <= o["cx"] <= x1 and y0 <= o["cy"] <= y1)


def test_degradations_flip_or_squeeze_answers_and_gold_code_restores(coding_build):
    rng = np.random.default_rng(0)
    tasks = load_built(coding_build)
    for t in tasks:
        labels = t.degradations
        if t.metadata["question_type"] == "position" and any(x in D.GEOMETRIC for x in labels):
            assert t.metadata["flipped_answer"] != t.answers[0]  # a direct answer from the image is wrong
    # dark and overexposure squeeze the six colours together: at most a few grey levels apart per channel
    palette = np.array(list(MC.COLORS.values()), np.float32)[:, None, :].astype(np.uint8)
    for lab, limit in (("dark", 50), ("overexposure", 50)):
        p = MC.sample_params(lab, rng)
        p["a"] = 0.18 if lab == "dark" else 0.2  # the mildest strength drawn
        out = D.apply_one(palette, lab, p, rng).astype(np.float32)[:, 0, :]
        assert np.ptp(out, axis=0).max() <= limit, (lab, out)
    verif = {json.loads(x)["id"]: json.loads(x) for x in (coding_build / "verification.jsonl").read_text().splitlines()}
    assert all(verif[t.id]["ok"] for t in tasks)


def test_broken_micro_gold_code_is_a_loud_bug(monkeypatch, tmp_path):
    monkeypatch.setattr(MC, "restoration_code", lambda labels, params, box=None: "" if labels == ["none"] else
                        "import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
                        "cv2.imwrite('path_to_output_image.jpg', 255 - img)\n")
    with pytest.raises(BuildError, match="fail restoration verification"):
        build_dataset("micro-coding", 8, seed=0, out=tmp_path / "bad")


# ------------------------------------------------------------------------------------------- micro-search
def test_micro_search_every_gold_query_retrieves_and_answer_is_copyable(search_build):
    from arftlib.tools.search import load_search

    tasks = load_built(search_build)
    card = json.loads((search_build / "data_card.json").read_text())
    assert len(tasks) == N_SEARCH and card["benchmark"] == "micro-search" and card["kind"] == "search"
    assert card["verification"]["rank_1_fraction"] > 0.9
    search = load_search("local", corpus=tasks[0].metadata["corpus"], cache_root=search_build / ".idx")
    hops_seen = set()
    for t in tasks:
        assert t.benchmark == "micro-search" and t.kind == "search" and t.degradations == []
        queries = [s["content"] for s in t.gold_chain if s["action"] == "search"]
        assert [s["action"] for s in t.gold_chain] == ["search"] * len(queries) + ["answer"]
        assert len(queries) == t.metadata["hops"] == len(t.metadata["needed_passages"]) in (1, 2)
        hops_seen.add(len(queries))
        v = t.metadata["visual"]
        assert queries[0] == f"{v['color']} {v['category']}"
        for q, pid in zip(queries, t.metadata["needed_passages"]):
            hits = search.search(q, k=MS.K)
            assert pid in [h.id for h in hits], (t.id, q)
        last = next(h for h in search.search(queries[-1], k=MS.K) if h.id == t.metadata["needed_passages"][-1])
        assert re.search(rf"\b{re.escape(t.answers[0])}\b", last.text)  # copyable from the hit
        assert re.fullmatch(r"[A-Z][a-z]+", t.answers[0]) and len(t.answers) == 1  # one word: F1 = EM
        assert t.answers[0].lower() not in t.question.lower()  # not guessable from the question
        assert v["category"] in t.question and v["color"] not in t.question and v["shape"] not in t.question
    assert hops_seen == {1, 2}


def test_micro_search_test_split_is_new_societies_answered_from_the_pools(search_build):
    """Held-out societies are new colour × category pairings; every answer is a word of the fixed name pools (a
    word the policy can have produced in training), and which one is a fact drawn per build seed."""
    tasks = load_built(search_build)
    train = [t for t in tasks if t.split == "train"]
    test = [t for t in tasks if t.split == "test"]
    assert train and test
    pair = lambda t: (t.metadata["visual"]["color"], t.metadata["visual"]["category"])  # noqa: E731
    assert {pair(t) for t in test} <= set(MS.TEST_PAIRS) and len(MS.TEST_PAIRS) == len(MC.COLORS)
    assert not {pair(t) for t in train} & set(MS.TEST_PAIRS)
    assert {c for c, _ in MS.TEST_PAIRS} == {c for c, _ in MS.split_pairs("train")}  # every colour trained
    assert {k for _, k in MS.TEST_PAIRS} <= {k for _, k in MS.split_pairs("train")}  # every category too
    assert not {t.metadata["needed_passages"][0] for t in test} & {t.metadata["needed_passages"][0] for t in train}
    train_answers = {t.answers[0] for t in train}
    pools = set(MS.TOWN_NAMES) | set(MS.PERSON_NAMES) | set(MS.RIVER_NAMES)
    assert {t.answers[0] for t in tasks} <= pools
    assert len(pools) == len(MS.TOWN_NAMES) + len(MS.PERSON_NAMES) + len(MS.RIVER_NAMES)  # disjoint pools
    world, other = MS.World(5), MS.World(6)
    assert sorted(t.name for t in world.towns.values()) == sorted(MS.TOWN_NAMES)  # every town, once
    moved = sum(world.societies[k].town != other.societies[k].town for k in world.societies)
    assert moved > 0.8 * len(world.societies)  # another seed, other facts: a fact cannot be memorised across builds
    train_towns = {s.town for s in world.of("train")}
    assert train_towns == set(world.towns) and {s.town for s in world.of("test")} <= train_towns
    words = {w.lower() for p in world.passages for w in re.findall(r"[A-Za-z]+", p["text"])}
    assert not ({c for c in MC.COLORS} | set(MC.SHAPES)) & {a.lower() for a in train_answers}
    assert {p["id"] for p in world.passages} == {json.loads(x)["id"] for x in
                                                  (search_build / "corpus.jsonl").read_text().splitlines()}
    assert "red" in words  # passages name the emblem in words, as the query does


# ------------------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("kind,n,verify", [("coding", 6, False), ("coding", 3, True), ("search", 6, True),
                                           ("micro-coding", 16, True), ("micro-search", 16, True)])
def test_same_seed_same_bytes_except_build_log(tmp_path, kind, n, verify):
    a = build_dataset(kind, n, seed=2, out=tmp_path / "a", verify=verify)
    b = build_dataset(kind, n, seed=2, out=tmp_path / "b", verify=verify, workers=1)  # other thread count
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb) and "data_card.json" in fa and "data_card.md" in fa
    assert [k for k in fa if fa[k] != fb[k]] == []
    card = json.loads(fa["data_card.json"])
    assert not _keys(card) & {"build_time_s", "timing_s", "sandbox_s", "workers"}  # timings live in the log
    log = json.loads((a / LOG_FILE).read_text())
    assert log["build_time_s"] >= 0 and log["n"] == n
