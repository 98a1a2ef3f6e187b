"""Helpers shared by the tests: virtual time, crash tests in a child process, and the schemas
the structured tests share.

- ``VirtualTime``: ``clock`` and ``sleep`` to inject, and a driver that moves time forward
  only when every task is waiting, so waits are exact and tests take milliseconds.
- ``kill_when``: run a script in a child process and SIGKILL it once a condition holds.
- ``Everything`` / ``expected``: a schema with every field kind, and what the loopback
  server answers for it.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

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
