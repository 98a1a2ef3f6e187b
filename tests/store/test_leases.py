"""Two processes on one sidecar do not pay twice: claims (leases.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

import pandas_llm
from helpers import ROOT
from pandas_llm._store import leases
from pandas_llm._store.store import Store

CHILD = """
import sys, pandas as pd, pandas_llm
base_url, path, go = sys.argv[1], sys.argv[2], float(sys.argv[3])
df = pd.DataFrame({"text": [f"row {i}" for i in range(2000)]})
import time
time.sleep(max(0.0, go - time.time()))  # both start together
out = df.llm.map("Say: {text}", base_url=base_url, api_key="x", cache=path, progress=False, concurrency=16)
assert out.tolist() == [f"echo: Say: row {i}" for i in range(2000)], "wrong rows"
"""


def test_two_processes_started_together_pay_each_request_about_once(server, tmp_path):
    server.latency = 0.005
    path = str(tmp_path / "shared.sqlite")
    go = str(time.time() + 1.5)
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, server.base_url, path, go], env=env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    counts = server.prompt_counts
    assert len(counts) == 2000
    paid_twice = sum(n - 1 for n in counts.values() if n > 1)
    assert paid_twice <= 2 * 16, paid_twice
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0  # every claim dropped


PACKED_CHILD = """
import sys, time, pandas as pd, pandas_llm
base_url, path, go = sys.argv[1], sys.argv[2], float(sys.argv[3])
df = pd.DataFrame({"text": [f"ticket {i}" for i in range(1000)]})
time.sleep(max(0.0, go - time.time()))  # both start together
out = df.llm.classify("{text}", labels=["billing", "bug", "other"], rows_per_request=5, base_url=base_url,
                      api_key="x", cache=path, progress=False, concurrency=8)
assert out.notna().all(), "rows without a label"
"""


def test_two_packed_runs_started_together_pay_each_pack_about_once(server, tmp_path):
    server.latency = 0.005
    path = str(tmp_path / "shared.sqlite")
    go = str(time.time() + 1.5)
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", PACKED_CHILD, server.base_url, path, go], env=env)
             for _ in range(2)]  # fmt: skip
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    counts = server.prompt_counts
    assert len(counts) == 200  # 1,000 rows, 5 a request
    paid_twice = sum(n - 1 for n in counts.values() if n > 1)
    assert paid_twice <= 2 * 8, paid_twice
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def key_of(server, text: str, tmp_path) -> bytes:
    scratch = str(tmp_path / "scratch.sqlite")
    pd.Series([text]).llm.map("Say: {}", base_url=server.base_url, api_key="x", cache=scratch, progress=False)
    with sqlite3.connect(scratch) as conn:
        (key,) = conn.execute("SELECT key FROM results").fetchone()
    server.reset_counters()
    return key


def claim(path: str, key: bytes, expires_in: float) -> None:
    with Store(path) as store:
        store.conn.execute("INSERT INTO leases VALUES (?, 'other-host:1:x', ?)", (key, time.time() + expires_in))


def test_a_live_claim_is_waited_for_and_its_answer_taken_from_the_cache(server, opts, tmp_path):
    path = str(tmp_path / "cache.sqlite")
    key = key_of(server, "a", tmp_path)
    claim(path, key, 30)

    def the_other_process_answers() -> None:
        time.sleep(0.3)
        with Store(path) as store:
            store.write([pandas_llm._store.store.Record(key, "ok", "from the other process")])
            store.conn.execute("DELETE FROM leases")

    other = threading.Thread(target=the_other_process_answers)
    other.start()
    out = pd.Series(["a", "b"]).llm.map("Say: {}", cache=path, **opts)
    other.join()
    assert out.tolist() == ["from the other process", "echo: Say: b"]
    assert server.count("Say: a") == 0 and server.count("Say: b") == 1
    stats = pandas_llm.last_run().stats
    assert (stats.cached, stats.to_send, stats.sent_done) == (1, 1, 1)


def test_a_claim_that_lapses_without_an_answer_is_taken_over(server, opts, tmp_path, monkeypatch):
    path = str(tmp_path / "cache.sqlite")
    key = key_of(server, "a", tmp_path)
    claim(path, key, 0.3)  # its process died: the claim is not renewed
    out = pd.Series(["a", "b"]).llm.map("Say: {}", cache=path, **opts)
    assert out.tolist() == ["echo: Say: a", "echo: Say: b"]
    assert server.count("Say: a") == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_an_expired_claim_is_taken_over_at_once(server, opts, tmp_path):
    path = str(tmp_path / "cache.sqlite")
    key = key_of(server, "a", tmp_path)
    claim(path, key, -1)
    out = pd.Series(["a"]).llm.map("Say: {}", cache=path, **opts)
    assert out.tolist() == ["echo: Say: a"] and server.count("Say: a") == 1


def test_claims_are_renewed_while_the_run_lasts(tmp_path):
    with Store(str(tmp_path / "c.sqlite")) as store:
        t = [1000.0]
        claims = leases.Claims(store, lambda u, r: None, clock=lambda: t[0])
        assert [j[0] for j in claims.jobs([(0, b"k" * 32, b"{}")])] == [0]
        t[0] += leases.TTL - 1
        claims.renew()
        (expires,) = store.conn.execute("SELECT expires FROM leases").fetchone()
        assert expires == t[0] + leases.TTL
        claims.settled(b"k" * 32)
        claims.renew()
        assert store.conn.execute("SELECT count(*) FROM leases").fetchone()[0] == 0


def test_a_cache_on_a_network_filesystem_is_warned_about(server, opts, tmp_path, monkeypatch):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path / 'nfs'} nfs4 rw 0 0\n")
    monkeypatch.setattr(leases, "MOUNTS", str(mounts))
    assert leases.filesystem_of(str(tmp_path / "nfs" / "c.sqlite")) == "nfs4"
    assert leases.filesystem_of(str(tmp_path / "local.sqlite")) == "ext4"
    with pytest.warns(leases.NetworkFilesystemWarning, match="network filesystem"):
        pd.Series(["a"]).llm.map("Say: {}", cache=str(tmp_path / "nfs" / "c.sqlite"), **opts)
    pd.Series(["b"]).llm.map("Say: {}", cache=str(tmp_path / "local.sqlite"), **opts)  # no warning


def test_the_claims_of_a_dead_process_of_this_host_are_taken_over_at_once(server, opts, tmp_path):
    import socket

    path = str(tmp_path / "cache.sqlite")
    key = key_of(server, "a", tmp_path)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)  # it has exited
    with Store(path) as store:
        store.conn.execute(
            "INSERT INTO leases VALUES (?, ?, ?)", (key, f"{socket.gethostname()}:{dead_pid}:x", time.time() + 60)
        )
    started = time.monotonic()
    out = pd.Series(["a"]).llm.map("Say: {}", cache=path, **opts)
    assert out.tolist() == ["echo: Say: a"] and server.count("Say: a") == 1
    assert time.monotonic() - started < 30  # not after the claim's 60 s
