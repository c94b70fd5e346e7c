"""parse.py: one model turn → Action, never raises; each documented rule; diagnosis labels; crop boxes;
the reference's own extractors; strict format check. Property tests throw thousands of generated and
mangled turns at the parser."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arftlib.parse as parse
from arftlib.parse import (
    MAX_PAYLOAD_CHARS,
    MAX_TURN_CHARS,
    apply_reference_crop,
    extract_crop_box,
    format_ok,
    parse_action,
    parse_diagnosis,
    reference_answer,
    reference_code,
    reference_problems,
    reference_search_query,
    reference_turn_kinds,
    strip_code_fences,
)
from arftlib.types import ACTION_KINDS, DEGRADATIONS, grid_box_to_pixels

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TAGS = ["think", "search", "code", "problem", "answer"]
TAG_STRINGS = [f"<{t}>" for t in TAGS] + [f"</{t}>" for t in TAGS]
NOISE_STRINGS = TAG_STRINGS + [
    "```python\n", "```", "\n", " ", "{'dark'}", "{'rotation90', 'blur'}", "Paris", "import cv2\n",
    "<information>", "</information>", "<tips>", "<query>", "</query>", "<", ">", "</", "<Answer>", "\udcff",
]


def _check_invariants(text, action):
    assert action.kind in ACTION_KINDS
    if action.kind == "invalid":
        assert isinstance(action.error, str) and action.error
        assert action.content == ""
    else:
        assert action.error is None
        assert action.content and action.content.strip() == action.content or action.kind == "code"
        assert len(action.content) <= MAX_PAYLOAD_CHARS
        action.content.encode("utf-8")  # surrogates cleaned
        action.think.encode("utf-8")
    if isinstance(text, str):
        assert action.raw == text
    assert isinstance(action.to_dict(), dict)


# ------------------------------------------------------------------------------------------------ properties
@FAST
@given(st.lists(st.one_of(st.sampled_from(NOISE_STRINGS), st.text(max_size=12)), max_size=30))
def test_random_interleavings_of_tags_never_raise(parts):
    text = "".join(parts)
    for policy in ("reference", "strict"):
        _check_invariants(text, parse_action(text, policy=policy))
    assert isinstance(format_ok(text, None), bool)
    assert isinstance(format_ok(text, "coding"), bool)


@FAST
@given(st.binary(max_size=300), st.sampled_from(["surrogateescape", "replace", "ignore", "backslashreplace"]))
def test_non_utf8_junk_never_raises(data, errors):
    text = data.decode("utf-8", errors=errors)
    _check_invariants(text, parse_action(text))
    wrapped = "<think>" + text + "</think><answer>" + text + " x</answer>"
    _check_invariants(wrapped, parse_action(wrapped))
    _check_invariants(data, parse_action(data))  # the bytes themselves → invalid
    assert parse_action(data).kind == "invalid"


@FAST
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=20), st.lists(st.text(max_size=3)),
                 st.dictionaries(st.text(max_size=3), st.text(max_size=3))))
def test_non_str_input_is_invalid(x):
    a = parse_action(x)
    assert a.kind == "invalid" and "not str" in a.error
    assert format_ok(x) is False
    assert parse_diagnosis(x) == set()
    assert extract_crop_box(x) is None


_payload = st.text(alphabet=st.characters(blacklist_characters="<>`", blacklist_categories=("Cs",)), max_size=40)
_action_tag = st.sampled_from(["search", "answer", "code", "problem"])


@st.composite
def valid_turns(draw):
    tag = draw(_action_tag)
    think = draw(_payload)
    if tag == "problem":
        labels = draw(st.sets(st.sampled_from(DEGRADATIONS), min_size=1, max_size=2))
        payload = " {" + ", ".join(f"'{x}'" for x in sorted(labels)) + "} "
    elif tag == "code":
        payload = "\n```python\n" + draw(_payload.filter(lambda s: s.strip())) + "\n```\n"
    else:
        payload = draw(_payload.filter(lambda s: s.strip()))
    sep = draw(st.sampled_from(["", "\n", " \n "]))
    return tag, f"<think>{think}</think>{sep}<{tag}>{payload}</{tag}>"


@FAST
@given(valid_turns())
def test_valid_turns_parse_and_format_ok(turn):
    tag, text = turn
    for policy in ("reference", "strict"):
        a = parse_action(text, policy=policy)
        assert a.kind == tag, (text, a)
    if parse_action(text).think:
        assert format_ok(text, tag)
        assert format_ok(text, "coding") == (tag in ("problem", "code", "answer"))
        assert format_ok(text, "search") == (tag in ("search", "answer"))


_MUTATIONS = st.sampled_from(["truncate", "delete", "duplicate", "insert_tag", "swap", "double"])


@FAST
@given(valid_turns(), st.lists(st.tuples(_MUTATIONS, st.integers(0, 10_000), st.integers(0, 10_000),
                                         st.sampled_from(TAG_STRINGS)), min_size=1, max_size=4))
def test_mangled_turns_never_raise(turn, mutations):
    _, text = turn
    for op, i, j, tag in mutations:
        n = max(len(text), 1)
        i, j = sorted((i % n, j % n))
        if op == "truncate":
            text = text[:i]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "insert_tag":
            text = text[:i] + tag + text[i:]
        elif op == "swap":
            text = text[j:] + text[:i]
        else:
            text = text + text
    for policy in ("reference", "strict"):
        _check_invariants(text, parse_action(text, policy=policy))
    if format_ok(text):
        assert parse_action(text, policy="strict").kind != "invalid"


@FAST
@given(st.text(max_size=60))
def test_diagnosis_is_subset_of_labels(text):
    assert parse_diagnosis(text) <= set(DEGRADATIONS)
    assert parse_diagnosis("{" + text + "}") <= set(DEGRADATIONS)


@FAST
@given(st.text(max_size=80), st.lists(st.integers(0, 1000), min_size=4, max_size=4))
def test_crop_box_found_in_any_question(prefix, box):
    q = prefix.replace("[", "(") + f" within the [{box[0]}, {box[1]},{box[2]} , {box[3]}] of the image."
    assert extract_crop_box(q) == tuple(box)


# ------------------------------------------------------------------------------------------------ the rules
@pytest.mark.parametrize(
    "text, kind, content",
    [
        ("<think> t </think>\n<search> Eiffel tower height </search>", "search", "Eiffel tower height"),
        ("<think>t</think><answer>\n Paris \n</answer>", "answer", "Paris"),
        ("<think>t</think><answer>Spaghetti\nGOEMON</answer>", "answer", "Spaghetti\nGOEMON"),
        ("<think>t</think>\n<code>\n```python\nimport cv2\nimg = 1\n```\n</code>", "code", "import cv2\nimg = 1"),
        ("<think>t</think><code>```py\nx = 1\n```</code>", "code", "x = 1"),
        ("<think>t</think><code>```\nx = 1\n```</code>", "code", "x = 1"),
        ("<think>t</think><code>x = 1</code>", "code", "x = 1"),
        ("<think>t</think><problem> {'rotation90', 'dark'} </problem>", "problem", "{'dark', 'rotation90'}"),
        ('<think>t</think><problem>["Blur"]</problem>', "problem", "{'blur'}"),
        ("<think>t</think><problem>{'dark', 'foggy'}</problem>", "problem", "{'dark'}"),
        ("<answer>no think at all</answer>", "answer", "no think at all"),  # reference eval accepts it
        ("pre-filled thinking</think><answer>x</answer>", "answer", "x"),
        ("<think>I could <search>q</search> here</think><answer>x</answer>", "answer", "x"),  # tags in think
        ("<think>t</think><search>q</search>\n<information> hallucinated </information>", "search", "q"),
    ],
)
def test_valid_examples(text, kind, content):
    a = parse_action(text)
    assert (a.kind, a.content, a.error) == (kind, content, None)


def test_think_is_extracted():
    assert parse_action("<think>  I see a dark image. </think><problem>{'dark'}</problem>").think == "I see a dark image."
    assert parse_action("pre-filled</think><answer>x</answer>").think == "pre-filled"


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "no action tag"),
        ("<think>only thinking</think>", "no action tag"),
        ("<think>t</think><search>q", "unclosed <search>"),
        ("<think>t</think><code>```python\nx = 1\n```", "unclosed <code>"),
        ("<think>t<answer>x</answer>", "unclosed <think>"),
        ("<think>t</think><answer><answer>x</answer></answer>", "nested <answer> inside <answer>"),
        ("<think>t</think><search>a <answer>b</answer></search>", "nested <answer> inside <search>"),
        ("<think>t</think><code>print('<think>')</code>", "nested <think> inside <code>"),
        ("<think>t</think><search>q</answer>", "unexpected </answer> inside <search>"),
        ("<think>t</think>x</answer>", "unmatched </answer>"),
        ("<think>t</think><search>   </search>", "empty <search>"),
        ("<think>t</think><answer></answer>", "empty <answer>"),
        ("<think>t</think><code>```python\n   \n```</code>", "empty <code>"),
        ("<think>t</think><code>```python\nx = 1\n</code>", "unclosed ``` fence in <code>"),
        ("<think>t</think><problem>{}</problem>", "no known degradation label"),
        ("<think>t</think><problem>{'rotate'}</problem>", "no known degradation label"),
        ("<think>t</think><Answer>x</Answer>", "no action tag"),
    ],
)
def test_invalid_examples_name_the_problem(text, error):
    a = parse_action(text)
    assert a.kind == "invalid"
    assert error in a.error


def test_size_caps():
    big = "x" * (MAX_PAYLOAD_CHARS + 1)
    a = parse_action(f"<think>t</think><answer>{big}</answer>")
    assert a.kind == "invalid" and "too long" in a.error and "<answer>" in a.error
    ok = "y" * MAX_PAYLOAD_CHARS
    assert parse_action(f"<think>t</think><answer>{ok}</answer>").content == ok
    huge = "<think>t</think><answer>a</answer>" + "z" * MAX_TURN_CHARS
    a = parse_action(huge)
    assert a.kind == "invalid" and "turn too long" in a.error
    # a long but legal turn full of tags is still parsed in linear time
    many = "<think>t</think>" + "<search>q</search>" * 20_000
    assert parse_action(many).content == "q"
    assert parse_action(many, policy="strict").error.startswith("multiple actions")


def test_multiple_actions_policy():
    two_kinds = "<think>t</think><search>q</search><answer>Paris</answer>"
    assert parse_action(two_kinds).kind == "answer"  # reference: `'<answer>' in result` is tested first
    assert parse_action(two_kinds, policy="strict").error == "multiple actions: <search>, <answer>"
    prob_code = "<think>t</think><code>x=1</code><problem>{'dark'}</problem>"
    assert parse_action(prob_code).kind == "problem"  # coding eval: problem branch before code branch
    same = "<think>t</think><search>first</search><search>second</search>"
    assert parse_action(same).content == "first"  # re.search takes the first
    assert parse_action(same, policy="strict").kind == "invalid"
    assert parse_action("<answer>x</answer>", policy="nope").kind == "invalid"
    assert not format_ok(two_kinds) and not format_ok(same)


def test_surrogates_are_cleaned_but_raw_kept():
    junk = b"\xff\xfe caf\xe9".decode("utf-8", errors="surrogateescape")
    text = f"<think>{junk}</think><answer>{junk}</answer>"
    a = parse_action(text)
    assert a.kind == "answer" and a.raw == text
    assert "\ufffd" in a.content and "\ufffd" in a.think
    a.content.encode("utf-8")


def test_strip_code_fences():
    assert strip_code_fences("prose\n```python\nimport cv2\n```\nmore prose") == ("import cv2", None)
    assert strip_code_fences("```python import cv2```") == ("import cv2", None)


# ------------------------------------------------------------------------------------------------ format_ok
@pytest.mark.parametrize(
    "text, kind, ok",
    [
        ("<think> a </think>\n<search> q </search>", "search", True),
        ("<think> a </think>\n<search> q </search>", "multihop", True),
        ("<think> a </think>\n<search> q </search>", "coding", False),
        ("<think> a </think>\n<code>\n```python\nimport cv2\n```\n</code>", "code", True),
        ("<think> a </think>\n<code>\nimport cv2\n</code>", "code", False),  # reference needs ```python
        ("<think> a </think>\n<problem> {'rotation90', 'dark'} </problem>", "coding", True),
        ("<think> a </think>\n<problem> ['dark'] </problem>", "coding", False),  # reference needs {'…'}
        ("<think> a </think>\n<problem> {'sunny'} </problem>", "coding", False),
        ("<answer> x </answer>", None, False),  # no think
        ("<think></think><answer> x </answer>", None, False),  # empty think
        ("lead <think> a </think><answer> x </answer>", None, False),
        ("<think> a </think> between <answer> x </answer>", None, False),
        ("<think> a </think><answer> x </answer><think> b </think>", None, False),
        ("<think> a <think> b </think><answer> x </answer>", None, False),
        ("pre</think><answer> x </answer>", None, False),
        ("<think> a </think><answer> x </answer>", "bogus", False),
        ("<think> a </think><answer> x </answer>", "search", True),
    ],
)
def test_format_ok(text, kind, ok):
    assert format_ok(text, kind) is ok
    assert format_ok(text, kind, "chat") is ok
    assert format_ok(text, kind, "bogus") is False


# ------------------------------------------------------------------------------------------------ diagnosis
@pytest.mark.parametrize(
    "text, labels",
    [
        ("{'rotation90', 'dark'}", {"rotation90", "dark"}),
        ('{"rotation180"}', {"rotation180"}),
        ("['Overexposure', 'NOISE']", {"overexposure", "noise"}),
        ("rotation90+dark", {"rotation90", "dark"}),
        ("Rotation_90 and blurry", {"rotation90", "blur"}),
        ("{'crop'}", {"crop"}),
        ("{'none'}", {"none"}),
        ("{'problem1', ...}", set()),
        ("", set()),
    ],
)
def test_parse_diagnosis(text, labels):
    assert parse_diagnosis(text) == labels


# ------------------------------------------------------------------------------------------------ crop boxes
def test_crop_box_reference_example():
    q = (
        "Recognize the text within the [366, 723, 506, 851] of the image. The coordinates have been "
        "normalized ranging from 0 to 1000 by the image width and height. "
    )
    assert extract_crop_box(q) == (366, 723, 506, 851)
    assert grid_box_to_pixels((366, 723, 506, 851), 800, 600) == (292, 433, 404, 510)
    assert extract_crop_box("[1, 2, 3]") is None
    assert extract_crop_box("[10, 20, 1200, 40]") is None
    assert extract_crop_box("first [1, 2, 3, 4] then [5, 6, 7, 8]") == (1, 2, 3, 4)


def test_apply_reference_crop():
    code = "img = cv2.imread('path_to_input_image.jpg')\ncropped = img[int(h*0.7):int(h*0.85), x[0]:x[1]]\n"
    out = apply_reference_crop(code, (292, 433, 404, 510))
    assert "cropped = img[433:510, 292:404]" in out
    assert "imread('path_to_input_image.jpg')" in out
    assert apply_reference_crop("a = b[1:2]", (1, 2, 3, 4)) == "a = b[1:2]"  # 1-D slices untouched


# ------------------------------------------------------------------------------------------------ reference extractors
def test_reference_extractors_match_the_reference_regexes():
    turn = "<think>t</think>\n<answer> Spaghetti\nGOEMON </answer>"
    assert reference_answer(turn) is None  # the reference's regex is single-line
    assert parse_action(turn).content == "Spaghetti\nGOEMON"  # ours is not
    assert reference_answer("<answer> 81 </answer>") == "81"
    assert reference_search_query("<search> a b </search>") == "a b"
    assert reference_search_query("<search> a\nb </search>") is None
    assert reference_code("<code>\n```python\nx=1\n```\n</code>") == "\nx=1\n"
    assert reference_code("<code>x=1</code>") is None
    assert reference_problems("<problem> {'rotation90', 'dark', 'weird'} </problem>") == ["dark", "rotation90", "weird"]
    assert reference_problems("<problem> ['dark'] </problem>") == []
    assert reference_turn_kinds("<think>x</think><code>y</code>", "coding") == ["code"]
    assert reference_turn_kinds("nothing", "search") == []
    assert reference_turn_kinds("<answer>", "multihop") == ["answer"]
    assert reference_turn_kinds(None, "search") == [] and reference_answer(None) is None


def test_doctests():
    result = doctest.testmod(parse)
    assert result.failed == 0 and result.attempted > 10


def test_no_catastrophic_backtracking():
    # pathological inputs for the regexes used here must stay fast
    import time

    t0 = time.perf_counter()
    parse_diagnosis("{" + "'a" * 30_000 + "}")
    extract_crop_box("[1," * 50_000)
    apply_reference_crop("[" + "a" * 3000 + ":" * 10, (1, 2, 3, 4))
    parse_action("<think>" + "<" * 100_000 + "</think><answer>x</answer>")
    format_ok("<think>t</think><problem>{" + "'a'," * 10_000 + "</problem>")
    assert time.perf_counter() - t0 < 5.0


def test_action_records_its_blocks_and_strict_format():
    a = parse_action("<think> t </think>\n<search> q </search>")
    assert a.blocks == ["search"] and a.format_ok and a.strict_kind == "search" and a.extra_tool_calls == 0
    hedge = parse_action("<think>t</think><search>a</search><search>b</search><answer>c</answer>")
    assert hedge.kind == "answer" and hedge.strict_kind == "invalid" and hedge.extra_tool_calls == 1
    assert not hedge.format_ok
    assert not parse_action("<search> q </search>").format_ok  # no think
    assert not parse_action("<think>t</think><problem> dark </problem>").format_ok  # not a set literal
    assert parse_action("<think>t</think><problem> {'dark'} </problem>").format_ok
    # strict format == the public checker, for every kind restriction
    for text in ("<think>t</think><answer>x</answer>", "<think>t</think><code>```python\nx=1\n```</code>"):
        assert format_ok(text) == parse_action(text).format_ok


def test_reference_turn_reads_like_the_reference_rewards():
    from arftlib.parse import reference_turn

    r = reference_turn("<think>t</think>\n<answer>Paris\nFrance</answer>")
    assert r.answer == r.text.strip()  # the single-line regex misses a two-line answer: the whole turn is used
    assert reference_turn("<search>a</search><search>b</search>").query == "a"
    assert not reference_turn("<think>a</think><think>b</think><answer>x</answer>").format_ok("search", None)
    assert reference_turn("<think>x</think><code>```python\npass\n```</code>").format_ok("coding", "code")
    assert not reference_turn("<think>x</think><code>```python\npass\n```</code>").format_ok("coding", "problem")
