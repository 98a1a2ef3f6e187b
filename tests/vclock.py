"""Virtual time for tests: ``clock`` and ``sleep`` to inject, and a driver that moves time
forward only when every task is waiting, so waits are exact and tests take milliseconds."""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, Awaitable


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
