"""Endpoints without the Batch API, input files deleted when done, and the enqueued-token refusal."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

import pandas_llm
from pandas_llm import FatalAPIError, RunWarning
from pandas_llm._batch.client import NoBatchAPIError
from pandas_llm.testing import LLMServer
from pandas_llm.testing._http import json_response


@pytest.fixture
def srv():
    with LLMServer() as server:
        yield server


@pytest.fixture
def opts(srv, tmp_path):
    return dict(base_url=srv.base_url, api_key="x", cache=str(tmp_path / "cache.sqlite"), progress=False,
                poll_interval=0.005)  # fmt: skip


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def expected(df: pd.DataFrame) -> list[str]:
    return [f"echo: Say: {t}" for t in df["text"]]


@pytest.mark.parametrize("status", [404, 405, 501])
def test_auto_falls_back_to_realtime_with_one_line_saying_why(srv, opts, status, caplog):
    srv.batches.without_batch_api(status)
    df = frame(20)
    with caplog.at_level(logging.WARNING, logger="pandas_llm"):
        out = df.llm.map("Say: {text}", mode="auto", batch_threshold=10, **opts)
    assert out.tolist() == expected(df)
    assert srv.completed == 20 and srv.batches.files_uploaded == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and f"has no Batch API (HTTP {status} on GET /batches)" in lines[0]
    assert "20 requests in realtime" in lines[0]


@pytest.mark.parametrize("status", [404, 501])
def test_batch_mode_says_the_endpoint_has_no_batch_api(srv, opts, status):
    srv.batches.without_batch_api(status)
    with pytest.raises(NoBatchAPIError, match=rf"this endpoint has no Batch API \(HTTP {status} on POST /files") as err:
        frame(5).llm.map("Say: {text}", mode="batch", **opts)
    assert "use mode='realtime'" in str(err.value) and isinstance(err.value, FatalAPIError)
    assert srv.requests == 0  # nothing was sent anywhere


def test_a_501_is_not_retried(srv, opts):
    calls = []
    real = srv.routes[("POST", "/v1/files")]
    srv.routes[("POST", "/v1/files")] = lambda request: calls.append(1) or real(request)
    srv.batches.without_batch_api(501)
    with pytest.raises(NoBatchAPIError):
        frame(3).llm.submit("Say: {text}", **opts)
    assert len(calls) == 1  # before: 6 attempts with backoff


def test_a_501_from_chat_completions_stops_the_run(srv, opts):
    srv.inject(501, times=10)
    with pytest.raises(FatalAPIError, match="does not implement this endpoint"):
        frame(3).llm.map("Say: {text}", concurrency=1, **opts)
    assert srv.requests == 1


def test_input_files_are_deleted_once_their_batch_is_collected(srv, opts):
    df = frame(30)
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"requests": 10}, **opts)
    assert out.tolist() == expected(df)
    uploads = {f.id for f in srv.batches.files.values() if f.purpose == "batch"}
    assert srv.batches.files_uploaded == 3 and uploads == set()  # every input file is gone
    assert len(srv.batches.deleted_files) == 3
    outputs = [f for f in srv.batches.files.values() if f.purpose == "batch_output"]
    assert outputs  # the output files stay (another process may still collect them)


def test_failed_and_expired_batches_delete_their_input_files_too(srv, opts):
    srv.batches.expire_next(0.5)
    with pytest.warns(RunWarning, match="expired"):
        frame(10).llm.map("Say: {text}", mode="batch", **opts)
    srv.batches.max_requests = 2  # the next batch fails validation
    with pytest.warns(RunWarning, match="failed"):
        frame(5).llm.map("Say: {text}", mode="batch", batch_limits={"requests": 5}, cache=False,
                         base_url=srv.base_url, api_key="x", progress=False, poll_interval=0.005)  # fmt: skip
    assert srv.batches.files_uploaded == 2 and len(srv.batches.deleted_files) == 2
    assert not [f for f in srv.batches.files.values() if f.purpose == "batch"]


def test_the_input_file_is_deleted_when_the_batch_cannot_be_created(srv, opts):
    # a gateway that takes files but has no /batches
    srv.routes[("POST", "/v1/batches")] = lambda request: json_response(404, {"detail": "Not Found"})
    with pytest.raises(NoBatchAPIError, match="HTTP 404 on POST /batches"):
        frame(3).llm.submit("Say: {text}", **opts)
    assert srv.batches.files_uploaded == 1 and srv.batches.batches_created == 0
    assert srv.batches.deleted_files and not [f for f in srv.batches.files.values() if f.purpose == "batch"]


def test_token_limit_exceeded_says_to_lower_enqueued_tokens(srv, opts):
    srv.batches.enqueued_tokens = 10  # the account's limit: any of these batches is over it
    with pytest.warns(RunWarning, match=r"token_limit \(its batch was refused over the account's enqueued-token "
                                        r"limit: lower batch_limits=\{'enqueued_tokens': \.\.\.\}\)") as caught:  # fmt: skip
        out = frame(5).llm.map("Say: {text}", mode="batch", **opts)
    assert out.isna().all()
    assert "transient errors persisted" not in str(caught[0].message)
    error = pandas_llm.last_run().details["error"].iloc[0]
    assert "token_limit_exceeded" in error and "batch_limits={'enqueued_tokens': N}" in error
