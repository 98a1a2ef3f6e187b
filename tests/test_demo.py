"""The README's first command: the demo runs, and its second pass is served from the cache."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_second_pass_is_cached():
    res = subprocess.run(
        [sys.executable, "-m", "pandas_llm", "demo", "--rows", "40", "--no-progress", "--endpoint", "loopback"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    first = next(line for line in lines if line.startswith("First run"))
    second = next(line for line in lines if line.startswith("Second run"))
    assert "40 rows" in first and "0 rows from cache" in first
    assert "40 rows from cache, 0 requests sent" in second


def test_module_without_a_command_prints_usage():
    res = subprocess.run([sys.executable, "-m", "pandas_llm"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr
