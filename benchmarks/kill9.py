"""kill -9 during sending: how many answers are paid twice, against the physical minimum.

    python benchmarks/kill9.py [--kills 30] [--rows 6000] [--concurrency 16] [--latency 0.02]

A child process maps a frame against the loopback server (in this process) with a
cache file; after a random number of requests it gets SIGKILL; a new child resumes,
and so on. Per kill, the answers paid twice are those the server billed during that
child's life (it counts a request when it answers it) that never reached the cache:
the next child sends them again. The physical minimum is the requests in flight at the
kill: billed, but not yet answered by the server at that instant (``concurrency`` at
most). The rest ("extra") are answers the server had already written when the kill
came: in the kernel's buffers, waiting for the client's loop to read them, or read
and not yet committed (the window the README's "Resumable" bullet bounds). Prints the
totals and the worst kill.

On a loaded machine most of the extra is the client's loop being late to read what
the server wrote, which no commit policy can shrink; so the script also measures, in
this process, the time from an answer reaching the engine to its commit (median, 99th
percentile, max): the window the engine itself is responsible for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time

import pandas_llm
from pandas_llm.testing import LLMServer

CHILD = textwrap.dedent(
    """
    import sys
    import pandas as pd, pandas_llm
    base_url, cache, rows, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    df = pd.DataFrame({"t": [f"row {i}" for i in range(rows)]})
    print("READY", flush=True)
    df.llm.map("Say {t}", base_url=base_url, api_key="x", cache=cache, concurrency=concurrency, progress=False)
    """
)


def committed(path: str) -> int:
    if not os.path.exists(path):
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM results WHERE status = 'ok'").fetchone()[0]
    finally:
        conn.close()


class CountingServer(LLMServer):
    """The loopback server, also counting the answers it has written (``written``)."""

    written = 0

    def _chat(self, request):  # type: ignore[no-untyped-def]
        resp = super()._chat(request)
        if isinstance(resp, asyncio.Future):
            resp.add_done_callback(self._wrote)
        else:
            self._wrote(None)
        return resp

    def _wrote(self, _: object) -> None:
        with self._lock:
            self.written += 1


def commit_window(rows: int, concurrency: int, latency: float) -> list[float]:
    """Seconds from each answer reaching the engine to its commit, over one in-process map."""
    import pandas as pd

    from pandas_llm._run import engine as scheduler

    stamps: dict[bytes, float] = {}
    delays: list[float] = []
    record, count = scheduler.Engine._record, scheduler.Engine._count

    def stamped_record(self, key, *args):  # type: ignore[no-untyped-def]
        stamps[key] = time.perf_counter()
        return record(self, key, *args)

    def timed_count(self, batch, **kw):  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        delays.extend(now - stamps.pop(r.key) for _, r in batch if r.key in stamps)
        return count(self, batch, **kw)

    scheduler.Engine._record, scheduler.Engine._count = stamped_record, timed_count  # type: ignore[method-assign]
    try:
        with LLMServer(latency=latency) as srv, tempfile.TemporaryDirectory() as tmp:
            df = pd.DataFrame({"t": [f"row {i}" for i in range(rows)]})
            df.llm.map("Say {t}", base_url=srv.base_url, api_key="x", cache=os.path.join(tmp, "c.sqlite"),
                       concurrency=concurrency, progress=False)  # fmt: skip
    finally:
        scheduler.Engine._record, scheduler.Engine._count = record, count  # type: ignore[method-assign]
    return sorted(delays)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds the server takes per answer")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    here = os.path.dirname(os.path.dirname(os.path.abspath(pandas_llm.__file__)))  # the children run this copy
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    per_kill: list[int] = []
    in_flight: list[int] = []
    with CountingServer(latency=args.latency) as srv, tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache.sqlite")
        while len(per_kill) < args.kills:
            billed0, kept0 = srv.completed, committed(cache)
            if kept0 >= args.rows:
                break
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, srv.base_url, cache, str(args.rows), str(args.concurrency)],
                env=env, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            child.stdout.readline()  # imports done
            target = srv.completed + rng.randint(2 * args.concurrency, 400)
            while srv.completed < target and child.poll() is None:
                time.sleep(0.0005)
            if child.poll() is not None:
                break  # the frame finished before this kill
            with srv._lock:
                os.kill(child.pid, signal.SIGKILL)
                in_flight.append(srv.completed - srv.written)  # billed, not yet answered
            child.wait()
            time.sleep(args.latency * 3)  # the server answers what it had (to a dead socket): billed
            per_kill.append((srv.completed - billed0) - (committed(cache) - kept0))
    kills = len(per_kill)
    twice = sum(per_kill)
    minimum = sum(in_flight)
    extra = [t - m for t, m in zip(per_kill, in_flight)]
    print(
        f"rows {args.rows}, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, {kills} kills during sending"
    )
    print(f"answers paid twice: {twice}; physical minimum (billed, not yet answered at the kills): {minimum}")
    if minimum:
        print(f"extra (answered before the kill, not on disk): {sum(extra)} = {100 * sum(extra) / minimum:+.1f}% of the minimum, "
              f"{sum(extra) / kills:.2f} per kill; worst kill: {max(extra)} extra")  # fmt: skip
    window = commit_window(min(args.rows, 4000), args.concurrency, args.latency)
    if window:
        pick = lambda q: 1000 * window[min(len(window) - 1, int(q * len(window)))]  # noqa: E731
        print(f"answer received -> committed, in process: median {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, "
              f"max {1000 * window[-1]:.2f} ms over {len(window)} answers")  # fmt: skip


if __name__ == "__main__":
    main()
