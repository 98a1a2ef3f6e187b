"""Sending with claims: another process on the same cache file does not pay for the same request.

A :class:`Claimed` stands for an engine (``run``, ``settle``, ``split``) whose ``run``
claims each request's key in the sidecar before sending it (``_store/leases.py``): keys
another process has a live claim on are set aside and waited for, keys answered
meanwhile are taken from the file. Plain runs, packed runs (``rows_per_request``: a
pack's own key is claimed), their row-by-row fallbacks and grouped embedding requests
all send through it, so two processes sharing one sidecar pay a request twice only
when both sent it before either's claim was taken (at most what is in flight).

A claim is dropped once its request's record is committed (the engine's ``on_commit``),
never before: between the two, another process would see neither a claim nor an answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from .._store.leases import Claims
from .._store.store import Record, Store
from .engine import Engine
from .send import Job

__all__ = ["Claimed"]


class Claimed:
    """``make(**kw)`` builds the engine (the first at once, more for the requests waited for);
    ``on_cached(job, record)``: a plain request answered by another process (not sent here).
    A split engine's (packs, groups) answered request is split into its rows instead."""

    def __init__(self, make: Callable[..., Engine], store: Store, on_cached: Callable[[Job, Record], None], *,
                 chunk: int, stop: Callable[[], bool]):  # fmt: skip
        self._make = make
        self._claims = Claims(store, self._cached, chunk=chunk)
        self._on_cached = on_cached
        self._stop = stop
        self._late: list[tuple[int | None, Record]] = []  # split rows found while waiting
        self._waiting = False
        self.engine = self._build()

    def _build(self) -> Engine:
        claims = self._claims

        def committed(batch: Iterable[tuple[Any, Record]]) -> None:
            for _, record in batch:
                claims.settled(record.key)  # a key this run did not claim: nothing to drop

        return self._make(on_commit=committed)

    def _cached(self, job: Job, record: Record) -> None:
        engine = self.engine
        if engine.split is None:
            self._on_cached(job, record)
        elif self._waiting:  # the first engine has ended: these rows go with the next one
            self._late.extend(engine.split(job, record))
        else:
            engine.settle(engine.split(job, record))

    def settle(self, records: list[tuple[int | None, Record]]) -> None:
        self.engine.settle(records)

    @property
    def split(self) -> Any:
        return self.engine.split

    async def _send(self, jobs: list[Job]) -> None:
        engine = self._build()
        late, self._late = self._late, []
        if late:
            engine.settle(late)
        await engine.run(jobs)

    async def run(self, jobs: Iterable[Job]) -> None:
        """Claim and send ``jobs``, then wait for (or send) those another process had claimed."""
        claims = self._claims
        renew = asyncio.ensure_future(claims.renewing())
        try:
            await self.engine.run(claims.jobs(jobs))
            self._waiting = True
            await claims.wait(self._send, stop=self._stop)
            if self._late:
                await self._send([])
        finally:
            renew.cancel()
            claims.release()
