"""What rendering cell values costs at planning time, per kind of column.

    PYTHONPATH=. python benchmarks/rendering.py

For each kind of column it prints the time ``prompts.render_column`` takes per cell (the
step that turns cells into the text a prompt holds; see the rendering table in the
README) and the whole planning step (render, key, dedup, cache look-up) per row. ``str``
and ``int`` columns pass through untouched after one scan of their types; lists and
arrays are rendered in full, cell by cell. Last, a function template's planning, its
sending (the bodies kept from planning, never rendered again) and the memory those
bodies hold (tracemalloc, bytes per row).
"""

from __future__ import annotations

import gc
import timeit
import tracemalloc

import numpy as np
import pandas as pd

from pandas_llm._config import Settings
from pandas_llm._plan.planner import make_plan
from pandas_llm._plan.prompts import render_column
from pandas_llm._store.store import Store

N = 200_000


def columns() -> dict[str, pd.Series]:
    lists = np.empty(N, dtype=object)
    lists[:] = [["red", "blue", i] for i in range(N)]
    arrays = np.empty(N, dtype=object)
    arrays[:] = [np.array([i, i + 1, i + 2]) for i in range(N)]
    return {
        "str": pd.Series([f"review {i}: it was fine" for i in range(N)]),
        "int": pd.Series(np.arange(N)),
        "float64": pd.Series(np.arange(N) * 0.1),
        "float32": pd.Series(np.arange(N, dtype=np.float32) * np.float32(0.1)),
        "list of 3": pd.Series(lists),
        "int array of 3": pd.Series(arrays),
    }


def main() -> None:
    settings = Settings(model="m", base_url="http://127.0.0.1:1/v1", cache=False)
    print(f"{N:,} rows; best of 3")
    for name, column in columns().items():
        values = column.to_numpy(dtype=object)
        render = (
            min(timeit.repeat(lambda values=values, name=name: render_column(values, name), number=1, repeat=3)) / N
        )
        frame = pd.DataFrame({"c": column})

        def plan(frame: pd.DataFrame = frame) -> None:
            with Store(None) as store:
                make_plan(frame, "Summarise: {c}", settings, store)

        total = min(timeit.repeat(plan, number=1, repeat=3)) / N
        print(f"{name:>15}: render {render * 1e9:7.0f} ns/cell   plan {total * 1e6:6.2f} us/row")
    function_template(settings)


def function_template(settings: Settings) -> None:
    frame = pd.DataFrame({"text": [f"review {i}: it was fine" for i in range(N)]})
    fn = lambda row: f"Summarise: {row.text}"  # noqa: E731
    best_plan = best_jobs = float("inf")
    for _ in range(3):
        with Store(None) as store:
            start = timeit.default_timer()
            plan = make_plan(frame, fn, settings, store)
            best_plan = min(best_plan, timeit.default_timer() - start)
            start = timeit.default_timer()
            for _job in plan.jobs():
                pass
            best_jobs = min(best_jobs, timeit.default_timer() - start)
    tracemalloc.start()
    with Store(None) as store:
        plan = make_plan(frame, fn, settings, store)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    body = sum(len(b) for b in plan._bodies) / N
    plan._bodies = None
    gc.collect()
    kept = (held - tracemalloc.get_traced_memory()[0]) / N
    tracemalloc.stop()
    print(f"function template: plan {best_plan / N * 1e6:.2f} us/row, send {best_jobs / N * 1e6:.2f} us/row, "
          f"bodies kept {kept:.0f} bytes/row ({body:.0f}-byte bodies) + 32-byte keys")  # fmt: skip


if __name__ == "__main__":
    main()
