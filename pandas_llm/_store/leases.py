"""Leases: two processes on one sidecar never pay for the same request at the same time.

Before a run sends a request it claims the request's key in the sidecar (a row in
``leases`` with its owner and an expiry). Claims are taken in bulk, one short transaction
per chunk of jobs (not one per request), in the order the workers pull them:

- a key already answered ``ok`` in the cache (another process answered it since this
  run was planned) is not sent: its answer is taken from the cache;
- a key with a live claim of another owner is set aside: this run waits for that answer
  (polling the cache) instead of sending it;
- any other key is claimed (an expired claim, whose owner died, is taken over) and sent.

A run renews its claims while it runs (every ``RENEW`` seconds; they live ``TTL``) and
drops them when it ends; a process killed mid-run leaves claims that expire after ``TTL``
seconds, or at once for a process of this host that no longer runs. Set-aside keys whose claim is gone without an ``ok`` answer (the other run
failed on it, stopped, or died) are claimed and sent by this run. Two processes started
together on one frame thus split it between them, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .._errors import find_stack_level
from .store import Record, Store

__all__ = ["Claims", "TTL", "RENEW", "NetworkFilesystemWarning", "warn_if_network"]

#: Seconds a claim lives without being renewed (a killed process's claims expire after this).
TTL = 20.0
#: Seconds between renewals of a run's live claims.
RENEW = 5.0
#: Seconds between two looks at the cache for the answers another process is getting.
POLL = 0.1

_COLUMNS = Record._fields
Job = tuple[int, bytes, bytes]


class NetworkFilesystemWarning(UserWarning):
    """The cache file is on a network filesystem, where SQLite's locks and WAL do not hold."""


#: Filesystem types whose locking SQLite's WAL cannot rely on (see sqlite.org/wal.html).
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs", "lustre", "gpfs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "9p", "afs", "beegfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "davfs",
})  # fmt: skip
MOUNTS = "/proc/mounts"
_warned: set[str] = set()


def filesystem_of(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or None if unknown."""
    try:
        with open(MOUNTS, encoding="utf-8", errors="replace") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    where = os.path.realpath(os.path.dirname(os.path.abspath(path)) or ".")
    best, kind = -1, None
    for fields in mounts:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fields[2]
    return kind


def warn_if_network(path: str) -> None:
    """Warn (once per path, at the user's line) when the cache file is on a network filesystem."""
    if path in _warned:
        return
    _warned.add(path)
    kind = filesystem_of(path)
    if kind in NETWORK_FS:
        warnings.warn(
            f"the pandas-llm cache {path!r} is on a network filesystem ({kind}): SQLite's locks and WAL do not "
            "work there, so answers can be lost or paid twice. Put the cache on a local disk (cache='/local/"
            "path.sqlite'); on Dask, each worker keeps its own local file.",
            NetworkFilesystemWarning,
            stacklevel=find_stack_level(),
        )


class Claims:
    """One run's claims in ``store``. ``on_cached(job, record)``: a request answered by another
    process meanwhile (not sent by this run)."""

    def __init__(self, store: Store, on_cached: Callable[[Job, Record], None], *, chunk: int = 64,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self.store = store
        self.on_cached = on_cached
        self.chunk = chunk
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.waiting: dict[bytes, Job] = {}  # set aside: another process holds a live claim
        self._settled: list[bytes] = []  # our claims to drop at the next transaction

    def jobs(self, jobs: Iterable[Job]) -> Iterator[Job]:
        """The jobs this run may send, claimed chunk by chunk; the others are set aside."""
        it = iter(jobs)
        while True:
            chunk = [job for _, job in zip(range(self.chunk), it)]
            if not chunk:
                return
            yield from self._claim(chunk)

    def settled(self, key: bytes) -> None:
        """A claimed request has its outcome committed: drop the claim at the next transaction."""
        self._settled.append(key)

    async def wait(self, send: Callable[[list[Job]], Any], *, stop: Callable[[], bool] = lambda: False,
                   sleep: Callable[[float], Any] = asyncio.sleep) -> None:  # fmt: skip
        """Until every set-aside request is answered: take the answers another process stores,
        and ``await send(jobs)`` for those whose claim lapsed without an answer."""
        while self.waiting and not stop():
            await sleep(POLL)
            ready = self._claim(list(self.waiting.values()), waiting=True)
            if ready:
                await send(ready)

    def renew(self) -> None:
        """Push our live claims' expiry on (and drop the settled ones); skipped while the file
        is busy (the next renewal comes well before the claims expire)."""
        with contextlib.suppress(sqlite3.OperationalError), self._transaction() as conn:
            conn.execute("UPDATE leases SET expires = ? WHERE owner = ?", (self.clock() + TTL, self.owner))

    def release(self) -> None:
        """Drop every claim of this run (at its end, whatever the outcome; if the file stays
        busy, the claims expire by themselves)."""
        self._settled.clear()
        with contextlib.suppress(sqlite3.OperationalError), self._transaction() as conn:
            conn.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))

    async def renewing(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        while True:
            await sleep(RENEW)
            self.renew()

    def _claim(self, chunk: Sequence[Job], *, waiting: bool = False) -> list[Job]:
        try:
            return self._try_claim(chunk, waiting)
        except sqlite3.OperationalError:
            # the file is busy past its short write timeout: a set-aside job waits for the next
            # look; a new one is sent unclaimed (at worst paid twice, never left unanswered)
            return [] if waiting else list(chunk)

    def _try_claim(self, chunk: Sequence[Job], waiting: bool) -> list[Job]:
        # bound as bytearray: the same BLOB, without sqlite3's adapter look-up that every bytes
        # parameter pays (a chunk's keys are bound three or four times)
        keys = [bytearray(job[1]) for job in chunk]
        marks = ",".join("?" * len(keys))
        now = self.clock()
        with self._transaction() as conn:
            answered = {
                row[0]: Record._make(row)
                for row in conn.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM results WHERE status = 'ok' AND key IN ({marks})", keys
                )
            }
            held = conn.execute(
                f"SELECT key, owner FROM leases WHERE key IN ({marks}) AND owner != ? AND expires > ?",
                (*keys, self.owner, now),
            ).fetchall()
            dead = {owner for owner in {owner for _, owner in held} if _dead(owner)}
            busy = {key for key, owner in held if owner not in dead}
            mine = [job for job in chunk if job[1] not in answered and job[1] not in busy]
            if mine:
                conn.executemany(
                    "INSERT OR REPLACE INTO leases (key, owner, expires) VALUES (?, ?, ?)",
                    [(bytearray(job[1]), self.owner, now + TTL) for job in mine],
                )
        for job in chunk:
            key = job[1]
            if key in answered:
                self.waiting.pop(key, None)
                self.on_cached(job, answered[key])
            elif key in busy:
                if not waiting:
                    self.waiting[key] = job
            else:
                self.waiting.pop(key, None)
        return mine

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction of the store, dropping the settled claims first."""
        with self.store.transaction() as conn:
            settled, self._settled = self._settled, []
            if settled:
                conn.executemany(
                    "DELETE FROM leases WHERE key = ? AND owner = ?", [(bytearray(k), self.owner) for k in settled]
                )
            yield conn


def _dead(owner: str) -> bool:
    """Whether ``owner`` ("host:pid:run") is a process of this host that no longer runs: its
    claims are taken over at once instead of after TTL (a killed worker, a killed kernel)."""
    parts = owner.split(":")
    if len(parts) < 3 or ":".join(parts[:-2]) != socket.gethostname():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False
