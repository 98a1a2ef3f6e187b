"""The API key never leaks: not in a repr, not in a stored or shown error, not to other users."""

from __future__ import annotations

import os
import sqlite3
import stat
import warnings

import pandas as pd
import pytest

import pandas_llm
from pandas_llm._errors import BadRequestError, FatalAPIError, redact
from pandas_llm._store.store import Store

KEY = "sk-proj-Zq9SECRETsecret0123456789abcdef"


def test_repr_and_str_of_every_settings_object_mask_the_key(opts, tmp_path):
    old = pandas_llm.current_settings()
    try:
        pandas_llm.configure(api_key=KEY)
        assert KEY not in repr(pandas_llm.current_settings())
        assert KEY not in str(pandas_llm.current_settings())
        assert "api_key='[redacted]'" in repr(pandas_llm.current_settings())
    finally:
        pandas_llm._config._session = old
    with pandas_llm.settings(api_key="a-local-server-key-123", extra_body={"api-key": "azure0123456789abcdef"}) as s:
        for text in (repr(s), str(s), f"{s}", repr([s])):
            assert "a-local-server-key-123" not in text and "azure0123456789abcdef" not in text
    df = pd.DataFrame({"text": ["a", "b"]})
    job = df.llm.submit("Say: {text}", **{**opts, "api_key": KEY}, cache=str(tmp_path / "c.sqlite"))
    assert KEY not in repr(job.settings) and KEY not in str(job.settings)
    job.result()


def test_redact_masks_keys_bearer_tokens_and_key_headers():
    text = (
        f"Incorrect API key provided: {KEY}. headers: Authorization: Bearer abc.def-ghi; "
        "api-key: 0123456789abcdef0123; {'x-api-key': 'tok_ABCDEFGH12345'}"
    )
    out = redact(text)
    for secret in (KEY, "abc.def-ghi", "0123456789abcdef0123", "tok_ABCDEFGH12345"):
        assert secret not in out
    assert out.count("[redacted]") == 4
    assert redact(out) == out  # idempotent
    # our own advice is left alone
    advice = "the API key was refused. Check api_key= or OPENAI_API_KEY; pass api_key='sk-...'"
    assert redact(advice) == advice
    assert redact("the key is my-own-vllm-key-42", ["my-own-vllm-key-42"]) == "the key is [redacted]"


def test_an_error_echoing_the_authorization_header_is_stored_and_shown_redacted(server, opts, tmp_path):
    key = "my-vllm-key-0123456789"  # not shaped like an OpenAI key: masked because it was given
    echo = {"error": {"message": f"bad request; you sent Authorization: Bearer {key} and {KEY}", "code": "bad"}}
    server.inject(400, body=echo, match="boom")
    path = str(tmp_path / "c.sqlite")
    df = pd.DataFrame({"text": ["boom", "fine"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = df.llm.map("{text}", **{**opts, "api_key": key}, cache=path, details=True)
    assert out["status"].tolist() == ["error", "ok"]
    shown = out["error"].iloc[0]
    assert key not in shown and KEY not in shown and "[redacted]" in shown
    assert all(key not in str(w.message) for w in caught)
    stored = sqlite3.connect(path).execute("SELECT error FROM results WHERE error IS NOT NULL").fetchall()
    assert len(stored) == 1 and key not in stored[0][0] and KEY not in stored[0][0]


def test_a_fatal_error_message_is_redacted(server, opts):
    server.inject(401, body={"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}})
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(FatalAPIError) as info:
        df.llm.map("{text}", **{**opts, "api_key": KEY}, cache=False)
    assert KEY not in str(info.value) and "HTTP 401" in str(info.value)
    assert KEY not in str(BadRequestError(f"echo {KEY}"))


def test_the_store_redacts_whatever_error_it_is_given(tmp_path):
    from pandas_llm._store.store import Record

    with Store(str(tmp_path / "c.sqlite")) as store:
        store.write([Record(b"k" * 32, "error", error=f"Bearer {KEY}")])
        assert [r.error for r in store.lookup([b"k" * 32])] == ["Bearer [redacted]"]


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_cache_folder_is_0700_and_the_files_0600_even_under_umask_000(opts, umask_000, tmp_path):
    df = pd.DataFrame({"text": ["a", "b"]})
    df.llm.map("{text}", **opts)
    assert _mode(".pandas_llm") == 0o700
    path = os.path.join(".pandas_llm", "cache.sqlite")
    assert _mode(path) == 0o600
    with Store(path):  # open: -wal and -shm exist while a connection is open
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                assert _mode(path + suffix) == 0o600, suffix
    nested = tmp_path / "deep" / "er" / "c.sqlite"
    with Store(str(nested)):
        assert _mode(nested.parent) == 0o700 and _mode(nested) == 0o600


def test_existing_loose_files_are_tightened_on_every_open(tmp_path, umask_000):
    folder = tmp_path / ".pandas_llm"
    folder.mkdir(mode=0o777)
    path = str(folder / "cache.sqlite")
    with Store(path):
        pass
    for name in (path, path + "-wal", path + "-shm"):
        if os.path.exists(name):
            os.chmod(name, 0o644)
    os.chmod(folder, 0o777)
    with Store(path) as store:
        store.write([])
        assert _mode(folder) == 0o700
        for name in (path, path + "-wal", path + "-shm"):
            if os.path.exists(name):
                assert _mode(name) == 0o600, name


def test_backends_holding_the_key_do_not_show_it(server):
    from pandas_llm._backends import make_backend
    from pandas_llm._batch.client import BatchAPI
    from pandas_llm._config import Settings

    for base_url in (server.base_url, "https://example.invalid/v1"):
        settings = Settings(base_url=base_url, api_key=KEY)
        for obj in (make_backend(settings), BatchAPI(settings)):
            assert KEY not in repr(obj) and KEY not in str(obj)
