"""One cache for the cluster: answers paid on another host reach the driver's sidecar.

SQLite stays on local disk (its locks and WAL do not hold over a network filesystem), so
a worker writes where it runs:

- **On the driver's host** (same host name, and the file at the driver's path is the
  driver's file: same random ``file_id``), a partition writes the driver's sidecar
  itself, as a pandas run would; leases keep two processes from paying twice.
- **On another host** (or the path holds another file there), the partition uses a
  local sidecar: the driver's absolute path if it can be used on that host, else
  ``dask-<file name>`` in the user's cache folder (``$XDG_CACHE_HOME/pandas-llm``, by
  default ``~/.cache/pandas-llm``); never the driver's file through a shared folder.
  Before its plan reads the local sidecar, the partition asks the driver which of its
  requests it has answered and writes those answers in (so a rerun pays nothing the
  driver holds, wherever the partition lands). Every record it commits is sent to the
  driver right after the commit, and at its end the local answers the driver said it
  lacked; the driver writes them into its sidecar through :meth:`Store.write` (by
  content key: an ``ok`` answer is never replaced, an ``ok`` answer replaces an error).
  A killed worker loses what it had in flight (and at worst the last commit's
  message); its answers of earlier commits are already in the driver's sidecar.

The messages ride :mod:`events` (the scheduler forwards a worker's structured event to
the client before that task's result, so the driver's sidecar has every answer when
``.compute()`` returns). The scheduler keeps the last events of a topic in memory
(``distributed.admin.low-level-log-length``, 1,000), so records travel in messages of at
most :data:`MAX_BYTES`, on one topic per driver sidecar and client (reused by every
verb call): what the scheduler retains is bounded by 1,000 such messages, whatever the
number of calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from .._errors import ConfigError, StoreError
from .._kept import user_cache_dir
from .._store.store import Record, Store, file_id_of, observer
from .events import Channel, current_client, current_worker, send

__all__ = ["Home", "home", "on_worker", "MAX_BYTES"]

logger = logging.getLogger("pandas_llm")

#: Bytes of records (outputs, errors, keys) per message, about; a bigger record goes alone.
MAX_BYTES = 32_000
#: Private test hook: a folder that stands for another host's disk (see ``_this_host``).
HOST_ENV = "_PANDAS_LLM_TEST_HOST"
#: Keys per "which of these do you have" message (32 bytes each).
WANT_KEYS = 1000
#: Seconds a partition waits for the driver to say which answers it has.
PULL_TIMEOUT = 30.0
#: Seconds the driver keeps retrying a write its sidecar refuses (another process holds the lock).
PATIENCE = 30.0


@dataclasses.dataclass(frozen=True)
class Home:
    """The driver's sidecar, as the partitions see it: where, which file, which host, and the
    topic its records go to."""

    path: str
    file_id: str
    host: str
    topic: str


def _this_host() -> tuple[str, str]:
    """(this host's name, the root its absolute paths live under). The private hook
    ``_PANDAS_LLM_TEST_HOST=<folder>`` makes a process a host of its own whose disk is
    ``<folder>/<pid>`` (tests start worker processes with it: another host on one machine)."""
    fake = os.environ.get(HOST_ENV)
    if not fake:
        return socket.gethostname(), os.sep
    root = os.path.join(fake, str(os.getpid()))
    return f"{socket.gethostname()}/{root}", root


def _local(path: str, root: str) -> str:
    return path if root == os.sep else os.path.join(root, path.lstrip(os.sep))


# ---- the driver -----------------------------------------------------------------------------


class _Receiver:
    """Writes the records sent to one topic into the driver's sidecar."""

    def __init__(self, path: str):
        self.path = path
        self.store: Store | None = None
        self.lock = threading.Lock()
        self.received = 0  # records, for the figures and the tests
        self.bytes = 0
        self.messages = 0
        self.replied = 0  # records sent back to partitions that asked
        self.channel = Channel(self.handle)

    def handle(self, msg: Any) -> None:
        if "want" in msg:
            self._reply(msg["want"], msg["reply"])
            return
        records = [Record(*fields) for fields in msg["records"]]
        self.messages += 1
        self.received += len(records)
        self.bytes += msg.get("bytes", 0)
        started = time.monotonic()
        with self.lock:
            while True:
                try:
                    if self.store is None:
                        self.store = Store(self.path)
                    self.store.write(records)
                    return
                except StoreError as exc:  # busy, or the file replaced: open it again and retry
                    if self.store is not None and not exc.busy:
                        self.store.close()
                        self.store = None
                    if time.monotonic() - started > PATIENCE:
                        logger.warning("%d answers paid on Dask workers were not written to %r (%s); they are "
                                       "in the workers' own sidecars", len(records), self.path, exc)  # fmt: skip
                        return
                    time.sleep(0.05)
                except ConfigError as exc:
                    logger.warning("%d answers paid on Dask workers were not written to %r (%s); they are in the "
                                   "workers' own sidecars", len(records), self.path, exc)  # fmt: skip
                    return

    def close(self) -> None:
        self.channel.close()
        with self.lock:
            if self.store is not None:
                self.store.close()
                self.store = None

    def _reply(self, keys: list[bytes], name: str) -> None:
        """Put the ``ok`` records among ``keys`` in the Variable ``name`` (on the client's loop:
        the set is sent without waiting for it)."""
        from distributed import Variable

        with self.lock:
            try:
                if self.store is None:
                    self.store = Store(self.path)
                rows = [list(r) for r in self.store.lookup(keys) if r.status == "ok"]
            except Exception as exc:  # always answer: "none" makes the partition send what it has
                logger.warning("could not read the answers %r has (%s); the workers send theirs", self.path, exc)
                rows = []
        self.replied += len(rows)
        done = Variable(name, client=self.channel._client).set(rows)
        if inspect.isawaitable(done):
            asyncio.ensure_future(done)


_receivers: dict[tuple[Any, str, str], _Receiver] = {}
_receivers_lock = threading.Lock()


def home(path: str | None) -> Home | None:
    """The driver's sidecar at ``path`` (created if needed, as a run would), with the topic its
    partitions on other hosts send their records to (one per sidecar and client, reused);
    None without a cache file or a distributed client (the partitions run in this process)."""
    client = current_client()
    if path is None or client is None:
        return None
    with Store(path) as store:
        file_id = store.file_id
    assert file_id is not None
    with _receivers_lock:  # a new file at the path (the old one deleted): a new receiver
        receiver = _receivers.get((client.id, path, file_id))
        if receiver is None or receiver.channel._client is None:
            for old in [k for k in _receivers if k[:2] == (client.id, path)]:
                _receivers.pop(old).close()
            receiver = _receivers[(client.id, path, file_id)] = _Receiver(path)
    return Home(path, file_id, _this_host()[0], receiver.channel.topic)


def receiver(path: str) -> _Receiver | None:
    """The receiver of the default client for the sidecar at ``path`` (tests, figures)."""
    client = current_client()
    if client is None:
        return None
    file_id = file_id_of(path)
    return None if file_id is None else _receivers.get((client.id, path, file_id))


# ---- a partition ----------------------------------------------------------------------------


class _Shipper:
    """A partition's :class:`Observer` on another host: asks the driver for the answers a plan
    looks up (written into the local sidecar before it reads them), sends each commit's
    records to the driver, and at the end the local answers the driver said it lacked."""

    def __init__(self, topic: str):
        worker = current_worker()  # found from the partition's thread only: commits come from another
        self.worker = worker
        self.post = (lambda msg: worker.log_event(topic, msg)) if worker is not None else (lambda msg: send(topic, msg))
        self.thread = threading.get_ident()
        self.lacking: set[bytes] = set()  # asked, and the driver had no answer
        self.shipped: set[bytes] = set()
        self.pulled = 0
        self._pulling = False

    def written(self, records: list[Record]) -> None:
        if self._pulling and threading.get_ident() == self.thread:
            return  # the driver's own answers, written here
        self._send(records)

    def wanted(self, store: Store, keys: Any) -> None:
        if threading.get_ident() != self.thread or self.worker is None:
            return  # only while planning, on the partition's thread (never while sending)
        keys = [bytes(k) for k in keys]
        got = _ask(self.post, keys)
        if got is None:  # no answer from the driver: send what this host has, at the end
            self.lacking.update(keys)
            return
        self.lacking.update(set(keys) - {r.key for r in got})
        if got:
            self.pulled += len(got)
            self.shipped.update(r.key for r in got)
            self._pulling = True
            try:
                store.write(got)
            finally:
                self._pulling = False

    def finish(self, path: str) -> None:
        keys = [k for k in self.lacking if k not in self.shipped]
        if not keys:
            return
        with Store(path) as store:
            self._send([r for r in store.lookup(keys) if r.status == "ok"])

    def _send(self, records: list[Record]) -> None:
        batch: list[list[Any]] = []
        size = 0
        for r in records:
            n = _size(r)
            if batch and size + n > MAX_BYTES:
                self.post({"records": batch, "bytes": size})
                batch, size = [], 0
            batch.append(list(r))
            size += n
            self.shipped.add(r.key)
        if batch:
            self.post({"records": batch, "bytes": size})


def _size(r: Record) -> int:
    """About the bytes of a record in a message (its texts, its key, ~60 for the numbers)."""
    out = r.output
    return 64 + len(r.key) + (len(out) if out is not None else 0) + len(r.error or "") + len(r.finish_reason or "")


def _ask(post: Any, keys: list[bytes]) -> list[Record] | None:
    """The driver's ``ok`` records among ``keys`` (None if it did not answer within
    :data:`PULL_TIMEOUT`): the keys go in messages of :data:`WANT_KEYS`, the records come
    back in a ``distributed.Variable`` per message, deleted once read."""
    from distributed import Variable

    names = []
    for start in range(0, len(keys), WANT_KEYS):
        name = f"pandas-llm-answers-{uuid.uuid4().hex}"
        post({"want": keys[start : start + WANT_KEYS], "reply": name})
        names.append(name)
    got: list[Record] = []
    for name in names:
        var = Variable(name)
        try:
            rows = var.get(timeout=PULL_TIMEOUT)
        except TimeoutError:
            logger.warning(
                "the Dask driver did not say which answers it has within %g s; sending them all", PULL_TIMEOUT
            )
            return None
        finally:
            var.delete()
        got.extend(Record(*fields) for fields in rows)
    return got


class on_worker:
    """``with on_worker(home, settings) as settings:`` around a partition's run: the settings to
    run with (the driver's sidecar, or this host's own), shipping records when it is another host's."""

    def __init__(self, where: Home | None, settings: Any):
        self.where = where
        self.settings = settings
        self.shipper: _Shipper | None = None
        self.path: str | None = None
        self._token: Any = None

    def __enter__(self) -> Any:
        where = self.where
        if where is None:
            return self.settings
        host, root = _this_host()
        path = _local(where.path, root)
        mine = file_id_of(path)
        if host == where.host and mine == where.file_id:
            return self.settings  # the driver's own file
        if mine == where.file_id or not _usable(path):  # the driver's file seen through a shared folder
            path = _fallback(where.path, root)
        self.path = path
        self.shipper = _Shipper(where.topic)
        self._token = observer.set(self.shipper)
        return dataclasses.replace(self.settings, cache=path)

    def __exit__(self, kind: Any, *exc: object) -> None:
        if self._token is None:
            return
        observer.reset(self._token)
        if self.shipper is not None and self.path is not None:
            self.shipper.finish(self.path)  # also after a failure: what this host has, the driver gets


def _usable(path: str) -> bool:
    try:
        Store(path).close()
    except (ConfigError, StoreError, OSError):
        return False
    return True


def _fallback(path: str, root: str) -> str:
    return os.path.join(_local(user_cache_dir(), root), "pandas-llm", f"dask-{os.path.basename(path)}")
