"""The clients the benchmark compares; each runs in its own process and returns its figures.

Figures: ``elapsed`` is the wall time of the call that does the work (frame already
built, HTTP library already imported: aiohttp's import alone takes ~0.17 s); ``cpu_ms_per_row`` is the process CPU (every thread) over that call per row;
``peak_rss_mb`` is the process's peak resident set (ru_maxrss), imports and frame included.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any


def make_frame(n: int):
    import pandas as pd

    return pd.DataFrame({"text": [f"review {i}: the parcel came on time and it works" for i in range(n)]})


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _measure(n: int, frame_mb: float, work: Callable[[], int]) -> dict[str, Any]:
    rss_before = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    ok = work()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "rows": n,
        "ok": ok,
        "elapsed": elapsed,
        "rows_per_s": n / elapsed,
        "cpu_ms_per_row": cpu / n * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before,
        "frame_mb": frame_mb,
    }


def pandas_llm_client(args: Any, template: str, model: str) -> dict[str, Any]:
    import pandas_llm  # noqa: F401 - registers the accessor

    try:  # its HTTP client, imported before the clock like the others'
        import pandas_llm._backends.wire  # noqa: F401
    except ImportError:  # an older pandas-llm (the "before" figures)
        import pandas_llm._backends.http  # noqa: F401

    df = make_frame(args.rows)
    frame_mb = df.memory_usage(deep=True).sum() / 2**20
    options = dict(
        model=model, base_url=args.base_url, api_key="x", concurrency=args.concurrency,
        cache=args.cache or False, progress=True, rpm=args.rpm,
    )  # fmt: skip

    if args.client.endswith("warm"):
        # a notebook's second call: limits already learned from headers, loop thread running
        warm = make_frame(1).assign(text="warm-up")
        warm.llm.map(template, **{**options, "cache": False, "progress": False})

    def work() -> int:
        out = df.llm.map(template, **options)
        return int(out.notna().sum())

    return _measure(args.rows, frame_mb, work)


def naive_client(args: Any, template: str, model: str) -> dict[str, Any]:
    """The pattern most notebooks use: one coroutine per row, gathered at once."""
    from openai import AsyncOpenAI

    df = make_frame(args.rows)
    frame_mb = df.memory_usage(deep=True).sum() / 2**20

    async def main() -> list:
        client = AsyncOpenAI(base_url=args.base_url, api_key="x")  # default max_retries
        sem = asyncio.Semaphore(args.concurrency)

        async def one(text: str) -> str | None:
            async with sem:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": template.format(text=text)}]
                )
                return r.choices[0].message.content

        try:
            return await asyncio.gather(*(one(t) for t in df["text"]), return_exceptions=True)
        finally:
            await client.close()

    def work() -> int:
        results = asyncio.run(main())
        return sum(isinstance(r, str) for r in results)

    return _measure(args.rows, frame_mb, work)


def floor_client(args: Any, template: str, model: str) -> dict[str, Any]:
    """A bare aiohttp loop posting prepared JSON: the floor for a Python client."""
    import aiohttp
    import orjson

    df = make_frame(args.rows)
    frame_mb = df.memory_usage(deep=True).sum() / 2**20
    url = args.base_url + "/chat/completions"

    async def main() -> int:
        ok = 0
        it = iter(df["text"].tolist())
        conn = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=conn, headers={"Authorization": "Bearer x"}) as session:

            async def worker() -> None:
                nonlocal ok
                for text in it:
                    body = orjson.dumps(
                        {"model": model, "messages": [{"role": "user", "content": template.format(text=text)}]}
                    )
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                        data = orjson.loads(await resp.read())
                    ok += resp.status == 200 and bool(data["choices"][0]["message"]["content"])

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return ok

    return _measure(args.rows, frame_mb, lambda: asyncio.run(main()))


CLIENTS = {
    "pandas-llm": pandas_llm_client,
    "pandas-llm+rpm": pandas_llm_client,
    "pandas-llm+warm": pandas_llm_client,
    "pandas-llm+restart": pandas_llm_client,
    "naive": naive_client,
    "floor": floor_client,
}
