"""Run the numbered notebooks: parameter-cell checks, papermill execution, and `make reproduce`.

Every notebook has exactly one cell tagged `parameters` made of plain `NAME = literal  # meaning` lines, takes
`PROFILE` and `OUT_DIR`, writes only under `OUT_DIR` and ends by writing `OUT_DIR/metrics.json`. This module
checks that contract (`read_parameters`), runs a notebook with papermill after refusing overrides that are not
declared parameters (papermill itself only warns), and runs all notebooks in order for `make reproduce`.

The notebooks' sources are percent-format scripts in `notebooks/src/` (readable diffs); `build_notebooks()`
turns them into the committed `.ipynb` files with outputs cleared, and a test checks the two agree.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path
from typing import Any

from arftlib.paths import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
SOURCE_DIR = NOTEBOOK_DIR / "src"
KERNEL_NAME = "arft"
REQUIRED_PARAMETERS = ("PROFILE", "OUT_DIR")


class NotebookContractError(ValueError):
    """A notebook breaks the parameters-cell contract (the message names the notebook and the line)."""


def list_notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def read_parameters(nb_path: Path) -> dict[str, Any]:
    """The declared parameters of a notebook, checked: one `parameters` cell of `NAME = literal` lines."""
    nb = json.loads(Path(nb_path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookContractError(f"{nb_path}: {len(cells)} cells tagged 'parameters' (want exactly 1)")
    source = "".join(cells[0]["source"])
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise NotebookContractError(f"{nb_path}: parameters cell does not parse: {exc}") from exc
    params: dict[str, Any] = {}
    for node in tree.body:
        ok = (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        )
        if not ok:
            raise NotebookContractError(
                f"{nb_path}: parameters cell line {node.lineno}: only `NAME = literal` assignments are allowed"
            )
        name = node.targets[0].id
        try:
            params[name] = ast.literal_eval(node.value)
        except ValueError as exc:
            raise NotebookContractError(
                f"{nb_path}: parameters cell line {node.lineno}: {name} is not a plain literal"
            ) from exc
    for line_no, line in enumerate(source.splitlines(), 1):
        if re.match(r"^[A-Z_][A-Z0-9_]*\s*=", line) and "#" not in line:
            raise NotebookContractError(
                f"{nb_path}: parameters cell line {line_no}: add a `# meaning` comment to {line.split('=')[0].strip()}"
            )
    missing = [p for p in REQUIRED_PARAMETERS if p not in params]
    if missing:
        raise NotebookContractError(f"{nb_path}: parameters cell lacks {missing}")
    return params


def run_notebook(
    nb_path: Path | str,
    out_dir: Path | str,
    *,
    profile: str = "tiny-cpu",
    parameters: dict[str, Any] | None = None,
    kernel_name: str = KERNEL_NAME,
    timeout_s: int = 1800,
) -> dict[str, Any]:
    """Execute one notebook into `out_dir` (executed copy + whatever it writes); returns its metrics.json."""
    import papermill

    nb_path, out_dir = Path(nb_path), Path(out_dir)
    declared = read_parameters(nb_path)
    overrides = dict(parameters or {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise NotebookContractError(f"{nb_path}: overrides {unknown} are not declared parameters {sorted(declared)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**overrides, "PROFILE": profile, "OUT_DIR": str(out_dir.resolve())}
    papermill.execute_notebook(
        str(nb_path),
        str(out_dir / nb_path.name),
        parameters=params,
        kernel_name=kernel_name,
        cwd=str(NOTEBOOK_DIR),
        execution_timeout=timeout_s,
        progress_bar=False,
    )
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{nb_path.name} ran but wrote no {metrics_path}")
    return json.loads(metrics_path.read_text())


def reproduce(profile: str | None = None, runs_dir: Path | str = REPO_ROOT / "runs") -> dict[str, Any]:
    """Execute every notebook in order into `runs/<profile>/<notebook>/`; returns {notebook: metrics}."""
    from arftlib.config import default_profile

    name = default_profile() if profile in (None, "", "auto") else profile
    results: dict[str, Any] = {}
    for nb in list_notebooks():
        t0 = time.time()
        out = Path(runs_dir) / name / nb.stem
        print(f"[reproduce] {nb.name} → {out}", flush=True)
        results[nb.stem] = run_notebook(nb, out, profile=name)
        print(f"[reproduce] {nb.name} done in {time.time() - t0:.0f} s", flush=True)
    summary = Path(runs_dir) / name / "summary.json"
    summary.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"[reproduce] summary → {summary}")
    return results


def find_run(stem: str, out_dir: Path | str, runs_dir: Path | str, profile: str, explicit: str = "") -> Path | None:
    """The output folder of notebook `stem` another notebook should read: `explicit` when given (it must hold a
    metrics.json), else the sibling `out_dir/../<stem>` (the same `make reproduce` run), else the newest
    `<runs_dir>/**/<stem>/metrics.json` written by the same profile; None when there is none."""
    if explicit:
        path = Path(explicit)
        if not (path / "metrics.json").is_file():
            raise FileNotFoundError(f"{path}: no metrics.json — is this a finished {stem} run?")
        return path
    sibling = Path(out_dir).resolve().parent / stem
    if (sibling / "metrics.json").is_file():
        return sibling
    candidates = []
    for m in Path(runs_dir).glob(f"**/{stem}/metrics.json"):
        try:
            run_profile = json.loads(m.read_text()).get("profile")
        except (OSError, json.JSONDecodeError):
            continue  # a run still being written or a broken file: not a run to read
        if run_profile == profile:
            candidates.append((m.stat().st_mtime, m.parent))
    return max(candidates)[1] if candidates else None


# --- percent-format sources → .ipynb ----------------------------------------------------------------------

_CELL_MARK = re.compile(r"^# %%(?P<rest>.*)$")


def source_to_notebook(text: str) -> dict[str, Any]:
    """Convert a percent-format script (`# %%`, `# %% [markdown]`, `# %% tags=["parameters"]`) to nbformat 4."""
    import nbformat

    cells = []
    kind, tags, lines = None, [], []

    def flush() -> None:
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = list(tags)
        cells.append(cell)

    for line in text.splitlines():
        m = _CELL_MARK.match(line)
        if m:
            flush()
            rest = m.group("rest")
            kind = "markdown" if "[markdown]" in rest else "code"
            tags = re.findall(r'"([^"]+)"', rest.split("tags=", 1)[1]) if "tags=" in rest else []
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "arft (.venv)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids → byte-identical rebuilds
        cell["id"] = f"cell-{i:03d}"
    return nb


def build_notebooks(check: bool = False) -> list[Path]:
    """Write notebooks/NN_name.ipynb from notebooks/src/NN_name.py; with check=True only report stale ones."""
    import nbformat

    stale = []
    for src in sorted(SOURCE_DIR.glob("[0-9][0-9]_*.py")):
        target = NOTEBOOK_DIR / (src.stem + ".ipynb")
        text = nbformat.writes(source_to_notebook(src.read_text())) + "\n"
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.write_text(text)
    return stale
