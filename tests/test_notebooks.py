"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel without an error.

The kernel's own event loop is running while the cells run, so this also proves that the
sync ``map`` works there (no nest-asyncio), and that the progress widget is created.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)


_executed: dict[Path, nbformat.NotebookNode] = {}


def executed(path: Path, tmp_path_factory) -> nbformat.NotebookNode:
    """The notebook after a run in a fresh kernel (once per test session)."""
    if path not in _executed:
        nb = nbformat.read(path, as_version=4)
        where = tmp_path_factory.mktemp(path.stem)
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(where)}}
        )
        client.execute()  # raises CellExecutionError on any error, naming the cell
        _executed[path] = nb
    return _executed[path]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_error(path, tmp_path_factory):
    nb = executed(path, tmp_path_factory)
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    # the runs drew the widget, and it kept its final figures
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert bars and all(b["bar_style"] in ("success", "warning", "danger") for b in bars)
    texts = json.dumps([m["state"].get("value") for m in state.values() if m["model_name"] == "HTMLModel"])
    assert "done in" in texts


def test_quickstart_shows_what_it_claims(tmp_path_factory):
    nb = executed(Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb", tmp_path_factory)
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )  # fmt: skip
    assert "pandas-llm estimate for gpt-4o-mini" in text and "from 8 sampled answers" in text
    assert "budget (not sent: it could have taken the run over max_cost)" in text
    assert "interrupted: <RunReport interrupted" in text
    assert "<RunReport done: 192 rows, 48 distinct requests" in text
    assert "(192, 64) float32" in text and "up to 2048 inputs/request: 1 requests" in text  # embed
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    styles = [m["state"]["bar_style"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert "danger" in styles  # the interrupted run
    assert "warning" in styles  # the run stopped by max_cost


def test_dask_notebook_shows_what_it_claims(tmp_path_factory):
    nb = executed(Path(__file__).parents[1] / "notebooks" / "dask.ipynb", tmp_path_factory)
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )  # fmt: skip
    assert "string category requests so far: 0" in text
    assert "300 rows; 300 requests, 0 rate-limited (429)" in text
    assert "requests on the rerun: 0 | same answers: True" in text
    assert "requests: 0 | 300 rows, 300 distinct requests: 300 rows from cache" in text
    assert (
        "300 rows, 300 distinct requests: 0 rows from cache, 300 requests sent (300 ok)" in text
    )  # last_run() of a compute
    assert "left 'budget';" in text and "under the cap: True" in text
