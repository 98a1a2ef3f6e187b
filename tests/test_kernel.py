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
