"""The paper's prompts, and how turns become the messages a policy sees, for both protocols.

Source. The prompt texts and the way history is accumulated are taken from the reference implementation,
Visual-ARFT (github.com/Liuziyu77/Visual-RFT, folder `Visual-ARFT/`; read from the mirror
`raja-kumar/Visual-RFT`, commit f3d3f05c24e2f7e1d86dee5c84561e745f878ec1):

* `CODING_SYSTEM_PROMPT` — `SYSTEM_PROMPT_AGENT_CODE` in `src/visual_arft/src/open_r1/grpo_agent_code.py`,
  identical to `system_prompt` in `evaluation_coding/evaluation_mat_coding_visual_arft.py` and
  `demo/coding_demo.ipynb`.
* `SEARCH_SYSTEM_PROMPT` — `SYSTEM_PROMPT_AGENT` in `src/visual_arft/src/open_r1/grpo_agent_search.py`,
  identical to `system_prompt` in `evaluation_search/MAT-Search-Benchmark/evaluation_mat_search_ngpu_7b_
  visual_arft.py` and `evaluation_search/traditional_benchmark/evaluation_*_ngpu_7b_visual_arft.py`.
  Its trailing double spaces are part of the text and are kept (written out explicitly below).
* The tips after a diagnosis, the `<information>` rendering of search results, the single-user-message
  history and the crop handling — the evaluation scripts named above.
* `DIRECT_SUFFIX` — the "direct inference" baseline, `evaluation_*_ngpu_7b_df.py`.

The `tags` protocol (the paper's; byte-faithful to the reference evaluation)
----------------------------------------------------------------------------
There is no system message. The ONE user message holds the image (MAT tasks; multi-hop is text only) and a
text that grows every turn:

* MAT-Coding starts with `CODING_SYSTEM_PROMPT + "<query> {question} <query>"` — no newline, and the closing
  tag really is `<query>` (a slip in the reference evaluation; the released checkpoints were scored with it).
* MAT-Search and multi-hop start with `SEARCH_SYSTEM_PROMPT + "\\n" + "<query> {question} </query>"`.
* After each model turn the reference appends `"\\n" + turn`, then, if the turn produced text for the model,
  `"\\n" + observation`: for a search, `<information> 1. Content:…2. Content:… </information> ` (top 4
  snippets, no separator between them, a trailing space); for a diagnosis, the `<tips>` text (followed by a
  newline, except for the "none" tip); for code nothing — on success the image in the message is replaced by
  the processed image, on failure the turn is appended and the image stays. A turn with none of the
  reference's tags adds nothing (the same prompt is generated from again). `render_tags_history` does this
  given `(turn, observation_text)` pairs, with observation None meaning "the reference ignored this turn".
* Crop questions: the input image is the ORIGINAL image (`ori_image_path`), the box comes from the question
  (`parse.extract_crop_box`), and every `[a:b, c:d]` slice in the model's code is replaced by the true pixel
  box before it runs (`parse.apply_reference_crop`).

Step-wise training prompts (`stepwise_prompt`)
----------------------------------------------
The reference trains on single steps: the user text is `SYSTEM + "\\n" + problem` for `pre_problem` and the
search rows, and `SYSTEM + "\\n" + problem + "\\n" + context` for `pre_code` and `pre_answer`
(`make_conversation_image` in the two training scripts; verbatim). The rows themselves live only on the model
hub; `problem` is `<query> {question} </query>` (reported by people who used the data) and `context` /
the search rows' partial chain are RECONSTRUCTED here as the earlier step texts joined like the evaluation
history. Pass a dataset's own `context` string to use it verbatim.

The `chat` protocol (ours)
--------------------------
A system message (the reference prompt without its "# Current reasoning chain:" tail, plus one sentence on
how tool results come back), a user message with the image and `<query> … </query>`, then alternating
assistant turns and observation turns (role "user" by default, "tool" on request) whose content is text
and/or the processed image as a new image block.

What this module leaves out: no tokenisation or chat templates (the processor applies those), no tool
calls, no images loaded (image blocks carry the path or a PIL image as given).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from arftlib.types import Observation, Task, allowed_actions, task_family

__all__ = [
    "CHAT_TOOL_SENTENCE",
    "CODING_SYSTEM_PROMPT",
    "COMPACT_PROMPT",
    "MINIMAL_PROMPT",
    "PROMPT_STYLES",
    "DIRECT_SUFFIX",
    "PROTOCOLS",
    "SEARCH_SYSTEM_PROMPT",
    "STEP_TYPES",
    "TIPS_CROP",
    "TIPS_GENERIC",
    "TIPS_MINIMAL",
    "TOOLS_OFF_TEXT",
    "TIPS_NONE",
    "build_messages",
    "format_observation_code",
    "format_observation_invalid",
    "format_observation_search",
    "initial_user_text",
    "query_block",
    "render_search_error",
    "render_search_hits",
    "render_tags_history",
    "stepwise_messages",
    "stepwise_prompt",
    "system_prompt",
    "tips_text",
]

PROTOCOLS = ("tags", "chat", "direct")

# --- verbatim: grpo_agent_code.py SYSTEM_PROMPT_AGENT_CODE == evaluation_mat_coding_visual_arft.py ---------
CODING_SYSTEM_PROMPT = (
    "# Role\n"
    "You are a step-by-step image processing assistant.\n"
    "Your task is to solve an image-based task by applying OpenCV operations one step at a time, optionally "
    "using a reasoning chain.\n"
    "\n"
    "# Output Format\n"
    "At each step, output **only one** of the following, preceded by a <think> tag:\n"
    "1. <problem> Describe the image issue from {'rotation90', 'rotation180', 'dark', 'overexposure', 'blur', "
    "'noise', 'crop', 'none'} </problem>\n"
    "2. <code> OpenCV code to process and save the image </code>\n"
    "3. <answer> Final answer based on the processed image </answer>\n"
    "\n"
    "# Image Processing Rules\n"
    "- Always read from `'path_to_input_image.jpg'` and write to `'path_to_output_image.jpg'`.\n"
    "\n"
    "# Output Format (strict):\n"
    "Always begin with <think>. Then, depending on current reasoning chain, output one of the following:\n"
    "\n"
    "## 1. If this is the first step and only the query is given, output in the following format:\n"
    "<think> Initial analysis of the image issue. </think>\n"
    "<problem> {'problem1', ...} </problem>\n"
    "\n"
    "## 2. If <problem> is given, continue with image operations:\n"
    "<think> Explain what to fix next. </think>\n"
    "<code>\n"
    "```python\n"
    "One Python code block using OpenCV to perform the operation, and save the processed images.\n"
    "```\n"
    "</code>\n"
    "\n"
    "## 3. If ready to conclude:\n"
    "<think> Summarize the processing steps and provide the result or outcome </think> \n"
    "<answer> Final answer, as briefly as possible</answer>\n"
    "\n"
    "# Current reasoning chain:\n"
)

# --- verbatim: grpo_agent_search.py SYSTEM_PROMPT_AGENT == evaluation_mat_search_ngpu_7b_visual_arft.py ----
# (lines ending in two spaces are written with an explicit "  \n")
SEARCH_SYSTEM_PROMPT = (
    "# Role  \n"
    "You are a step-by-step multimodal reasoning assistant.  \n"
    "Given an image, a question, and optional partial reasoning chain, your task is to solve the problem "
    "**one substep at a time**.  \n"
    "\n"
    "# Guiding Principles  \n"
    "At each turn, you must **either**:  \n"
    "1. Issue **one specific, text-only search** enclosed in <search> </search> tags,  \n"
    "2. Or provide the **final answer** enclosed in <answer> </answer> tags.  \n"
    "\n"
    "All outputs **must begin with a thought** enclosed in <think> </think> tags, explaining your current "
    "reasoning and what to do next.  \n"
    "\n"
    "- Do not reference \u201cthe image\u201d in your searches.  \n"
    "- Do not repeat past queries.  \n"
    "- Only output **one action per step**: either <search> or <answer>, never both.  \n"
    "- When ready to conclude, summarize reasoning and give a final answer.\n"
    "\n"
    "# Output Format (strict):  \n"
    "Always start with <think>. Do not output the previous reasoning chain. Then, depending on the case, "
    "output one of the following:\n"
    "\n"
    "## 1. If reasoning continues:  \n"
    "<think> Your current reasoning and next plan </think>  \n"
    "<search> One precise, retrievable textual query </search>\n"
    "\n"
    "## 2. If ready to conclude:  \n"
    "<think> Summarize all reasoning and derive the answer </think>  \n"
    "<answer> Final answer, as briefly as possible </answer>\n"
    "\n"
    "# Current reasoning chain:\n"
)

# --- verbatim: evaluation_mat_coding_visual_arft.py, the text appended after a <problem> turn ---------------
TIPS_CROP = (
    "<tips> We now need to crop the image. Please provide the Python code. Use [x_min, y_min, x_max, y_max] "
    "to represent the bounding box coordinates. </tips>"
)
TIPS_NONE = (
    "<tips> The image has no issues, so no code is needed in the next step. You can directly provide the "
    "answer. </tips>"
)
# `{problems}` is the Python repr of the sorted label list, e.g. "['dark', 'rotation90']"
TIPS_GENERIC = (
    "<tips> Now that we have identified the issue in the image: {problems}, please proceed to address it by "
    "outputting the python code. </tips>"
)

# Our own: what a tool call gets in the no-tool baseline of a policy trained in a tool form (`AgentEnv(tools_off=True)`).
TOOLS_OFF_TEXT = "Tools are switched off in this run. Answer from the image as it is."

# --- verbatim: evaluation_*_ngpu_7b_df.py (direct-answer baseline: question + "\n" + suffix) ---------------
DIRECT_SUFFIX = "Answer the question directly. The answer should be very brief."

_CHAIN_TAIL = "# Current reasoning chain:\n"
# ours (chat protocol only)
CHAT_TOOL_SENTENCE = {
    "coding": (
        "After a <code> step the processed image (path_to_output_image.jpg) comes back in the next message, "
        "or the error if the code failed; after a <problem> step you get a hint."
    ),
    "search": "After a <search> step the results come back in the next message inside <information> </information>.",
}

STEP_TYPES = ("pre_problem", "pre_code", "pre_answer", "search")
PROMPT_STYLES = ("reference", "compact", "minimal")

# ours: the same actions in a few lines, for small policies (every prompt token costs a CPU policy time)
COMPACT_PROMPT = {
    "coding": (
        "Answer the question about the image. Each turn write <think> ... </think>, then exactly one action:\n"
        "<problem> {'label', ...} </problem> names what is wrong with the image (rotation90, rotation180, dark, "
        "overexposure, blur, noise, crop, none);\n"
        "<code> ```python ... ``` </code> fixes it: read 'path_to_input_image.jpg', write 'path_to_output_image.jpg';\n"
        "<answer> ... </answer> gives the final answer, as briefly as possible."
    ),
    "search": (
        "Answer the question about the image. Each turn write <think> ... </think>, then exactly one action:\n"
        "<search> query </search> looks up a text encyclopedia;\n"
        "<answer> ... </answer> gives the final answer, as briefly as possible."
    ),
}


# ours: one line, for the few-million-parameter policy of the micro world (its sequences are its training cost;
# the reference prompt alone would be ~1,000 of its tokens)
MINIMAL_PROMPT = {
    "coding": "Write <think> ... </think>, then one action: <problem> labels </problem>, <code> python </code> or "
              "<answer> answer </answer>.",
    "search": "Write <think> ... </think>, then one action: <search> query </search> or <answer> answer </answer>.",
}
# ours: the `<tips>` after a <problem> turn in the minimal style: the labels come back, nothing else
TIPS_MINIMAL = "<tips> {problems} </tips>"


def _short_head(fam: str, style: str) -> str | None:
    """The instructions of a short style (compact / minimal), None for the reference's."""
    _check_style(style)
    return {"compact": COMPACT_PROMPT, "minimal": MINIMAL_PROMPT}.get(style, {}).get(fam)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")


def _reference_prompt(kind: str) -> str:
    return CODING_SYSTEM_PROMPT if task_family(kind) == "coding" else SEARCH_SYSTEM_PROMPT


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; use one of {PROMPT_STYLES}")


def system_prompt(kind: str, protocol: str, style: str = "reference") -> str | None:
    """The system message for a task kind ("coding" | "search" | "multihop") under a protocol.

    `tags` and `direct` → None: the reference puts its prompt inside the user text (see
    `initial_user_text`). `chat` → the reference prompt without its "# Current reasoning chain:" tail, plus
    one sentence on how tool results come back; with `style="compact"` / `"minimal"`, `COMPACT_PROMPT` /
    `MINIMAL_PROMPT` instead.

    >>> system_prompt("coding", "tags") is None
    True
    >>> system_prompt("search", "chat").startswith("# Role")
    True
    >>> system_prompt("search", "chat", "compact").startswith("Answer the question")
    True
    """
    _check_protocol(protocol)
    short = _short_head(task_family(kind), style)
    if protocol != "chat":
        return None
    if short is not None:
        return short
    ref = _reference_prompt(kind)
    body = ref[: -len(_CHAIN_TAIL)].rstrip() if ref.endswith(_CHAIN_TAIL) else ref.rstrip()
    return body + "\n\n" + CHAT_TOOL_SENTENCE[task_family(kind)]


def query_block(question: str, *, reference_eval_coding: bool = False) -> str:
    """`<query> {question} </query>`; with `reference_eval_coding=True` the MAT-Coding evaluation's form,
    whose closing tag is `<query>`.

    >>> query_block("What is shown?")
    '<query> What is shown? </query>'
    >>> query_block("What is shown?", reference_eval_coding=True)
    '<query> What is shown? <query>'
    """
    close = "<query>" if reference_eval_coding else "</query>"
    return f"<query> {question} {close}"


def initial_user_text(task: Task, protocol: str, style: str = "reference") -> str:
    """The text of the first user message (the image block is added by the caller / `build_messages`).

    tags: coding → `CODING_SYSTEM_PROMPT + "<query> q <query>"`; search/multihop →
    `SEARCH_SYSTEM_PROMPT + "\\n<query> q </query>"` (both exactly as the reference evaluation); with a short
    style: `COMPACT_PROMPT` / `MINIMAL_PROMPT` `+ "\\n<query> q </query>"`.
    chat: `<query> q </query>`. direct: `q + "\\n" + DIRECT_SUFFIX`.

    >>> t = Task(id="1", question="Who?", images=[], answers=["x"], kind="multihop")
    >>> initial_user_text(t, "tags").endswith("# Current reasoning chain:\\n\\n<query> Who? </query>")
    True
    """
    _check_protocol(protocol)
    fam = task_family(task.kind)
    short = _short_head(fam, style)
    if protocol == "tags":
        if short is not None:
            return short + "\n" + query_block(task.question)
        if fam == "coding":
            return CODING_SYSTEM_PROMPT + query_block(task.question, reference_eval_coding=True)
        return SEARCH_SYSTEM_PROMPT + "\n" + query_block(task.question)
    if protocol == "chat":
        return query_block(task.question)
    return task.question + "\n" + DIRECT_SUFFIX


def render_tags_history(task: Task, turns: Iterable[tuple[str, str | None]], style: str = "reference") -> str:
    """The `tags` protocol's single user text after some turns, as the reference evaluation builds it:
    `initial_user_text(task, "tags")`, then for each `(turn, observation_text)`: nothing if the observation
    is None (a turn the reference ignores), else `"\\n" + turn`, plus `"\\n" + observation_text` when it is
    not empty. Observation texts come from `format_observation_search`, `tips_text`, and
    `format_observation_code(..., protocol="tags")` (which is "").

    >>> t = Task(id="1", question="Who?", images=[], answers=["x"], kind="search")
    >>> s = render_tags_history(t, [("<think>a</think><search>q</search>", "<information> 1. Content:z </information> ")])
    >>> s.endswith("</query>\\n<think>a</think><search>q</search>\\n<information> 1. Content:z </information> ")
    True
    """
    parts = [initial_user_text(task, "tags", style)]
    for turn in turns:
        model_text, obs = turn[0], turn[1]
        if obs is None:
            continue
        parts.append("\n" + str(model_text))
        if obs:
            parts.append("\n" + str(obs))
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Observations
# ----------------------------------------------------------------------------------------------------------
def _hit_field(hit: Any, keys: Sequence[str]) -> str:
    if isinstance(hit, str):
        return hit if "text" in keys else ""
    if isinstance(hit, Mapping):
        for key in keys:
            if key in hit and hit[key] is not None:
                return str(hit[key])
        return ""
    for key in keys:
        val = getattr(hit, key, None)
        if val:
            return str(val)
    return ""


def render_search_hits(hits: Sequence[Any], k: int = 4, *, with_title: bool = False) -> str:
    """THE rendering of search results, for the live environment and the step-wise training data alike — the
    reference evaluation's, byte for byte: `"<information> "`, then for each of the first `k` hits
    `"{i}. Content:{snippet}"` with NO separator between hits, then `" </information> "` (trailing space
    included; no hits give `'<information>  </information> '`). Hits may be `tools.search.Hit` objects
    (`.text`), dicts (`body`/`text`/`snippet`) or strings. `with_title=True` is an opt-in variant (not the
    reference) writing `Content:<title>: <text>`, for corpora whose passages do not name their subject.

    >>> render_search_hits(["Paris is the capital.", "France is in Europe."])
    '<information> 1. Content:Paris is the capital.2. Content:France is in Europe. </information> '
    """
    parts = []
    for i, h in enumerate(list(hits)[: max(k, 0)]):
        body = _hit_field(h, ("body", "text", "snippet", "contents", "content"))
        title = _hit_field(h, ("title",)) if with_title else ""
        parts.append(f"{i + 1}. Content:" + (f"{title}: {body}" if title else body))
    return "<information> " + "".join(parts) + " </information> "


def render_search_error(message: str) -> str:
    """The observation text for a failed search, in the same frame as `render_search_hits`:
    `'<information> search failed: <message> </information> '` (message on one line, at most 300 chars).

    >>> render_search_error("HTTP 500\\nfrom x")
    '<information> search failed: HTTP 500 from x </information> '
    """
    msg = " ".join(str(message).split())
    if len(msg) > 300:
        msg = msg[:297] + "..."
    return f"<information> search failed: {msg} </information> "


def format_observation_search(rendered_information: str) -> str:
    """The observation text for a search turn (same in both protocols). An already rendered
    `<information> … </information> ` block is returned unchanged; other text is wrapped the reference's way.

    >>> format_observation_search("1. Content:abc")
    '<information> 1. Content:abc </information> '
    """
    text = str(rendered_information)
    if text.lstrip().startswith("<information>"):
        return text
    return "<information> " + text + " </information> "


def format_observation_code(
    ok: bool,
    error: str | None = None,
    *,
    protocol: str = "tags",
    stdout: str = "",
    has_image: bool | None = None,
    max_chars: int = 2000,
) -> str:
    """The observation text for a code turn.

    tags: always "" — the reference shows the model no text after code (success swaps the image, failure
    changes nothing). chat: a short status line, the error (truncated to `max_chars`) or the code's stdout.

    >>> format_observation_code(False, "NameError: x", protocol="tags")
    ''
    >>> format_observation_code(False, "NameError: x", protocol="chat")
    'The code failed:\\nNameError: x'
    """
    _check_protocol(protocol)
    if protocol != "chat":
        return ""
    if not ok:
        err = (error or "unknown error").strip()
        if len(err) > max_chars:
            err = err[:max_chars] + " …"
        return "The code failed:\n" + err
    if has_image is False:
        msg = "The code ran but wrote no path_to_output_image.jpg; the image is unchanged."
    else:
        msg = "The code ran. The processed image is shown."
    out = (stdout or "").strip()
    if out:
        if len(out) > max_chars:
            out = out[:max_chars] + " …"
        msg += "\nstdout:\n" + out
    return msg


def tips_text(diagnosis: Iterable[str] | str, style: str = "reference") -> str:
    """The `<tips>` the reference appends after a `<problem>` turn, INCLUDING its trailing newline (the
    "none" tip has none), so `render_tags_history` reproduces the reference byte for byte.

    The reference sorts the labels and looks only at the first: "crop" → crop tip, "none" → none tip,
    anything else → the generic tip quoting the sorted list's repr. For byte-exact behaviour pass the
    reference's own extraction (`parse.reference_problems(turn)`, unknown labels kept); a parsed set works
    too. An empty diagnosis (the reference crashes on it) gives the generic tip with `[]`. `style="minimal"`:
    `TIPS_MINIMAL` (the sorted labels only).

    >>> tips_text({"rotation90", "dark"})
    "<tips> Now that we have identified the issue in the image: ['dark', 'rotation90'], please proceed to address it by outputting the python code. </tips>\\n"
    >>> tips_text(["none"]).endswith("</tips>")
    True
    """
    labels = sorted([diagnosis] if isinstance(diagnosis, str) else [str(x) for x in diagnosis])
    _check_style(style)
    if style == "minimal":
        return TIPS_MINIMAL.format(problems=repr(labels)) + "\n"
    if labels and labels[0] == "crop":
        return TIPS_CROP + "\n"
    if labels and labels[0] == "none":
        return TIPS_NONE
    return TIPS_GENERIC.format(problems=repr(labels)) + "\n"


def format_observation_invalid(error: str | None, kind: str = "search") -> str:
    """Feedback for a turn that did not parse (chat protocol; the reference shows nothing in `tags`).

    >>> format_observation_invalid("unclosed <search>")
    'Your last message could not be used (unclosed <search>). Reply with <think> ... </think> followed by exactly one of <search> or <answer>.'
    """
    tags = [f"<{a}>" for a in allowed_actions(kind)]
    allowed = (", ".join(tags[:-1]) + " or " + tags[-1]) if len(tags) > 1 else tags[0]
    return (
        f"Your last message could not be used ({error or 'invalid format'}). Reply with <think> ... </think> "
        f"followed by exactly one of {allowed}."
    )


# ----------------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------------
def _obs_parts(obs: Any, protocol: str = "tags") -> tuple[str | None, Any]:
    """(text, image) of one history observation: None | str | Observation | {"text":…, "image":…}.

    text None means "no observation" (in `tags`: the turn is ignored). An `Observation` with an error and no
    text shows the error in `chat` and nothing in `tags` (the reference shows the model no tool errors)."""
    if obs is None:
        return None, None
    if isinstance(obs, str):
        return obs, None
    if isinstance(obs, Observation):
        text = obs.text or ""
        if not text and obs.error and protocol == "chat":
            text = "The tool failed:\n" + str(obs.error).strip()[:2000]
        return text, obs.image
    if isinstance(obs, Mapping):
        text = obs.get("text")
        return ("" if text is None else str(text)), obs.get("image")
    return str(obs), None


def _text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def _image(img: Any) -> dict[str, Any]:
    return {"type": "image", "image": img}


def build_messages(
    task: Task,
    protocol: str,
    history: Sequence[tuple[str, Any]] = (),
    *,
    image: Any = None,
    observation_role: str = "user",
    style: str = "reference",
) -> list[dict[str, Any]]:
    """Conversational messages (HF/TRL format) for the next generation.

    `history` is a list of `(model_turn_text, observation)`; an observation is None, a text, an
    `Observation` (its `text`, and `image` if any) or a dict with "text" / "image". The first image is
    `image` if given, else `task.images[0]` (none for text-only tasks).

    tags: `[user: [image?, text]]` — one user message whose text is `render_tags_history`, and whose image is
    the latest image an observation returned (the reference swaps the input image after code that ran).
    None observations drop their turn, as the reference does.
    chat: `[system, user: [image?, <query> q </query>], assistant, observation, assistant, …]`;
    observations go out as `observation_role` ("user" or "tool") with a text block and/or an image block;
    a turn with a None observation is kept as an assistant message with no reply after it.
    `style`: the system prompt's style ("reference" = the paper's, verbatim; "compact", see `COMPACT_PROMPT`).
    direct: `[user: [image?, q + "\\n" + DIRECT_SUFFIX]]` (history ignored).

    >>> t = Task(id="1", question="Q?", images=["in.png"], answers=["a"], kind="coding")
    >>> m = build_messages(t, "tags", [("<think>t</think><code>```python\\nx=1\\n```</code>", {"text": "", "image": "out.png"})])
    >>> [b["type"] for b in m[0]["content"]], m[0]["content"][0]["image"]
    (['image', 'text'], 'out.png')
    >>> [x["role"] for x in build_messages(t, "chat", [("<think>a</think><problem>{'dark'}</problem>", "tip")])]
    ['system', 'user', 'assistant', 'user']
    """
    _check_protocol(protocol)
    if observation_role not in ("user", "tool"):
        raise ValueError(f"observation_role must be 'user' or 'tool', not {observation_role!r}")
    first_image = image if image is not None else (task.images[0] if task.images else None)

    if protocol == "direct":
        content = ([_image(first_image)] if first_image is not None else []) + [_text(initial_user_text(task, "direct",
                                                                                                     style))]
        return [{"role": "user", "content": content}]

    if protocol == "tags":
        current = first_image
        pairs: list[tuple[str, str | None]] = []
        for model_text, obs in history:
            text, img = _obs_parts(obs)
            pairs.append((model_text, text))
            if text is not None and img is not None:
                current = img
        content = ([_image(current)] if current is not None else []) + [_text(render_tags_history(task, pairs, style))]
        return [{"role": "user", "content": content}]

    sys_text = system_prompt(task.kind, "chat", style)
    messages: list[dict[str, Any]] = [{"role": "system", "content": [_text(sys_text or "")]}]
    first = ([_image(first_image)] if first_image is not None else []) + [_text(initial_user_text(task, "chat", style))]
    messages.append({"role": "user", "content": first})
    for model_text, obs in history:
        if model_text is not None:  # None: a further tool result of the same turn (several calls in one turn)
            messages.append({"role": "assistant", "content": [_text(str(model_text))]})
        text, img = _obs_parts(obs, "chat")
        if text is None:
            continue
        blocks: list[dict[str, Any]] = []
        if img is not None:
            blocks.append(_image(img))
        if text.strip() or img is None:
            blocks.append(_text(text.rstrip()))
        messages.append({"role": observation_role, "content": blocks})
    return messages


# ----------------------------------------------------------------------------------------------------------
# Step-wise training prompts (the paper's decomposed chains)
# ----------------------------------------------------------------------------------------------------------
def _context_text(context: str | Sequence[Any] | None) -> str:
    """A dataset `context` string verbatim, or earlier steps joined exactly as the evaluation history joins
    them (`"\\n" + step`, then `"\\n" + observation` when there is one), minus the first newline. Each item is
    a step text or a `(step_text, observation_text)` pair (observation "" or None → nothing after it)."""
    if context is None:
        return ""
    if isinstance(context, str):
        return context
    parts: list[str] = []
    for item in context:
        if isinstance(item, (tuple, list)):
            step, obs = (item[0], item[1]) if len(item) > 1 else (item[0], None)
        else:
            step, obs = item, None
        parts.append("\n" + str(step))
        if obs:
            parts.append("\n" + str(obs))
    return "".join(parts)[1:]


def stepwise_prompt(step_type: str, task: Task, context: str | Sequence[Any] | None = None,
                    style: str = "reference") -> str:
    """The user text of one step-wise training sample.

    Coding (`make_conversation_image` in grpo_agent_code.py, verbatim wrapper):
    `pre_problem` → `CODING_SYSTEM_PROMPT + "\\n" + "<query> q </query>"`;
    `pre_code`, `pre_answer` → `CODING_SYSTEM_PROMPT + "\\n" + "<query> q </query>" + "\\n" + context`.
    Search (grpo_agent_search.py): `"search"` → `SEARCH_SYSTEM_PROMPT + "\\n" + "<query> q </query>"`, plus
    `"\\n" + context` when a partial chain is given (the first step has none).

    `context` is the dataset's string (used verbatim) or a list of earlier steps — step texts or
    `(step_text, observation_text)` pairs — joined as the evaluation history joins them, so a step prompt is
    the evaluation's text at that point with the training head (our reconstruction, see module docstring).

    >>> t = Task(id="1", question="Q?", images=["x.png"], answers=["a"], kind="coding")
    >>> stepwise_prompt("pre_code", t, ["<think>d</think>\\n<problem> {'dark'} </problem>"]).endswith(
    ...     "<query> Q? </query>\\n<think>d</think>\\n<problem> {'dark'} </problem>")
    True
    """
    if step_type not in STEP_TYPES:
        raise ValueError(f"unknown step type {step_type!r}; use one of {STEP_TYPES}")
    fam = task_family(task.kind)
    if (step_type == "search") != (fam == "search"):
        raise ValueError(f"step type {step_type!r} does not fit a {task.kind!r} task (task id {task.id!r})")
    ctx = _context_text(context)
    head = (_short_head(fam, style) or _reference_prompt(task.kind)) + "\n" + query_block(task.question)
    if step_type == "pre_problem":
        if ctx:
            raise ValueError(f"pre_problem takes no context (task id {task.id!r})")
        return head
    if step_type in ("pre_code", "pre_answer"):
        return head + "\n" + ctx
    return head + ("\n" + ctx if ctx else "")


def stepwise_messages(
    step_type: str, task: Task, context: str | Sequence[Any] | None = None, *, image: Any = None,
    style: str = "reference",
) -> list[dict[str, Any]]:
    """`stepwise_prompt` as the reference's conversational prompt: one user message, image block first
    (`image`, else `task.images[0]`), then the text. No system message, as in the reference."""
    img = image if image is not None else (task.images[0] if task.images else None)
    content = ([_image(img)] if img is not None else []) + [_text(stepwise_prompt(step_type, task, context, style))]
    return [{"role": "user", "content": content}]
