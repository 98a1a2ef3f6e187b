"""One error mapping: every backend and the Batch API client run their calls inside map_errors."""

from __future__ import annotations

import ast
import pathlib
import types

import aiohttp
import pytest

import pandas_llm
from pandas_llm._backends.errors import AnswerLost, map_errors
from pandas_llm._errors import APIError, BadRequestError, RetryableError

PACKAGE = pathlib.Path(pandas_llm.__file__).parent
URL = "http://127.0.0.1:9/v1"
KEY = types.SimpleNamespace(host="127.0.0.1", port=9, ssl=None)  # aiohttp's connection key


def mapped(via: str, exc: BaseException) -> BaseException:
    with pytest.raises(BaseException) as info, map_errors(via, URL, "m"):
        raise exc
    assert info.value is exc or info.value.__cause__ is exc
    return info.value


@pytest.mark.parametrize(
    ("via", "exc", "kind", "code", "billed", "text"),
    [
        ("aiohttp", aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused")), RetryableError,
         "connection", False, f"connection error to {URL}: connection refused"),
        ("aiohttp", TimeoutError(), RetryableError, "timeout", True, f"no answer within the timeout from {URL}"),
        ("aiohttp", aiohttp.ServerDisconnectedError(), RetryableError, "connection", True, "connection error"),
        ("wire", AnswerLost("connection closed"), RetryableError, "connection", True, "connection closed"),
        ("wire", ConnectionRefusedError(111, "refused"), RetryableError, "connection", False, "connection refused"),
        ("function", TimeoutError("slow"), RetryableError, "timeout", True, "TimeoutError: slow"),
        ("function", ConnectionResetError("gone"), RetryableError, "connection", False, "ConnectionResetError: gone"),
        ("function", KeyError("choices"), BadRequestError, "KeyError", False, "KeyError: 'choices'"),
    ],
)  # fmt: skip
def test_each_library_maps_to_our_errors(via, exc, kind, code, billed, text):
    out = mapped(via, exc)
    assert type(out) is kind and out.code == code and text in str(out)
    assert getattr(out, "maybe_billed", False) is billed


def test_openai_errors_map_as_their_status():
    import httpx
    import openai

    response = httpx.Response(401, json={"error": {"message": "bad key"}}, request=httpx.Request("POST", URL))
    out = mapped("openai", openai.AuthenticationError("bad key", response=response, body=None))
    assert out.status == 401 and "API key was refused" in str(out)
    out = mapped("openai", openai.APITimeoutError(httpx.Request("POST", URL)))
    assert out.code == "timeout" and out.maybe_billed


def test_our_errors_and_unnamed_ones_pass_unchanged():
    ours = APIError("x")
    assert mapped("aiohttp", ours) is ours
    other = ValueError("not a transport failure")
    assert mapped("aiohttp", other) is other and mapped("wire", other) is other


@pytest.mark.parametrize(
    "path", ["_backends/http.py", "_backends/wire.py", "_backends/openai_client.py", "_backends/function.py",
             "_batch/client.py"],
)  # fmt: skip
def test_every_backend_maps_through_the_one_context_manager(path):
    tree = ast.parse((PACKAGE / path).read_text())
    withs = [i.context_expr for n in ast.walk(tree) if isinstance(n, ast.With | ast.AsyncWith) for i in n.items]
    assert any(isinstance(w, ast.Call) and getattr(w.func, "id", None) == "map_errors" for w in withs)
    names = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not names & {"from_openai", "connection_error_text"}, "a mapping written outside map_errors"
