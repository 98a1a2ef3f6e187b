"""Run a script in a child process and SIGKILL it once a condition holds (crash tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kill_when(script: str, ready: Callable[[], bool], *, timeout: float = 60.0) -> None:
    """Start ``python -c script``; SIGKILL it as soon as ``ready()`` is true; check it died so."""
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, "the child exited early"
            assert time.monotonic() < deadline, "the child never got there"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
