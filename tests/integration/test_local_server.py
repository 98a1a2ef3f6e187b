"""pandas_llm.local's life cycle with the real llama.cpp server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
