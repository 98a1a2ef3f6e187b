"""Nothing paid is lost: a run killed with SIGKILL resumes without paying twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pandas as pd

from pandas_llm._config import Settings
from pandas_llm._plan.requests import RequestBuilder
from pandas_llm.testing import LLMServer, answer_for

N = 2000

SCRIPT = textwrap.dedent(
    """
    import sys, pandas as pd, pandas_llm
    df = pd.DataFrame({"text": [f"row {i}" for i in range(%d)]})
    df.llm.map("Translate: {text}", base_url=sys.argv[1], api_key="k", cache=sys.argv[2],
               concurrency=8, progress=False)
    """
    % N
)


def committed_keys(path: str) -> set[bytes]:
    try:
        with closing(sqlite3.connect(path)) as conn:
            return {k for (k,) in conn.execute("SELECT key FROM results WHERE status = 'ok'")}
    except sqlite3.OperationalError:  # the child has created the file but not the table yet
        return set()


def test_sigkill_mid_run_then_rerun_pays_only_the_rest(tmp_path):
    cache = str(tmp_path / "c.sqlite")
    prompts = [f"Translate: row {i}" for i in range(N)]
    with LLMServer(latency=0.004) as srv:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, srv.base_url, cache])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if os.path.exists(cache) and len(committed_keys(cache)) >= N // 4:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done = committed_keys(cache)
        assert N // 4 <= len(done) < N, "the kill should land mid-run"
        before = srv.prompt_counts.copy()

        builder = RequestBuilder(Settings(base_url=srv.base_url))
        key_of = {p: builder.encode([{"role": "user", "content": p}])[0] for p in prompts}
        assert done <= set(key_of.values())

        srv.reset_counters()
        df = pd.DataFrame({"text": [f"row {i}" for i in range(N)]})
        out = df.llm.map("Translate: {text}", base_url=srv.base_url, api_key="k", cache=cache, progress=False)
        rerun = srv.prompt_counts

    # every row committed before the kill was not requested again
    assert not any(rerun[p] for p in prompts if key_of[p] in done)
    # every row not committed was requested exactly once in the rerun
    assert all(rerun[p] == 1 for p in prompts if key_of[p] not in done)
    assert sum(rerun.values()) == N - len(done)
    # nothing answered before the kill was answered twice except the few in flight at the kill
    assert sum(before.values()) - len(done) <= 8 + 256
    # and the result equals an uninterrupted run
    assert out.tolist() == [answer_for([{"role": "user", "content": p}], "gpt-4o-mini") for p in prompts]


def test_rerun_after_success_sends_nothing(server, opts):
    df = pd.DataFrame({"text": [f"r{i}" for i in range(300)]})
    first = df.llm.map("{text}", **opts)
    assert server.requests == 300
    second = df.llm.map("{text}", **opts)
    assert server.requests == 300
    pd.testing.assert_series_equal(first, second)


def test_changing_a_parameter_repays_only_what_it_changes(server, opts):
    df = pd.DataFrame({"text": ["a", "b"]})
    df.llm.map("{text}", **opts)
    df.llm.map("{text}", temperature=0.5, **opts)
    assert server.requests == 4
    other = pd.DataFrame({"text": ["b", "c"]}, index=[7, 8])
    other.llm.map("{text}", **opts)  # another frame reuses "b"
    assert server.requests == 5


def test_cache_false_always_asks(server, opts):
    df = pd.DataFrame({"text": ["a"]})
    df.llm.map("{text}", cache=False, **opts)
    df.llm.map("{text}", cache=False, **opts)
    assert server.requests == 2
    assert not os.path.exists(".pandas_llm")
