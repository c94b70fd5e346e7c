"""Trajectories as HTML: one rendering for the notebook widget AND the static export.

* `render_episode_html(traj, base_dir)` — one episode as a chat: a header (benchmark, kind, split, degradation
  labels, hops, training step, group, protocol), the scores (total reward, every reward component, the GRPO
  advantage, F1/EM, turns, tool calls and errors), the question with the input image(s), then each turn as an
  assistant bubble (think text, the action: code with syntax highlighting, the search query, the diagnosis, the
  answer, or why the turn was invalid; the raw turn folded away) followed by a tool bubble (the image the code
  produced, the search hits with their scores, or the tool error), and the final answer against the gold answers.
* `render_group_html(trajs, base_dir)` — the members of one GRPO group side by side, best reward first.
* `export_html(trajectories, path, base_dir)` — a self-contained page: the same views, an index table and a filter
  bar driven by a few lines of its own JavaScript; images embedded as base64 data URIs (downscaled to
  `max_image_side`), so the one file can be mailed or opened on a headless machine. A Content-Security-Policy
  lets only that script run.

All model and data text is untrusted: every string goes through `html.escape` (pygments escapes the code it
highlights), and images are only ever emitted as `data:` URIs this module encoded itself.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import html
import io
import math
import os
import re
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from arftlib.types import Trajectory
from arftlib.viz.store import Store, as_number, episode_facets, group_trajectories, score_of, sort_key

DEFAULT_MAX_IMAGE_SIDE = 512
TEXT_LIMIT = 6000  # characters of one model turn / observation shown before "… N more characters"
HIT_TEXT_LIMIT = 600
ACTION_COLOURS = {"search": "#2f6fb0", "code": "#7a3db8", "problem": "#b8702f", "answer": "#2e8b57",
                  "invalid": "#b03030"}

# ==============================================================================================================
# images
# ==============================================================================================================
def image_data_uri(path: str | os.PathLike, max_side: int = DEFAULT_MAX_IMAGE_SIDE) -> str | None:
    """`data:` URI of an image file, downscaled to `max_side` on its long side (small PNG/JPEG files that
    already fit go in as they are); None when the file is missing or unreadable. Cached per file version."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    if not p.is_file():
        return None
    return _data_uri(str(p.resolve()), st.st_mtime_ns, st.st_size, int(max_side))


@functools.lru_cache(maxsize=1024)
def _data_uri(path: str, mtime_ns: int, size: int, max_side: int) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt = (im.format or "").upper()
            w, h = im.size
            if max(w, h) <= max_side and fmt in ("PNG", "JPEG") and size <= 200_000:
                data, mime = Path(path).read_bytes(), f"image/{'jpeg' if fmt == 'JPEG' else 'png'}"
            else:
                im.load()
                has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
                img = im.convert("RGBA" if has_alpha else "RGB")
                img.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                if has_alpha:
                    img.save(buf, "PNG", optimize=True)
                    mime = "image/png"
                else:
                    img.save(buf, "JPEG", quality=85)
                    mime = "image/jpeg"
                data = buf.getvalue()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


# ==============================================================================================================
# HTML
# ==============================================================================================================
def escape(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _fmt(x: float | None, nd: int = 3, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def _clip(text: str, limit: int) -> str:
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return escape(text)
    return escape(text[:limit]) + f'<span class="arft-more"> … ({len(text) - limit} more characters)</span>'


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-")[:80] or "x"


@functools.lru_cache(maxsize=1)
def _pygments() -> Any:
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pragma: no cover - pygments ships with IPython
        return None
    return highlight, PythonLexer(), HtmlFormatter(noclasses=True, style="friendly", nowrap=True)


def highlight_python(code: str) -> str:
    """Python source as HTML (inline-styled spans, escaped); plain escaped text when pygments is missing."""
    code = "" if code is None else str(code)
    tools = _pygments()
    if tools is None:
        return escape(code)
    highlight, lexer, formatter = tools
    return highlight(code, lexer, formatter)


class Renderer:
    """Shared state of one rendering: image options and what was drawn (for metrics)."""

    def __init__(self, base_dir: str | os.PathLike | None = None, max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
                 run: str = ""):
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.max_image_side = int(max_image_side)
        self.run = run
        self.images = 0
        self.missing_images = 0
        self.episodes = 0

    def _path(self, p: str) -> Path:
        q = Path(p)
        if not q.is_absolute() and self.base_dir is not None:
            q = self.base_dir / q
        return q

    def img(self, path: str | None, label: str, css: str = "arft-img") -> str:
        if not path:
            return ""
        uri = image_data_uri(self._path(path), self.max_image_side)
        if uri is None:
            self.missing_images += 1
            return f'<div class="arft-missing">{escape(label)}: image not found or unreadable: {escape(path)}</div>'
        self.images += 1
        return (f'<figure class="arft-figure"><img class="{css}" src="{uri}" alt="{escape(label)}" '
                f'title="{escape(Path(path).name)}"><figcaption>{escape(label)}</figcaption></figure>')

    # ------------------------------------------------------------------------------------------------------
    def data_attrs(self, traj: Trajectory) -> str:
        f = episode_facets(traj)
        s = f["score"]
        attrs = {
            "data-episode": f["episode"], "data-run": self.run, "data-benchmark": f["benchmark"],
            "data-degradations": " ".join(f["degradations"]),
            "data-hops": "" if f["hops"] is None else str(f["hops"]),
            "data-failed": "1" if f["failed_tools"] else "0",
            "data-score": "" if s is None else repr(float(s)),
            "data-step": "" if f["step"] is None else str(f["step"]),
        }
        return " ".join(f'{k}="{escape(v)}"' for k, v in attrs.items())

    def episode(self, traj: Trajectory, compact: bool = False) -> str:
        self.episodes += 1
        f = episode_facets(traj)
        t = traj.task
        anchor = "ep-" + slug((self.run + "-" if self.run else "") + str(f["episode"]))
        tags = [f'<span class="arft-tag arft-tag-bench">{escape(f["benchmark"])}</span>', escape(t.kind)]
        if t.split:
            tags.append(escape(t.split))
        if t.kind == "coding":
            tags.append("degradation: " + escape(" + ".join(f["degradations"])))
        if f["hops"] is not None:
            tags.append(f"{f['hops']} hop{'s' if f['hops'] != 1 else ''}")
        if traj.training_step is not None:
            tags.append(f"step {traj.training_step}")
        if traj.group_id:
            tags.append("group " + escape(traj.group_id))
        tags.append("protocol " + escape(traj.protocol))
        if self.run:
            tags.append("run " + escape(self.run))
        parts = [f'<section class="arft-episode{" arft-compact" if compact else ""}" id="{escape(anchor)}" '
                 f'{self.data_attrs(traj)}>']
        parts.append(f'<header class="arft-head"><div class="arft-title">episode <b>{escape(f["episode"])}</b>'
                     f' · task <b>{escape(t.id)}</b></div><div class="arft-tags">{" · ".join(tags)}</div></header>')
        parts.append(self.scores(traj, f))
        # the question
        imgs = "".join(self.img(p, "input image" if i == 0 else f"input image {i + 1}")
                       for i, p in enumerate(t.images or []))
        parts.append(f'<div class="arft-bubble arft-user"><div class="arft-role">user · question</div>'
                     f'<div class="arft-question">{_clip(t.question, TEXT_LIMIT)}</div>{imgs}</div>')
        for s in traj.steps:
            parts.append(self.turn(s))
        if not traj.steps:
            parts.append('<div class="arft-note">no turns recorded</div>')
        parts.append(self.final(traj, f))
        if traj.errors:
            items = "".join(f"<li>{_clip(x, 1000)}</li>" for x in traj.errors)
            parts.append(f'<div class="arft-errors"><b>errors in this episode</b><ul>{items}</ul></div>')
        parts.append("</section>")
        return "".join(parts)

    def scores(self, traj: Trajectory, f: Mapping[str, Any]) -> str:
        cells = []
        label = "reward" if f["reward"] is not None else "reward (none recorded)"
        cells.append(f'<span class="arft-score arft-score-main">{label} <b>{_fmt(f["reward"])}</b></span>')
        if f["advantage"] is not None:
            cls = "arft-pos" if f["advantage"] > 0 else ("arft-neg" if f["advantage"] < 0 else "")
            cells.append(f'<span class="arft-score">advantage <b class="{cls}">{_fmt(f["advantage"], signed=True)}'
                         f'</b></span>')
        for k in ("f1", "em"):
            if f[k] is not None:
                cells.append(f'<span class="arft-score">{k.upper()} <b>{_fmt(f[k], 2)}</b></span>')
        cells.append(f'<span class="arft-score">turns <b>{f["turns"]}</b></span>')
        cells.append(f'<span class="arft-score">tool calls <b>{f["tool_calls"]}</b></span>')
        err_cls = " arft-neg" if f["tool_errors"] else ""
        cells.append(f'<span class="arft-score">tool errors <b class="{err_cls.strip()}">{f["tool_errors"]}</b></span>')
        comps = ""
        if traj.reward_components:
            rows = "".join(
                f'<tr><td>{escape(k)}</td><td class="arft-num">{escape(_fmt(as_number(v)) if as_number(v) is not None else v)}</td>'
                f'<td class="arft-bar"><span style="width:{_bar_width(v)}%"></span></td></tr>'
                for k, v in traj.reward_components.items())
            comps = (f'<table class="arft-components"><thead><tr><th>reward component</th><th>value</th><th></th>'
                     f'</tr></thead><tbody>{rows}</tbody></table>')
        return f'<div class="arft-scores">{"".join(cells)}</div>{comps}'

    def turn(self, s: Any) -> str:
        a = s.action
        kind = a.kind if a.kind in ACTION_COLOURS else "invalid"
        meta = []
        if s.completion_tokens:
            meta.append(f"{int(s.completion_tokens)} tokens")
        if s.generate_s:
            meta.append(f"{float(s.generate_s):.2f} s")
        head = (f'<div class="arft-role">assistant · turn {int(s.turn) + 1} · '
                f'<span class="arft-kind arft-kind-{kind}">{escape(a.kind)}</span>'
                f'{" · " + " · ".join(meta) if meta else ""}</div>')
        body = []
        if a.think:
            body.append(f'<div class="arft-think"><span class="arft-label">think</span> {_clip(a.think, TEXT_LIMIT)}'
                        f'</div>')
        if a.kind == "code":
            body.append(f'<pre class="arft-code">{highlight_python(a.content)}</pre>')
        elif a.kind == "search":
            body.append(f'<div class="arft-query"><span class="arft-label">search</span> '
                        f'<b>{_clip(a.content, 2000)}</b></div>')
        elif a.kind == "problem":
            body.append(f'<div class="arft-problem"><span class="arft-label">diagnosis</span> '
                        f'{_clip(a.content, 2000)}</div>')
        elif a.kind == "answer":
            body.append(f'<div class="arft-answer"><span class="arft-label">answer</span> '
                        f'<b>{_clip(a.content, 2000)}</b></div>')
        else:
            body.append(f'<div class="arft-error"><span class="arft-label">invalid turn</span> '
                        f'{_clip(a.error or "no action found", 2000)}</div>')
        raw = s.model_text or a.raw
        if raw:
            open_attr = " open" if a.kind == "invalid" else ""
            body.append(f'<details class="arft-raw"{open_attr}><summary>raw turn ({len(raw)} characters)</summary>'
                        f'<pre class="arft-pre">{_clip(raw, TEXT_LIMIT)}</pre></details>')
        out = [f'<div class="arft-turn"><div class="arft-bubble arft-assistant">{head}{"".join(body)}</div>']
        obs = s.observation
        if obs is not None and (obs.kind != "none" or obs.text or obs.image or obs.error):
            out.append(self.observation(obs, a.kind, int(s.turn)))
        out.append("</div>")
        return "".join(out)

    def observation(self, obs: Any, action_kind: str, turn: int) -> str:
        failed = obs.kind == "error" or bool(obs.error)
        tool = {"code": "code", "search": "search", "problem": "tips"}.get(action_kind, action_kind)
        meta = f" · {float(obs.elapsed_s):.2f} s" if obs.elapsed_s else ""
        status = ' · <span class="arft-kind arft-kind-invalid">failed</span>' if failed else ""
        parts = [f'<div class="arft-bubble arft-tool{" arft-tool-error" if failed else ""}">'
                 f'<div class="arft-role">tool · {escape(tool)}{meta}{status}</div>']
        if obs.error:
            parts.append(f'<div class="arft-error"><span class="arft-label">error</span> {_clip(obs.error, 3000)}</div>')
        if obs.image:
            parts.append(self.img(obs.image, f"image from the code (turn {turn + 1})", "arft-img arft-tool-img"))
        if obs.hits:
            items = []
            for h in obs.hits:
                h = h if isinstance(h, Mapping) else {}
                score = as_number(h.get("score"))
                items.append(
                    f'<li><div class="arft-hit-head"><b>{_clip(h.get("title", ""), 300)}</b>'
                    f'{f" <span class=arft-hit-score>{score:.3f}</span>" if score is not None else ""}'
                    f'{" <span class=arft-hit-src>" + _clip(h.get("source", ""), 200) + "</span>" if h.get("source") else ""}'
                    f'</div><div class="arft-hit-text">{_clip(h.get("text", ""), HIT_TEXT_LIMIT)}</div></li>')
            parts.append(f'<ol class="arft-hits">{"".join(items)}</ol>')
        elif action_kind == "search" and not failed:
            parts.append('<div class="arft-note">no hits</div>')
        if obs.text and not obs.hits and not obs.error:
            parts.append(f'<pre class="arft-pre arft-obs-text">{_clip(obs.text, TEXT_LIMIT)}</pre>')
        elif obs.text:
            parts.append(f'<details class="arft-raw"><summary>text shown to the model</summary>'
                         f'<pre class="arft-pre">{_clip(obs.text, TEXT_LIMIT)}</pre></details>')
        parts.append("</div>")
        return "".join(parts)

    def final(self, traj: Trajectory, f: Mapping[str, Any]) -> str:
        gold = " | ".join(str(a) for a in traj.task.answers) or "—"
        if traj.final_answer is None:
            verdict = '<span class="arft-kind arft-kind-invalid">no answer</span>'
            ans = "<i>none</i>"
        else:
            ok = (f["em"] or 0) >= 1.0
            verdict = (f'<span class="arft-kind arft-kind-{"answer" if ok else "invalid"}">'
                       f'{"correct" if ok else "wrong" if f["em"] is not None else "unscored"}</span>')
            ans = f"<b>{_clip(traj.final_answer, 2000)}</b>"
        return (f'<div class="arft-final">final answer {ans} {verdict}'
                f'<span class="arft-gold">gold: {_clip(gold, 2000)}</span>'
                f'{"" if traj.finished else " <span class=arft-note>(episode not finished)</span>"}</div>')

    def group(self, trajs: Sequence[Trajectory], title: str = "") -> str:
        members = sorted(trajs, key=sort_key)
        scores = ", ".join(_fmt(score_of(t), 2) for t in members)
        cols = "".join(f'<div class="arft-col"><div class="arft-rank">#{i + 1}</div>{self.episode(t, compact=True)}'
                       f'</div>' for i, t in enumerate(members))
        first = members[0] if members else None
        label = title or (f"group {first.group_id}" if first is not None and first.group_id else
                          f"task {first.task.id}" if first is not None else "group")
        step = f" · step {first.training_step}" if first is not None and first.training_step is not None else ""
        q = _clip(first.task.question, 400) if first is not None else ""
        return (f'<div class="arft-group"><div class="arft-group-head"><b>{escape(label)}</b>{step} · '
                f'{len(members)} episode{"s" if len(members) != 1 else ""}, best first · scores {scores}'
                f'<div class="arft-group-q">{q}</div></div><div class="arft-group-row">{cols}</div></div>')


def _bar_width(v: Any) -> int:
    x = as_number(v)
    if x is None:
        return 0
    return int(round(100 * min(1.0, max(0.0, abs(x)))))


def render_episode_html(traj: Trajectory, base_dir: str | os.PathLike | None = None, *,
                        max_image_side: int = DEFAULT_MAX_IMAGE_SIDE, compact: bool = False) -> str:
    """One episode as an HTML fragment (`<section class="arft-episode">`; style it with `viewer_css()`).
    Relative image paths are taken relative to `base_dir` (the store folder)."""
    return Renderer(base_dir, max_image_side).episode(traj, compact=compact)


def render_group_html(trajs: Sequence[Trajectory], base_dir: str | os.PathLike | None = None, *,
                      max_image_side: int = DEFAULT_MAX_IMAGE_SIDE, title: str = "") -> str:
    """Several episodes (one GRPO group, or one task's runs) side by side, best score first."""
    return Renderer(base_dir, max_image_side).group(trajs, title)


_CSS = """
.arft-root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;font-size:14px;
  line-height:1.4;color:#1d2330;background:#fff;padding:6px;}
.arft-root *{box-sizing:border-box;}
.arft-episode{border:1px solid #d7dce5;border-radius:10px;padding:10px 12px;margin:10px 0;background:#fbfcfe;
  max-width:980px;}
.arft-compact{max-width:none;margin:0;}
.arft-head{display:flex;flex-wrap:wrap;justify-content:space-between;gap:6px;border-bottom:1px solid #e3e7ee;
  padding-bottom:6px;margin-bottom:6px;}
.arft-title{font-size:15px;}
.arft-tags{color:#586174;font-size:12.5px;}
.arft-tag{background:#e8eefb;color:#24427a;border-radius:8px;padding:1px 7px;font-weight:600;}
.arft-scores{display:flex;flex-wrap:wrap;gap:6px 14px;margin:4px 0 6px;font-size:13px;color:#3a4354;}
.arft-score-main b{font-size:15px;}
.arft-pos{color:#1d7a3e;} .arft-neg{color:#b03030;}
.arft-components{border-collapse:collapse;font-size:12.5px;margin:2px 0 8px;}
.arft-components td,.arft-components th{padding:1px 8px;border-bottom:1px solid #eceff4;text-align:left;}
.arft-num{text-align:right;font-variant-numeric:tabular-nums;}
.arft-bar{width:120px;} .arft-bar span{display:block;height:8px;background:#7d9bd6;border-radius:3px;}
.arft-bubble{border-radius:12px;padding:8px 11px;margin:7px 0;max-width:92%;word-wrap:break-word;
  overflow-wrap:anywhere;}
.arft-user{background:#eef3ff;border:1px solid #cbd8f5;}
.arft-assistant{background:#ffffff;border:1px solid #d9dde4;margin-left:4%;}
.arft-tool{background:#f3f7f1;border:1px solid #cfe0c8;margin-left:8%;}
.arft-tool-error{background:#fdf0f0;border-color:#eec3c3;}
.arft-role{font-size:11.5px;color:#6a7385;text-transform:none;margin-bottom:3px;letter-spacing:.2px;}
.arft-kind{display:inline-block;color:#fff;border-radius:7px;padding:0 6px;font-size:11px;font-weight:600;}
.arft-kind-search{background:#2f6fb0;} .arft-kind-code{background:#7a3db8;} .arft-kind-problem{background:#b8702f;}
.arft-kind-answer{background:#2e8b57;} .arft-kind-invalid{background:#b03030;}
.arft-label{display:inline-block;font-size:11px;color:#6a7385;border:1px solid #cdd3dd;border-radius:6px;
  padding:0 5px;margin-right:4px;}
.arft-think{color:#5b6475;font-style:italic;margin-bottom:4px;white-space:pre-wrap;}
.arft-question{font-weight:600;white-space:pre-wrap;}
.arft-code,.arft-pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:6px 8px;
  font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px;white-space:pre-wrap;margin:4px 0;
  overflow-x:auto;}
.arft-raw summary{cursor:pointer;color:#6a7385;font-size:12px;}
.arft-error{color:#8c1d1d;white-space:pre-wrap;}
.arft-answer b{color:#1d5c3a;}
.arft-hits{margin:4px 0;padding-left:22px;}
.arft-hits li{margin:3px 0;}
.arft-hit-score{font-size:11px;color:#fff;background:#6c7a93;border-radius:6px;padding:0 5px;}
.arft-hit-src{font-size:11px;color:#6a7385;}
.arft-hit-text{font-size:12.5px;color:#3c4454;}
.arft-figure{display:inline-block;margin:6px 8px 2px 0;vertical-align:top;}
.arft-figure figcaption{font-size:11px;color:#6a7385;}
.arft-img{display:block;max-width:100%;max-height:360px;border:1px solid #cfd5df;border-radius:4px;
  background:#fff;}
.arft-compact .arft-img{max-height:220px;}
.arft-missing{color:#8c1d1d;font-size:12px;border:1px dashed #d99;padding:4px;margin:4px 0;}
.arft-final{margin-top:8px;padding-top:6px;border-top:1px solid #e3e7ee;}
.arft-gold{margin-left:12px;color:#586174;}
.arft-note{color:#6a7385;font-size:12px;font-style:italic;}
.arft-more{color:#6a7385;font-style:italic;}
.arft-errors{margin-top:6px;color:#8c1d1d;font-size:12.5px;}
.arft-group{margin:12px 0;border:1px solid #c9d3e6;border-radius:10px;padding:8px;background:#f5f8fd;}
.arft-group-head{font-size:13px;color:#3a4354;margin-bottom:6px;}
.arft-group-q{font-weight:600;margin-top:2px;}
.arft-group-row{display:flex;gap:10px;overflow-x:auto;align-items:flex-start;}
.arft-col{flex:0 0 420px;min-width:320px;}
.arft-rank{font-size:12px;color:#586174;font-weight:600;}
.arft-index{border-collapse:collapse;font-size:12.5px;margin:8px 0;}
.arft-index td,.arft-index th{padding:2px 8px;border-bottom:1px solid #e3e7ee;text-align:left;white-space:nowrap;}
.arft-index td:last-child{white-space:normal;}
.arft-filters{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;padding:8px;border:1px solid #d7dce5;
  border-radius:8px;background:#f6f8fb;}
.arft-filters label{font-size:12.5px;color:#3a4354;}
.arft-filters input[type=number]{width:6.5em;}
.arft-hidden{display:none !important;}
.arft-summary{color:#586174;margin:4px 0 8px;}
"""


def viewer_css() -> str:
    """The stylesheet of the rendered fragments (scoped to `.arft-*` classes)."""
    return _CSS


def wrap_fragment(fragment: str) -> str:
    """A fragment with its stylesheet, ready for `ipywidgets.HTML` or `IPython.display.HTML`."""
    return f'<style>{_CSS}</style><div class="arft-root">{fragment}</div>'


# --- static export ---------------------------------------------------------------------------------------------
_FILTER_JS = """
(function () {
  var q = function (id) { return document.getElementById(id); };
  var total = document.querySelectorAll('section.arft-episode[data-episode]').length;
  function num(v) { var x = parseFloat(v); return isNaN(x) ? null : x; }
  function apply() {
    var run = q('f-run') ? q('f-run').value : '', b = q('f-benchmark').value, d = q('f-degradation').value;
    var h = q('f-hops').value, t = q('f-tools').value, lo = num(q('f-min').value), hi = num(q('f-max').value);
    var shown = 0;
    document.querySelectorAll('[data-episode]').forEach(function (el) {
      var s = num(el.getAttribute('data-score'));
      var ok = (!run || el.getAttribute('data-run') === run)
        && (!b || el.getAttribute('data-benchmark') === b)
        && (!d || el.getAttribute('data-degradations').split(' ').indexOf(d) >= 0)
        && (!h || el.getAttribute('data-hops') === h)
        && (t === 'any' || (t === 'failed') === (el.getAttribute('data-failed') === '1'))
        && ((lo === null && hi === null) || (s !== null && (lo === null || s >= lo - 1e-9) && (hi === null || s <= hi + 1e-9)));
      el.classList.toggle('arft-hidden', !ok);
      if (ok && el.tagName === 'SECTION') { shown += 1; }
    });
    document.querySelectorAll('.arft-group').forEach(function (g) {
      g.classList.toggle('arft-hidden', !g.querySelector('section.arft-episode:not(.arft-hidden)'));
    });
    q('f-count').textContent = shown + ' of ' + total + ' episodes shown';
  }
  ['f-run', 'f-benchmark', 'f-degradation', 'f-hops', 'f-tools', 'f-min', 'f-max'].forEach(function (id) {
    if (q(id)) { q(id).addEventListener('input', apply); q(id).addEventListener('change', apply); }
  });
  apply();
})();
"""


@dataclasses.dataclass
class ExportResult:
    """What `export_html` wrote: the file, how many episodes and embedded images (and missing ones), size."""

    path: Path
    episodes: int
    images: int
    missing_images: int
    bytes: int
    total_episodes: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def _as_runs(trajectories: Any, base_dir: Any) -> list[tuple[str, list[Trajectory], Path | None]]:
    if isinstance(trajectories, Store):
        return [(trajectories.name, list(trajectories.trajectories), trajectories.dir)]
    if isinstance(trajectories, Mapping):
        out = []
        for name, v in trajectories.items():
            if isinstance(v, Store):
                out.append((str(name), list(v.trajectories), v.dir))
            else:
                out.append((str(name), list(v), Path(base_dir) if base_dir is not None else None))
        return out
    items = list(trajectories)
    if items and all(isinstance(x, Store) for x in items):
        return [(s.name, list(s.trajectories), s.dir) for s in items]
    return [("", items, Path(base_dir) if base_dir is not None else None)]


def _degr_or_hops(f: Mapping[str, Any]) -> str:
    if f["degradations"]:
        return " + ".join(f["degradations"])
    return "" if f["hops"] is None else f"{f['hops']} hop{'s' if f['hops'] != 1 else ''}"


def _options(values: Iterable[Any], all_label: str) -> str:
    opts = [f'<option value="">{escape(all_label)}</option>']
    opts += [f'<option value="{escape(v)}">{escape(v)}</option>' for v in values]
    return "".join(opts)


def export_html(
    trajectories: Any,
    path: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    *,
    title: str = "Visual-ARFT trajectories",
    max_episodes: int | None = 200,
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE,
    group: bool = True,
) -> ExportResult:
    """Write one self-contained HTML page of `trajectories` (a list of Trajectory, a `Store`, a list of
    stores, or {run name: trajectories or Store}) to `path`: filter bar, index table, then every group side
    by side (or every episode, `group=False`). At most `max_episodes` episodes (whole groups, in order; the
    page says how many were left out). Returns an `ExportResult` with the counts."""
    runs = _as_runs(trajectories, base_dir)
    total = sum(len(t) for _, t, _ in runs)
    multi = len(runs) > 1
    budget = max_episodes if max_episodes is not None else total
    blocks: list[str] = []
    index_rows: list[str] = []
    all_trajs: list[Trajectory] = []
    r_images = r_missing = r_eps = 0
    for run_name, trajs, bdir in runs:
        r = Renderer(bdir, max_image_side, run=run_name if multi else "")
        groups = group_trajectories(trajs) if group else OrderedDict(
            ((t.training_step, f"#{i}"), [t]) for i, t in enumerate(trajs))
        run_blocks: list[str] = []
        for (step, gid), members in groups.items():
            if budget <= 0:
                break
            members = members[:budget]
            budget -= len(members)
            all_trajs += members
            for t in members:
                f = episode_facets(t)
                anchor = "ep-" + slug((r.run + "-" if r.run else "") + str(f["episode"]))
                answer = _clip(t.final_answer, 60) if t.final_answer is not None else "—"
                cells = ([escape(run_name)] if multi else []) + [
                    "" if step is None else str(step), escape(t.group_id or ""),
                    f'<a href="#{escape(anchor)}">{escape(f["episode"])}</a>', escape(f["benchmark"]), escape(_degr_or_hops(f))]
                nums = [_fmt(f["reward"]), _fmt(f["advantage"], signed=True), _fmt(f["f1"], 2), str(f["turns"]),
                        str(f["tool_errors"])]
                index_rows.append(f"<tr {r.data_attrs(t)}>" + "".join(f"<td>{c}</td>" for c in cells)
                                  + "".join(f'<td class="arft-num">{c}</td>' for c in nums)
                                  + f"<td>{answer}</td></tr>")
            if group and len(members) > 1:
                run_blocks.append(r.group(members))
            else:
                run_blocks += [r.episode(t) for t in members]
        if multi:
            blocks.append(f'<h2 class="arft-run-title">run {escape(run_name)}</h2>')
        blocks += run_blocks
        r_images += r.images
        r_missing += r.missing_images
        r_eps += r.episodes
    facets = [episode_facets(t) for t in all_trajs]
    benches = sorted({f["benchmark"] for f in facets})
    degr = sorted({d for f in facets for d in f["degradations"]})
    hops = sorted({f["hops"] for f in facets if f["hops"] is not None})
    scores = [f["score"] for f in facets if f["score"] is not None]
    has_reward = any(f["reward"] is not None for f in facets)
    score_label = "reward" if has_reward else "F1 (no rewards recorded)"
    lo = min(scores) if scores else ""
    hi = max(scores) if scores else ""
    filters = ['<div class="arft-filters">']
    if multi:
        filters.append(f'<label>run <select id="f-run">{_options([n for n, _, _ in runs], "all runs")}</select></label>')
    filters.append(f'<label>benchmark <select id="f-benchmark">{_options(benches, "all")}</select></label>')
    filters.append(f'<label>degradation <select id="f-degradation">{_options(degr, "all")}</select></label>')
    filters.append(f'<label>hops <select id="f-hops">{_options(hops, "all")}</select></label>')
    filters.append('<label>tool calls <select id="f-tools"><option value="any">any</option>'
                   '<option value="failed">with a failed tool call</option>'
                   '<option value="clean">no failed tool call</option></select></label>')
    filters.append(f'<label>{escape(score_label)} from <input id="f-min" type="number" step="0.05" size="5" '
                   f'placeholder="{escape(_fmt(lo) if scores else "")}"> to <input id="f-max" type="number" step="0.05" '
                   f'size="5" placeholder="{escape(_fmt(hi) if scores else "")}"></label>')
    filters.append('<span id="f-count" class="arft-summary"></span></div>')
    head_cells = (["run"] if multi else []) + ["step", "group", "episode", "benchmark", "degradation / hops",
                                                "reward", "advantage", "F1", "turns", "tool errors", "answer"]
    index = (f'<details class="arft-index-box" open><summary>index ({len(index_rows)} episodes)</summary>'
             f'<table class="arft-index"><thead><tr>{"".join(f"<th>{h}</th>" for h in head_cells)}</tr></thead>'
             f'<tbody>{"".join(index_rows)}</tbody></table></details>')
    left_out = total - len(all_trajs)
    where = "; ".join(escape(" ".join(x for x in (f"run {n}" if n and multi else "", f"({b})" if b else "") if x))
                      for n, _, b in runs)
    summary = (f'<div class="arft-summary">{len(all_trajs)} episodes'
               f'{f" (first {len(all_trajs)} of {total}; raise max_episodes for more)" if left_out else ""}'
               f'{" from " + where if where else ""}. Groups and episodes sorted by {escape(score_label)}, best first.'
               f'</div>')
    script_hash = base64.b64encode(hashlib.sha256(_FILTER_JS.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; "
           f"base-uri 'none'; form-action 'none'")
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
           f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f'<title>{escape(title)}</title><style>{_CSS} body{{margin:0;background:#fff;}}</style></head>'
           f'<body><div class="arft-root"><h1>{escape(title)}</h1>{summary}{"".join(filters)}{index}'
           f'{"".join(blocks)}</div><script id="arft-filter-script">{_FILTER_JS}</script></body></html>\n')
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return ExportResult(path=out, episodes=r_eps, images=r_images, missing_images=r_missing,
                        bytes=out.stat().st_size, total_episodes=total)

