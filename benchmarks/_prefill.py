"""Fill a cache file with an answer for every row of the benchmark frame, without a server.

Keys come from pandas-llm's own planner, so the resume scenario measures exactly what a
rerun of a finished 1M-row map does.
"""

from __future__ import annotations


def prefill(path: str, n: int, template: str, model: str, base_url: str) -> None:
    from _clients import make_frame

    from pandas_llm._config import Settings
    from pandas_llm._plan.planner import make_plan
    from pandas_llm._store.store import Record, Store

    df = make_frame(n)
    settings = Settings(model=model, base_url=base_url, api_key="x", cache=path, progress=False)
    with Store(path) as store:
        plan = make_plan(df, template, settings, store)
        step = 50_000
        for start in range(0, len(plan.keys), step):
            store.write(
                Record(k, "ok", f"answer {start + j}", "stop", 12, 3, 0, None, None, 1, model)
                for j, k in enumerate(plan.keys[start : start + step])
            )
