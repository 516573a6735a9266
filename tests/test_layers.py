"""The layering of DESIGN.md §3: the eval library never imports training or the orchestration above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

OKD = Path(__file__).resolve().parents[1] / "okd"
ABOVE_EVAL = ("okd.train", "okd.compare", "okd.analyze", "okd.demo", "okd.cli")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module or function level."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_eval_imports_nothing_above_it():
    bad = {f"{p.relative_to(OKD.parent)}: {name}" for p in (OKD / "eval").glob("*.py") for name in _imports(p)
           if name.startswith(ABOVE_EVAL) or name in ("okd.compare", "okd.analyze", "okd.demo")}
    assert not bad, sorted(bad)


def test_quick_rouge_loads_without_train_and_the_cli_without_torch():
    code = ("import sys; from okd.eval import quick_rouge; assert 'okd.train' not in sys.modules; "
            "from okd.eval.config import EvalConfig; from okd.cli import build_parser; build_parser(); "
            "print('ok')")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    quiet = "import sys; from okd.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", quiet], capture_output=True, text=True, check=True).stdout == "False\n"
