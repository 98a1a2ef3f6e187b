"""Two calls in one process do not pay twice: a request another run has in flight is awaited.

Four threads map frames that share 200 prompts (each also has 50 of its own), all at
once; the loopback server's counters prove each distinct prompt was billed exactly
once, with one cache file for all and with one cache file each (sharing is by the
request's key, whatever the file). With one file each, the runs must overlap: an answer
another run committed to its own file before this run started is not shared (a server
latency of 0.2 s makes every run start before the first answer arrives).
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from pandas_llm._run import inflight
from pandas_llm.testing import LLMServer

SHARED, OWN, THREADS = 200, 50, 4


@pytest.mark.parametrize("caches", ["one cache file", "a cache file each"])
def test_four_threads_sharing_prompts_pay_once_per_distinct_prompt(tmp_path, caches):
    frames = [
        pd.DataFrame({"t": [f"shared {i}" for i in range(SHARED)] + [f"own {k} {i}" for i in range(OWN)]})
        for k in range(THREADS)
    ]
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    with LLMServer(latency=0.2) as srv:
        start = threading.Barrier(THREADS)

        def work(k: int) -> None:
            cache = tmp_path / ("c.sqlite" if caches == "one cache file" else f"c{k}.sqlite")
            try:
                start.wait()
                out = frames[k].llm.map(
                    "Say {t}", base_url=srv.base_url, api_key="x", cache=cache, concurrency=32, progress=False
                )
                results[k] = out.tolist()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        counts = srv.prompt_counts
        billed = srv.completed
    for k in range(THREADS):
        assert results[k] == [f"echo: Say {t}" for t in frames[k]["t"]]
    assert billed == SHARED + THREADS * OWN  # exactly the distinct prompts
    assert set(counts.values()) == {1}
    assert not inflight._entries and not inflight._active  # nothing kept once the runs are over


def test_a_request_held_by_a_run_whose_loop_stopped_is_sent_by_the_next_run(tmp_path):
    # an amap left paused (its loop stopped: a second Ctrl-C at a terminal prompt, a loop
    # stopped between two run_until_complete) holds 8 requests in flight; a sync map of the
    # same rows must not wait for them for ever
    import asyncio

    df = pd.DataFrame({"t": [f"row {i}" for i in range(20)]})
    with LLMServer(latency=0.5) as srv:
        kw = dict(base_url=srv.base_url, api_key="x", cache=tmp_path / "c.sqlite", concurrency=8, progress=False)
        loop = asyncio.new_event_loop()
        loop.call_later(0.3, loop.stop)  # while its first 8 requests are in flight
        with pytest.raises(RuntimeError, match="stopped before"):
            loop.run_until_complete(df.llm.amap("Say {t}", **kw))
        box: dict = {}
        worker = threading.Thread(target=lambda: box.update(out=df.llm.map("Say {t}", **kw)), daemon=True)
        worker.start()
        worker.join(60)  # a hang guard: it took ~1.5 s
        assert "out" in box, "the map waited for the paused run's requests"
        assert box["out"].tolist() == [f"echo: Say row {i}" for i in range(20)]
        paused = asyncio.all_tasks(loop)
        for task in paused:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*paused, return_exceptions=True))  # the paused run ends
        loop.close()
