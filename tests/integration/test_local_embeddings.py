"""embed against the real llama.cpp server (started with --embedding) on the bundled model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pandas_llm
from pandas_llm.local import LocalServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedding_server(needs_local):
    with LocalServer(alias="smollm2-embed", args=["--embedding", "true"]) as srv:
        yield srv


def test_identical_texts_give_identical_vectors_and_different_texts_different_ones(embedding_server, tmp_path):
    srv = embedding_server
    texts = ["the cat sat on the mat", "quarterly revenue grew by four percent", "the cat sat on the mat", "hi"]
    s = pd.Series(texts, index=[7, 3, 5, 1])
    opts = dict(model=srv.model, base_url=srv.base_url, cache=tmp_path / "c.sqlite", progress=False)
    v = s.llm.embed(inputs_per_request=2, **opts)
    assert v.dtype == np.float32 and v.shape[0] == 4 and v.shape[1] > 0
    assert np.isfinite(v).all()
    np.testing.assert_array_equal(v[0], v[2])
    for i, j in ((0, 1), (0, 3), (1, 3)):
        assert not np.allclose(v[i], v[j])
    assert pandas_llm.last_run().stats.ok == 3  # three distinct texts
    # the same texts alone (another grouping) give the same vectors, from a fresh server call
    alone = pd.Series(["hi", "the cat sat on the mat"]).llm.embed(model=srv.model, base_url=srv.base_url,
                                                                  cache=False, progress=False)  # fmt: skip
    np.testing.assert_allclose(alone, v[[3, 0]], rtol=1e-4, atol=1e-4)
    # and a rerun comes from the cache
    before = srv.log().count("POST /v1/embeddings")
    again = s.llm.embed(**opts)
    np.testing.assert_array_equal(again, v)
    assert srv.log().count("POST /v1/embeddings") == before > 0
