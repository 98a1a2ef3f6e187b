"""classify and extract against llama.cpp, through the json_object fallback.

llama.cpp's server refuses the standard ``json_schema`` response format (HTTP 500) but
enforces a schema given as ``{"type": "json_object", "schema": {...}}``, which is what
``structured="json_object"`` sends (with the schema in the instruction as well).
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import pytest
from pydantic import BaseModel

import pandas_llm

pytestmark = pytest.mark.integration

REVIEWS = [
    "I love this kettle, it works perfectly and looks great.",
    "Terrible. It broke after two days and support never answered.",
    "The lamp is fine, nothing special.",
    "Best purchase this year, my kids love it!",
    "Arrived damaged and smelled of smoke. Returned it.",
]
LABELS = ["positive", "negative", "neutral"]


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    stars: int
    summary: str


@pytest.fixture
def structured(options) -> dict:
    return dict(options, structured="json_object", max_tokens=160, stop=None)


def test_classify_answers_inside_the_label_set(structured, served):
    df = pd.DataFrame({"text": REVIEWS}, index=list("abcde"))
    before = served()
    out = df.llm.classify("Review: {text}", labels=LABELS, **structured)
    assert served() - before == len(REVIEWS)
    assert isinstance(out.dtype, pd.CategoricalDtype) and list(out.cat.categories) == LABELS
    assert list(out.index) == list("abcde")
    assert out.notna().all() and out.isin(LABELS).all(), out.tolist()
    details = pandas_llm.last_run().details
    assert (details["status"] == "ok").all()
    # Rerun: from the cache, nothing sent.
    before = served()
    again = df.llm.classify("Review: {text}", labels=LABELS, **structured)
    assert served() == before
    pd.testing.assert_series_equal(out, again)


def test_extract_gives_typed_valid_columns(structured):
    df = pd.DataFrame({"text": REVIEWS})
    out = df.llm.extract("Read this review: {text}", schema=Review, **structured)
    assert list(out.columns) == ["sentiment", "stars", "summary"]
    assert isinstance(out["sentiment"].dtype, pd.CategoricalDtype)
    assert out["stars"].dtype == "Int64" and out["summary"].dtype == "string"
    assert (pandas_llm.last_run().details["status"] == "ok").all()
    assert out["sentiment"].isin(LABELS).all()
    assert out["stars"].notna().all()
    assert (out["summary"].str.strip().str.len() > 0).all(), out["summary"].tolist()


def test_the_standard_json_schema_request_stops_at_once_with_the_advice(options, served):
    df = pd.DataFrame({"text": REVIEWS * 4})
    before = served()
    with pytest.raises(pandas_llm.RequestShapeError, match='structured="json_object"'):
        df.llm.classify("Review: {text}", labels=LABELS, **dict(options, concurrency=1))
    assert served() - before == 1  # llama.cpp's HTTP 500 is not retried, and the other rows are not sent
