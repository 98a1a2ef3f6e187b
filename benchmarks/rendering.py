"""What rendering cell values costs at planning time, per kind of column.

    PYTHONPATH=. python benchmarks/rendering.py

For each kind of column it prints the time ``prompts.render_column`` takes per cell (the
step that turns cells into the text a prompt holds; see the rendering table in the
README) and the whole planning step (render, key, dedup, cache look-up) per row. ``str``
and ``int`` columns pass through untouched after one scan of their types; lists and
arrays are rendered in full, cell by cell.
"""

from __future__ import annotations

import timeit

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


if __name__ == "__main__":
    main()
