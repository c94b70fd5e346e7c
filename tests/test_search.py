"""The search tool: local BM25 over the shipped Wikipedia corpus and custom corpora, the retriever client
against a loopback server, the web backends through recorded fake transports, the sqlite cache, retries,
error observations, the reference rendering and thread-safety."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from arftlib.tools import search as S
from arftlib.prompts import render_search_error as render_error
from arftlib.prompts import render_search_hits as render_information
from arftlib.tools.search import (
    CorpusFormatError,
    Hit,
    HttpResponse,
    ReplayTransport,
    SearchCache,
    SearchConfigError,
    SearchError,
    TransientSearchError,
    load_search,
    safe_search,
    safe_search_many,
    write_corpus_jsonl,
)

QUERIES = ["Eiffel Tower", "who designed the eiffel tower", "Kubrick space odyssey film", "photosynthesis plants",
           "French Revolution 1789", "theory of relativity Einstein", "Amazon river", "the of and", "Mount Everest",
           "Roman Empire fall", "DNA double helix", "Beethoven symphony"]


@pytest.fixture(scope="module")
def wiki():
    """The default local search (shipped Wikipedia summaries), index from the user cache (built once)."""
    s = load_search()
    yield s
    s.close()


@pytest.fixture()
def no_sleep():
    slept = []
    return slept, slept.append


# ----------------------------------------------------------------------------------- default corpus
def test_default_corpus_holds_every_article_as_passages():
    records = S.read_corpus_jsonl(S.default_corpus_path())
    titles = {r["title"] for r in records}
    assert len(titles) == 10_033  # every vital-article summary made it in
    assert len(records) >= 10_033
    assert len({r["id"] for r in records}) == len(records)
    assert max(len(r["text"].split()) for r in records) <= 125  # long extracts were split (~100 words)
    assert all(r["text"].strip() for r in records)


def test_known_queries_find_their_articles(wiki):
    assert wiki.n_passages >= 10_033
    hits = wiki.search("Eiffel Tower")
    assert hits[0].title == "Eiffel Tower"
    assert len(hits) == 4 and all(isinstance(h, Hit) and h.source == "local" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert "2001: A Space Odyssey" in [h.title for h in wiki.search("Kubrick space odyssey film")]
    assert wiki.search("Eiffel Tower", k=1)[0].id == "Eiffel Tower#0"
    assert wiki.search("the of and") == []  # stopwords only: nothing to score, nothing returned
    with pytest.raises(ValueError):
        wiki.search("   ")
    with pytest.raises(ValueError):
        wiki.search("Eiffel", k=0)


def test_scores_match_bm25s_own_scoring(wiki):
    import numpy as np

    idx = wiki._index
    for q in QUERIES[:6]:
        ids = [idx.vocab[t] for t in wiki.analyzer.terms(q) if t in idx.vocab]
        np.testing.assert_allclose(idx.scores(ids), idx.bm25.get_scores_from_ids(ids), rtol=1e-5, atol=1e-6)


def test_index_is_cached_on_disk_and_reused(tmp_path):
    corpus = S.default_corpus_path()
    before = S.index_build_count()
    first = load_search("local", corpus=corpus, cache_root=tmp_path)
    assert first.built and S.index_build_count() == before + 1
    expected = [h.to_dict() for h in first.search("Eiffel Tower")]
    S.forget_loaded_indexes()  # make the next load read from disk, as a new process would
    second = load_search("local", corpus=corpus, cache_root=tmp_path)
    assert not second.built and S.index_build_count() == before + 1
    assert second.index_dir == first.index_dir
    assert [h.to_dict() for h in second.search("Eiffel Tower")] == expected
    # other analyzer settings are a different index
    third = load_search("local", corpus=corpus, cache_root=tmp_path, stem=None)
    assert third.built and third.index_dir != first.index_dir


# ------------------------------------------------------------------------------------- custom corpus
FICTION = [
    {"id": "v1", "title": "Vellmar Bridge", "text": "The Vellmar Bridge crosses the Oskar river in Tarnheim."},
    {"id": "v2", "title": "Tarnheim", "text": "Tarnheim is the capital of the duchy of Orlavia, founded by Ilse Brandt."},
    {"id": 3, "title": "Ilse Brandt", "text": "Ilse Brandt was an architect who designed bridges in Orlavia."},
]


def test_custom_corpus_is_searchable_and_content_keyed(tmp_path):
    path = write_corpus_jsonl(FICTION, tmp_path / "fiction.jsonl")
    s = load_search("local", corpus=path, cache_root=tmp_path / "idx")
    assert s.n_passages == 3
    assert s.search("who founded Tarnheim?")[0].title == "Tarnheim"
    assert s.search("Oskar river bridge", k=1)[0].id == "v1"
    assert s.passage(2)["id"] == "3"  # integer ids become strings
    # rewriting the file changes its hash, so the index is rebuilt rather than served stale
    write_corpus_jsonl(FICTION + [{"id": "v4", "title": "Orlavia", "text": "Orlavia is a duchy."}], path)
    s2 = load_search("local", corpus=path, cache_root=tmp_path / "idx")
    assert s2.built and s2.n_passages == 4


@pytest.mark.parametrize("line, message", [
    ('{"id": "x", "title": "T"}', "field 'text' is missing"),
    ('{"id": "x", "title": "T", "text": 5}', "field 'text' must be a string"),
    ('{"title": "T", "text": "t"}', "field 'id' is missing"),
    ('{"id": "a", "title": "T", "text": "dup"}', "repeats an earlier id"),
    ('{"id": "x", "title": "T", "text": "t"', "not valid JSON"),
    ('["x", "T", "t"]', "expected a JSON object"),
])
def test_malformed_corpus_line_fails_loud_with_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "title": "A", "text": "first passage"}\n\n' + line + "\n")
    with pytest.raises(CorpusFormatError) as e:
        load_search("local", corpus=path, cache_root=tmp_path / "idx")
    assert f"{path}:3" in str(e.value) and message in str(e.value)


def test_write_corpus_rejects_bad_records(tmp_path):
    with pytest.raises(CorpusFormatError, match=r"record 1 .*field 'title' is missing"):
        write_corpus_jsonl([FICTION[0], {"id": "b", "text": "no title"}], tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()  # nothing half-written


# ------------------------------------------------------------------------------ retriever (loopback)
class _RetrievalServer:
    """A tiny Search-R1-style /retrieve server on 127.0.0.1 (loopback only)."""

    DOCS = [{"id": "0", "contents": '"Eiffel Tower"\nThe Eiffel Tower is a lattice tower in Paris.'},
            {"id": "1", "contents": '"Gustave Eiffel"\nGustave Eiffel was a French civil engineer.'},
            {"id": "2", "contents": '"Louvre"\nThe Louvre is an art museum in Paris.'}]

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # statuses to answer before answering normally
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                if outer.fail_next:
                    status = outer.fail_next.pop(0)
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                result = []
                for q in body["queries"]:
                    words = set(re.findall(r"\w+", q.lower()))
                    scored = [(len(words & set(re.findall(r"\w+", d["contents"].lower()))), d) for d in outer.DOCS]
                    scored.sort(key=lambda x: -x[0])
                    result.append([{"document": d, "score": float(s)} for s, d in scored[: body["topk"]]])
                data = json.dumps({"result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = _RetrievalServer()
    yield srv
    srv.close()


def test_retriever_against_loopback_server(server, tmp_path, no_sleep):
    slept, sleep = no_sleep
    s = load_search("retriever", url=server.url, cache=tmp_path / "cache.sqlite", backoff_s=0.01, sleep=sleep)
    hits = s.search("Eiffel tower Paris", k=2)
    assert server.requests[0] == {"path": "/retrieve",
                                  "body": {"queries": ["Eiffel tower Paris"], "topk": 2, "return_scores": True}}
    assert [h.title for h in hits] == ["Eiffel Tower", "Gustave Eiffel"]  # quotes around the title line stripped
    assert hits[0].text == "The Eiffel Tower is a lattice tower in Paris." and hits[0].id == "0"
    assert hits[0].score == 3.0 and hits[0].source == "retriever"
    # cached: no new request
    assert s.search("Eiffel tower Paris", k=2) == hits and len(server.requests) == 1
    # batch: cache hit answered locally, the two misses in ONE request
    out = s.search_many(["Eiffel tower Paris", "Gustave engineer", "art museum"], k=2)
    assert [h[0].title for h in out] == ["Eiffel Tower", "Gustave Eiffel", "Louvre"]
    assert len(server.requests) == 2 and server.requests[1]["body"]["queries"] == ["Gustave engineer", "art museum"]
    # transient 503s are retried, then the answer comes through
    server.fail_next = [503, 503]
    assert s.search("Louvre museum", k=1)[0].title == "Louvre"
    assert len(slept) == 2 and s.stats()["retries"] == 2
    # a 4xx is not retried and surfaces as a SearchError
    server.fail_next = [400]
    n = len(server.requests)
    with pytest.raises(SearchError, match="HTTP 400") as e:
        s.search("something new", k=1)
    assert not isinstance(e.value, TransientSearchError) and len(server.requests) == n + 1


def test_retriever_unreachable_becomes_error_observation(tmp_path, no_sleep):
    slept, sleep = no_sleep
    srv = _RetrievalServer()
    url = srv.url
    srv.close()  # nothing listens there any more: connection refused
    s = load_search("retriever", url=url, cache=False, retries=2, sleep=sleep)
    hits, error = safe_search(s, "Eiffel Tower")
    assert hits == [] and "gave up after 3 attempts" in error and len(slept) == 2
    assert render_error(error).startswith("<information> search failed: retriever: gave up")


# ---------------------------------------------------------------------------- serper (fake transport)
SERPER_ANSWER = {
    "searchParameters": {"q": "Eiffel Tower height", "type": "search", "num": 4, "engine": "google"},
    "knowledgeGraph": {"title": "Eiffel Tower", "type": "Tower"},
    "organic": [
        {"title": "Eiffel Tower - Wikipedia", "link": "https://en.wikipedia.org/wiki/Eiffel_Tower",
         "snippet": "The Eiffel Tower is 330 metres (1,083 ft) tall.", "position": 1},
        {"title": "Tour Eiffel", "link": "https://www.toureiffel.paris/en",
         "snippet": "Official website of the Eiffel Tower.", "position": 2},
        {"title": "No snippet here", "link": "https://example.org/x", "position": 3},
    ],
}


def _serper(transport, tmp_path, **kw):
    return load_search("serper", api_key="test-key", transport=transport, cache=tmp_path / "c.sqlite", **kw)


def test_serper_maps_organic_results(tmp_path):
    fake = ReplayTransport([HttpResponse.of_json(SERPER_ANSWER)])
    hits = _serper(fake, tmp_path).search("Eiffel Tower height")
    req = fake.requests[0]
    assert req.method == "POST" and req.url == "https://google.serper.dev/search"
    assert req.headers["X-API-KEY"] == "test-key" and req.json() == {"q": "Eiffel Tower height", "num": 4}
    assert [(h.title, h.text, h.url) for h in hits] == [
        ("Eiffel Tower - Wikipedia", "The Eiffel Tower is 330 metres (1,083 ft) tall.",
         "https://en.wikipedia.org/wiki/Eiffel_Tower"),
        ("Tour Eiffel", "Official website of the Eiffel Tower.", "https://www.toureiffel.paris/en"),
        ("No snippet here", "", "https://example.org/x")]
    assert [h.score for h in hits] == [1.0, 0.5, pytest.approx(1 / 3)] and {h.source for h in hits} == {"serper"}


def test_serper_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    monkeypatch.delenv("SERPER_API", raising=False)
    with pytest.raises(SearchConfigError, match="SERPER_API_KEY"):
        load_search("serper")
    monkeypatch.setenv("SERPER_API_KEY", "from-env")
    fake = ReplayTransport([HttpResponse.of_json({"organic": []})])
    load_search("serper", transport=fake, cache=False).search("q")
    assert fake.requests[0].headers["X-API-KEY"] == "from-env"


def test_sqlite_cache_hit_avoids_the_transport(tmp_path):
    fake = ReplayTransport([HttpResponse.of_json(SERPER_ANSWER)])  # one answer only: a 2nd call would fail
    s = _serper(fake, tmp_path)
    first = s.search("Eiffel Tower height")
    assert s.search("  Eiffel   Tower height ") == first  # whitespace-normalised key
    assert len(fake.requests) == 1 and s.stats()["cache_hits"] == 1
    # a fresh backend (new process, say) on the same cache file also skips the transport
    S._DEFAULT_CACHES.clear()
    s2 = _serper(ReplayTransport([]), tmp_path)
    assert s2.search("Eiffel Tower height") == first
    # k is part of the key
    fake3 = ReplayTransport([HttpResponse.of_json(SERPER_ANSWER)])
    assert len(_serper(fake3, tmp_path).search("Eiffel Tower height", k=2)) == 2 and len(fake3.requests) == 1
    assert len(SearchCache(tmp_path / "c.sqlite")) == 2


def test_retry_on_transient_errors_then_success(tmp_path, no_sleep):
    slept, sleep = no_sleep
    fake = ReplayTransport([HttpResponse(500, b"oops"), urllib.error.URLError("connection reset"),
                            TimeoutError("timed out"), HttpResponse(429, b"slow down"),
                            HttpResponse.of_json(SERPER_ANSWER)])
    s = _serper(fake, tmp_path, retries=4, backoff_s=1.0, sleep=sleep)
    assert s.search("Eiffel Tower height")[0].title == "Eiffel Tower - Wikipedia"
    assert len(fake.requests) == 5 and len(slept) == 4
    assert slept[0] < slept[2] < slept[3] <= 8.0  # exponential backoff (with jitter, capped)


def test_no_retry_on_4xx_and_failures_are_not_cached(tmp_path, no_sleep):
    slept, sleep = no_sleep
    fake = ReplayTransport([HttpResponse(403, b'{"message": "Unauthorized.", "statusCode": 403}'),
                            HttpResponse.of_json(SERPER_ANSWER)])
    s = _serper(fake, tmp_path, sleep=sleep)
    hits, error = safe_search(s, "Eiffel Tower height")
    assert hits == [] and "HTTP 403" in error and "Unauthorized" in error and slept == []
    assert s.search("Eiffel Tower height")  # the failure was not cached: the next call asks again
    assert len(fake.requests) == 2 and s.stats()["errors"] == 1


# ----------------------------------------------------------------------- duckduckgo (recorded HTML)
DDG_PAGE = """<!DOCTYPE html><html><body><div id="links" class="results">
<div class="result results_links results_links_deep result--ad ">
  <div class="links_main links_deep result__body">
    <h2 class="result__title"><a rel="nofollow" class="result__a"
      href="https://duckduckgo.com/y.js?ad_domain=tickets.example&amp;ad_provider=bingv7aa">Buy Eiffel Tickets</a></h2>
    <a class="result__snippet" href="https://duckduckgo.com/y.js?x=1">Skip the line!</a>
  </div>
</div>
<div class="result results_links results_links_deep web-result ">
  <div class="links_main links_deep result__body">
    <h2 class="result__title">
      <a rel="nofollow" class="result__a"
         href="//duckduckgo.com/l/?uddg=https%3A%2F%2Fen.wikipedia.org%2Fwiki%2FEiffel_Tower&amp;rut=ab12">Eiffel Tower - Wikipedia</a>
    </h2>
    <div class="result__extras"><div class="result__extras__url">
      <a class="result__url" href="//duckduckgo.com/l/?uddg=x">en.wikipedia.org/wiki/Eiffel_Tower</a></div></div>
    <a class="result__snippet" href="//duckduckgo.com/l/?uddg=x">The <b>Eiffel Tower</b> is a wrought-iron
       lattice tower on the Champ de Mars in Paris &amp; is named after Gustave Eiffel.</a>
    <div class="clear"></div>
  </div>
</div>
<div class="result results_links results_links_deep web-result ">
  <div class="links_main links_deep result__body">
    <h2 class="result__title"><a rel="nofollow" class="result__a" href="https://www.toureiffel.paris/en">Official
      site | Tour Eiffel</a></h2>
    <a class="result__snippet" href="https://www.toureiffel.paris/en">Tickets, opening hours &#8211; visit.</a>
  </div>
</div>
</div></body></html>"""


def test_duckduckgo_parses_recorded_html(tmp_path):
    fake = ReplayTransport([HttpResponse(200, DDG_PAGE.encode())])
    s = load_search("duckduckgo", transport=fake, cache=tmp_path / "c.sqlite")
    hits = s.search("Eiffel Tower")
    req = fake.requests[0]
    assert req.method == "POST" and req.url == "https://html.duckduckgo.com/html/"
    assert req.body == b"q=Eiffel+Tower&kl=wt-wt" and "Mozilla" in req.headers["User-Agent"]
    assert [(h.title, h.url) for h in hits] == [
        ("Eiffel Tower - Wikipedia", "https://en.wikipedia.org/wiki/Eiffel_Tower"),
        ("Official site | Tour Eiffel", "https://www.toureiffel.paris/en")]
    assert hits[0].text == ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris & "
                            "is named after Gustave Eiffel.")
    assert hits[1].text == "Tickets, opening hours \u2013 visit."
    assert s.search("Eiffel Tower") == hits and len(fake.requests) == 1  # cached


def test_duckduckgo_rate_limit_page_is_transient(no_sleep):
    slept, sleep = no_sleep
    fake = ReplayTransport([HttpResponse(202, b"<html>anomaly</html>"), HttpResponse(200, DDG_PAGE.encode())])
    s = load_search("duckduckgo", transport=fake, cache=False, sleep=sleep)
    assert len(s.search("Eiffel Tower", k=1)) == 1 and len(slept) == 1


def test_unknown_backend_and_option_are_config_errors():
    with pytest.raises(SearchConfigError, match="choose one of"):
        load_search("bing")
    with pytest.raises(SearchConfigError, match="colour"):
        load_search("duckduckgo", colour="red", cache=False)


# ------------------------------------------------------------------------------------------ rendering
def test_render_information_matches_the_reference_byte_for_byte():
    hits = [Hit("T1", "first snippet.", 1.0, "serper"), Hit("T2", "second", 0.5, "serper"),
            Hit("T3", "third", 0.3, "serper"), Hit("T4", "fourth", 0.25, "serper"), Hit("T5", "fifth", 0.2, "serper")]
    # reference: '<information> ' + f'{i+1}.' + ' ' + 'Content:' + body ... + ' </information> '
    assert render_information(hits) == (
        "<information> 1. Content:first snippet.2. Content:second3. Content:third4. Content:fourth </information> ")
    assert render_information([]) == "<information>  </information> "
    assert render_information(hits[:1], with_title=True) == "<information> 1. Content:T1: first snippet. </information> "
    assert render_error("HTTP 500\nfrom x") == "<information> search failed: HTTP 500 from x </information> "
    assert len(render_error("x" * 1000)) < 400


def test_safe_search_turns_any_failure_into_an_error_message(wiki):
    hits, error = safe_search(wiki, "Eiffel Tower")
    assert error is None and hits[0].title == "Eiffel Tower"
    assert safe_search(wiki, "") == ([], "ValueError: empty search query")
    results = safe_search_many(wiki, ["Eiffel Tower", None, "Louvre"])
    assert results[0][1] is None and results[1] == ([], "TypeError: search query must be a str, got NoneType")
    assert results[2][0][0].title == "Louvre"


# ------------------------------------------------------------------------------------ thread-safety
def test_concurrent_local_searches_equal_sequential(wiki):
    queries = QUERIES * 4
    sequential = [wiki.search(q) for q in queries]
    results: dict[int, list[Hit]] = {}

    def worker(offset: int):
        for i in range(offset, len(queries), 8):
            results[i] = wiki.search(queries[i])

    threads = [threading.Thread(target=worker, args=(o,)) for o in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(queries))] == sequential
    assert wiki.search_many(queries) == sequential


def test_concurrent_web_searches_with_shared_cache(tmp_path):
    def answer(req):
        q = req.json()["q"]
        return HttpResponse.of_json({"organic": [{"title": q, "link": f"https://x/{q}", "snippet": f"about {q}"}]})

    fake = ReplayTransport(answer)
    s = _serper(fake, tmp_path)
    queries = [f"query {i % 10}" for i in range(60)]
    out = s.search_many(queries, k=1)
    assert [h[0].title for h in out] == queries  # order kept under concurrency
    assert 10 <= len(fake.requests) <= 60 and len(SearchCache(tmp_path / "c.sqlite")) == 10
    again = s.search_many(queries, k=1)
    assert again == out and s.stats()["cache_hits"] >= 60


# ---------------------------------------------------------------------------------------- benchmark
def test_benchmark_on_a_small_synthetic_corpus(tmp_path):
    res = S.benchmark(n_passages=2_000, n_queries=40)
    assert res["n_passages"] == 2_000 and res["n_queries"] == 40
    assert {"build_s", "p50_ms", "p99_ms"} <= res.keys() and res["p50_ms"] < 50
    assert res["recall_at_4"] > 0.3
    text = S.synthetic_corpus(5, tmp_path / "a.jsonl").read_text()
    assert text == S.synthetic_corpus(5, tmp_path / "b.jsonl").read_text()  # deterministic
    assert len(S.read_corpus_jsonl(tmp_path / "a.jsonl")) == 5
