"""The house: every import goes down the stages of the flow (README, Architecture), and no
two modules import each other, however far apart.

Read from the source with ``ast``, so an import inside a function counts as much as one at
the top; imports under ``if TYPE_CHECKING:`` are for annotations and do not count.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

import pandas_llm

ROOT = pathlib.Path(pandas_llm.__file__).parent

#: Each part of the package and its floor: a part may import only parts on lower floors.
FLOORS = {
    "_errors": 0,
    "_data": 0,
    "_kept": 0,
    "_params": 1,
    "_pricing": 1,
    "_local": 1,
    "errors": 1,
    "testing": 1,  # the loopback server imports nothing of the client it tests but the errors
    "_config": 2,
    "_stats": 2,
    "local": 2,
    "_store": 3,
    "_backends": 3,
    "_cost": 4,
    "_structured": 5,
    "_plan": 6,
    "_display": 7,
    "_run": 8,
    "_batch": 9,
    "_verbs": 10,
    "_accessor": 11,
    "_dask": 12,
    "__init__": 13,
    "_demo": 14,  # the demo is a user of the package: it imports pandas_llm itself
    "__main__": 15,
}


def _module(path: pathlib.Path) -> tuple[str, str]:
    parts = ("pandas_llm",) + path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), ".".join(parts[:-1])
    return ".".join(parts), ".".join(parts[:-1])


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports() -> dict[str, set[str]]:
    """Module -> the pandas_llm modules it imports (``from . import x`` resolves to x)."""
    modules = {_module(p)[0] for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        name, package = _module(path)
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_package_has_a_floor():
    parts = {_part(_module(p)[0]) for p in ROOT.rglob("*.py")}
    assert parts <= set(FLOORS), f"give these a floor in FLOORS (and the README drawing): {parts - set(FLOORS)}"


def test_every_import_goes_down_a_floor():
    up = sorted(
        f"{a} -> {b}"
        for a, targets in imports().items()
        for b in targets
        if _part(a) != _part(b) and FLOORS[_part(b)] >= FLOORS[_part(a)]
    )
    assert not up, "imports that run up (or sideways) the stages of the flow:\n" + "\n".join(up)


def test_no_two_modules_import_each_other():
    graph = imports()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
