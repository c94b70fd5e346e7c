"""Hand-made tasks with gold chains for the rollout, environment and evaluation tests (a fixture, not library
code): coding tasks whose images are drawn here with one degradation each, and search tasks over a small
fictional corpus written next to them."""

from __future__ import annotations

import os
from pathlib import Path

from arftlib.types import Task

_FIX_WORDS = ("ALPHA", "BRAVO", "CEDAR", "DELTA", "EMBER", "FJORD", "GAMMA", "HAZEL", "IVORY", "JOULE", "KAPPA",
              "LEMON", "MANGO", "NOVA", "OLIVE", "PIXEL")
_FIX_TOWN_A = ("Bra", "Cor", "Dun", "Esk", "Fal", "Gor", "Hal", "Ith", "Jor", "Kel", "Lum", "Mor", "Nar", "Ost",
               "Pel", "Quar")
_FIX_TOWN_B = ("dane", "mere", "holt", "wick", "ford", "vale", "stead", "burg")
_FIX_FIRST = ("Anja", "Bertil", "Cosima", "Dagny", "Emrys", "Fenna", "Gideon", "Hedda", "Ilsa", "Jasper", "Kirsi",
              "Leander", "Maren", "Nils", "Oona", "Pascal")
_FIX_LAST = ("Quillfeather", "Rosewarne", "Silverthorn", "Tallowmere", "Umberfield", "Vantongeren", "Whitlock",
             "Yarrowby")


def fixture_tasks(n: int, out: str | os.PathLike, kind: str = "coding") -> list[Task]:
    """`n` small hand-made tasks with gold chains, written under `out` — a fallback when the procedural
    builders are not available, and the tests' fixture.

    coding: a rendered word (a different one per task) on a light card, degraded by `rotation180` or `dark`,
    or shown whole with a `crop` question naming the word's box on the 0–1000 grid; gold chain problem →
    code → answer. search: a card naming an invented town; a JSONL corpus (`out/corpus.jsonl`, named in
    `metadata["corpus"]`) holds one passage per town with its invented mayor; gold chain search → answer,
    `metadata["needed_passages"]` the town's passage id."""
    from PIL import Image, ImageDraw, ImageOps

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind not in ("coding", "search"):
        raise ValueError(f"kind must be 'coding' or 'search', not {kind!r}")
    if n > len(_FIX_TOWN_A) * len(_FIX_TOWN_B):
        raise ValueError(f"at most {len(_FIX_TOWN_A) * len(_FIX_TOWN_B)} fixture tasks")
    tasks = []
    if kind == "search":
        import json

        towns = [a + b for b in _FIX_TOWN_B for a in _FIX_TOWN_A][:n]
        mayors = [f"{_FIX_FIRST[i % 16]} {_FIX_LAST[(i // 16) % 8]}" for i in range(n)]
        corpus = out / "corpus.jsonl"
        with open(corpus, "w", encoding="utf-8") as fh:
            for i, (town, mayor) in enumerate(zip(towns, mayors)):
                fh.write(json.dumps({"id": f"p{i}", "title": town,
                                     "text": f"{town} is a small river town. Its mayor is {mayor}."}) + "\n")
        for i, (town, mayor) in enumerate(zip(towns, mayors)):
            img = Image.new("RGB", (256, 160), (230, 240, 250))
            ImageDraw.Draw(img).text((30, 70), f"Welcome to {town}", fill=(10, 40, 10))
            path = out / f"s{i}.png"
            img.save(path)
            tasks.append(Task(
                id=f"fs{i}", question="Who is the mayor of the town named on the sign?", images=[str(path)],
                answers=[mayor], kind="search", split="simple", benchmark="fixture-search",
                gold_chain=[{"action": "search", "content": f"mayor of {town}"}, {"action": "answer", "content": mayor}],
                metadata={"corpus": str(corpus), "needed_passages": [f"p{i}"], "hops": 1},
            ))
        return tasks
    for i in range(n):
        word = f"{_FIX_WORDS[i % 16]} {100 + i}"
        img = Image.new("RGB", (320, 200), (235, 235, 225))
        ImageDraw.Draw(img).text((40, 90), word, fill=(20, 20, 90))
        label = ("rotation180", "dark", "crop")[i % 3]
        head = "import cv2\nimg = cv2.imread('path_to_input_image.jpg')\n"
        tail = "cv2.imwrite('path_to_output_image.jpg', img)\n"
        question = "What text is written in the image?"
        if label == "rotation180":
            shown = ImageOps.flip(ImageOps.mirror(img))
            code = head + "img = cv2.rotate(img, cv2.ROTATE_180)\n" + tail
        elif label == "dark":
            shown = img.point(lambda v: int(v * 0.4))
            code = head + "img = cv2.convertScaleAbs(img, alpha=2.5, beta=0)\n" + tail
        else:
            shown = img
            box = (100, 400, 600, 550)  # the word at (40, 90) on a 320x200 card, on the 0-1000 grid
            question = f"What text is written within the {list(box)} region of the image?"
            code = (head + "h, w = img.shape[:2]\n"
                    f"x1, y1, x2, y2 = {box[0]}, {box[1]}, {box[2]}, {box[3]}\n"
                    "x_min, y_min = int(x1 / 1000 * w), int(y1 / 1000 * h)\n"
                    "x_max, y_max = int(x2 / 1000 * w), int(y2 / 1000 * h)\n"
                    "img = img[y_min:y_max, x_min:x_max]\n" + tail)
        clean, path = out / f"{i}_clean.png", out / f"{i}.png"
        img.save(clean)
        shown.save(path)
        tasks.append(Task(
            id=f"fx{i}", question=question, images=[str(path)], answers=[word], kind="coding",
            split="hard" if i % 4 == 0 else "simple", degradations=[label], benchmark="fixture-coding",
            clean_image=str(clean),
            gold_chain=[{"action": "problem", "content": "{'" + label + "'}"}, {"action": "code", "content": code},
                        {"action": "answer", "content": word}],
            metadata={"target_box": list(box)} if label == "crop" else {},
        ))
    return tasks


