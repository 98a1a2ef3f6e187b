"""pandas_llm.local's life cycle with the real llama.cpp server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from pandas_llm.local import LocalServer, LocalServerError

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (an unreaped zombie counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def test_own_settings_win_over_the_environment(needs_local, monkeypatch):
    # llama_cpp.server reads PORT, HOST, API_KEY, MODEL, ... from the environment.
    monkeypatch.setenv("PORT", "1")
    monkeypatch.setenv("API_KEY", "would-require-a-key")
    monkeypatch.setenv("MODEL", "/nonexistent.gguf")
    with LocalServer(alias="smollm2-135m") as srv:
        assert srv.port not in (0, 1)
        with urllib.request.urlopen(srv.base_url + "/models", timeout=10) as resp:  # no key needed
            listed = [m["id"] for m in json.load(resp)["data"]]
        assert listed == ["smollm2-135m"]
        pid = srv.pid
    assert _gone(pid) and "Finished server process" in srv.log()  # a graceful stop


def test_a_file_that_is_not_a_model_fails_with_the_servers_log(needs_local, tmp_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file" * 100)
    srv = LocalServer(bad)
    with pytest.raises(LocalServerError, match=r"exited with code \d+ while starting(.|\n)*gguf"):
        srv.start()
    assert _gone(srv.pid)


def test_the_server_dies_with_its_parent_even_on_kill_9(needs_local):
    script = (
        "import sys, time\n"
        "from pandas_llm.local import LocalServer\n"
        "srv = LocalServer().start()\n"
        "print(srv.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(child), "the server outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if "child" in locals() and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_server_killed_mid_map_stops_the_run_within_seconds_and_keeps_the_answers(needs_local, tmp_path):
    import socket

    import pandas as pd

    import pandas_llm

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    df = pd.DataFrame({"word": [f"word number {i}" for i in range(12)]})
    kw = dict(cache=tmp_path / "c.sqlite", progress=False, temperature=0, max_tokens=48, stop=["\n"], concurrency=1)
    killed_at: list[float] = []
    with LocalServer(port=port) as srv:
        pid = srv.pid

        def kill() -> None:
            while srv.requests < 3 and srv.running:
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()
        with pytest.raises(LocalServerError, match=r"was killed by SIGKILL \(signal 9\) while in use"):
            df.llm.map("Repeat: {word}", base_url=srv.base_url, model=srv.model, **kw)
        stopped_after = time.monotonic() - killed_at[0]
        killer.join()
        assert stopped_after < 10, f"the run went on {stopped_after:.1f} s after the server died"
        deadline = time.monotonic() + 5  # reaped by LocalServer's watcher: not even a zombie
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{pid}")
    details = pandas_llm.last_run().details
    answered = int((details["status"] == "ok").sum())
    assert answered >= 2 and set(details["status"]) <= {"ok", "stopped", "failed"}  # failed: the row in flight
    with LocalServer(port=port) as again:  # the same base URL, so the same cache keys
        out = df.llm.map("Repeat: {word}", base_url=again.base_url, model=again.model, **kw)
        assert out.notna().all() and again.requests == len(df) - answered
