"""The limiter against three shapes of rate-limit window, with and without random 429s.

Each case starts the loopback server (``python -m pandas_llm.testing``) in its own
process with one window shape, then runs ``df.llm.map`` in this process (a first call:
nothing known about the limits) and prints the wall time against the ideal, the 429s
(at the limit, and injected at random with honest headers), and the rows answered.

The random faults are the server's draws from a seeded generator, so one seed's run is
one sample: the tail of a run (the last rows, few in flight) meets whatever cluster of
faults that seed's sequence holds there, and one row may draw several in a row. A case
with faults is therefore run once per seed (``--seeds``, default 1,2,3), each printed,
then the median and the worst; a case without faults runs once. ``x clean`` is the wall
time over that of the same window without faults (when it ran).

    python benchmarks/ratelimit_windows.py            # every case (~5 min)
    python benchmarks/ratelimit_windows.py --quick    # fewer rows (~2 min)
    python benchmarks/ratelimit_windows.py -c plain -c plain+429 --seeds 1,2,3,4,5,6

Shapes: ``plain`` (1,200 RPM over a plain 60-s window; headers ``1200`` / ``1199`` /
reset ``50ms``: the reset is the refill time of what is used, small although the
window is a minute), ``quantized`` (6,000 RPM enforced per wall-clock second, 100 a
second, while the headers report the minute), ``bucket`` (a token bucket of 1,200
requests refilled at 20 a second). ``+429``: 5% random 429s whose headers show room
left; ``+chaos``: 5% random 429s and 8% HTTP 500s.

Ideal: ``plain`` allows every row at once, so rounds of ``concurrency`` requests at the
server's latency; ``quantized`` is rows / 100 a second; ``bucket`` is the rows beyond the
bucket at 20 a second (plus one latency).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass, field

import pandas as pd

TEMPLATE = "Summarise in five words: {text}"


@dataclass
class Case:
    name: str
    rows: int
    concurrency: int
    latency: float  # seconds
    rpm: int
    window: float = 60.0
    kind: str = "sliding"
    reset: str = "window"
    errors: dict = field(default_factory=dict)

    def ideal(self) -> float:
        if self.kind == "quantized":
            return self.rows / (self.rpm / 60.0)
        rounds = math.ceil(self.rows / self.concurrency) * self.latency
        if self.kind == "bucket":
            return max(rounds, (self.rows - self.rpm) / (self.rpm / 60.0) + self.latency)
        return rounds


def cases(quick: bool) -> dict[str, Case]:
    base = {
        "plain": Case("plain", 600, 50, 0.2, 1200, reset="refill"),
        "quantized": Case("quantized", 600 if quick else 1500, 200, 0.05, 6000, window=1.0, kind="quantized"),
        "bucket": Case("bucket", 1500 if quick else 1800, 50, 0.2, 1200, kind="bucket"),
    }
    out = {}
    for name, c in base.items():
        out[name] = c
        out[name + "+429"] = Case(**{**c.__dict__, "name": name + "+429", "errors": {429: 0.05}})
    out["plain+chaos"] = Case(**{**base["plain"].__dict__, "name": "plain+chaos", "errors": {429: 0.05, 500: 0.08}})
    return out


def _pin(cpu: int):
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {cpu % os.cpu_count()})

    return pin


def run(case: Case, seed: int = 1) -> dict:
    cmd = [
        sys.executable, "-m", "pandas_llm.testing", "--latency-ms", str(case.latency * 1000), "--rpm", str(case.rpm),
        "--window", str(case.window), "--limit-kind", case.kind, "--limit-reset", case.reset, "--seed", str(seed),
    ]  # fmt: skip
    for status, rate in case.errors.items():
        cmd += ["--error-rate", f"{status}={rate}"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_pin(0))
    try:
        base_url = server.stdout.readline().strip()  # type: ignore[union-attr]
        df = pd.DataFrame({"text": [f"review {i}: fine" for i in range(case.rows)]})
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = df.llm.map(
                TEMPLATE, base_url=base_url, api_key="x", cache=False, progress=False, concurrency=case.concurrency
            )
        wall = time.monotonic() - t0
        with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_testing/stats") as r:
            srv = json.loads(r.read())
    finally:
        server.terminate()
        server.wait()
    import pandas_llm

    stats = pandas_llm.last_run().stats
    return dict(
        case=case.name, seed=seed, rows=case.rows, ok=int(out.notna().sum()), wall=wall, ideal=case.ideal(),
        limit_429=srv["rate_limited"], injected=srv["injected"], requests=srv["requests"],
        client_rate_limited=stats.rate_limited, client_overloaded=stats.overloaded,
    )  # fmt: skip


def _line(r: dict, clean: float | None) -> str:
    versus = f"{r['wall'] / clean:4.2f}x clean" if clean else " " * 10
    return (
        f"{r['case']:<15} seed {r['seed']:<3} rows {r['ok']:>5}/{r['rows']:<5} wall {r['wall']:6.2f} s {versus} "
        f"ideal {r['ideal']:6.2f} s ({r['ideal'] / r['wall']:4.0%} of ideal)  limit 429s {r['limit_429']:>4} "
        f"({r['limit_429'] / r['requests']:.1%} of requests)  injected {r['injected']:>4}  "
        f"client: {r['client_rate_limited']} rate_limited, {r['client_overloaded']} overloaded"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "-c", "--case", action="append", help="plain, quantized, bucket, each +429; plain+chaos (default all)"
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", default="1,2,3", help="the server's seeds for the cases with faults (default 1,2,3)")
    args = p.parse_args()
    import pandas_llm  # noqa: F401 - registers the accessor

    seeds = [int(s) for s in args.seeds.split(",")]
    all_cases = cases(args.quick)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU 0", flush=True)
    clean: dict[str, float] = {}
    for name in args.case or list(all_cases):
        case = all_cases[name]
        shape = name.split("+")[0]
        walls, answered = [], []
        for seed in seeds if case.errors else [1]:
            r = run(case, seed)
            if not case.errors:
                clean[shape] = r["wall"]
            walls.append(r["wall"])
            answered.append(r["ok"])
            print(_line(r, None if not case.errors else clean.get(shape)), flush=True)
        if len(walls) > 1:
            ratio = (
                f" ({statistics.median(walls) / clean[shape]:.2f}x / {max(walls) / clean[shape]:.2f}x clean)"
                if shape in clean
                else ""
            )
            print(
                f"{name:<15} over {len(walls)} seeds: wall median {statistics.median(walls):.2f} s, "
                f"worst {max(walls):.2f} s{ratio}; rows answered {min(answered)}-{max(answered)} of {case.rows}",
                flush=True,
            )


if __name__ == "__main__":
    main()
