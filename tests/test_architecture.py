"""Limits that keep the house livable (issue: architecture): short functions, modules of one concern,
no import cycles among okd's modules — function-level imports counted."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OKD = ROOT / "okd"
MAX_FUNCTION_LINES = 80
LOOP = ("okd/train/trainer.py", "loop")  # the loop itself may take up to 120 lines
MAX_LOOP_LINES = 120
MAX_MODULE_LINES = 500


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(OKD.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def imported(path: Path, name: str, known: dict) -> set[str]:
    """The okd modules a module imports anywhere in its body (module, class or function level)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_function_is_long():
    long = []
    for path in modules().values():
        rel = str(path.relative_to(ROOT))
        for name, line, n in function_lengths(path):
            limit = MAX_LOOP_LINES if (rel, name) == LOOP else MAX_FUNCTION_LINES
            if n > limit:
                long.append(f"{rel}:{line} {name}() is {n} lines (limit {limit})")
    assert not long, "\n".join(long)


def test_the_loop_is_where_the_limit_says():
    lengths = {name: n for name, _, n in function_lengths(ROOT / LOOP[0])}
    assert LOOP[1] in lengths and lengths[LOOP[1]] <= MAX_LOOP_LINES


def test_no_module_is_long():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "\n".join(long)


def test_no_import_cycle():
    known = modules()
    graph = {name: imported(path, name, known) for name, path in known.items()}
    assert not cycles(graph), cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
    """The check above cannot pass by construction: a known cycle is found, a chain is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
