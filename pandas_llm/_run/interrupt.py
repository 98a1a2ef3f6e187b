"""Ctrl-C on a run awaited in the main thread's own event loop: ``await df.llm.amap(...)`` at
a terminal IPython prompt, ``loop.run_until_complete(...)`` in a script.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread is. While
a run awaits answers that is inside the event loop's wait for the network, so the exception
leaves ``run_until_complete`` and the run's tasks are only paused: the next time that loop
runs (the next ``await`` at the prompt) they would go on sending the rest, paid for, after
the user said stop. (A sync verb runs on pandas-llm's own loop and sees the interrupt itself:
loop.py.)

While a verb is awaited in the main thread under that default handler, :func:`sigint_stops`
puts its own in place. The first Ctrl-C cancels the awaiting task, which the run takes as a
stop, as it takes Jupyter's stop button: it plans or sends nothing more, finishes the
requests in flight and commits their answers (they are paid for), then the verb raises
KeyboardInterrupt. A second Ctrl-C raises KeyboardInterrupt at once, as the default handler
would (the requests still in flight finish if that loop runs again). Other handlers (a
Jupyter kernel's, ``asyncio.run``'s) already cancel the task on Ctrl-C and are left alone.
The default handler is back once no verb is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["sigint_stops"]

# Touched only in the main thread (the handler runs there, between two bytecodes): no lock.
_open: list[tuple[asyncio.Task, asyncio.AbstractEventLoop]] = []  # verbs awaited under our handler
_stopped: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()  # tasks a Ctrl-C cancelled


def _on_sigint(signum: int, frame: Any) -> None:
    if not _open or any(task in _stopped for task, _ in _open):  # a second Ctrl-C: raise now
        _open.clear()  # abandoned: their loop may never run again
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.default_int_handler(signum, frame)
    for task, loop in _open:
        _stopped.add(task)
        loop.call_soon_threadsafe(task.cancel)  # wakes the loop from its wait for the network


@contextlib.asynccontextmanager
async def sigint_stops() -> AsyncIterator[None]:
    """Around the part of an async verb that plans and sends: a Ctrl-C stops the run
    gracefully, then the verb raises KeyboardInterrupt (see the module's docstring).
    Does nothing outside the main thread or under a SIGINT handler other than Python's default."""
    task = asyncio.current_task()
    ours = task is not None and threading.current_thread() is threading.main_thread()
    if ours:
        handler = signal.getsignal(signal.SIGINT)
        ours = handler is signal.default_int_handler or (handler is _on_sigint and bool(_open))
    if not ours or task is None:
        yield
        return
    if signal.getsignal(signal.SIGINT) is not _on_sigint:
        signal.signal(signal.SIGINT, _on_sigint)
    entry = (task, asyncio.get_running_loop())
    _open.append(entry)
    try:
        yield
    except asyncio.CancelledError:
        if task in _stopped:
            raise KeyboardInterrupt from None
        raise
    finally:
        if entry in _open:
            _open.remove(entry)
        if not _open and signal.getsignal(signal.SIGINT) is _on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
