"""`micro-search`: a fictional world whose entities an image identifies by what it SHOWS, not by a name.

Why it exists: a few-million-parameter policy cannot read, but it can learn to see a colour
(`arftlib.data.micro_coding`). Here each entity of a seeded fictional world is a society of some `CATEGORIES`
kind (a guild, a clan, …) known by its emblem's colour — "the red guild". The image shows only the emblem, a
coloured shape (the same flat-shape renderer as `micro-coding`; the shape is the society's, but no text names it);
the question names the kind of society and asks a fact that exists only in this world's corpus:

    image: a red triangle      question: "In which town was the guild with this emblem founded?"
    gold:  <search>red guild</search>  → passage "The red guild was founded in Nele. …"
           <answer>Nele</answer>

So the policy must build its query from what it sees (the colour) and the kind named in the question, and
read the answer word in the top hits. Hard items take two hops: the second query is the town found by
the first ("Nele town") and the question asks the town's ruler or its river.

The world (`World`, deterministic in the build seed): one society per (colour, category), 24 in all; one passage
per society ("The {colour} {category} was founded in {Town}. Its leader is {Name}.") and one per town
("{Town} is a town on the {River} river. It is ruled by {Name}."), short so the answer word is easy to find
in 4 hits. Every name is a generated single word from one of three fixed pools (`TOWN_NAMES`, `PERSON_NAMES`,
`RIVER_NAMES`: the same words in every build, whatever its seed), never a colour, shape or category word, so
F1 = EM. The seed draws the facts — which town founded each society, who leads it, each town's river and ruler —
so no answer can be guessed from the image, the question or a training fact: the policy must read it in the
hits (chance is one over the pool). Why pools: see the comment above `TOWN_NAMES`.

Train/test: test societies are exactly the (colour, category) pairings `TEST_PAIRS` holds out, one per colour
(each colour and each category occurs in train, in other pairings); towns are shared (a test society was founded
in a town that training societies were founded in too, so its second hop may be a fact seen in training; its
first hop never is); question wordings are shared by the splits (`TEMPLATES`, one per kind: see the comment
there), so the leakage report shows shared templates and questions, and zero shared societies. The build (`arftlib.data.build`) runs every gold
query on the local BM25 backend and requires its passage in the top `K` (a failure is a `BuildError`: the world
is regular, so a miss is a bug, not bad luck), and checks that no answer is visible in its question.

Left out: emblems with text, more than two hops, questions whose answer is not a single word, distractor
passages from outside the world, entities that share an emblem.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from arftlib.data import micro_coding as MC

BENCHMARK = "micro-search"
K = 4  # the reference shows the top 4 search results; every gold query must find its passage among them
CATEGORIES = ("guild", "clan", "order", "league")  # kinds of society; the question names one
SPLITS = ("train", "test")
QUESTION_KINDS = {  # kind → hops; 1-hop kinds are "simple", 2-hop kinds "hard"
    "founded": 1, "leader": 1, "ruler": 2, "river": 2,
}
# One wording per question kind, the SAME in both splits (as in micro-coding, where a tiny model answered 75 % of
# held-out questions in a training wording and 9 % in an unseen one): the held-out split is new societies, towns
# and names, not new phrasing. Each wording names the society's kind ({category}) and the relation's keyword.
TEMPLATES: dict[str, str] = {
    "founded": "In which town was the {category} with this emblem founded?",
    "leader": "Who leads the {category} with this emblem?",
    "ruler": "Who rules the town where the {category} with this emblem was founded?",
    "river": "On which river lies the town where the {category} with this emblem was founded?",
}
assert set(TEMPLATES) == set(QUESTION_KINDS)

# Syllables of generated names (pronounceable, 2 syllables + optional ending: "Brask", "Tolme", "Vireth").
_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_ENDINGS = ("", "", "n", "r", "l", "s", "th", "sk", "m")
_RESERVED = {w.lower() for w in (*MC.COLORS, *MC.SHAPES, *MC.SIDES, *CATEGORIES, "town", "river", "emblem", "leader",
                                 "ruled", "founded")}


def draw_name(choose: Callable[[Sequence[str]], str]) -> str:
    """A generated name (two syllables + an optional ending, at least 4 letters, never a reserved word), each part
    picked by `choose` (e.g. `random.Random(0).choice`)."""
    while True:
        w = "".join(choose(_ONSETS) + choose(_VOWELS) for _ in range(2)) + choose(_ENDINGS)
        if len(w) >= 4 and w not in _RESERVED:
            return w.capitalize()


def _name_pools(sizes: Sequence[int], seed: int = 0x5EA4C0) -> list[tuple[str, ...]]:
    """Disjoint pools of generated names (two syllables + an optional ending: "Brask", "Tolme", "Vireth"), drawn with
    a FIXED seed: every build of the world, whatever its seed, names its towns, people and rivers from the same
    words."""
    rng = np.random.default_rng(seed)
    used: set[str] = set()
    pools = []
    for size in sizes:
        pool: list[str] = []
        while len(pool) < size:
            w = draw_name(lambda seq: seq[int(rng.integers(len(seq)))])
            if w not in used:
                used.add(w)
                pool.append(w)
        pools.append(tuple(pool))
    return pools


# The world's names come from three fixed pools, the same for every build seed; a build seed decides only which
# town each society was founded in, who leads it, and each town's river and ruler. Why pools and not a fresh name
# per fact: a from-scratch policy of a few M parameters does not learn to COPY a word it has never produced (600
# steps of rows whose names were re-drawn every row: held-out 0 %), but it learns in a few hundred steps to PICK
# the right one of words it has produced from what the hits say (held-out 68 % after 300 steps):
# `experiments/reading_probe.py`. So every answer is a pool word, and a question is answered by reading the hits,
# not by memorising: a test society's facts are drawn independently of every training fact (chance = 1 / pool).
TOWN_NAMES, PERSON_NAMES, RIVER_NAMES = _name_pools((16, 32, 12))  # towns (unique, shared by the splits), leaders
# and rulers, rivers


# Held-out societies: one (colour, category) pairing per colour that training never shows (each colour and each
# category occurs in training, in other pairings), so a held-out query composes the colour the policy SEES with
# the category the question NAMES. Why not colour × shape (the world's first design): the policy never learned to
# see shape (coding probes: chance after 550 steps), and with shape in the name its held-out first query was right
# in 0 of 60 episodes (colour right in 58, category in 60), so no held-out answer could be found.
TEST_PAIRS = tuple((c, CATEGORIES[i % len(CATEGORIES)]) for i, c in enumerate(MC.COLORS))


def split_pairs(split: str) -> list[tuple[str, str]]:
    """The (colour, category) pairs of `split`'s societies."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [(c, k) for c in MC.COLORS for k in CATEGORIES if ((c, k) in TEST_PAIRS) == (split == "test")]


@dataclass
class Society:
    id: str
    split: str
    category: str
    color: str
    shape: str  # the emblem's drawn shape (a decoration: not in the name, the query or any passage)
    town: str  # id of the founding town
    leader: str  # a generated name

    @property
    def name(self) -> str:
        return f"{self.color} {self.category}"


@dataclass
class Town:
    id: str
    split: str
    name: str
    river: str
    ruler: str


@dataclass
class World:
    """Societies and towns per split, and their passages (`passages`: `{id, title, text, type, split}`)."""

    seed: int
    societies: dict[str, Society] = field(default_factory=dict)
    towns: dict[str, Town] = field(default_factory=dict)
    passages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0x5EA4C1])
        towns = []
        for i, name in enumerate(TOWN_NAMES):  # every town of the pool, shared by the splits
            t = Town(f"town-{i:04d}", "shared", name, RIVER_NAMES[int(rng.integers(len(RIVER_NAMES)))],
                     PERSON_NAMES[int(rng.integers(len(PERSON_NAMES)))])
            self.towns[t.id] = t
            towns.append(t)
        for split in SPLITS:
            pairs = split_pairs(split)
            # train societies cover every town first (so every town is a founding town the training split answers
            # with), then draw at random; a test society's town is drawn among the towns of train societies
            hosts = list(rng.permutation(len(towns))) if split == "train" else []
            train_towns = sorted({s.town for s in self.societies.values()})
            for color, category in pairs:
                shape = MC.SHAPES[int(rng.integers(len(MC.SHAPES)))]
                if hosts:
                    town = towns[int(hosts.pop())].id
                elif split == "train":
                    town = towns[int(rng.integers(len(towns)))].id
                else:
                    town = train_towns[int(rng.integers(len(train_towns)))]
                s = Society(f"soc-{len(self.societies):04d}", split, category, color, shape, town,
                            PERSON_NAMES[int(rng.integers(len(PERSON_NAMES)))])
                self.societies[s.id] = s
        for s in self.societies.values():
            town = self.towns[s.town].name
            text = [f"The {s.name} was founded in {town}. Its leader is {s.leader}.",
                    f"Founded in {town}, the {s.name} is led by {s.leader}."][int(rng.integers(2))]
            self.passages.append({"id": s.id, "title": s.name, "text": text, "type": "society", "split": s.split})
        for t in self.towns.values():
            text = [f"{t.name} is a town on the {t.river} river. It is ruled by {t.ruler}.",
                    f"The town of {t.name} lies on the {t.river} river and is ruled by {t.ruler}."][int(rng.integers(2))]
            self.passages.append({"id": t.id, "title": t.name, "text": text, "type": "town", "split": t.split})

    def of(self, split: str) -> list[Society]:
        return [s for s in self.societies.values() if s.split == split]


def query_for(society: Society) -> str:
    """The gold first-hop query: what the image shows plus the kind the question names."""
    return f"{society.color} {society.category}"


def town_query(town: Town) -> str:
    """The gold second-hop query: the town the first hop found."""
    return f"{town.name} town"


@dataclass
class Hop:
    query: str
    passage_id: str  # the passage this query must retrieve (top K)


@dataclass
class MicroSearchItem:
    question: str
    answers: list[str]
    hops: list[Hop]
    society: Society
    kind: str  # question kind (QUESTION_KINDS)
    template_id: str
    template: str
    image: np.ndarray
    objects: list[dict[str, Any]]
    entities: list[str]


def plan(n: int, seed: int, test_fraction: float = 0.2, hard_fraction: float = 0.3) -> list[dict[str, Any]]:
    """Split, difficulty and question kind for `n` tasks (kinds alternate within a difficulty), seeded."""
    rng = np.random.default_rng([seed, 0x5EA4C2])
    n_test = int(round(n * test_fraction))
    splits = ["train"] * (n - n_test) + ["test"] * n_test
    rng.shuffle(splits)
    simple = [k for k, h in QUESTION_KINDS.items() if h == 1]
    hard = [k for k, h in QUESTION_KINDS.items() if h == 2]
    counters = {"simple": 0, "hard": 0}
    ranks = {"train": 0, "test": 0}  # position of the task within its split (which society it shows)
    out = []
    for i in range(n):
        diff = "hard" if rng.random() < hard_fraction else "simple"
        kinds = hard if diff == "hard" else simple
        kind = kinds[counters[diff] % len(kinds)]
        counters[diff] += 1
        out.append({"index": i, "split": splits[i], "difficulty": diff, "kind": kind, "rank": ranks[splits[i]]})
        ranks[splits[i]] += 1
    return out


def make_item(world: World, spec: dict[str, Any], seed: int, order: dict[str, list[str]]) -> MicroSearchItem:
    """The task of a plan entry: societies of the split are visited in a seeded order (`order[split]`, cycled),
    so a build covers every society before repeating one."""
    i, split, kind = spec["index"], spec["split"], spec["kind"]
    rng = np.random.default_rng([seed, 0x5EA4C3, i])
    ids = order[split]
    soc = world.societies[ids[spec["rank"] % len(ids)]]
    town = world.towns[soc.town]
    question = TEMPLATES[kind].format(category=soc.category)
    hops = [Hop(query_for(soc), soc.id)]
    if kind == "founded":
        answer = town.name
    elif kind == "leader":
        answer = soc.leader
    else:
        hops.append(Hop(town_query(town), town.id))
        answer = town.ruler if kind == "ruler" else town.river
    objects = MC.scene_single(rng, (soc.color, soc.shape))
    entities = [soc.name, town.name, answer]
    return MicroSearchItem(question, [answer], hops, soc, kind, f"micro-search.{kind}", TEMPLATES[kind],
                           MC.render(objects), objects, sorted(set(entities)))


def visit_order(world: World, seed: int) -> dict[str, list[str]]:
    """Per split, the societies in a seeded order (a permutation of the split's societies)."""
    out = {}
    for si, split in enumerate(SPLITS):
        ids = [s.id for s in world.of(split)]
        perm = np.random.default_rng([seed, 0x5EA4C4, si]).permutation(len(ids))
        out[split] = [ids[int(j)] for j in perm]
    return out


def answer_visible(answers: Sequence[str], *texts: str) -> bool:
    """Whether a gold answer appears as a whole word (case-insensitive) in any of the texts."""
    for a in answers:
        pat = re.compile(rf"(?<!\w){re.escape(a.lower())}(?!\w)")
        if any(pat.search(t.lower()) for t in texts):
            return True
    return False


def verify_retrieval(item: MicroSearchItem, search: Any, k: int = K) -> tuple[bool, list[dict[str, Any]]]:
    """Run every gold query; each must return its needed passage in the top k. Returns (ok, per-hop ranks)."""
    out, ok = [], True
    for hop in item.hops:
        ids = [h.id for h in search.search(hop.query, k=k)]
        rank = ids.index(hop.passage_id) + 1 if hop.passage_id in ids else None
        ok &= rank is not None
        out.append({"query": hop.query, "needed": hop.passage_id, "rank": rank})
    return ok, out


def gold_chain(item: "MicroSearchItem") -> list[dict[str, str]]:
    """The gold chain: one search per hop with its gold query, then the answer (short think texts)."""
    from arftlib.turns import short_think

    steps = [{"action": "search", "content": h.query, "think": short_think("search")} for h in item.hops]
    return steps + [{"action": "answer", "content": item.answers[0], "think": short_think("answer")}]


_POOL_PATTERN: re.Pattern | None = None


def relabel_names(texts: Sequence[str], rng: "random.Random") -> list[str]:
    """`texts` with every pool name swapped for another of ITS pool, by one random permutation per pool applied to
    all the texts alike (so a row stays consistent: the hits, the second query and the answer name the same new
    town). The warm start's reading stage (`WarmStartRecipe.reading_steps`) trains on answer steps relabelled this
    way: a policy that memorises "red triangle clan → Brask" from the training facts is wrong on a relabelled
    row, one that reads the hits is right.

    >>> import random
    >>> a, b = TOWN_NAMES[:2]
    >>> out = relabel_names([f"founded in {a}.", f"<answer> {a} </answer>", "no names"], random.Random(0))
    >>> out[0].split()[-1].rstrip(".") == out[1].split()[1] != a, out[0].split()[-1].rstrip(".") in TOWN_NAMES, out[2]
    (True, True, 'no names')
    """
    global _POOL_PATTERN
    if _POOL_PATTERN is None:
        names = sorted((*TOWN_NAMES, *PERSON_NAMES, *RIVER_NAMES), key=len, reverse=True)
        _POOL_PATTERN = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    swap: dict[str, str] = {}
    for pool in (TOWN_NAMES, PERSON_NAMES, RIVER_NAMES):
        swap.update(zip(pool, rng.sample(pool, len(pool))))
    return [_POOL_PATTERN.sub(lambda m: swap[m.group(1)], t) for t in texts]


TOKENIZER_TEXT = "micro_search_tokenizer_text.json"  # in arftlib/resources


def tokenizer_corpus() -> list[str]:
    """Text of this world for a tokenizer: questions, queries, passages, observations, answers — FROZEN, as the
    world's first design wrote them (one fresh name per fact). The `seeing` tokenizer trains on it, and every tiny
    model and cached warm start is keyed on that tokenizer's text (`models.corpus_digest`), so a change to the
    world's names must not retrain it: the pooled names are tokenized into the same syllable pieces."""
    import json
    from importlib import resources

    return json.loads(resources.files("arftlib").joinpath("resources", TOKENIZER_TEXT).read_text(encoding="utf-8"))
