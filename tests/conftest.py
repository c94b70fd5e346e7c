"""Fixtures shared by the rollout tests: a small mixed task set (6 coding + 5 search, hand-made with gold chains)
and a local search engine over the search tasks' corpus. A module that defines its own `tasks` / `search`
fixture uses that instead."""

from __future__ import annotations

import pytest

from fixtures import fixture_tasks
from arftlib.tools.search import load_search


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("fixture")
    return fixture_tasks(6, root / "c", "coding") + fixture_tasks(5, root / "s", "search")


@pytest.fixture(scope="module")
def search(tasks, tmp_path_factory):
    corpus = next(t for t in tasks if t.kind == "search").metadata["corpus"]
    return load_search("local", corpus=corpus, cache_root=tmp_path_factory.mktemp("bm25"))
