"""The sync map inside a real Jupyter kernel, whose own event loop is already running."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from pandas_llm.testing import answer_for


def test_sync_map_in_a_jupyter_kernel(server, tmp_path):
    cells = [
        "import asyncio, pandas as pd, pandas_llm\n"
        "asyncio.get_running_loop()  # the kernel's loop is running: asyncio.run would fail here",
        "df = pd.DataFrame({'text': ['a', 'b', 'a']})\n"
        f"out = df.llm.map('Say {{text}}', base_url={server.base_url!r}, api_key='k', progress=False)\n"
        "print(out.tolist())",
        f"out2 = await df.llm.amap('Say {{text}}', base_url={server.base_url!r}, api_key='k', progress=False)\n"
        "print(out2.equals(out))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = [o["text"] for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout"]
    want = [answer_for([{"role": "user", "content": f"Say {t}"}], "gpt-4o-mini") for t in "aba"]
    assert printed == [f"{want}\n", "True\n"]
    assert server.requests == 2


def test_a_saved_notebook_reads_the_progress_as_text(server, tmp_path):
    # What QtConsole, Spyder or a notebook viewed as text show: the output's text/plain.
    cells = [
        "import pandas as pd, pandas_llm\n"
        "df = pd.DataFrame({'text': ['a', 'b', 'a', 'c']})\n"
        f"out = df.llm.map('Say {{text}}', base_url={server.base_url!r}, api_key='k', cache=False)",
        f"out = df.llm.map('Say {{text}}!', base_url={server.base_url!r}, api_key='k', cache=False, progress='text')",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    (shown,) = [o for o in nb.cells[0].outputs if o["output_type"] == "display_data"]
    text = shown["data"]["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]  # the widget where it renders
    assert "VBox" not in text and text.startswith("pandas-llm 3 / 3 requests (4 rows) · done in")
    assert "3 ok · 0 failed · 0 from cache" in text and "$" in text and "spent" in text
    outputs = nb.cells[1].outputs  # progress="text": the tqdm bar on stderr, no widget
    assert {(o["output_type"], o.get("name")) for o in outputs} == {("stream", "stderr")}
    bar = "".join(o["text"] for o in outputs)
    assert "pandas-llm: 100%" in bar and "3/3" in bar
