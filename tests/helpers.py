"""Helpers shared by the tests: virtual time, crash tests in a child process, and the schemas
the structured tests share.

- ``VirtualTime``: ``clock`` and ``sleep`` to inject, and a driver that moves time forward
  only when every task is waiting, so waits are exact and tests take milliseconds.
- ``kill_when``: run a script in a child process and SIGKILL it once a condition holds.
- ``Everything`` / ``expected``: a schema with every field kind, and what the loopback
  server answers for it.
- ``frame`` / ``echoes``: rows of text, and what the loopback server's echo answers to them.
- ``varied`` (answers of very different lengths) and ``billed`` (what the server charged).
- ``readme_blocks`` / ``run_block``: the README's code blocks, and running one as a notebook cell.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import heapq
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from pandas_llm._pricing import cost, price_for
from pandas_llm._structured.schema import as_schema
from pandas_llm.testing.structured import value_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class VirtualTime:
    def __init__(self, start: float = 0.0):
        self.now = start
        self.waits: list[float] = []
        self._heap: list[tuple[float, int, asyncio.Future]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(round(seconds, 9))
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.now + max(0.0, seconds), self._seq, fut))
        self._seq += 1
        await fut

    async def settle(self) -> None:
        """Let every runnable task run until it waits."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, to: float) -> None:
        """Wake, in order, every sleeper due by ``to``; the clock ends at ``to``."""
        await self.settle()
        while self._heap and self._heap[0][0] <= to:
            when, _, fut = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self.now = max(self.now, to)

    async def run(self, aw: Awaitable[Any]) -> Any:
        """Await ``aw``, moving time to the next sleeper whenever everything waits."""
        task = asyncio.ensure_future(aw)
        await self.settle()
        idle = 0
        while not task.done():
            if not self._heap:
                # waiting on something real (the commit thread): give it real time, a little
                idle += 1
                if idle > 5000:
                    task.cancel()
                    raise RuntimeError("deadlock: the task waits and nothing sleeps")
                await asyncio.sleep(0.001)
                continue
            idle = 0
            await self.advance(self._heap[0][0])
        return task.result()


def kill_when(script: str, ready: Callable[[], bool], *, timeout: float = 60.0) -> None:
    """Start ``python -c script``; SIGKILL it as soon as ``ready()`` is true; check it died so."""
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, "the child exited early"
            assert time.monotonic() < deadline, "the child never got there"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def frame(n: int, prefix: str = "row", start: int = 0) -> pd.DataFrame:
    """``n`` rows in a ``text`` column: "row 0", "row 1", ... (from ``start``)."""
    return pd.DataFrame({"text": [f"{prefix} {i}" for i in range(start, start + n)]})


def echoes(df: pd.DataFrame, template: str = "Say: ") -> list[str]:
    """The loopback server's default answers to ``template`` + each row's text."""
    return [f"echo: {template}{t}" for t in df["text"]]


def varied(messages: list[dict[str, Any]], model: str) -> str:
    """An ``LLMServer(answer=...)`` whose answers differ widely in length (by the prompt's last number)."""
    n = int(messages[-1]["content"].rsplit(" ", 1)[1])
    return "word " * (1 + (n * 37) % 60)


def billed(server: Any, batch: bool = False) -> float:
    """Dollars the loopback server charged so far, at gpt-4o-mini's price."""
    return cost(
        price_for("gpt-4o-mini"), prompt_tokens=server.prompt_tokens, completion_tokens=server.completion_tokens,
        cached_tokens=server.cached_tokens, batch=batch,
    )  # fmt: skip


class Color(str, Enum):  # noqa: UP042 (the form users write)
    red = "red"
    blue = "blue"


class Address(BaseModel):
    city: str
    zip: str | None = None


class Everything(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    stars: int = Field(ge=1, le=5)
    summary: str
    score: float
    ok: bool
    color: Color
    rank: Literal[1, 2, 3]
    maybe: int | None = None
    tags: list[str]
    address: Address


EXPECTED_DTYPES = {
    "sentiment": pd.CategoricalDtype(["positive", "negative", "neutral"]),
    "stars": "Int64",
    "summary": "string",
    "score": "Float64",
    "ok": "boolean",
    "color": pd.CategoricalDtype(["red", "blue"]),
    "rank": pd.CategoricalDtype([1, 2, 3]),
    "maybe": "Int64",
    "tags": object,
    "address": object,
}


def expected(schema, prompts):
    """What the loopback server answers, row by row: its documented deterministic value."""
    sent = as_schema(schema).sent
    return [value_for(sent, p) for p in prompts]


README = os.path.join(ROOT, "README.md")
# Written on the line before a block that tests/test_docs.py does not run; a reader of the rendered README never sees it.
NOT_RUN = re.compile(r"<!-- not run by tests/test_docs\.py: (?P<why>.+?) -->\s*$", re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    id: str  # the section's heading, as a slug, and "-2", "-3" for its later blocks
    line: int  # of the opening fence
    lang: str
    code: str
    not_run: str | None  # why tests/test_docs.py does not run it (the comment before the block)


def readme_blocks(lang: str = "python") -> list[Block]:
    """The README's ``lang`` blocks in order, each named after the section it sits in."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks: list[Block] = []
    slug, seen, i = "top", {}, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            title = re.split(r"[:(]", line.lstrip("#").strip(), maxsplit=1)[0]
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        if line.startswith("```") and line != "```":
            start, body = i, []
            i += 1
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            if line[3:] == lang:
                seen[slug] = seen.get(slug, 0) + 1
                before = next((text for text in reversed(lines[:start]) if text.strip()), "")
                match = NOT_RUN.match(before)
                blocks.append(Block(
                    id=slug if seen[slug] == 1 else f"{slug}-{seen[slug]}", line=start + 1, lang=lang,
                    code="\n".join(body) + "\n", not_run=match and match["why"],
                ))  # fmt: skip
        i += 1
    return blocks


def run_block(block: Block, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run ``block`` in ``namespace`` as a notebook cell would (a top-level ``await`` too); errors
    point at the README's own line numbers."""
    source = "\n" * block.line + block.code
    code = compile(source, README, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    return namespace


def spy_writes(monkeypatch: Any) -> list[tuple[str, list[Any]]]:
    """Every ``Store.write`` while the test runs: (the writing thread's name, the records)."""
    from pandas_llm._store.store import Store

    writes: list[tuple[str, list[Any]]] = []
    real = Store.write

    def write(self: Any, records: Any) -> Any:
        records = list(records)
        writes.append((threading.current_thread().name, records))
        return real(self, records)

    monkeypatch.setattr(Store, "write", write)
    return writes


# -- Dask: a LocalCluster of worker processes, and a worker killed mid-compute ----------------


@contextlib.contextmanager
def local_cluster(n_workers: int, **kwargs: Any) -> Any:
    """A ``distributed.Client`` on a LocalCluster of ``n_workers`` single-thread worker
    processes (its dashboard on a free port of 127.0.0.1), closed on exit."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      worker_dashboard_address=None, **kwargs) as cluster, Client(cluster) as client:  # fmt: skip
        yield client


def kill_a_worker_when(client: Any, future: Any, sent: Callable[[], int], at: int = 60) -> None:
    """Once ``sent()`` reaches ``at`` (within 60 s, ``future`` not done yet), kill one worker
    process at once: its nanny starts another and Dask computes its tasks again."""
    deadline = time.monotonic() + 60
    while sent() < at:
        assert time.monotonic() < deadline and not future.done()
        time.sleep(0.01)
    victim = sorted(client.scheduler_info()["workers"])[0]
    with contextlib.suppress(Exception):
        client.run(os._exit, 1, workers=[victim])


def check_counts(report: Any) -> Any:
    """RunStats' identities (``pandas_llm/_stats.py``) after a run, whatever ended it, and that
    the per-request outcomes, the summary and the displays' snapshot say the same numbers:
    each distinct request is from the cache, settled (ok or failed), cut short after being
    sent (attempts > 0, no answer kept) or never sent (attempts 0). Returns the stats."""
    import numpy as np

    from pandas_llm._display.snapshot import Snapshot
    from pandas_llm._stats import CUT_BY

    s = report.stats
    assert s.outcome != "running" and s.in_flight == 0
    assert s.unique == s.cached_unique + s.to_send
    assert s.sent_done == s.ok + sum(s.failed.values())
    assert s.to_send == s.sent_done + sum(s.cut_short.values()) + sum(s.unsent.values())
    assert s.cached_unique + s.sent + s.shared + s.not_sent == s.unique
    assert all(n > 0 for n in (*s.cut_short.values(), *s.unsent.values()))
    outcomes = report.plan.outcomes
    assert int(outcomes.from_cache.sum()) == s.cached_unique
    status = np.asarray(outcomes.status, dtype=object)
    assert not any(st is None for st in status)  # every request has its outcome
    for why in ("deadline", "stopped", "budget"):
        mine = status == why
        assert int((mine & (outcomes.attempts > 0)).sum()) == s.cut_short[why], why
        assert int((mine & (outcomes.attempts == 0)).sum()) == s.unsent[why], why
    text = report.summary()
    assert f"{s.unique} distinct requests: " in text and f", {s.sent} requests sent (" in text
    assert (f", {s.not_sent} not sent (" in text) == bool(s.not_sent)
    for why, n in s.cut_short.items():
        assert f"{n} {CUT_BY[why]}" in text
    snap = Snapshot.of(s, s.finished)
    assert (snap.sent, snap.n_cut_short, snap.n_unsent) == (s.sent, sum(s.cut_short.values()), sum(s.unsent.values()))
    return s
