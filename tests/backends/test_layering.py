"""The backends and the testing package sit low in the import graph: they import nothing above them."""

from __future__ import annotations

import ast
import pathlib

import pandas_llm

PACKAGE = pathlib.Path(pandas_llm.__file__).parent


def imported(path: pathlib.Path) -> set[str]:
    """The pandas_llm modules ``path`` imports (at any depth of its code), as dotted names."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if node.module is None:  # from . import x: x may be a module
                out |= {f"{name}.{a.name}" for a in node.names}
            out.add(name)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {n for n in out if n == "pandas_llm" or n.startswith("pandas_llm.")}


def modules(folder: str) -> list[pathlib.Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


def test_backends_import_only_the_ground_and_themselves():
    allowed = ("pandas_llm._errors", "pandas_llm._config", "pandas_llm._backends")
    for path in modules("_backends"):
        above = {n for n in imported(path) if not n.startswith(allowed)}
        assert not above, f"{path.name} imports {sorted(above)}"


def test_testing_imports_only_the_errors_and_itself():
    allowed = ("pandas_llm._errors", "pandas_llm.testing")
    for path in modules("testing"):
        above = {n for n in imported(path) if not n.startswith(allowed)}
        assert not above, f"testing/{path.name} imports {sorted(above)}"


def test_testing_has_no_import_cycle():
    graph = {p.stem: {n.rsplit(".", 1)[-1] for n in imported(p) if n.startswith("pandas_llm.testing.")}
             for p in modules("testing")}  # fmt: skip

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not cycles, f"modules on an import cycle: {cycles}"
