"""Ctrl-C / Jupyter's stop button: the run stops at once, keeps every answer, and a rerun resumes.

A subprocess runs a slow map (two of its requests hang forever) and gets SIGINT, as a
terminal's Ctrl-C or Jupyter's stop button sends; the loopback server's counters prove
the rerun sends only what was not answered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

import pandas_llm
from pandas_llm.cache import Store
from pandas_llm.testing import LLMServer

ROWS = 300
CONCURRENCY = 4

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd, pandas_llm
    base_url, cache = sys.argv[1], sys.argv[2]
    df = pd.DataFrame({"t": [f"row {i}" for i in range(%d)]})
    try:
        df.llm.map("Say {t}", base_url=base_url, api_key="x", cache=cache, concurrency=%d, progress=True)
    except KeyboardInterrupt:
        stats = pandas_llm.last_run().stats
        print("OUTCOME", stats.outcome, stats.sent_done, stats.unsent["stopped"], flush=True)
        sys.exit(130)
    print("OUTCOME finished", flush=True)
    """
    % (ROWS, CONCURRENCY)
)


def committed(path: Path) -> int:
    if not path.exists():
        return 0
    with Store(path) as store:
        return store.count("ok")


def test_sigint_stops_at_once_keeps_answers_and_the_rerun_resumes(tmp_path):
    cache = tmp_path / "cache.sqlite"
    df = pd.DataFrame({"t": [f"row {i}" for i in range(ROWS)]})
    with LLMServer(latency=0.05) as srv:
        # two requests that never get an answer: in flight when the interrupt comes
        srv.inject(hang=True, match="Say row 20", times=1)
        srv.inject(hang=True, match="Say row 21", times=1)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(pandas_llm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, srv.base_url, str(cache)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while committed(cache) < 40:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            sent_at = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent_at
        finally:
            proc.kill()
            proc.wait()
        print(f"SIGINT to exit: {took:.2f} s")
        # a hang guard, not a speed target: without cancelling the two hung requests the
        # process would wait for them (the request timeout is 60 s) or the 10 s settle limit
        assert took < 5, took
        assert proc.returncode == 130, err
        words = out.split()
        assert words[:2] == ["OUTCOME", "interrupted"], (out, err)
        answered, unsent = int(words[2]), int(words[3])
        assert 40 <= answered < ROWS and unsent > 0
        assert "pandas-llm (interrupted)" in err  # the bar says so

        kept = committed(cache)
        assert kept == answered  # everything answered was committed before the process ended
        before = srv.prompt_counts
        requests_before = srv.completed

        out = df.llm.map("Say {t}", base_url=srv.base_url, api_key="x", cache=cache, concurrency=32, progress=False)
        assert out.tolist() == [f"echo: Say row {i}" for i in range(ROWS)]
        report = pandas_llm.last_run()
        after = srv.prompt_counts

    from_cache = report.details["from_cache"].to_numpy()
    assert from_cache.sum() == kept
    assert srv.completed - requests_before == ROWS - kept  # only the missing rows were sent
    for i in range(ROWS):
        prompt = f"Say row {i}"
        if from_cache[i]:
            assert before[prompt] == 1 and after[prompt] == 1, prompt  # paid once, never re-sent
        else:
            assert after[prompt] - before[prompt] == 1, prompt
    # the only answers paid twice are those in flight at the interrupt (billed, never received)
    twice = [p for p, n in after.items() if n > 1]
    assert len(twice) <= CONCURRENCY
    assert after["Say row 20"] == after["Say row 21"] == 1  # the hung ones: never answered, sent again
