"""What watching a run costs: observer CPU per update and per draw, and a fast run with each display.

    python benchmarks/progress_overhead.py [rows]

Prints (1) CPU per ``update`` call that the throttle skips, (2) CPU per draw for the
tqdm bar and the ipywidgets widget (outside a kernel the widget's comm is a no-op, so
this is our own cost: figures, formatting, trait changes), (3) wall time of a map of
``rows`` distinct prompts against the loopback server with no display, tqdm, the widget
and a max_cost budget. No assertions: figures for the report.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections import Counter

import orjson
import pandas as pd

import pandas_llm
from pandas_llm._display.notebook import WidgetObserver
from pandas_llm._display.progress import TqdmObserver
from pandas_llm._pricing import price_for
from pandas_llm._run.budget import Meter
from pandas_llm._stats import RunStats


def per_call(fn, n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n


def stats() -> RunStats:
    s = RunStats(total=10_000, unique=8_000, to_send=6_000, cached_unique=2_000, started=time.monotonic() - 5)
    s.sent_done, s.ok, s.failed, s.in_flight = 3_000, 2_990, Counter(failed=7, length=3), 16
    s.prompt_tokens, s.completion_tokens, s.cost, s.retries, s.saved_cost = 123_456, 78_901, 0.0123, 4, 0.004
    return s


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    s = stats()

    skipped = WidgetObserver(display=lambda w: None)
    skipped.start(s)  # just drew: every update below is within the 0.1 s interval
    print(f"throttled update (skipped):   {per_call(lambda: skipped.update(s), 200_000) * 1e6:7.2f} µs")

    widget = WidgetObserver(display=lambda w: None, min_interval=0)
    widget.start(s)
    print(f"widget draw:                  {per_call(lambda: widget.update(s), 5_000) * 1e6:7.1f} µs")
    bar = TqdmObserver(min_interval=0, file=io.StringIO())
    bar.start(s)
    print(f"tqdm draw:                    {per_call(lambda: bar.update(s), 5_000) * 1e6:7.1f} µs")
    bar.close(s)

    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": 50,
            "messages": [
                {"role": "user", "content": "Translate to French: " + "a fairly ordinary review sentence " * 3}
            ],
        }
    )
    meter = Meter("gpt-4o-mini", price_for("gpt-4o-mini"))
    print(f"budget worst case / request:  {per_call(lambda: meter.worst_case(body), 20_000) * 1e6:7.1f} µs")

    # The server runs in its own process, so that it does not share this one's GIL.
    server = subprocess.Popen([sys.executable, "-m", "pandas_llm.testing"], stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()
        df = pd.DataFrame({"t": [f"row {i}" for i in range(rows)]})
        base = dict(base_url=base_url, api_key="x", cache=False, concurrency=64)
        df.head(500).llm.map("{t}", progress=False, **base)  # warm up imports, price table, tokenizer
        cases = {
            "no display": lambda: dict(progress=False),
            "tqdm": lambda: dict(progress=TqdmObserver(file=io.StringIO())),
            "widget": lambda: dict(progress=WidgetObserver(display=lambda w: None)),
            "widget + max_cost": lambda: dict(
                progress=WidgetObserver(display=lambda w: None), max_cost=1000.0, max_tokens=50
            ),
        }
        for name, make in [*cases.items(), *cases.items()]:  # twice, interleaved
            kw = make()
            t = time.perf_counter()
            df.llm.map("{t}", **base, **kw)
            wall = time.perf_counter() - t
            draws = getattr(kw["progress"], "draws", 0) if kw["progress"] else 0
            print(f"map of {rows:,} rows, {name:<18} {wall:6.2f} s  {rows / wall:8,.0f} rows/s  {draws} draws")
            assert pandas_llm.last_run().stats.ok == rows
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
