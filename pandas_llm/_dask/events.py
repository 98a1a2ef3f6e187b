"""Messages from the partitions to the driver: progress, run reports, answers paid for.

The driver opens a :class:`Channel` when a verb is called (before ``.compute()``), the
partitions :func:`send` to its topic, and the driver's handler receives each message.

- On a ``distributed`` cluster the message is a structured event: the worker's
  ``log_event`` goes to the scheduler, which forwards it to the client that subscribed
  with ``subscribe_topic``. The handler runs on the client's event loop, and an event
  logged by a task reaches it before the task's result does (the worker's and the
  scheduler's streams keep their order), so by the time ``.compute()`` returns, the
  handler has seen every message of that compute. Keep handlers quick and messages
  small: the scheduler keeps the last events of each topic in memory.
- With Dask's threaded or synchronous scheduler the partitions run in the driver's
  process and the handler is called directly, under a lock (one message at a time).
- With no channel to reach (a process pool, or no client that subscribed) :func:`send`
  drops the message: what it carries must be a convenience for the driver, or be on disk
  somewhere the driver reads as well.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["Channel", "current_client", "current_worker", "send"]

_local: dict[str, Callable[[Any], None]] = {}
_local_lock = threading.Lock()


class Channel:
    """The driver's end of one verb call's messages: ``handler(msg)`` for each one sent to
    :attr:`topic`, from any partition. :meth:`close` stops the messages (idempotent)."""

    def __init__(self, handler: Callable[[Any], None]):
        self.topic = f"pandas-llm-{uuid.uuid4().hex}"
        self._handler = handler
        self._client: Any = None
        with _local_lock:
            _local[self.topic] = handler
        client = current_client()
        if client is not None:
            client.subscribe_topic(self.topic, self._received)
            self._client = client

    def _received(self, event: tuple[float, Any]) -> None:
        self._handler(event[1])

    def close(self) -> None:
        with _local_lock:
            _local.pop(self.topic, None)
        client, self._client = self._client, None
        if client is not None and client.status == "running":
            client.unsubscribe_topic(self.topic)


def current_client() -> Any:
    """The ``distributed`` client this process would compute with, or None (no client, or
    ``distributed`` never imported: then none can exist, and it is not imported here)."""
    return _current("get_client")


def current_worker() -> Any:
    """The ``distributed`` worker running this task, or None (threads, sync, no cluster)."""
    return _current("get_worker")


def _current(getter: str) -> Any:
    if "distributed" not in sys.modules:
        return None
    import distributed

    try:
        return getattr(distributed, getter)()
    except ValueError:
        return None


def send(topic: str | None, msg: Any) -> None:
    """Send ``msg`` (msgpack-able: dicts, lists, str, numbers) to the driver's channel ``topic``."""
    if topic is None:
        return
    worker = current_worker()
    if worker is not None:
        worker.log_event(topic, msg)
        return
    with _local_lock:
        handler = _local.get(topic)
        if handler is not None:
            handler(msg)
