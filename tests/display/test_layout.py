"""The displays: no import cycle among them, one notebook-or-terminal decision, nothing from the run."""

from __future__ import annotations

import ast
import pathlib

import pytest

from pandas_llm._display import progress

DISPLAY = pathlib.Path(progress.__file__).parent


def imports_of(path: pathlib.Path) -> set[str]:
    """Modules ``path`` imports relatively, as dotted names under pandas_llm (``_display.snapshot``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            here = "_display" if node.level == 1 else ""  # level 2: a sibling package (_run, _stats)
            name = ".".join(p for p in (here, node.module or "") if p)
            if node.module is None:  # from . import x
                name += "." + node.names[0].name
            found.add(name)
    return found


def test_no_cycle_among_the_displays():
    graph = {
        p.stem: {m.split(".", 1)[1] for m in imports_of(p) if m.startswith("_display.")} for p in DISPLAY.glob("*.py")
    }

    def reach(start: str, seen: set[str]) -> set[str]:
        for nxt in graph.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    for module in graph:
        assert module not in reach(module, set()), f"{module} imports itself through {graph[module]}"
    assert "progress" not in graph["notebook"]


@pytest.mark.parametrize("path", sorted(DISPLAY.glob("*.py")), ids=lambda p: p.name)
def test_each_display_module_is_small(path):
    assert len(path.read_text().splitlines()) <= 400


def test_one_notebook_or_terminal_decision(monkeypatch):
    from tqdm.std import tqdm as terminal

    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    assert progress.bar_class() is terminal and progress.bar_class(text=True) is terminal
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    assert progress.bar_class(text=True) is terminal
    notebook = progress.bar_class()
    assert notebook is not terminal and notebook.__module__ == "tqdm.notebook"
    # the Batch API's bar asks the same question (no tqdm.auto of its own)
    source = (DISPLAY.parent / "_batch" / "status.py").read_text()
    assert "tqdm.auto" not in source and "bar_class" in source


def test_the_displays_import_nothing_from_the_run():
    for path in DISPLAY.glob("*.py"):
        assert not [m for m in imports_of(path) if m.startswith("_run")], path.name
