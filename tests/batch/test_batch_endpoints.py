"""Endpoints without the Batch API, input files deleted when done, and the enqueued-token refusal."""

from __future__ import annotations

import logging

import pytest

import pandas_llm
from helpers import echoes, frame
from pandas_llm import FatalAPIError, RunWarning
from pandas_llm._batch.client import NoBatchAPIError
from pandas_llm.testing._http import json_response


@pytest.mark.parametrize("status", [404, 405, 501])
def test_auto_falls_back_to_realtime_with_one_line_saying_why(server, batch_opts, status, caplog):
    server.batches.without_batch_api(status)
    df = frame(20)
    with caplog.at_level(logging.WARNING, logger="pandas_llm"):
        out = df.llm.map("Say: {text}", mode="auto", batch_threshold=10, **batch_opts)
    assert out.tolist() == echoes(df)
    assert server.completed == 20 and server.batches.files_uploaded == 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and f"has no Batch API (HTTP {status} on GET /batches)" in lines[0]
    assert "20 requests in realtime" in lines[0]


@pytest.mark.parametrize("status", [404, 501])
def test_batch_mode_says_the_endpoint_has_no_batch_api(server, batch_opts, status):
    server.batches.without_batch_api(status)
    with pytest.raises(NoBatchAPIError, match=rf"this endpoint has no Batch API \(HTTP {status} on POST /files") as err:
        frame(5).llm.map("Say: {text}", mode="batch", **batch_opts)
    assert "use mode='realtime'" in str(err.value) and isinstance(err.value, FatalAPIError)
    assert server.requests == 0  # nothing was sent anywhere


def test_a_501_is_not_retried(server, batch_opts):
    calls = []
    real = server.routes[("POST", "/v1/files")]
    server.routes[("POST", "/v1/files")] = lambda request: calls.append(1) or real(request)
    server.batches.without_batch_api(501)
    with pytest.raises(NoBatchAPIError):
        frame(3).llm.submit("Say: {text}", **batch_opts)
    assert len(calls) == 1  # before: 6 attempts with backoff


def test_a_501_from_chat_completions_stops_the_run(server, batch_opts):
    server.inject(501, times=10)
    with pytest.raises(FatalAPIError, match="does not implement this endpoint"):
        frame(3).llm.map("Say: {text}", concurrency=1, **batch_opts)
    assert server.requests == 1


def test_input_files_are_deleted_once_their_batch_is_collected(server, batch_opts):
    df = frame(30)
    out = df.llm.map("Say: {text}", mode="batch", batch_limits={"requests": 10}, **batch_opts)
    assert out.tolist() == echoes(df)
    uploads = {f.id for f in server.batches.files.values() if f.purpose == "batch"}
    assert server.batches.files_uploaded == 3 and uploads == set()  # every input file is gone
    assert len(server.batches.deleted_files) == 3
    outputs = [f for f in server.batches.files.values() if f.purpose == "batch_output"]
    assert outputs  # the output files stay (another process may still collect them)


def test_failed_and_expired_batches_delete_their_input_files_too(server, batch_opts):
    server.batches.expire_next(0.5)
    with pytest.warns(RunWarning, match="expired"):
        frame(10).llm.map("Say: {text}", mode="batch", **batch_opts)
    server.batches.max_requests = 2  # the next batch fails validation
    with pytest.warns(RunWarning, match="failed"):
        frame(5).llm.map("Say: {text}", mode="batch", batch_limits={"requests": 5}, cache=False,
                         base_url=server.base_url, api_key="x", progress=False, poll_interval=0.005)  # fmt: skip
    assert server.batches.files_uploaded == 2 and len(server.batches.deleted_files) == 2
    assert not [f for f in server.batches.files.values() if f.purpose == "batch"]


def test_the_input_file_is_deleted_when_the_batch_cannot_be_created(server, batch_opts):
    # a gateway that takes files but has no /batches
    server.routes[("POST", "/v1/batches")] = lambda request: json_response(404, {"detail": "Not Found"})
    with pytest.raises(NoBatchAPIError, match="HTTP 404 on POST /batches"):
        frame(3).llm.submit("Say: {text}", **batch_opts)
    assert server.batches.files_uploaded == 1 and server.batches.batches_created == 0
    assert server.batches.deleted_files and not [f for f in server.batches.files.values() if f.purpose == "batch"]


def test_token_limit_exceeded_says_to_lower_enqueued_tokens(server, batch_opts):
    server.batches.enqueued_tokens = 10  # the account's limit: any of these batches is over it
    with pytest.warns(RunWarning, match=r"token_limit \(its batch was refused over the account's enqueued-token "
                                        r"limit: lower batch_limits=\{'enqueued_tokens': \.\.\.\}\)") as caught:  # fmt: skip
        out = frame(5).llm.map("Say: {text}", mode="batch", **batch_opts)
    assert out.isna().all()
    assert "transient errors persisted" not in str(caught[0].message)
    error = pandas_llm.last_run().details["error"].iloc[0]
    assert "token_limit_exceeded" in error and "batch_limits={'enqueued_tokens': N}" in error
