"""The README's first command: the demo runs, and its second pass is served from the cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pandas_llm


def test_demo_runs_and_second_pass_is_cached():
    res = subprocess.run(
        [sys.executable, "-m", "pandas_llm", "demo", "--rows", "40", "--no-progress", "--endpoint", "loopback"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    first = next(line for line in lines if line.startswith("First run"))
    second = next(line for line in lines if line.startswith("Second run"))
    assert "40 rows" in first and "0 rows from cache" in first and "40 answered, 0 failed" in first
    assert "40 rows from cache, 0 requests sent, 40 answered, 0 failed" in second


def test_module_without_a_command_prints_usage():
    res = subprocess.run([sys.executable, "-m", "pandas_llm"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr


def _demo_against(monkeypatch, capsys, endpoint) -> tuple[int, str, str]:
    """Run the demo's main() in this process with ``endpoint`` instead of its own."""
    import contextlib

    from pandas_llm import _demo as demo

    monkeypatch.setattr(demo, "open_endpoint", lambda kind: contextlib.nullcontext(endpoint))
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--rows", "6", "--no-progress"])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_demo_exits_non_zero_with_one_line_when_no_row_is_answered(monkeypatch, capsys):
    from pandas_llm._demo import Endpoint
    from pandas_llm.testing import LLMServer

    cut = {"object": "chat.completion", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 9, "completion_tokens": 48},
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "The"}, "finish_reason": "length"}]}  # fmt: skip
    with LLMServer() as srv:
        srv.inject(200, times=100, body=cut)  # every answer cut off at max_tokens: no row answered
        endpoint = Endpoint("a test server", dict(base_url=srv.base_url, api_key="k"), srv, None)
        with pytest.warns(pandas_llm.RunWarning):
            code, out, err = _demo_against(monkeypatch, capsys, endpoint)
    assert code == 1
    assert "First run : 6 rows, 6 distinct prompts, 0 rows from cache, 6 requests sent, 0 answered, 6 failed" in out
    assert "Second run" not in out
    (line,) = err.splitlines()
    assert line.startswith("error: no row was answered (6 length); the first error: finish_reason=length")


def test_demo_exits_non_zero_when_the_endpoint_is_dead(monkeypatch, capsys, fast_retries):
    import socket

    from pandas_llm._demo import Endpoint

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"

    class Nobody:
        requests = 0

    code, out, err = _demo_against(
        monkeypatch, capsys, Endpoint("nobody", dict(base_url=url, api_key="k"), Nobody(), None)
    )
    assert code == 1 and err.startswith(f"error: cannot reach {url}") and "First run" not in out


def test_demo_summary_counts_answered_and_failed_rows(monkeypatch, capsys):
    from pandas_llm._demo import Endpoint
    from pandas_llm.testing import LLMServer

    with LLMServer() as srv:
        srv.inject(400, times=1)
        endpoint = Endpoint("a test server", dict(base_url=srv.base_url, api_key="k"), srv, None)
        with pytest.warns(pandas_llm.RunWarning):
            from pandas_llm import _demo as demo

            monkeypatch.setattr(demo, "open_endpoint", lambda kind: __import__("contextlib").nullcontext(endpoint))
            demo.main(["--rows", "6", "--no-progress"])
    out = capsys.readouterr().out
    assert "6 requests sent, 5 answered, 1 failed" in out
    assert "Second run: 6 rows, 6 distinct prompts, 5 rows from cache, 1 requests sent, 6 answered, 0 failed" in out
