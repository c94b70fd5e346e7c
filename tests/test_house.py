"""The house rules: the repository stands alone (no folder beside it is read; the package finds its data when
installed), every module stays in its layer (no import cycle, lower layers never import upper ones), and no module
reaches into another module's private names. The CLI reports a user's mistake in one line."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from arftlib.paths import PACKAGE_DIR, REPO_ROOT

# Layers, bottom to top: a module may import its own layer or lower ones, never a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("arftlib.types",),
    ("arftlib.paths", "arftlib.metrics", "arftlib.parse", "arftlib.prompts", "arftlib.turns", "arftlib.config",
     "arftlib.tool_format"),
    ("arftlib.rows", "arftlib.tools", "arftlib.data.corpus", "arftlib.trajectories", "arftlib.kv_reuse",
     "arftlib.qwen_tokenizer"),
    ("arftlib.data",),
    ("arftlib.env", "arftlib.models", "arftlib.published", "arftlib.memory_model"),
    ("arftlib.rewards", "arftlib.policies"),
    ("arftlib.rollout",),
    ("arftlib.evaluate", "arftlib.train"),
    ("arftlib.viz", "arftlib.notebooks", "arftlib.__main__", "arftlib"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"module {module} has no layer in tests/test_house.py: add it"
    return best


def _imports(module: str) -> list[tuple[str, int, list[str]]]:
    """(imported arftlib module, line, names) for every import in the module, at any depth (lazy ones too),
    except those under `if TYPE_CHECKING:`."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    is_pkg = MODULES[module].name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.startswith("arftlib")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if not base.startswith("arftlib"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, node.lineno, [a.name]))
    return out


def test_no_module_reads_the_shared_folder():
    """A researcher's clone has no `shared/` beside it: nothing in the product or the suite names it."""
    offenders = []
    roots = [REPO_ROOT / d for d in ("arftlib", "notebooks", "tests", "experiments", "scripts")]
    needles = ("../shared", "shared_dir(", "ARFT_SHARED_DIR", "reference_dir(", 'parent / "shared"')
    for root in roots:
        for path in root.rglob("*"):
            if path.suffix not in (".py", ".ipynb", ".sh") or path == Path(__file__):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in needles if n in text]
    assert not offenders, offenders


def test_the_package_finds_its_data_when_installed(tmp_path):
    """Install the package (not editable) into a folder and use it from somewhere else: the shipped reference
    predictions and demo examples come with it."""
    import shutil

    src = tmp_path / "src"  # a copy of what a source distribution holds (building in-tree would litter the clone)
    shutil.copytree(REPO_ROOT / "arftlib", src / "arftlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "experiments", src / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", src / "pyproject.toml")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=600)
    code = (f"import sys; sys.path.insert(0, {str(target)!r})\n"
            "import json, arftlib, arftlib.paths as P\n"
            "from arftlib.metrics import score_file\n"
            "from arftlib.data.loaders import load_mat_coding\n"
            "files = P.reference_prediction_files()\n"
            "s = score_file(files['MAT-Coding'][2], 'mat-coding')\n"
            "demo = load_mat_coding(P.MAT_CODING_DEMO / 'coding_case.json')\n"
            "print(json.dumps({'file': arftlib.__file__, 'n': sum(len(v) for v in files.values()), 'f1': s['f1'],"
            " 'demo': len(demo)}))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(target)), out  # the installed copy, not the checkout
    assert out["n"] == 14 and out["f1"] == 50.67 and out["demo"] == 6


def test_layers_and_no_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    upward = []
    for mod in MODULES:
        for target, line, _ in _imports(mod):
            if target == mod or target not in MODULES:
                continue
            graph[mod].add(target)
            if _layer(target) > _layer(mod):
                upward.append(f"{mod}:{line} imports {target} (layer {_layer(mod)} → {_layer(target)})")
    assert not upward, "\n".join(upward)
    # cycles: packages import their children (re-exports); every other edge must be acyclic
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            cycles.append(" → ".join(stack[stack.index(m):] + [m]))
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            visit(t)
        stack.pop()

    for m in sorted(MODULES):
        visit(m)
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for mod in MODULES:
        for target, line, names in _imports(mod):
            same_package = target.rsplit(".", 1)[0] == mod.rsplit(".", 1)[0]
            for n in names:
                if n.startswith("_") and not n.startswith("__") and not (same_package and f"{target}" in MODULES
                                                                          and target.endswith("." + n)):
                    bad.append(f"{mod}:{line} imports {target}.{n}")
        # attribute access to a private name of an imported arftlib module (`alias._x`)
        tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("arftlib")})
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arftlib"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                attr = node.attr
                target = aliases[node.value.id]
                own_private_module = target.rsplit(".", 1)[-1].startswith("_")  # a package's private helper
                if attr.startswith("_") and not attr.startswith("__") and not own_private_module:
                    bad.append(f"{mod}:{node.lineno} uses {target}.{attr}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("argv, needle", [
    (["score", "--benchmark", "mat-coding", "/nonexistent/results.json"], "/nonexistent/results.json"),
    (["train", "--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
    (["eval", "--benchmark", "synth-coding", "--data", "/nonexistent", "--model", "oracle", "--out", "/tmp/x",
      "--set", "max_turn=3"], "unknown config field"),
])
def test_cli_reports_a_users_mistake_in_one_line(argv, needle, tmp_path):
    p = subprocess.run([sys.executable, "-m", "arftlib", *argv], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("arft: error: ") and needle in lines[-1], p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    d = subprocess.run([sys.executable, "-m", "arftlib", *argv[:1], "--debug", *argv[1:]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert d.returncode != 0 and "Traceback" in d.stderr  # --debug shows where it came from


def test_bad_records_name_file_record_and_field(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps([{"pred_answer": "a", "gt": ["a"]}, {"pred_answer": 3, "gt": ["b"]}]))
    p = subprocess.run([sys.executable, "-m", "arftlib", "score", "--benchmark", "multihop", str(bad)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert str(bad) in p.stderr and "record 1" in p.stderr and "pred_answer" in p.stderr
