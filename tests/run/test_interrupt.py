"""Ctrl-C / Jupyter's stop button / cancelling ``amap``: what was paid is kept.

The first interrupt stops sending and lets the requests in flight finish, so every
answer the endpoint billed is committed (billed == committed, by the loopback server's
counters) and a rerun sends only what was never sent. A second interrupt abandons the
requests still in flight at once (two of them hang forever here).

A subprocess gets SIGINT, as a terminal's Ctrl-C or Jupyter's stop button sends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import pandas_llm
from helpers import check_counts
from pandas_llm._store.store import Store
from pandas_llm.testing import LLMServer

ROWS = 300
CONCURRENCY = 8

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd, pandas_llm
    base_url, cache = sys.argv[1], sys.argv[2]
    df = pd.DataFrame({"t": [f"row {i}" for i in range(%d)]})
    try:
        df.llm.map("Say {t}", base_url=base_url, api_key="x", cache=cache, concurrency=%d, progress=True)
    except KeyboardInterrupt:
        report = pandas_llm.last_run()
        stats = report.stats
        print("OUTCOME", stats.outcome, stats.sent_done, stats.unsent["stopped"], stats.cut_short["stopped"],
              stats.unique == stats.cached_unique + stats.sent + stats.shared + stats.not_sent, flush=True)
        print("SUMMARY", report.summary(), flush=True)
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


def run_script(script: str, *args: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(pandas_llm.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def start(srv: LLMServer, cache: Path) -> subprocess.Popen:
    return run_script(SCRIPT, srv.base_url, str(cache))


def sigint_once(proc: subprocess.Popen, cache: Path, *, answers: int = 16, timeout: float = 60,
                ready: Callable[[], bool] = lambda: True) -> tuple[str, str]:  # fmt: skip
    """One SIGINT once ``answers`` are committed to ``cache`` and ``ready()``; the process's output when it ends."""
    try:
        wait_for_answers(proc, cache, answers)
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()


def wait_for_answers(proc: subprocess.Popen, cache: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while committed(cache) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.02)


def rerun(df: pd.DataFrame, srv: LLMServer, cache: Path) -> pd.Series:
    return df.llm.map("Say {t}", base_url=srv.base_url, api_key="x", cache=cache, concurrency=32, progress=False)


def test_one_sigint_finishes_the_requests_in_flight_and_keeps_every_paid_answer(tmp_path):
    cache = tmp_path / "cache.sqlite"
    df = pd.DataFrame({"t": [f"row {i}" for i in range(ROWS)]})
    with LLMServer(latency=0.3) as srv:  # 8 requests in flight for 0.3 s each
        proc = start(srv, cache)
        out, err = sigint_once(proc, cache, timeout=30)
        assert proc.returncode == 130, err
        words = out.split()
        assert words[:2] == ["OUTCOME", "interrupted"], (out, err)
        answered, unsent, cut = int(words[2]), int(words[3]), int(words[4])
        assert unsent > 0 and cut == 0 and answered + unsent == ROWS and words[5] == "True"
        assert f"{answered} requests sent ({answered} ok), {unsent} not sent (stopped)" in out
        assert "finishing" in err and "pandas-llm (interrupted)" in err  # the bar said what it was doing
        kept = committed(cache)
        assert kept == answered == srv.completed  # every billed answer is on disk
        before = srv.completed

        out = rerun(df, srv, cache)
        assert out.tolist() == [f"echo: Say row {i}" for i in range(ROWS)]
        assert srv.completed - before == ROWS - kept  # the rerun sends only what was never sent
        assert set(srv.prompt_counts.values()) == {1}  # nothing paid twice


def test_a_second_sigint_abandons_the_requests_in_flight(tmp_path):
    cache = tmp_path / "cache.sqlite"
    df = pd.DataFrame({"t": [f"row {i}" for i in range(ROWS)]})
    with LLMServer(latency=0.05) as srv:
        # two requests that never get an answer: in flight when the interrupts come
        srv.inject(hang=True, match="Say row 20", times=1)
        srv.inject(hang=True, match="Say row 21", times=1)
        proc = start(srv, cache)
        try:
            wait_for_answers(proc, cache, 40)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert proc.poll() is None  # still waiting for the two hung requests (timeout 60 s)
            proc.send_signal(signal.SIGINT)
            sent_at = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent_at
        finally:
            proc.kill()
            proc.wait()
        print(f"second SIGINT to exit: {took:.2f} s")
        assert took < 5, took  # a hang guard, not a speed target: 60 s timeout or 10 s settle limit otherwise
        assert proc.returncode == 130, err
        words = out.split()
        assert words[:2] == ["OUTCOME", "interrupted"], (out, err)
        answered, unsent, cut = int(words[2]), int(words[3]), int(words[4])
        # the two hung requests were sent and abandoned: cut short, not "never sent"
        assert cut == 2 and answered + unsent + cut == ROWS and words[5] == "True"
        assert f"{answered + 2} requests sent ({answered} ok, 2 cut short by the stop" in out
        kept = committed(cache)
        assert kept == answered
        assert srv.completed == kept  # the hung ones were never answered, so never billed
        before = srv.completed

        out = rerun(df, srv, cache)
        assert out.tolist() == [f"echo: Say row {i}" for i in range(ROWS)]
        assert srv.completed - before == ROWS - kept
        assert set(srv.prompt_counts.values()) == {1}
        counts = srv.prompt_counts
        assert counts["Say row 20"] == counts["Say row 21"] == 1  # sent again, answered once


def test_cancelling_amap_once_keeps_the_answers_in_flight(tmp_path):
    cache = tmp_path / "cache.sqlite"
    df = pd.DataFrame({"t": [f"row {i}" for i in range(ROWS)]})

    async def main(srv: LLMServer) -> None:
        task = asyncio.ensure_future(
            df.llm.amap(
                "Say {t}", base_url=srv.base_url, api_key="x", cache=cache, concurrency=CONCURRENCY, progress=False
            )
        )
        while srv.completed < 16:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.1)
        assert not task.done()  # finishing the requests in flight (0.3 s each)
        assert pandas_llm.last_run().stats.stopping
        with pytest.raises(asyncio.CancelledError):
            await task

    with LLMServer(latency=0.3) as srv:
        asyncio.run(main(srv))
        stats = check_counts(pandas_llm.last_run())
        assert stats.outcome == "interrupted" and stats.in_flight == 0
        assert stats.unsent["stopped"] == ROWS - stats.ok and not stats.cut_short
        assert committed(cache) == stats.ok == srv.completed  # billed == committed
        before = srv.completed
        rerun(df, srv, cache)
        assert srv.completed - before == ROWS - stats.ok
        assert set(srv.prompt_counts.values()) == {1}


# --- Ctrl-C on `await df.llm.amap(...)` in the main thread's own loop (terminal IPython, run_until_complete) ---

AWAITED = {
    # a script: the interrupt leaves run_until_complete; the same loop runs again later
    "run_until_complete": """
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(df.llm.amap("Say {t}", **opts))
        except KeyboardInterrupt:
            report()
        loop.run_until_complete(asyncio.sleep(1.5))  # the loop runs again: nothing more may be sent
    """,
    # terminal IPython: a cell awaits at the top level; the next cell awaits something else
    "ipython": """
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        shell.user_ns.update(df=df, opts=opts, report=report, asyncio=asyncio)
        result = shell.run_cell("out = await df.llm.amap('Say {t}', **opts)")
        assert isinstance(result.error_in_exec, KeyboardInterrupt), result
        report()
        assert shell.run_cell("await asyncio.sleep(1.5)").success
    """,
}


@pytest.mark.parametrize("where", sorted(AWAITED))
def test_one_sigint_on_an_awaited_amap_stops_it_and_nothing_is_sent_when_the_loop_runs_again(tmp_path, where):
    cache = tmp_path / "cache.sqlite"
    script = (
        textwrap.dedent(
            """
        import asyncio, signal, sys
        import pandas as pd, pandas_llm
        base_url, cache = sys.argv[1], sys.argv[2]
        df = pd.DataFrame({"t": [f"row {i}" for i in range(%d)]})
        opts = dict(base_url=base_url, api_key="x", cache=cache, concurrency=%d, progress=False)
        def report():
            stats = pandas_llm.last_run().stats
            print("OUTCOME", stats.outcome, stats.in_flight, stats.ok, stats.unsent["stopped"], flush=True)
        """
            % (ROWS, CONCURRENCY)
        )
        + textwrap.dedent(AWAITED[where])
        + textwrap.dedent(
            """
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
        print("AFTER", flush=True)
        """
        )
    )
    with LLMServer(latency=0.3) as srv:  # 8 requests in flight for 0.3 s each
        proc = run_script(script, srv.base_url, str(cache))
        out, err = sigint_once(proc, cache)
        assert proc.returncode == 0, err
        words = out[out.index("OUTCOME") :].split()  # after IPython's traceback of the KeyboardInterrupt
        assert words[:3] == ["OUTCOME", "interrupted", "0"], (out, err)  # stopped, nothing left in flight
        ok, unsent = int(words[3]), int(words[4])
        assert unsent > 0 and ok + unsent == ROWS
        assert words[-1] == "AFTER"
        if where == "ipython":  # the interrupted cell ends when the next one runs: what it says
            assert "stopped by Ctrl-C" in out[out.index("OUTCOME") :]
        assert committed(cache) == ok == srv.completed  # every billed answer on disk, none sent after the stop


def test_the_handler_is_ours_only_while_a_verb_is_awaited_under_the_default_one():
    from pandas_llm._run import interrupt

    seen = []

    async def verb() -> None:
        async with interrupt.sigint_stops():
            seen.append(signal.getsignal(signal.SIGINT))
            async with interrupt.sigint_stops():  # two verbs at once (gather): one handler
                seen.append(signal.getsignal(signal.SIGINT))
            seen.append(signal.getsignal(signal.SIGINT))

    interrupt._forget_stale()  # a verb another test left paused in a loop it closed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(verb())
    finally:
        loop.close()
    assert seen == [interrupt._on_sigint] * 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    seen.clear()
    asyncio.run(verb())  # asyncio.run's own handler cancels the main task: left alone
    assert interrupt._on_sigint not in seen and len(seen) == 3


@pytest.mark.parametrize("sigints", [1, 2])
def test_a_sigint_ends_the_verb_cancelled_and_the_loop_with_one_keyboardinterrupt_never_raised_again(sigints):
    from pandas_llm._run import interrupt

    tasks = []

    async def verb(started: asyncio.Event) -> None:
        async with interrupt.sigint_stops():
            started.set()
            await asyncio.sleep(30)

    async def main() -> None:
        started = asyncio.Event()
        tasks.append(asyncio.ensure_future(verb(started)))
        await started.wait()
        interrupt._on_sigint(signal.SIGINT, None)  # the first: the verb is cancelled, nothing raised here
        if sigints == 2:
            with pytest.raises(KeyboardInterrupt):  # the second: at once
                interrupt._on_sigint(signal.SIGINT, None)
        await asyncio.wait([tasks[0]])

    loop = asyncio.new_event_loop()
    try:
        if sigints == 1:
            with pytest.raises(KeyboardInterrupt):  # out of the loop once the verb has settled
                loop.run_until_complete(main())
        else:
            loop.run_until_complete(main())  # raised already, by the second
        loop.run_until_complete(asyncio.sleep(0.1))  # the loop runs again: nothing raises it again
    finally:
        loop.close()
    assert tasks[0].cancelled()  # the verb ends cancelled: only a callback of the loop raised KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_one_sigint_on_gathered_amaps_keeps_every_paid_answer_of_each_and_raises_once(tmp_path):
    fast_cache, slow_cache = tmp_path / "fast.sqlite", tmp_path / "slow.sqlite"
    script = textwrap.dedent(
        """
        import asyncio, sys
        import pandas as pd, pandas_llm
        fast_url, slow_url, fast_cache, slow_cache = sys.argv[1:5]
        df = pd.DataFrame({"t": [f"row {i}" for i in range(%d)]})
        async def main():
            return await asyncio.gather(
                df.llm.amap("{t}", base_url=fast_url, api_key="x", cache=fast_cache, concurrency=8, progress=False),
                df.llm.amap("{t}", base_url=slow_url, api_key="x", cache=slow_cache, concurrency=8, progress=False))
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        loop.run_until_complete(asyncio.sleep(2.5))  # the loop runs again: no KeyboardInterrupt, nothing sent
        print("AFTER", flush=True)
        """
        % ROWS
    )
    with LLMServer(latency=0.05) as fast, LLMServer(latency=3.0) as slow:
        proc = run_script(script, fast.base_url, slow.base_url, str(fast_cache), str(slow_cache))
        out, err = sigint_once(proc, fast_cache, ready=lambda: slow.completed == 8)  # in flight, 3 s each
        assert proc.returncode == 0, err
        assert out.split() == ["INTERRUPTED", "AFTER"], (out, err)
        assert committed(slow_cache) == slow.completed == 8  # the slow run's answers in flight were kept
        assert committed(fast_cache) == fast.completed < ROWS  # and the fast one's, which stopped too
