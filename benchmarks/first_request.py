"""Time from ``df.llm.map(...)`` to the first request written to the socket, by phase.

Starts the loopback server (100 ms latency) pinned to CPU 0, then runs each sample in a
fresh client process pinned to CPU 1 (5,000 rows, concurrency 200, progress=True, a cache
file in a temp dir, as ``throughput.py -s latency``). Each sample makes two calls in one
process, each on a fresh cache file: the first call of the process and a second one.
Figures are wall-clock marks, in ms since the call began, taken by wrapping the run's
steps (private names: this follows the code, it is not an API):

- ``store``, ``plan``: the cache file opened, the rows planned (caller's thread);
- ``loop``: the background loop thread running; ``claimed``: the first claims chunk taken;
- ``first_send``: the first request written; ``display``: the progress display started;
- ``first_answer``: the first answer read; ``end``: the call returned;
- ``gc``: ms spent in the garbage collector during the call (all threads).

    python benchmarks/first_request.py            # 7 samples, medians
    python benchmarks/first_request.py -n 5 --rows 5000 --concurrency 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MARKS = ("store", "plan", "loop", "claimed", "first_send", "display", "first_answer", "end", "gc")


def _client(args: argparse.Namespace) -> None:
    import gc

    from _clients import make_frame

    import pandas_llm  # noqa: F401
    import pandas_llm._backends.wire as wire
    import pandas_llm._run.loop as loop
    import pandas_llm._run.run as run
    import pandas_llm._store.leases as leases

    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, time.perf_counter())

    def after(owner, name, label):
        orig = getattr(owner, name)

        def wrapped(*a, **kw):
            out = orig(*a, **kw)
            mark(label)
            return out

        setattr(owner, name, wrapped)

    after(run, "Store", "store")
    after(run, "make_plan", "plan")
    after(loop, "_background_loop", "loop")
    after(leases.Claims, "_try_claim", "claimed")
    orig_observer = run.make_observer

    def make_observer(progress):
        obs = orig_observer(progress)
        after(obs, "start", "display")
        return obs

    run.make_observer = make_observer
    orig_send = wire._Conn.send

    def send(self, data):
        mark("first_send")
        fut = orig_send(self, data)
        fut.add_done_callback(lambda _: mark("first_answer"))
        return fut

    wire._Conn.send = send
    collecting: list[float] = []
    spent: list[float] = []

    def on_gc(phase, info):
        if phase == "start":
            collecting.append(time.perf_counter())
        elif collecting:
            spent.append(time.perf_counter() - collecting.pop())

    gc.callbacks.append(on_gc)
    df = make_frame(args.rows)
    out = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            marks.clear()
            spent.clear()
            t0 = time.perf_counter()
            res = df.llm.map(
                "Summarise in five words: {text}", model="gpt-4o-mini", base_url=args.base_url, api_key="x",
                concurrency=args.concurrency, cache=os.path.join(tmp, "c.sqlite"), progress=True,
            )  # fmt: skip
            mark("end")
            assert res.notna().all()
            out.append({k: (v - t0) * 1e3 for k, v in marks.items()} | {"gc": sum(spent) * 1e3})
    print(json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=7, help="samples (one process each)")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--latency-ms", type=float, default=100)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        _client(args)
        return
    from throughput import _pin

    server = subprocess.Popen(
        [sys.executable, "-m", "pandas_llm.testing", "--latency-ms", str(args.latency_ms)],
        stdout=subprocess.PIPE, text=True, preexec_fn=_pin(0),
    )  # fmt: skip
    base_url = server.stdout.readline().strip()
    samples: list[list[dict]] = []
    try:
        for _ in range(args.n):
            cmd = [sys.executable, __file__, "--client", "--base-url", base_url, "--rows", str(args.rows),
                   "--concurrency", str(args.concurrency)]  # fmt: skip
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
            samples.append(json.loads(r.stdout.strip().splitlines()[-1]))
    finally:
        server.terminate()
        server.wait()
    for call, name in enumerate(("first call", "second call")):
        cells = []
        for m in MARKS:
            vals = [s[call][m] for s in samples if m in s[call]]
            if vals:
                cells.append(f"{m} {statistics.median(vals):.1f}")
        rows = args.rows / (statistics.median(s[call]["end"] for s in samples) / 1e3)
        print(f"{name:<12} ms (median of {len(samples)}): " + ", ".join(cells) + f"  -> {rows:,.0f} rows/s")


if __name__ == "__main__":
    main()
