"""Throughput, CPU, memory and rate-limit figures: pandas-llm beside the naive pattern.

Each scenario starts the loopback server (``python -m pandas_llm.testing``) in its own
process pinned to CPU 0, then runs every client in a fresh process pinned to CPU 1, one
after the other, against the same server. A client prints one JSON line of figures; the
server's own counters and CPU come from ``GET /_testing/stats``.

    python benchmarks/throughput.py                 # every scenario, full size (~6 min)
    python benchmarks/throughput.py --quick         # every scenario, small (~1 min)
    python benchmarks/throughput.py -s zero -s ratelimit --clients pandas-llm,naive

Scenarios (``-s``): ``zero`` (latency 0, concurrency 50, 5,000 rows), ``latency`` (100 ms,
concurrency 200, 5,000 rows), ``ratelimit`` (6,000 RPM in a 1 s window, 50 ms, 3,000 rows,
concurrency 200), ``memory`` (1M rows, latency 0), ``resume`` (1M rows all in the cache).
Clients: ``pandas-llm`` (a first call in a fresh process that never saw this server: limits
learned from headers, one round trip spent learning them), ``pandas-llm+restart`` (a first
call in a fresh process after an earlier process learned the limits: a restarted kernel),
``pandas-llm+warm`` (a second call in the process: limits known, loop thread running),
``pandas-llm+rpm`` (told ``rpm=``),
``naive`` (``AsyncOpenAI`` + semaphore + ``asyncio.gather``, default ``max_retries``),
``floor`` (a bare aiohttp loop: no templates, no cache, no retries).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TEMPLATE = "Summarise in five words: {text}"
MODEL = "gpt-4o-mini"


@dataclass
class Scenario:
    name: str
    rows: int
    concurrency: int
    latency_ms: float = 0.0
    rpm: int | None = None
    window: float = 60.0
    clients: tuple[str, ...] = ("pandas-llm", "naive")
    prefill: bool = False  # every row in the cache before the run
    extra: dict = field(default_factory=dict)


def scenarios(quick: bool) -> dict[str, Scenario]:
    k = 1_000_000
    return {
        "zero": Scenario(
            "zero", 2_000 if quick else 5_000, 50, clients=("pandas-llm", "pandas-llm+warm", "naive", "floor")
        ),
        "latency": Scenario(
            "latency",
            2_000 if quick else 5_000,
            200,
            latency_ms=100,
            clients=("pandas-llm", "pandas-llm+restart", "pandas-llm+warm", "naive", "floor"),
        ),
        "ratelimit": Scenario(
            "ratelimit",
            1_000 if quick else 3_000,
            200,
            latency_ms=50,
            rpm=6000,
            window=1.0,
            clients=("pandas-llm", "pandas-llm+restart", "pandas-llm+warm", "pandas-llm+rpm", "naive"),
        ),
        "memory": Scenario("memory", 100_000 if quick else k, 50, clients=("pandas-llm",)),
        "resume": Scenario("resume", 100_000 if quick else k, 50, clients=("pandas-llm",), prefill=True),
    }


# -- the server process ----------------------------------------------------------------


def _pin(cpu: int):
    def pin() -> None:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
            os.sched_setaffinity(0, {cpu % os.cpu_count()})

    return pin


class ServerProcess:
    def __init__(self, sc: Scenario, pythonpath: str | None = None):
        cmd = [sys.executable, "-m", "pandas_llm.testing", "--latency-ms", str(sc.latency_ms)]
        if sc.rpm:
            cmd += ["--rpm", str(sc.rpm), "--window", str(sc.window)]
        env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_pin(0), env=env)
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError("the loopback server did not start")

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/_testing/stats") as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# -- the driver ------------------------------------------------------------------------


def run_client(name: str, sc: Scenario, base_url: str, cache: str | None) -> dict:
    """Run one client in a fresh process pinned to CPU 1; pandas-llm's user cache folder
    (learned limits) is a new empty one, shared with an earlier process for ``+restart``."""
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, XDG_CACHE_HOME=home)
        if name.endswith("+restart"):
            learn = (
                "import pandas as pd, pandas_llm; pd.DataFrame({'text': ['warm-up']}).llm.map("
                f"'{{text}}', model={MODEL!r}, base_url={base_url!r}, api_key='x', cache=False, progress=False)"
            )
            subprocess.run([sys.executable, "-c", learn], env=env, check=True)
        return _run_client(name, sc, base_url, cache, env)


def _run_client(name: str, sc: Scenario, base_url: str, cache: str | None, env: dict) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--client", name, "--base-url", base_url,
        "--rows", str(sc.rows), "--concurrency", str(sc.concurrency),
    ]  # fmt: skip
    if sc.rpm and name == "pandas-llm+rpm":
        cmd += ["--rpm", str(sc.rpm)]
    if cache:
        cmd += ["--cache", cache]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=_pin(1), env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"client {name} failed (exit {out.returncode}): {out.stdout[-2000:]}")
    return json.loads(lines[-1])


def run_scenario(sc: Scenario, clients: list[str] | None, server_path: str | None = None) -> list[dict]:
    rows = []
    server = ServerProcess(sc, server_path)
    try:
        for name in clients or sc.clients:
            if name not in sc.clients and clients is None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                cache = os.path.join(tmp, "cache.sqlite") if name.startswith("pandas-llm") else None
                if sc.prefill and cache:
                    from _prefill import prefill

                    prefill(cache, sc.rows, TEMPLATE, MODEL, server.base_url)
                time.sleep(sc.window if sc.rpm else 0)  # let the server's window empty
                before = server.stats()
                res = run_client(name, sc, server.base_url, cache)
                after = server.stats()
            sent = after["requests"] - before["requests"]
            res.update(
                scenario=sc.name,
                client=name,
                http_requests=sent,
                http_429=after["rate_limited"] - before["rate_limited"],
                server_us_per_req=(after["cpu_seconds"] - before["cpu_seconds"]) / sent * 1e6 if sent else None,
            )
            if sc.rpm:
                admitted = after["completed"] - before["completed"]
                res["limit_used"] = admitted / res["elapsed"] / (sc.rpm / 60)
            rows.append(res)
            print(_line(res), flush=True)
    finally:
        server.close()
    return rows


def _line(r: dict) -> str:
    parts = [
        f"{r['scenario']:<9} {r['client']:<18}",
        f"rows {r['ok']:>7}/{r['rows']:<7}",
        f"{r['rows_per_s']:>8.0f} rows/s",
        f"cpu {r['cpu_ms_per_row']:.3f} ms/row",
        f"peak RSS {r['peak_rss_mb']:.0f} MB",
        f"429s {r['http_429']}",
    ]
    if "frame_mb" in r and r["rows"] >= 100_000:
        parts.append(f"(frame {r['frame_mb']:.0f} MB, RSS before map {r['rss_before_mb']:.0f} MB)")
    if "limit_used" in r:
        parts.append(f"limit used {100 * r['limit_used']:.1f}%")
    if r.get("server_us_per_req"):
        parts.append(f"server {r['server_us_per_req']:.0f} us/req")
    return "  ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-s", "--scenario", action="append", help="zero, latency, ratelimit, memory, resume (default all)")
    p.add_argument("--quick", action="store_true", help="smaller row counts")
    p.add_argument("--clients", help="comma-separated client names (default: the scenario's)")
    p.add_argument("--rows", type=int, help="override the row count")
    p.add_argument("--json", help="also write every result to this file")
    p.add_argument("--server-pythonpath", help="PYTHONPATH for the server process only (compare clients on one server)")
    # client-process options (internal)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--rpm", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        from _clients import CLIENTS

        print(json.dumps(CLIENTS[args.client](args, TEMPLATE, MODEL)), flush=True)
        return
    all_sc = scenarios(args.quick)
    names = args.scenario or list(all_sc)
    clients = args.clients.split(",") if args.clients else None
    results = []
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU 0, client on CPU 1", flush=True)
    for name in names:
        sc = all_sc[name]
        if args.rows:
            sc.rows = args.rows
        results += run_scenario(sc, clients, args.server_pythonpath)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
