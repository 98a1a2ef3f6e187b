"""Ctrl-C on a run awaited in the main thread's own event loop: ``await df.llm.amap(...)`` at
a terminal IPython prompt, ``loop.run_until_complete(...)`` in a script.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread is. While
a run awaits answers that is inside the event loop's wait for the network, so the exception
leaves ``run_until_complete`` and the run's tasks are only paused: the next time that loop
runs (the next ``await`` at the prompt) they would go on sending the rest, paid for, after
the user said stop. (A sync verb runs on pandas-llm's own loop and sees the interrupt itself:
loop.py.)

While a verb is awaited in the main thread under that default handler, :func:`sigint_stops`
puts its own in place. The first Ctrl-C cancels every verb awaited then, which each run
takes as a stop, as it takes Jupyter's stop button: it plans or sends nothing more,
finishes the requests in flight and commits their answers (they are paid for). Once all
of them have (verbs gathered together wait for each other), KeyboardInterrupt leaves the
loop, raised by a callback of the loop rather than by a task, so nothing raises it again
the next time the loop runs; the verbs themselves end cancelled when it does (:data:`STOPPED`:
terminal IPython shows that CancelledError below the next cell, where the interrupted
cell's coroutine ends). A second Ctrl-C raises
KeyboardInterrupt at once, as the default handler would: the requests still in flight
finish if that loop runs again, and another run that needs one of them sends it itself
rather than wait for a loop that may never run (inflight.py). Other handlers (a Jupyter
kernel's, ``asyncio.run``'s) already cancel the task on Ctrl-C and are left alone. The
default handler is back once no verb is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import weakref
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["sigint_stops", "STOPPED"]

#: The message of the CancelledError a verb stopped by Ctrl-C ends with (IPython shows it in
#: the next cell, where the interrupted cell's coroutine ends).
STOPPED = "pandas-llm: this run was stopped by Ctrl-C; its answers are in the cache, run the call again for the rest"

# Touched only in the main thread (the handler runs there, between two bytecodes): no lock.
_open: list[tuple[asyncio.Task, asyncio.AbstractEventLoop]] = []  # verbs awaited under our handler


class _Stop:
    """One Ctrl-C and the verbs it stopped: KeyboardInterrupt once they have all settled."""

    def __init__(self, tasks: list[asyncio.Task]):
        self.tasks = weakref.WeakSet(tasks)
        self.settled: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
        self.abandoned = False  # a second Ctrl-C: raised at once, nothing more to raise
        self.raised = False

    def waiting(self) -> bool:
        return not self.abandoned and not all(t in self.settled or t.done() for t in self.tasks)

    async def settle(self, task: asyncio.Task, loop: asyncio.AbstractEventLoop) -> None:
        """``task``'s run has ended: wait for the others, then KeyboardInterrupt leaves the loop."""
        self.settled.add(task)
        while self.waiting():  # the other verbs this Ctrl-C stopped are still finishing (gather)
            await asyncio.sleep(0.02)
        if not self.raised and not self.abandoned:
            self.raised = True
            loop.call_soon(_interrupt)
        # Still pending when the loop stops: run_until_complete drops its callback on this task,
        # which would otherwise stop the next run_until_complete early. The verbs end, cancelled,
        # the next time the loop runs.
        await asyncio.sleep(0)


_stop: _Stop | None = None


def _interrupt() -> None:
    # Raised by a callback of the loop, not by a task: a task that raised it would have its
    # awaiter (gather, the cell's coroutine) raise it again the next time the loop runs.
    raise KeyboardInterrupt


def _on_sigint(signum: int, frame: Any) -> None:
    global _stop
    running = [(task, loop) for task, loop in _open if loop.is_running()]  # not those of a loop left stopped
    if not running or (_stop is not None and _stop.waiting() and any(t in _stop.tasks for t, _ in running)):
        # no verb to stop, or a second Ctrl-C while the first one's verbs finish: raise now
        if _stop is not None:
            _stop.abandoned = True
        _open.clear()  # abandoned: their loop may never run again (inflight.py stops waiting for them)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.default_int_handler(signum, frame)
    _stop = _Stop([task for task, _ in running])
    for task, loop in running:
        loop.call_soon_threadsafe(task.cancel)  # wakes the loop from its wait for the network


def _forget_stale() -> None:
    """Drop the verbs that can never end (their task is done or their loop closed: a loop
    stopped and closed while one was paused), and put the default handler back if none is left."""
    _open[:] = [(task, loop) for task, loop in _open if not task.done() and not loop.is_closed()]
    if not _open and signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.asynccontextmanager
async def sigint_stops() -> AsyncIterator[None]:
    """Around the part of an async verb that plans and sends: a Ctrl-C stops the run
    gracefully, then KeyboardInterrupt leaves the loop and the verb ends cancelled (see the
    module's docstring).
    Does nothing outside the main thread or under a SIGINT handler other than Python's default."""
    task = asyncio.current_task()
    ours = task is not None and threading.current_thread() is threading.main_thread()
    if ours:
        _forget_stale()
        handler = signal.getsignal(signal.SIGINT)
        ours = handler is signal.default_int_handler or (handler is _on_sigint and bool(_open))
    if not ours or task is None:
        yield
        return
    if signal.getsignal(signal.SIGINT) is not _on_sigint:
        signal.signal(signal.SIGINT, _on_sigint)
    loop = asyncio.get_running_loop()
    entry = (task, loop)
    _open.append(entry)
    try:
        yield
    except asyncio.CancelledError:
        stop = _stop
        if stop is not None and task in stop.tasks:
            await stop.settle(task, loop)
            # What the awaiter (the interrupted cell, a gather) sees when its loop runs again.
            raise asyncio.CancelledError(STOPPED) from None
        raise
    else:
        stop = _stop
        if stop is not None and task in stop.tasks and not stop.abandoned:
            await stop.settle(task, loop)  # it ended as the Ctrl-C came: the interrupt is still the user's
    finally:
        if entry in _open:
            _open.remove(entry)
        _forget_stale()
