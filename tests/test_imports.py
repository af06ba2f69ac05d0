"""The package's import graph has no cycle: every ``import`` of a module of ``openrecon_stroke``
(at module level or inside a function) is an edge, read from the sources (nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import openrecon_stroke

PACKAGE = Path(openrecon_stroke.__file__).parent
NAME = "openrecon_stroke"


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_the_walk_sees_the_package():
    g = import_graph()
    assert len(g) > 30 and f"{NAME}.server" in g
    # relative, parent-relative and lazy (in-function) imports are all seen
    assert f"{NAME}.assembly" in g[f"{NAME}.server"]
    assert f"{NAME}.geometry" in g[f"{NAME}.inputs.dicom_stack"]
    assert f"{NAME}.dicom_export" in g[f"{NAME}.offline"]  # imported inside process()


def test_the_walk_finds_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_pipeline_and_server_import_no_stage():
    """Stages are found through the registry; the server and the pipeline name none of them."""
    g = import_graph()
    for mod in (f"{NAME}.pipeline", f"{NAME}.server", f"{NAME}.offline", f"{NAME}.assembly"):
        named = {m for m in g[mod] if m.startswith(f"{NAME}.stages.") and m != f"{NAME}.stages.base"}
        assert not named, f"{mod} imports {named}"
