"""The status words are typed vocabularies, and the code only sets and checks words they hold.

Read from the source: every string assigned to a row's status, a run's outcome or a Batch
API job's phase, or compared with one, must be a value of its ``Literal`` type (a value
checked but never set is how ``"stopped"`` lingered as a run outcome nobody could reach).
"""

from __future__ import annotations

import ast
import pathlib
import typing

import pandas_llm
from pandas_llm._batch import status as batch_status
from pandas_llm._plan import outcomes

PACKAGE = pathlib.Path(pandas_llm.__file__).parent
SOURCES = [p for p in PACKAGE.rglob("*.py") if "testing" not in p.parts]


def strings(node: ast.AST | None) -> set[str]:
    """The string constants an expression can evaluate to (through ``a if c else b``, ``a or b``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return strings(node.body) | strings(node.orelse)
    if isinstance(node, ast.BoolOp):
        return set().union(*(strings(v) for v in node.values))
    if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
        return set().union(*(strings(v) for v in node.elts))
    return set()


def _named(node: ast.AST, name: str) -> bool:
    """``x.name``, ``x.name[i]`` or a bare ``name``."""
    if isinstance(node, ast.Subscript):
        node = node.value
    return (isinstance(node, ast.Attribute) and node.attr == name) or (isinstance(node, ast.Name) and node.id == name)


def words(name: str, *, keyword: str | None = None, compared: bool = True) -> dict[str, set[str]]:
    """Strings assigned to (or compared with) ``name``, or passed as ``keyword=``, by file."""
    found: dict[str, set[str]] = {}
    for path in SOURCES:
        seen: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(_named(t, name) for t in targets):
                    seen |= strings(node.value)
            elif compared and isinstance(node, ast.Compare) and _named(node.left, name):
                for comparator in node.comparators:
                    seen |= strings(comparator)
            elif isinstance(node, ast.Call) and keyword is not None:
                for kw in node.keywords:
                    if kw.arg in (keyword, name):
                        seen |= strings(kw.value)
                if _named(node.func, "Record") and len(node.args) > 1:  # Record(key, status, ...)
                    seen |= strings(node.args[1])
        if seen:
            found[str(path.relative_to(PACKAGE))] = seen
    return found


def outside(found: dict[str, set[str]], allowed: set[str]) -> dict[str, set[str]]:
    return {path: bad for path, ws in found.items() if (bad := ws - allowed)}


def test_row_statuses_are_the_typed_vocabulary():
    allowed = set(typing.get_args(outcomes.RowStatus))
    assert allowed == set(outcomes.STATUS_MEANING)  # each one documented, no word undocumented
    assert set(typing.get_args(outcomes.Unsent)) <= allowed
    # (compared statuses are not read: a Batch API reply's own "status" shares the name)
    found = words("status", keyword="unsent", compared=False)
    assert outside(found, allowed | {"unsent"}) == {}
    assert {"ok", "failed", "too_long", "stopped", "budget"} <= set().union(*found.values())


def test_batch_phases_and_job_states_are_the_typed_vocabularies():
    assert outside(words("phase"), set(typing.get_args(batch_status.BatchPhase))) == {}
    job = PACKAGE / "_batch" / "job.py"
    states = set()
    for node in ast.walk(ast.parse(job.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "state" for t in node.targets):
            states |= strings(node.value)
    assert states and states <= set(typing.get_args(batch_status.JobState))


def test_run_outcomes_checked_are_outcomes_set():
    from pandas_llm._stats import RunOutcome

    allowed = set(typing.get_args(RunOutcome))
    found = words("outcome")
    assert outside(found, allowed) == {}  # "stopped" was checked by the displays, never set
    assigned = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(_named(t, "outcome") for t in node.targets):
                assigned |= strings(node.value)
    assert assigned | {"running"} == allowed  # and every outcome is one a run can end with
