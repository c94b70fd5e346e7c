"""Procedural MAT-Coding-style tasks: images whose content is known exactly, degraded, with a gold repair.

Sources of images
  * Rendered scenes (PIL + DejaVu fonts): shop signs, product labels, receipts, forms, price tags, bar charts
    with numbers, and document pages with several small text regions (for crop questions on the 0–1000
    grid). Every string drawn is known, so every answer is exact.
  * Real photos from `skimage.data` and matplotlib's sample data with hand-written, checked question/answer
    pairs (`arftlib/resources/photo_qa.json`; each entry says how its answer was checked).

Each task draws a split (train/test), a difficulty (simple: one label; hard: two, see
`degrade.HARD_COMBOS`), a degradation and its strength, degrades the clean image, and writes the gold
chain `problem → code → answer` (`Task.gold_chain`): the diagnosis as the canonical set literal, the
restoration code (`degrade.restoration_code`) and the first gold answer. A `none` item has no code step
(nothing to repair; the reference's tips say to answer directly). The code is executed in the sandbox and
checked against the clean image by `arftlib.data.build` (thresholds in `arftlib.data.degrade`).

Train/test never share a question template or an entity: templates are listed per split below, and names
come from the split's half of the word pools (`arftlib.data.vocab`); photos are assigned to one split each
in `photo_qa.json`. `metadata` of each task records `scene`, `template_id`, `template`, `entities`,
`difficulty`, the degradation `params`, the crop `box` (0–1000 grid) when there is one, and `target_box`
(the crop the gold code produces; None = the whole clean image) and `target_scale` (the gold code enlarges
crops ×2 before a photometric fix; the restoration target is enlarged the same way).

Left out: Chinese text (no CJK font ships with matplotlib), handwriting, multi-page documents, charts drawn by
matplotlib (PIL drawing is faster and byte-stable), questions that need reasoning beyond reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from arftlib.data import degrade as D
from arftlib.data import render as R
from arftlib.data.vocab import Vocab
from arftlib.paths import RESOURCES
from arftlib.types import Task

BENCHMARK = "synth-coding"
SCENES = ("sign", "label", "receipt", "form", "price_tag", "chart", "page")
PHOTO_QA_FILE = RESOURCES / "photo_qa.json"
PHOTO_MAX_SIDE = 640

CROP_SUFFIX_TRAIN = " The coordinates have been normalized ranging from 0 to 1000 by the image width and height. "

# scene → question kind → split → templates. Train and test lists are disjoint (checked at import).
TEMPLATES: dict[str, dict[str, dict[str, list[str]]]] = {
    "sign": {
        "name": {"train": ["What is the name of the shop on the sign?", "Which business name is written on the sign?"],
                 "test": ["What is the store called, according to the sign?", "Read the shop's name from the signboard."]},
        "hours": {"train": ["What are the opening hours shown on the sign?", "During which hours is the shop open?"],
                  "test": ["From what time to what time does the sign say the business is open?"]},
        "phone": {"train": ["What telephone number is given on the sign?"],
                  "test": ["Which phone number can you call, according to the sign?"]},
    },
    "label": {
        "product": {"train": ["What product is this label for?"], "test": ["Which product name is printed on the label?"]},
        "weight": {"train": ["What is the net weight stated on the label?"],
                   "test": ["How heavy is the contents according to the package label?"]},
        "best_before": {"train": ["What is the best-before date on the label?"],
                        "test": ["Until when should the product be consumed, according to the label?"]},
        "batch": {"train": ["What is the batch code printed on the label?"],
                  "test": ["Which lot number appears on the label?"]},
        "origin": {"train": ["In which town was the product made, according to the label?"],
                   "test": ["Where does the label say this item was produced?"]},
    },
    "receipt": {
        "total": {"train": ["What is the total amount on the receipt?", "How much was paid in total?"],
                  "test": ["What total does the receipt show?", "What was the final sum on this bill?"]},
        "item_price": {"train": ["How much did the {item} cost according to the receipt?"],
                       "test": ["What price is listed for {item} on the receipt?"]},
        "store": {"train": ["Which store issued this receipt?"], "test": ["What shop name is printed at the top of the receipt?"]},
        "date": {"train": ["On what date was this receipt issued?"], "test": ["What date is printed on the receipt?"]},
        "count": {"train": ["How many different items are listed on the receipt?"],
                  "test": ["How many line items does the receipt contain?"]},
    },
    "form": {
        "field": {"train": ["What is written in the '{field}' field of the form?"],
                  "test": ["What value has been filled in for '{field}' on this form?"]},
        "extract": {"train": ["Extract from the image: {fields}"], "test": ["Read these fields from the form: {fields}"]},
    },
    "price_tag": {
        "price": {"train": ["What is the price on the tag?", "How much does the item cost according to the price tag?"],
                  "test": ["What price does the shelf tag show?"]},
        "unit": {"train": ["What unit is the price given for?"], "test": ["The price on the tag is per what?"]},
        "product": {"train": ["Which product is the price tag for?"], "test": ["What item is named on the shelf tag?"]},
        "discount": {"train": ["What discount is advertised on the tag?"], "test": ["How big is the saving shown on the price tag?"]},
    },
    "chart": {
        "value": {"train": ["What value does the chart show for {cat}?", "According to the bar chart, what is the number for {cat}?"],
                  "test": ["How high is the bar labelled {cat}?"]},
        "max": {"train": ["Which town has the highest value in the chart?"], "test": ["Which category has the tallest bar?"]},
        "min": {"train": ["Which town has the lowest value in the chart?"], "test": ["Which category has the shortest bar?"]},
        "year": {"train": ["Which year does the chart refer to?"], "test": ["For what year is the data in the chart?"]},
    },
    "page": {
        "title": {"train": ["What is the title of the document?"], "test": ["What heading is printed at the top of the page?"]},
        "crop": {"train": ["Recognize the text within the {box} of the image." + CROP_SUFFIX_TRAIN],
                 "test": ["What is written inside the box {box} of the picture? The box is given on a 0-1000 scale of "
                          "the picture's width and height."]},
    },
}
for _scene, _kinds in TEMPLATES.items():
    for _kind, _by in _kinds.items():
        assert not set(_by["train"]) & set(_by["test"]), (_scene, _kind)


@dataclass
class QA:
    question: str
    answers: list[str]
    template_id: str
    template: str
    entities: list[str] = field(default_factory=list)


@dataclass
class Scene:
    kind: str
    image: np.ndarray  # the clean image, H×W×3 uint8 RGB
    qas: list[QA]  # questions that read the whole image
    regions: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)  # (text, pixel box) for crops
    entities: list[str] = field(default_factory=list)  # every name drawn into the image
    source: str = "rendered"


def _ask(scene: str, kind: str, split: str, rng: np.random.Generator, answers: list[str],
         entities: list[str] | None = None, **fmt: Any) -> QA:
    options = TEMPLATES[scene][kind][split]
    i = int(rng.integers(len(options)))
    tmpl = options[i]
    return QA(tmpl.format(**fmt), [str(a) for a in answers], f"{scene}.{kind}.{split}{i}", tmpl, list(entities or []))


def _pick(rng: np.random.Generator, seq, n: int | None = None):
    if n is None:
        return seq[int(rng.integers(len(seq)))]
    idx = rng.choice(len(seq), size=n, replace=False)
    return [seq[int(i)] for i in idx]


def _light(rng: np.random.Generator, lo: int = 226, hi: int = 252) -> tuple[int, int, int]:
    return tuple(int(x) for x in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(x) for x in rng.integers(10, 70, size=3))  # type: ignore[return-value]


def _canvas(rng: np.random.Generator, w_range=(600, 720), h_range=(420, 520), bg=None) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    w = int(rng.integers(*w_range)) // 8 * 8
    h = int(rng.integers(*h_range)) // 8 * 8
    im = Image.new("RGB", (w, h), bg or _light(rng))
    return im, ImageDraw.Draw(im)


def _centered(draw: ImageDraw.ImageDraw, cx: float, y: float, text: str, fnt, fill) -> tuple[int, int, int, int]:
    w, _ = R.text_size(text, fnt)
    return R.draw_text(draw, (cx - w / 2, y), text, fnt, fill)


# ----------------------------------------------------------------------------------------------- scenes
def scene_sign(rng: np.random.Generator, v: Vocab) -> Scene:
    wall = tuple(int(x) for x in rng.integers(150, 215, size=3))
    im, d = _canvas(rng, bg=wall)
    w, h = im.size
    name = f"{_pick(rng, v.shop_adj)} {_pick(rng, v.shop_nouns)}"
    board = [(40, 50), (w - 40, h - 50)]
    dark = rng.random() < 0.5
    fill = tuple(int(x) for x in (rng.integers(20, 90, size=3) if dark else rng.integers(225, 250, size=3)))
    ink = (245, 240, 225) if dark else _ink(rng)
    d.rounded_rectangle(board, radius=18, fill=fill, outline=(60, 50, 40), width=6)
    fnt = R.fit_font(name.upper(), "serif-bold", w - 140, 90, start=76)
    _centered(d, w / 2, 90, name.upper(), fnt, ink)
    h1, h2 = int(rng.integers(6, 11)), int(rng.integers(17, 23))
    hours = f"{h1}:00 - {h2}:00"
    _centered(d, w / 2, h / 2 + 10, f"Open daily {hours}", R.font("sans", 30), ink)
    a, b, c = int(rng.integers(100, 999)), int(rng.integers(100, 999)), int(rng.integers(1000, 9999))
    phone = f"{a:03d} {b:03d} {c:04d}"
    _centered(d, w / 2, h / 2 + 70, f"Tel. {phone}", R.font("sans", 26), ink)
    qas = [
        _ask("sign", "name", v.split, rng, [name.upper(), name], [name]),
        _ask("sign", "hours", v.split, rng, [hours, f"{h1}:00-{h2}:00", f"{h1}:00 to {h2}:00"]),
        _ask("sign", "phone", v.split, rng, [phone, f"Tel. {phone}"]),
    ]
    return Scene("sign", np.asarray(im), qas, entities=[name])


def scene_label(rng: np.random.Generator, v: Vocab) -> Scene:
    im, d = _canvas(rng, bg=tuple(int(x) for x in rng.integers(120, 200, size=3)))
    w, h = im.size
    product = _pick(rng, v.products)
    town = _pick(rng, v.towns)
    x0, y0, x1, y1 = 60, 40, w - 60, h - 40
    d.rectangle([x0, y0, x1, y1], fill=_light(rng, 236, 255), outline=_ink(rng), width=4)
    ink = _ink(rng)
    fnt = R.fit_font(product, "sans-bold", x1 - x0 - 60, 80, start=60)
    _centered(d, w / 2, y0 + 30, product, fnt, ink)
    weight = int(_pick(rng, [100, 125, 150, 200, 250, 300, 400, 450, 500, 750, 1000]))
    mm, yyyy = int(rng.integers(1, 13)), int(rng.integers(2026, 2031))
    batch = f"L{int(rng.integers(1000, 9999))}"
    f2 = R.font("sans", 24)
    lines = [f"Net wt. {weight} g", f"Best before: {mm:02d}/{yyyy}", f"Batch: {batch}", f"Made in {town}"]
    y = y0 + 150
    for ln in lines:
        R.draw_text(d, (x0 + 40, y), ln, f2, ink)
        y += 46
    qas = [
        _ask("label", "product", v.split, rng, [product], [product]),
        _ask("label", "weight", v.split, rng, [f"{weight} g", f"{weight}g", f"{weight} grams"]),
        _ask("label", "best_before", v.split, rng, [f"{mm:02d}/{yyyy}"]),
        _ask("label", "batch", v.split, rng, [batch]),
        _ask("label", "origin", v.split, rng, [town], [town]),
    ]
    return Scene("label", np.asarray(im), qas, entities=[product, town])


def scene_receipt(rng: np.random.Generator, v: Vocab) -> Scene:
    n_items = int(rng.integers(3, 7))
    im, d = _canvas(rng, w_range=(520, 640), h_range=(560, 680), bg=tuple(int(x) for x in rng.integers(90, 150, size=3)))
    w, h = im.size
    pw = int(rng.integers(330, 380))
    x0, y0 = (w - pw) // 2, 24
    d.rectangle([x0, y0, x0 + pw, h - 24], fill=_light(rng, 238, 255))
    ink = _ink(rng)
    store = f"{_pick(rng, v.shop_adj)} {_pick(rng, v.shop_nouns)}"
    street = f"{int(rng.integers(1, 200))} {_pick(rng, v.street_words)} Street"
    fb, f = R.font("mono-bold", 22), R.font("mono", 17)
    _centered(d, x0 + pw / 2, y0 + 16, store.upper(), fb, ink)
    _centered(d, x0 + pw / 2, y0 + 48, street, f, ink)
    date = f"{int(rng.integers(2019, 2026))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    R.draw_text(d, (x0 + 20, y0 + 86), f"Date: {date}  {int(rng.integers(8, 21)):02d}:{int(rng.integers(0, 60)):02d}", f, ink)
    items = _pick(rng, v.products, n_items)
    prices = [int(rng.integers(49, 2000)) / 100 for _ in items]
    y = y0 + 130
    for it, p in zip(items, prices):
        R.draw_text(d, (x0 + 20, y), it, f, ink)
        s = f"${p:.2f}"
        R.draw_text(d, (x0 + pw - 20 - R.text_size(s, f)[0], y), s, f, ink)
        y += 30
    d.line([x0 + 16, y + 6, x0 + pw - 16, y + 6], fill=ink, width=2)
    total = round(sum(prices), 2)
    R.draw_text(d, (x0 + 20, y + 18), "TOTAL", fb, ink)
    s = f"${total:.2f}"
    R.draw_text(d, (x0 + pw - 20 - R.text_size(s, fb)[0], y + 18), s, fb, ink)
    _centered(d, x0 + pw / 2, y + 70, "Thank you for shopping!", f, ink)
    k = int(rng.integers(n_items))
    qas = [
        _ask("receipt", "total", v.split, rng, [f"${total:.2f}", f"{total:.2f}"]),
        _ask("receipt", "item_price", v.split, rng, [f"${prices[k]:.2f}", f"{prices[k]:.2f}"], [items[k]],
             item=items[k]),
        _ask("receipt", "store", v.split, rng, [store.upper(), store], [store]),
        _ask("receipt", "date", v.split, rng, [date]),
        _ask("receipt", "count", v.split, rng, [str(n_items)]),
    ]
    return Scene("receipt", np.asarray(im), qas, entities=[store, street, *items])


def scene_form(rng: np.random.Generator, v: Vocab) -> Scene:
    im, d = _canvas(rng, bg=_light(rng, 235, 255))
    w, h = im.size
    ink = _ink(rng)
    title = _pick(rng, ["MEMBERSHIP FORM", "REGISTRATION FORM", "APPLICATION FORM", "ENROLMENT FORM"])
    _centered(d, w / 2, 24, title, R.font("sans-bold", 30), ink)
    person = f"{_pick(rng, v.first_names)} {_pick(rng, v.last_names)}"
    town = _pick(rng, v.towns)
    fields = {
        "Name": person,
        "Date of birth": f"{int(rng.integers(1950, 2006))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
        "City": town,
        "Member ID": str(int(rng.integers(100000, 999999))),
        "Phone": f"{int(rng.integers(100, 999))} {int(rng.integers(1000, 9999))}",
    }
    fl, fv = R.font("sans", 20), R.font("mono", 22)
    y = 100
    for lab, val in fields.items():
        R.draw_text(d, (40, y + 6), f"{lab}:", fl, ink)
        d.rectangle([220, y, w - 40, y + 40], outline=ink, width=2)
        R.draw_text(d, (232, y + 8), val, fv, (20, 30, 110))
        y += 62
    names = list(fields)
    one = _pick(rng, names)
    two = [names[int(i)] for i in sorted(rng.choice(len(names), size=2, replace=False))]
    as_dict = "{" + ", ".join(f"'{k}': '{fields[k]}'" for k in two) + "}"
    qas = [
        _ask("form", "field", v.split, rng, [fields[one]], [fields[one]] if one in ("Name", "City") else [],
             field=one),
        _ask("form", "extract", v.split, rng, [as_dict], [fields[k] for k in two if k in ("Name", "City")],
             fields=", ".join(two)),
    ]
    return Scene("form", np.asarray(im), qas, entities=[person, town])


def scene_price_tag(rng: np.random.Generator, v: Vocab) -> Scene:
    im, d = _canvas(rng, bg=tuple(int(x) for x in rng.integers(60, 140, size=3)))
    w, h = im.size
    product = _pick(rng, v.products)
    tag = (255, 226, 60) if rng.random() < 0.5 else _light(rng, 240, 255)
    d.rounded_rectangle([50, 50, w - 50, h - 50], radius=24, fill=tag, outline=(30, 30, 30), width=4)
    ink = _ink(rng)
    _centered(d, w / 2, 80, product, R.fit_font(product, "sans-bold", w - 160, 60, start=50), ink)
    price = int(rng.integers(59, 2999)) / 100
    unit = _pick(rng, ["per kg", "each", "per 100 g", "per litre", "per pack"])
    _centered(d, w / 2, 150, f"${price:.2f}", R.font("sans-bold", 96), (200, 20, 20))
    _centered(d, w / 2, 268, unit, R.font("sans", 30), ink)
    pct = int(_pick(rng, [10, 15, 20, 25, 30, 40, 50]))
    _centered(d, w / 2, max(h - 110, 320), f"SAVE {pct}%", R.font("sans-bold", 34), ink)
    qas = [
        _ask("price_tag", "price", v.split, rng, [f"${price:.2f}", f"{price:.2f}"]),
        _ask("price_tag", "unit", v.split, rng, [unit]),
        _ask("price_tag", "product", v.split, rng, [product], [product]),
        _ask("price_tag", "discount", v.split, rng, [f"{pct}%", f"SAVE {pct}%", f"{pct} percent"]),
    ]
    return Scene("price_tag", np.asarray(im), qas, entities=[product])


def scene_chart(rng: np.random.Generator, v: Vocab) -> Scene:
    im, d = _canvas(rng, w_range=(640, 720), h_range=(460, 520), bg=(255, 255, 255))
    w, h = im.size
    n = int(rng.integers(4, 7))
    cats = _pick(rng, v.towns, n)
    vals = [int(x) for x in rng.choice(np.arange(8, 100), size=n, replace=False)]
    year = int(rng.integers(2008, 2026))
    ink = _ink(rng)
    _centered(d, w / 2, 14, f"Visitors per day, {year}", R.font("sans-bold", 24), ink)
    left, right, top, bottom = 50, w - 30, 80, h - 70
    d.line([left, bottom, right, bottom], fill=ink, width=2)
    d.line([left, top, left, bottom], fill=ink, width=2)
    slot = (right - left) / n
    color = tuple(int(x) for x in rng.integers(40, 180, size=3))
    fv, fc = R.font("sans-bold", 18), R.font("sans", 13 if n > 5 else 15)
    for i, (c, val) in enumerate(zip(cats, vals)):
        bx0 = left + i * slot + slot * 0.2
        bx1 = left + (i + 1) * slot - slot * 0.2
        by0 = bottom - (bottom - top - 30) * val / 100
        d.rectangle([bx0, by0, bx1, bottom - 1], fill=color)
        _centered(d, (bx0 + bx1) / 2, by0 - 24, str(val), fv, ink)
        _centered(d, (bx0 + bx1) / 2, bottom + 10, c, fc, ink)
    k = int(rng.integers(n))
    imax, imin = int(np.argmax(vals)), int(np.argmin(vals))
    qas = [
        _ask("chart", "value", v.split, rng, [str(vals[k])], [cats[k]], cat=cats[k]),
        _ask("chart", "max", v.split, rng, [cats[imax]], [cats[imax]]),
        _ask("chart", "min", v.split, rng, [cats[imin]], [cats[imin]]),
        _ask("chart", "year", v.split, rng, [str(year)]),
    ]
    return Scene("chart", np.asarray(im), qas, entities=list(cats))


def _region_texts(rng: np.random.Generator, v: Vocab, n: int) -> list[tuple[str, list[str]]]:
    """Short phrases for the small text regions of a page, with the names they contain."""
    makers: list[Callable[[], tuple[str, list[str]]]] = [
        lambda: ((p := f"{_pick(rng, v.first_names)} {_pick(rng, v.last_names)}"), [p]),
        lambda: (f"Ref. {''.join(_pick(rng, list('ABCDEFGHJKLMNPRSTUVWXYZ'), 2))}-{int(rng.integers(1000, 9999))}", []),
        lambda: (f"Room {int(rng.integers(1, 40))}{_pick(rng, list('ABCD'))}", []),
        lambda: ((s := f"{_pick(rng, v.street_words)} Lane"), [s]),
        lambda: (f"Since {int(rng.integers(1890, 2020))}", []),
        lambda: ((t := _pick(rng, v.towns)), [t]),
        lambda: (f"Code {int(rng.integers(10, 99))}-{int(rng.integers(100, 999))}", []),
        lambda: ((p := _pick(rng, v.products)), [p]),
        lambda: (f"Page {int(rng.integers(2, 60))} of {int(rng.integers(60, 99))}", []),
        lambda: (f"Due {int(rng.integers(1, 29))} {_pick(rng, ['March', 'April', 'June', 'July', 'October'])}", []),
    ]
    idx = rng.choice(len(makers), size=n, replace=False)
    return [makers[int(i)]() for i in idx]


def scene_page(rng: np.random.Generator, v: Vocab) -> Scene:
    im, d = _canvas(rng, w_range=(640, 720), h_range=(480, 560), bg=_light(rng, 240, 255))
    w, h = im.size
    ink = _ink(rng)
    title = _pick(rng, v.doc_titles)
    R.draw_text(d, (36, 22), title, R.font("serif-bold", 30), ink)
    d.line([36, 66, w - 36, 66], fill=ink, width=2)
    # a 3×3 grid of cells below the title; text regions go into some cells, grey "prose" bars into others
    cols, rows = 3, 3
    gx0, gy0, gx1, gy1 = 30, 84, w - 30, h - 24
    cw, ch = (gx1 - gx0) / cols, (gy1 - gy0) / rows
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    n_regions = int(rng.integers(4, 7))
    chosen = set(int(i) for i in rng.choice(len(cells), size=n_regions, replace=False))
    texts = _region_texts(rng, v, n_regions)
    regions: list[tuple[str, tuple[int, int, int, int]]] = []
    ents: list[str] = [title]
    ti = 0
    for i, (r, c) in enumerate(cells):
        cx0, cy0 = gx0 + c * cw, gy0 + r * ch
        if i in chosen:
            text, names = texts[ti]
            ti += 1
            fnt = R.font(_pick(rng, ["sans", "serif", "mono", "sans-bold"]), int(rng.integers(12, 17)))
            tw, th = R.text_size(text, fnt)
            x = cx0 + 14 + float(rng.uniform(0, max(1.0, cw - tw - 28)))
            y = cy0 + 14 + float(rng.uniform(0, max(1.0, ch - th - 28)))
            box = R.draw_text(d, (x, y), text, fnt, ink)
            regions.append((text, box))
            ents += names
        else:  # illegible prose: light grey bars
            for k in range(int(rng.integers(2, 5))):
                yy = cy0 + 18 + k * 16
                if yy + 6 < cy0 + ch - 10:
                    d.rectangle([cx0 + 14, yy, cx0 + 14 + float(rng.uniform(0.4, 0.9)) * (cw - 28), yy + 5],
                                fill=(200, 200, 200))
    qas = [_ask("page", "title", v.split, rng, [title], [title])]
    return Scene("page", np.asarray(im), qas, regions=regions, entities=ents)


SCENE_FUNCS: dict[str, Callable[[np.random.Generator, Vocab], Scene]] = {
    "sign": scene_sign, "label": scene_label, "receipt": scene_receipt, "form": scene_form,
    "price_tag": scene_price_tag, "chart": scene_chart, "page": scene_page,
}


# ----------------------------------------------------------------------------------------------- photos
def load_photo_qa(path: str | Path = PHOTO_QA_FILE) -> list[dict[str, Any]]:
    """The hand-written photo questions: `[{id, loader, question, answers, split, check, [avoid]}, ...]`
    (`avoid`: degradation labels whose repair cannot be verified on that photo)."""
    from arftlib.data.loaders import DataError

    path = Path(path)
    items = json.loads(path.read_text(encoding="utf-8"))
    seen = set()
    for i, it in enumerate(items):
        for f, t in (("id", str), ("loader", str), ("question", str), ("answers", list), ("split", str), ("check", str)):
            if not isinstance(it.get(f), t):
                raise DataError(str(path), i, it.get("id"), f, f"missing or not a {t.__name__}")
        if it["id"] in seen:
            raise DataError(str(path), i, it["id"], "id", "duplicate id")
        seen.add(it["id"])
        if it["split"] not in ("train", "test"):
            raise DataError(str(path), i, it["id"], "split", f"must be 'train' or 'test', got {it['split']!r}")
    return items


def photo_array(loader: str) -> np.ndarray:
    """A real photo by loader name: `skimage:<name>` (skimage.data) or `matplotlib:<file>` (sample data)."""
    src, _, name = loader.partition(":")
    if src == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            arr = arr[0]
    elif src == "matplotlib":
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        path = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / name
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    else:
        raise ValueError(f"unknown photo loader {loader!r}; use skimage:<name> or matplotlib:<file>")
    return R.resize_max_side(R.to_rgb(arr), PHOTO_MAX_SIDE)


_PHOTO_CACHE: dict[str, np.ndarray] = {}


def scene_photo(rng: np.random.Generator, split: str, photo_qa: list[dict[str, Any]],
                labels: Sequence[str] = ()) -> Scene:
    """A real photo question of the split; photos whose entry says `avoid` one of `labels` are skipped."""
    pool = [q for q in photo_qa if q["split"] == split and not set(q.get("avoid", ())) & set(labels)]
    qa = _pick(rng, pool)
    if qa["loader"] not in _PHOTO_CACHE:
        _PHOTO_CACHE[qa["loader"]] = photo_array(qa["loader"])
    img = _PHOTO_CACHE[qa["loader"]]
    q = QA(qa["question"], list(qa["answers"]), f"photo.{qa['id']}", qa["question"], [qa["loader"]])
    return Scene("photo", img, [q], entities=[qa["loader"]], source=qa["loader"])


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class CodingItem:
    """One generated task before it is written: the Task plus the arrays the build saves and verifies."""

    task: Task
    clean: np.ndarray
    degraded: np.ndarray
    target_box: tuple[int, int, int, int] | None  # 0–1000 box the gold code crops, None = whole image


def grid_box(pixel_box: tuple[int, int, int, int], w: int, h: int, pad: int = 6) -> tuple[int, int, int, int]:
    """A pixel box, padded, as a 0–1000 grid box that still contains it after `int(v / 1000 * size)`."""
    x0, y0, x1, y1 = pixel_box
    gx0 = max(0, int(np.floor((x0 - pad) * 1000 / w)))
    gy0 = max(0, int(np.floor((y0 - pad) * 1000 / h)))
    gx1 = min(1000, int(np.ceil((x1 + pad) * 1000 / w)) + 1)
    gy1 = min(1000, int(np.ceil((y1 + pad) * 1000 / h)) + 1)
    return gx0, gy0, gx1, gy1


def plan(n: int, seed: int, test_fraction: float = 0.2, hard_fraction: float = 0.5) -> list[dict[str, Any]]:
    """Split, difficulty and labels for n tasks (balanced over labels and combinations), seeded."""
    rng = np.random.default_rng([seed, 0xC0DE])
    n_test = int(round(n * test_fraction))
    splits = ["train"] * (n - n_test) + ["test"] * n_test
    rng.shuffle(splits)
    out = []
    counters = {"simple": 0, "hard": 0}
    simple_labels = list(D.THRESHOLDS)  # the 8 labels
    combos = list(D.HARD_COMBOS)
    order_s = list(rng.permutation(len(simple_labels)))
    order_h = list(rng.permutation(len(combos)))
    for i in range(n):
        hard = rng.random() < hard_fraction
        diff = "hard" if hard else "simple"
        k = counters[diff]
        counters[diff] += 1
        labels = list(combos[order_h[k % len(combos)]]) if hard else [simple_labels[order_s[k % len(simple_labels)]]]
        out.append({"index": i, "split": splits[i], "difficulty": diff, "labels": labels})
    return out


def make_item(spec: dict[str, Any], seed: int, photo_qa: list[dict[str, Any]], photo_fraction: float = 0.15) -> CodingItem:
    """Generate one task from its plan entry (deterministic in seed and index)."""
    i, split, labels = spec["index"], spec["split"], list(spec["labels"])
    rng = np.random.default_rng([seed, i])
    v = Vocab(split)
    if "crop" in labels:
        scene = scene_page(rng, v)
    elif rng.random() < photo_fraction:
        scene = scene_photo(rng, split, photo_qa, labels)
    else:
        scene = SCENE_FUNCS[_pick(rng, [s for s in SCENES])](rng, v)
    clean = scene.image
    h, w = clean.shape[:2]
    box = None
    if "crop" in labels:
        text, pbox = _pick(rng, scene.regions)
        box = grid_box(pbox, w, h)
        qa = _ask("page", "crop", split, rng, [text], [n for n in scene.entities if n == text],
                  box=f"[{box[0]}, {box[1]}, {box[2]}, {box[3]}]")
    else:
        qa = _pick(rng, scene.qas)
    params = {lab: D.sample_params(lab, rng, small_text="crop" in labels, photo=scene.kind == "photo")
              for lab in labels}
    degraded = D.degrade(clean, labels, params, rng)
    chain = [{"action": "problem", "content": D.problem_text(labels)}]
    if labels != ["none"]:
        chain.append({"action": "code", "content": D.restoration_code(labels, params, box)})
    chain.append({"action": "answer", "content": qa.answers[0]})
    task = Task(
        id=f"sc{i:05d}", question=qa.question, images=[], answers=qa.answers, kind="coding", split=split,
        degradations=labels, benchmark=BENCHMARK, clean_image=None, gold_chain=chain,
        metadata={"difficulty": spec["difficulty"], "scene": scene.kind, "source": scene.source,
                  "template_id": qa.template_id, "template": qa.template, "entities": sorted(set(scene.entities)),
                  "question_entities": qa.entities, "params": params, "box": list(box) if box else None,
                  "target_box": list(box) if box else None,
                  "target_scale": D.CROP_SCALE if box and len(labels) > 1 else 1, "seed": seed, "size": [w, h]},
    )
    return CodingItem(task, clean, degraded, box)


def target_array(clean: np.ndarray, target_box: Any, target_scale: int = 1) -> np.ndarray:
    """What the gold code should produce: the clean image, or its crop by `target_box` (0–1000 grid)
    enlarged ×`target_scale` (see `degrade.target_image`)."""
    return D.target_image(clean, target_box, target_scale)
