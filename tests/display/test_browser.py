"""The widget in a real browser: JupyterLab in headless Chromium, driven by Playwright.

A notebook's map takes a few seconds (server latency). While its cell runs, the widget's
bar and figures must advance in the page; afterwards they show the final cost. Then a
longer map is stopped with Jupyter's stop button (the interrupt command) and the widget
must say "interrupted". Screenshots go to test-output/browser/.

Needs Debian's chromium at /usr/bin/chromium and the Python playwright package (no
browser download: it drives the system browser). Marked ``browser``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
OUTPUT = Path(__file__).parents[2] / "test-output" / "browser"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip

CELLS = [
    """import pandas as pd, pandas_llm
from pandas_llm.testing import LLMServer
srv = LLMServer(latency=0.05).start()
pandas_llm.configure(base_url=srv.base_url, api_key="test", model="gpt-4o-mini", cache=False)
df = pd.DataFrame({"text": [f"review number {i}" for i in range(240)]})
out = df.llm.map("Translate to French: {text}", concurrency=4)  # ~3 s""",
    """print(f"FINAL COST ${pandas_llm.last_run().stats.cost:.6f}")""",
    """slow = df.llm.map("Summarise: {text}", concurrency=1)  # ~12 s: the test presses stop""",
]

KERNEL_STATUS = """() => { try { return window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status }
                         catch (e) { return null } }"""
WIDGETS = """() => Array.from(document.querySelectorAll('.pandas-llm-progress')).map(w => ({
    width: w.querySelector('.widget-hprogress .progress-bar')?.style.width ?? null,
    text: w.innerText }))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path; yields its URL."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    pytest.importorskip("playwright.sync_api")
    settings = tmp_path / "lab-settings"
    for name, value in {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
    }.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    src = str(Path(__file__).parents[2])
    env = dict(
        os.environ,
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
    )
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--IdentityProvider.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
         "--allow-root", f"--ServerApp.root_dir={root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/api/status", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "lab.log").read_text()
                time.sleep(0.2)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def percent(width: str | None) -> float | None:
    m = re.fullmatch(r"([\d.]+)%", width or "")
    return float(m.group(1)) if m else None


def test_widget_advances_live_and_shows_the_final_cost_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, root = lab
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nbformat.write(nb, root / "progress.ipynb")
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)

    started = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/lab/tree/progress.ipynb?reset")
            page.wait_for_function(f"() => ({KERNEL_STATUS})() === 'idle'", timeout=60_000)
            # commands.execute's promise resolves when every cell has run: do not wait for it
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # While the first cell runs: sample the first widget's bar and text.
            seen: list[tuple[float, str]] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                widgets = page.evaluate(WIDGETS)
                if widgets:
                    first = widgets[0]
                    seen.append((percent(first["width"]) or 0.0, first["text"]))
                    if "done in" in first["text"]:
                        break
                page.wait_for_timeout(100)
            else:
                pytest.fail(f"the first map never finished in the page: {seen[-3:]}")
            page.screenshot(path=str(OUTPUT / "1-finished.png"), full_page=True)

            running = [(w, t) for w, t in seen if "done in" not in t]
            widths = [w for w, _ in running]
            counts = {re.search(r"([\d,]+) / 240 requests", t).group(1) for _, t in running if "/ 240 requests" in t}
            # the bar and the figures advanced while the cell was still running
            assert len({w for w in widths if 0 < w < 100}) >= 3, seen
            assert widths == sorted(widths), widths
            assert len(counts) >= 3, counts
            assert any("req/s" in t and "ETA" in t and "in flight" in t for _, t in running)
            assert any(re.search(r"\$[\d.]+ spent · ~\$[\d.]+ projected", t) for _, t in running), running

            # after: full bar, final figures, and the same cost as the run report
            final = seen[-1]
            assert final[0] == 100.0
            page.wait_for_function("() => document.body.innerText.includes('FINAL COST $')", timeout=30_000)
            printed = re.search(r"FINAL COST \$([\d.]+)", page.inner_text("body")).group(1)
            shown = re.search(r"\$([\d.]+) spent", final[1]).group(1)
            assert float(printed) > 0 and float(shown) == pytest.approx(float(printed), rel=0.01)
            assert "240 ok · 0 failed" in final[1]

            # The third cell: press stop once its bar moves; the widget must say so.
            def third():
                widgets = page.evaluate(WIDGETS)
                return widgets[1] if len(widgets) > 1 else None

            deadline = time.monotonic() + 60
            while not ((w := third()) and (percent(w["width"]) or 0) > 5):
                assert time.monotonic() < deadline, "the slow map never started"
                page.wait_for_timeout(100)
            stop_pressed = time.monotonic()
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:interrupt-kernel'); }")
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.pandas-llm-progress'))"
                ".some(w => w.innerText.includes('interrupted after'))",
                timeout=15_000,
            )
            stopped_in = time.monotonic() - stop_pressed
            page.wait_for_function(f"() => ({KERNEL_STATUS})() === 'idle'", timeout=15_000)
            w = third()
            assert "interrupted after" in w["text"] and "answers are kept in the cache" in w["text"]
            assert 5 < (percent(w["width"]) or 0) < 100
            assert "KeyboardInterrupt" in page.inner_text("body")
            page.screenshot(path=str(OUTPUT / "2-interrupted.png"), full_page=True)
        finally:
            browser.close()
    print(f"browser test: {time.monotonic() - started:.1f} s; stop button to 'interrupted' shown: {stopped_in:.2f} s")
