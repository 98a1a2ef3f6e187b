"""The README, tested: every Python block runs against the loopback server, and every setting is documented.

Each block runs as a notebook cell would, in a fresh namespace holding the ``df`` it reads,
what the quick tour imports (``pd``, ``pandas_llm``) and the ``Review`` model an earlier block defines, pointed at a fresh ``LLMServer`` the
way a user points at any endpoint: ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``. The README
is not edited for the test: its model names (``gpt-4o-mini``, ...) are ones the loopback
server answers as. A block the test cannot run offline says why in an HTML comment on the
line before it (``<!-- not run by tests/test_docs.py: ... -->``), which a reader of the
rendered README never sees.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import pandas_llm
from helpers import README, Block, readme_blocks, run_block
from pandas_llm import _config

BLOCKS = readme_blocks()
RUN = [b for b in BLOCKS if b.not_run is None]


class Review(BaseModel):  # as the README's structured block defines it, for the blocks after it
    sentiment: Literal["positive", "negative", "mixed"]
    stars: int
    summary: str


def two_reviews() -> pd.DataFrame:
    reviews = ["Arrived late, works fine.", "Great value, a gift for my dad."]
    return pd.DataFrame({"review": reviews, "text": reviews})


# -- per block: what it reads (files, the namespace) and what it must have done -------------------
def tour_setup(ns: dict[str, Any]) -> None:
    with resources.files("pandas_llm._data").joinpath("reviews.csv").open() as f:
        pd.read_csv(f).head(4).to_csv("reviews.csv", index=False)  # the block's pd.read_csv("reviews.csv")


def tour_check(ns: dict[str, Any], server) -> None:
    df = ns["df"]
    assert len(df) == 4 and df["fr"].str.startswith("echo: Translate to French: ").all()
    assert df["short"].str.startswith("echo: Summarise in 5 words: ").all()
    assert ns["out"].str.startswith("echo: Translate to German: ").all()  # the block's top-level await


def keywords_check(ns: dict[str, Any], server) -> None:
    assert ns["df"]["label"].notna().all()
    assert pandas_llm.current_settings().model == "gpt-4.1-mini"  # configure() outlives the with block


def structured_check(ns: dict[str, Any], server) -> None:
    df = ns["df"]
    assert ns["out"].dtypes.astype(str).tolist() == ["category", "Int64", "string"]
    assert df["topic"].dtype == "category" and df["gift"].dtype == "boolean"
    assert list(ns["tags"].columns) == ["labels", "reason"]


def batch_check(ns: dict[str, Any], server) -> None:
    assert ns["df"]["label"].notna().all()
    assert server.requests == 0 and server.batches.batches_created == 1  # submit() found the answers in the cache


def batch_structured_check(ns: dict[str, Any], server) -> None:
    assert ns["df"]["topic"].dtype == pd.CategoricalDtype(["quality", "delivery", "other"])
    assert ns["out"].dtypes.astype(str).tolist() == ["category", "Int64", "string"]
    assert server.batches.batches_created == 2 and server.requests == 0


def endpoints_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"review": ["Arrived late, works fine.", "I will kill the courier", "Arrived late, works fine."]}
    )


def endpoints_check(ns: dict[str, Any], server) -> None:
    assert ns["risky"].index.tolist() == [1]
    assert ns["vectors"].shape == (3, 256) and ns["vectors"].dtype == np.float32
    assert ns["df"]["vec"].iloc[0].shape == (1536,)
    assert ns["est"].unique == 2


def cost_check(ns: dict[str, Any], server) -> None:
    assert ns["df"]["fr"].notna().all()
    assert server.completed == 2  # the sample ran both prompts; map found them in the cache


def mock_check(ns: dict[str, Any], server) -> None:
    assert ns["refused"].requests and server.requests == 0  # answered in process, not by the server


def dask_setup(ns: dict[str, Any]) -> None:
    Path("reviews").mkdir()  # two files for the block's dd.read_parquet("reviews/*.parquet")
    for part in range(2):
        frame = pd.DataFrame({"review": [f"review {i}: the app crashes" for i in range(3 * part, 3 * part + 3)]})
        frame.to_parquet(f"reviews/{part}.parquet", index=False)


def dask_check(ns: dict[str, Any], server) -> None:
    assert ns["fr"].compute().str.startswith("echo: Translate to French: review ").all()
    assert server.completed == 6  # the block's own compute(); this one came from the cache


def dask_batch_check(ns: dict[str, Any], server) -> None:
    assert ns["fr"].compute().str.startswith("echo: Translate to French: ").all()
    assert server.batches.batches_created == 1 and server.requests == 0  # the partitions sent nothing


def dask_teardown(ns: dict[str, Any]) -> None:
    if "client" in ns:
        ns["client"].close()  # and the LocalCluster Client() started


@dataclasses.dataclass
class Case:
    check: Callable[[dict[str, Any], Any], None]
    frame: Callable[[], pd.DataFrame] = two_reviews
    setup: Callable[[dict[str, Any]], None] = lambda ns: None
    teardown: Callable[[dict[str, Any]], None] = lambda ns: None


CASES = {
    "a-quick-tour": Case(tour_check, setup=tour_setup),
    "keywords": Case(keywords_check),
    "structured-results": Case(structured_check),
    "the-batch-api": Case(batch_check),
    "the-batch-api-2": Case(batch_structured_check),
    "moderation-and-embeddings": Case(endpoints_check, frame=endpoints_frame),
    "progress-cost-and-a-budget": Case(cost_check),
    "past-one-machine": Case(dask_check, setup=dask_setup, teardown=dask_teardown),
    "past-one-machine-2": Case(dask_batch_check),
    "testing-your-own-code": Case(mock_check),
}


@pytest.fixture
def readme_session(server, monkeypatch):
    """The loopback server as the endpoint, set the way users set one; session defaults restored after."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(_config, "_session", _config.current_settings())  # a block's configure() ends with the test
    pandas_llm.configure(progress=False, poll_interval=0.005)  # no bar in the test log; the Batch API polled at once
    return server


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_block_runs(block: Block, readme_session) -> None:
    case = CASES[block.id]
    namespace: dict[str, Any] = {"pd": pd, "pandas_llm": pandas_llm, "df": case.frame(), "Review": Review}
    case.setup(namespace)
    try:
        run_block(block, namespace)
        case.check(namespace, readme_session)
    finally:
        case.teardown(namespace)


def test_every_block_runs_or_says_why() -> None:
    assert set(CASES) == {b.id for b in RUN}, "a README block was added or renamed: give it a Case above"
    for block in BLOCKS:
        assert block.not_run is None or len(block.not_run.split()) >= 4, f"README.md:{block.line} says too little"
    assert [b.id for b in BLOCKS if b.not_run] == ["endpoints", "endpoints-2"]


def test_every_setting_is_documented() -> None:
    """Each Settings field is named in the README (`name`) or in the Settings docstring (``name``)."""
    readme = Path(README).read_text(encoding="utf-8")
    doc = _config.Settings.__doc__ or ""
    missing = [
        f.name for f in dataclasses.fields(_config.Settings)
        if f"`{f.name}`" not in readme and f"``{f.name}``" not in doc
    ]  # fmt: skip
    assert not missing, f"settings documented nowhere: {missing}"


def test_the_not_run_marker_is_what_the_helper_reads() -> None:
    text = Path(README).read_text(encoding="utf-8")
    assert len(re.findall(r"<!-- not run by tests/test_docs\.py: ", text)) == sum(b.not_run is not None for b in BLOCKS)
