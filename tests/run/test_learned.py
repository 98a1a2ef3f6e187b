"""Learned rate limits kept for the next process: the file in the user's cache folder."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import VirtualTime
from pandas_llm._config import Settings
from pandas_llm._run import learned
from pandas_llm._run.learned import FILE_TTL, account, limits_file, remember, remembered_limits
from pandas_llm._run.limiter import Limiter

URL = "http://127.0.0.1:9/v1"


def written() -> None:
    """Wait for the threads writing the file."""
    for t in threading.enumerate():
        if t.name == "pandas-llm-limits":
            t.join()


@pytest.fixture
def new_process(monkeypatch):
    """Forget what this process learned, as a new process would."""

    def forget() -> None:
        written()
        monkeypatch.setattr(learned, "_registry", {})
        learned.LIMITS.forget()

    forget()
    return forget


def run_python(code: str, cache_home: str) -> str:
    env = dict(os.environ, XDG_CACHE_HOME=cache_home, PYTHONWARNINGS="error")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.server(rpm=600, tpm=200_000)
def test_a_new_process_starts_at_the_limits_an_earlier_one_learned(server, tmp_path):
    home = str(tmp_path / "home-cache")
    run_python(
        f"""
        import pandas as pd, pandas_llm
        df = pd.DataFrame({{"text": ["a", "b", "c"]}})
        out = df.llm.map("{{text}}", model="gpt-4o-mini", base_url="{server.base_url}", api_key="sk-alpha",
                         cache=False, progress=False)
        assert out.notna().all()
        """,
        home,
    )
    path = os.path.join(home, "pandas-llm", "limits.json")
    text = Path(path).read_text()
    assert "sk-alpha" not in text  # a hash of the key, never the key
    [(name, entry)] = json.loads(text).items()
    assert name.startswith(server.base_url.rstrip("/") + " gpt-4o-mini ")
    assert (entry["rpm"], entry["tpm"]) == (600, 200_000)
    assert time.time() - entry["at"] < 600

    probe = """
        from pandas_llm._config import Settings
        from pandas_llm._run.limiter import Limiter
        for key in ("sk-alpha", "sk-beta"):
            lim = Limiter.for_settings(Settings(model="gpt-4o-mini", base_url="{url}", api_key=key, cache=False))
            print(key, lim._unknown, lim.requests and lim.requests.rate * 60, lim.tokens and lim.tokens.rate * 60)
    """
    lines = run_python(probe.format(url=server.base_url), home).split("\n")
    assert lines[0] == "sk-alpha False 600.0 200000.0"  # no round trip to learn them again
    assert lines[1] == "sk-beta True None None"  # another account: its limits are its own


def test_what_is_learned_is_written_for_this_endpoint_model_and_account(new_process):
    s = Settings(model="m", base_url=URL, api_key="sk-one", cache=False)
    lim = Limiter.for_settings(s)
    assert lim._unknown
    lim.observe({"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "2999",
                 "x-ratelimit-reset-requests": "20ms"})  # fmt: skip
    new_process()
    assert remembered_limits(URL, "m", account(s)) == (3000, None)
    assert remembered_limits(URL, "m") is None  # no key: another account
    again = Limiter.for_settings(s)
    assert not again._unknown and again.requests.rate * 60 == 3000
    told = Limiter.for_settings(s.merged(rpm=100))
    assert told.requests.rate * 60 == 100  # the user's rpm is a ceiling the file never raises


def test_no_limits_is_remembered_too(new_process):
    remember((URL, "local-model"), None, None)
    new_process()
    assert remembered_limits(URL, "local-model") == (None, None)
    lim = Limiter.for_settings(Settings(model="local-model", base_url=URL, cache=False))
    assert not lim._unknown and lim.requests is None  # the whole concurrency goes at once


def test_old_entries_are_not_used_and_are_dropped(new_process):
    path = limits_file()
    os.makedirs(os.path.dirname(path))
    old = time.time() - FILE_TTL - 60
    with open(path, "w") as f:
        json.dump({f"{URL} old": {"rpm": 500, "tpm": None, "at": old}}, f)
    assert remembered_limits(URL, "old") is None
    remember((URL, "new"), 900, None)
    written()
    assert set(json.loads(Path(path).read_text())) == {f"{URL} new"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": 3}', ""])
def test_a_damaged_file_is_ignored_and_replaced(new_process, content):
    path = limits_file()
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(content)
    assert remembered_limits(URL, "m") is None
    remember((URL, "m"), 60, 1000)
    written()
    assert json.loads(Path(path).read_text())[f"{URL} m"]["rpm"] == 60


def test_an_unwritable_cache_folder_costs_only_the_speed_up(new_process, tmp_path, monkeypatch, server, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder should be
    caplog.set_level("DEBUG", logger="pandas_llm")
    df = pd.DataFrame({"text": ["a", "b"]})
    out = df.llm.map("{text}", base_url=server.base_url, api_key="sk-x", cache=False, progress=False)
    written()
    assert out.notna().all()
    assert "learned limits not written" in caplog.text


def headers(rpm: int) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": str(rpm - 1),
            "x-ratelimit-reset-requests": "20ms"}  # fmt: skip


@pytest.mark.parametrize(("server_says", "kept"), [(10_000_000, None), (6000, 6000), (20, 20)])
def test_the_users_rpm_is_never_remembered_only_what_the_server_said(new_process, server_says, kept):
    # one run with rpm=30 must not slow every later run without it (a server with no
    # reachable limit, 10M a minute, would never correct a remembered 30)
    lim = Limiter.for_settings(Settings(model="m", base_url=URL, cache=False, rpm=30))
    lim.observe(headers(server_says))
    assert lim.requests.rate * 60 == min(30, server_says)  # this run keeps to the user's ceiling
    new_process()
    assert remembered_limits(URL, "m") == (kept, None)


async def test_a_remembered_pace_the_server_raises_does_not_hold_the_next_request():
    vt = VirtualTime()
    remember((URL, "slow"), 6, None)  # an earlier run's figure: one request per 10 s
    lim = Limiter.for_settings(Settings(model="slow", base_url=URL, cache=False), headroom=1.0,
                               clock=vt.clock, sleep=vt.sleep)  # fmt: skip
    await vt.run(lim.acquire())
    waiting = asyncio.ensure_future(lim.acquire())
    await vt.advance(0.05)
    assert not waiting.done()  # booked 10 s ahead at the old pace
    # the first answer: the server allows 100 a second now (no remaining: no credit to send on)
    lim.done(0, 10, 1, 1, {"x-ratelimit-limit-requests": "6000", "x-ratelimit-reset-requests": "1s"})
    await vt.run(waiting)
    assert vt.now < 0.1  # not 10 s


async def test_a_remembered_pace_is_dropped_when_the_server_has_no_reachable_limit():
    vt = VirtualTime()
    remember((URL, "freed"), 6, None)
    lim = Limiter.for_settings(Settings(model="freed", base_url=URL, cache=False), clock=vt.clock, sleep=vt.sleep)
    await vt.run(lim.acquire())
    waiting = asyncio.ensure_future(lim.acquire())
    await vt.settle()
    lim.done(0, 10, 1, 1, headers(10_000_000))
    await vt.run(waiting)
    assert lim.requests is None and vt.now == 0.0
    assert remembered_limits(URL, "freed") == (None, None)


@pytest.mark.parametrize("figure", ["0.5", "0", "-3", "Infinity", "NaN", "1e-300", "true", '"600"'])
def test_a_figure_no_server_sends_is_not_used(new_process, figure):
    path = limits_file()
    os.makedirs(os.path.dirname(path))
    Path(path).write_text(f'{{"{URL} odd": {{"rpm": {figure}, "tpm": {figure}, "at": {time.time()}}}}}')
    assert remembered_limits(URL, "odd") == (None, None)
