"""Requests in flight, shared by every run of this process: the same request is sent once.

Two calls that overlap (four threads mapping frames that share prompts, a cell run while
another is still sending) plan against the cache before either has an answer, so both
would send the shared requests. Before sending, a worker *claims* the request's key:
if another run already has it in flight, or answered it but had not yet committed it
when this run read the cache, the worker awaits that answer instead of paying again.
The key is the request itself (model, messages, parameters, endpoint), so sharing is
right whatever cache file each run uses.

Futures are ``concurrent.futures.Future`` so runs on different event loops (the sync
API's background loop, a caller's own loop for ``amap``) can await each other. An
answer that is not ``ok`` is not shared: the waiter sends the request itself, as a
rerun would. Entries live only while another run that could need them is active.

A run whose event loop is not running cannot answer: an ``amap`` left behind by a second
Ctrl-C at a terminal prompt, or a task whose loop stopped between two
``run_until_complete``. A request it holds is taken over by the next run that needs it
(checked every :data:`STALL_CHECK` seconds while waiting), which sends it itself: at most
the requests that run had in flight are paid twice, if its loop ever runs again, rather
than the new run waiting for ever.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from concurrent.futures import Future
from typing import Any

__all__ = ["open_run", "close_run", "close_later", "claim", "answered", "committed", "wait", "STALL_CHECK"]

#: How often (seconds) a run waiting for another's answer checks that the other's loop runs.
STALL_CHECK = 0.5

_lock = threading.Lock()
_seq = itertools.count(1)
_active: set[int] = set()
_closing: list[int] = []  # tokens closed by a finalizer, dropped from _active at the next locked call


class _Shared(Future):
    """What a waiting run awaits: the owner's answer; ``owner`` is the loop it is sent from."""

    owner: asyncio.AbstractEventLoop | None = None


class _Entry:
    __slots__ = ("future", "record", "committed_at", "loop")

    def __init__(self) -> None:
        self.future: _Shared | None = None  # made when a second run waits (rare): claims stay cheap
        self.record: Any = None  # the owner's ok answer, once it has one
        self.committed_at: int | None = None  # sequence number once on disk
        self.loop = _running_loop()  # the owner's


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _stalled(loop: asyncio.AbstractEventLoop | None) -> bool:
    """The owner's loop will not answer now (closed, or not running)."""
    return loop is not None and (loop.is_closed() or not loop.is_running())


_entries: dict[bytes, _Entry] = {}


def open_run() -> int:
    """Call before reading the cache; returns the run's token (pass it to ``close_run``)."""
    with _lock:
        _drain()
        token = next(_seq)
        _active.add(token)
        return token


def close_run(token: int) -> None:
    with _lock:
        _drain()
        _active.discard(token)
        oldest = min(_active, default=None)
        stale = [
            k for k, e in _entries.items() if e.committed_at is not None and (oldest is None or e.committed_at < oldest)
        ]
        for key in stale:
            del _entries[key]


def close_later(token: int) -> None:
    """``close_run`` for a finalizer: the garbage collector may run it on a thread that holds
    the lock (inside ``close_run``), so it only queues the token (list.append is atomic)."""
    _closing.append(token)


def _drain() -> None:
    while _closing:
        _active.discard(_closing.pop())


def claim(key: bytes, token: int) -> Future | None:
    """None: the caller owns ``key`` and must call ``answered`` (then ``committed``).
    A future: another run has it; await it with ``wait``."""
    with _lock:
        entry = _entries.get(key)
        if (
            entry is None
            or (entry.committed_at is not None and entry.committed_at < token)
            or (entry.record is None and _stalled(entry.loop))  # its owner cannot answer: take it over
        ):
            if entry is not None and entry.future is not None and not entry.future.done():
                entry.future.set_result(None)  # the other waiters claim again, and wait for this run
            _entries[key] = _Entry()
            return None
        if entry.future is None:
            entry.future = _Shared()
            entry.future.owner = entry.loop
            if entry.record is not None:
                entry.future.set_result(entry.record)
        return entry.future


def answered(key: bytes, record: Any) -> None:
    """The owner got ``record`` (None: it gave up without an answer). Waiters wake now."""
    with _lock:
        entry = _entries.get(key)
        if entry is None or entry.record is not None:
            return
        ok = record is not None and record.status == "ok"
        if ok:
            entry.record = record
        else:
            del _entries[key]
        if entry.future is not None:
            entry.future.set_result(record if ok else None)


def committed(keys: list[bytes]) -> None:
    """The owner's answers are on disk: a run planned from now on finds them in the cache,
    so keep them only for the runs already planned (none when this is the only run)."""
    with _lock:
        _drain()
        keep = len(_active) > 1
        seq = next(_seq)
        entries = _entries
        for key in keys:
            entry = entries.get(key)
            if entry is None or entry.record is None:
                continue
            if keep:
                entry.committed_at = seq
            else:
                del entries[key]


async def wait(future: Future) -> Any:
    """The other run's ``ok`` record, or None (it failed, stopped, or its loop does not run:
    claim it again)."""
    answer = asyncio.wrap_future(future)
    owner = getattr(future, "owner", None)
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(answer), STALL_CHECK)
        except TimeoutError:
            if _stalled(owner):
                return None
