"""The ``.llm`` accessors on DataFrame and Series: thin and stateless.

They never mutate the input (nor its ``attrs``); every verb returns a new object aligned
to the input's index.

    >>> import pandas as pd, pandas_llm
    >>> from pandas_llm.testing import LLMServer
    >>> with LLMServer() as srv:
    ...     df = pd.DataFrame({"text": ["hello", "world"]})
    ...     out = df.llm.map("Say: {text}", base_url=srv.base_url, api_key="x", cache=False, progress=False)
    >>> out.tolist()
    ['echo: Say: hello', 'echo: Say: world']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from ._run import loop as _runner
from ._run.interrupt import sigint_stops
from ._verbs import check_prompt_order, job_verb, prepare
from ._verbs import estimate as _estimate
from ._verbs.endpoints import prepare_embed, prepare_moderate
from ._verbs.figures import Estimate

if TYPE_CHECKING:
    from ._batch.job import BatchJob

__all__ = ["LLMAccessor"]


class LLMAccessor:
    """``df.llm`` / ``s.llm``: apply an LLM to every row."""

    def __init__(self, obj: pd.DataFrame | pd.Series):
        self._obj = obj

    # Every verb: plan (raises on bad input before anything is sent), wait, assemble. The
    # template's layout is checked in the caller's thread, so its warning points at the user's line.
    def _value(self, plan: Callable[..., Any], details: bool, template: Any, options: dict[str, Any],
               **kw: Any) -> Any:  # fmt: skip
        if plan is prepare:
            check_prompt_order(template)
        job = plan(self._obj, template, options, **kw)
        _runner.run_sync(job.wait)
        return job.result(details=details)

    async def _avalue(self, plan: Callable[..., Any], details: bool, template: Any, options: dict[str, Any],
                      **kw: Any) -> Any:  # fmt: skip
        async with sigint_stops():  # Ctrl-C at a terminal's prompt stops the run (interrupt.py)
            job = await self._aplan(plan, template, options, **kw)
            await job.wait()
        return job.result(details=details)

    async def _aplan(self, plan: Callable[..., Any], template: Any, options: dict[str, Any], **kw: Any) -> Any:
        import asyncio
        import contextvars
        import functools

        if plan is prepare:
            check_prompt_order(template)
        ctx = contextvars.copy_context()  # planning renders every row: off the caller's loop
        return await asyncio.to_thread(ctx.run, functools.partial(plan, self._obj, template, options, **kw))

    def map(
        self, template: Any, *, schema: Any = None, details: bool = False, **options: Any
    ) -> pd.Series | pd.DataFrame:
        """Send one prompt per row; return the answers as a string Series aligned to the index.

        ``template`` is a ``str.format`` template naming columns (``"Translate: {text}"``;
        on a Series, ``"{}"``) or a function ``row -> str | list[message]``. Keywords:
        ``model``, ``system``, ``temperature``, ``max_tokens`` and other generation
        parameters by their API names, ``concurrency``, ``cache`` (a path, or False),
        ``progress``, ``timeout``, ``base_url``, ``api_key``, ``client``. Rows already
        answered come from the cache; failed rows are NA (``details=True`` shows why).

        ``schema=`` (a pydantic model or JSON schema dict) asks for JSON and returns one
        validated dict per row (see :meth:`extract` for columns); ``rows_per_request=k``
        packs k rows per request. ``response_format=`` alone is sent as is, unvalidated.

        ``mode="batch"`` goes through the Batch API (half price; waits until done, see
        :meth:`submit`); ``mode="auto"`` does so from ``batch_threshold`` requests to send.

        Parameters:
            template: the prompt per row (a ``str.format`` template or a function).
            schema: None (text answers), a pydantic model or a JSON schema dict.
            details: also return each row's ``status``, ``error``, ``finish_reason``, tokens,
                ``cost``, ``attempts`` and ``from_cache``.
            **options: settings for this call (see ``pandas_llm.settings``).

        Returns:
            A Series aligned to the input's index, dtype ``string`` (``object``: one dict per
            row with ``schema=``), NA where a row has no answer; with ``details=True`` a
            DataFrame: the answers (column ``output``) and the per-row details.

        Raises:
            ConfigError: a bad argument or template (TemplateError: an unknown ``{column}``),
                before anything is sent.
            FatalAPIError: the endpoint refused the whole run (401/403/404; QuotaError,
                RequestShapeError); rows answered so far are in the cache.
            KeyboardInterrupt: Ctrl-C or Jupyter's stop button (answers so far are kept).
            RetryableError: the Batch API kept failing (``mode="batch"``); NoBatchAPIError: the
                endpoint has no Batch API (``mode="batch"``).
        """
        return self._value(prepare, details, template, options, verb="map", schema=schema)

    def submit(self, template: Any, *, schema: Any = None, labels: Any = None, multi: bool = False,
               reasons: bool = False, flatten: bool | str = False, **options: Any) -> Any:  # fmt: skip
        """Send the rows to the Batch API and return a ``BatchJob`` at once.

        Same template and keywords as :meth:`map`, plus ``poll_interval`` and
        ``batch_limits``. Only rows not in the cache are sent, and the batch ids are kept in
        the sidecar: after a kernel restart, running the same call again re-attaches to
        the batches in flight instead of submitting them twice. ``job.status()`` shows each
        batch, ``job.result()`` waits and returns the Series, ``job.cancel()`` cancels.

        ``labels=`` (with ``multi=``, ``reasons=``) makes it a :meth:`classify` job and
        ``schema=`` (with ``flatten=``) an :meth:`extract` job: the same requests, checks
        and cache keys as those verbs, and ``job.result()`` returns what they return.

        Parameters:
            template, **options: as :meth:`map` (``mode`` is "batch").
            schema, flatten: an :meth:`extract` job; labels, multi, reasons: a :meth:`classify` job.

        Returns:
            A ``BatchJob`` (batches submitted): ``status()``, ``result(details=False)``,
            ``cancel()`` and their ``a*`` twins.

        Raises:
            ConfigError: a bad argument or template, a function ``client=``, no API key, or
                both ``labels=`` and ``schema=``; nothing is sent.
            NoBatchAPIError: the endpoint serves no Batch API.
            FatalAPIError, RetryableError: the upload or batch creation was refused, or kept
                failing; a rerun of the same call sends what was not submitted.
        """
        check_prompt_order(template)
        verb = job_verb(schema, labels, multi=multi, reasons=reasons, flatten=flatten)
        job = prepare(self._obj, template, {**options, "mode": "batch"}, **verb)
        return cast("BatchJob", job).submit()  # mode="batch": always a BatchJob

    async def asubmit(self, template: Any, *, schema: Any = None, labels: Any = None, multi: bool = False,
                      reasons: bool = False, flatten: bool | str = False, **options: Any) -> Any:  # fmt: skip
        """The coroutine twin of :meth:`submit`."""
        verb = job_verb(schema, labels, multi=multi, reasons=reasons, flatten=flatten)
        async with sigint_stops():
            job = await self._aplan(prepare, template, {**options, "mode": "batch"}, **verb)
            return await job.asubmit()

    async def amap(self, template: Any, *, schema: Any = None, details: bool = False, **options: Any) -> Any:
        """The coroutine twin of :meth:`map`, for code already inside an event loop."""
        return await self._avalue(prepare, details, template, options, verb="map", schema=schema)

    def extract(
        self, template: Any, schema: Any, *, flatten: bool | str = False, details: bool = False, **options: Any
    ) -> pd.DataFrame:
        """One typed column per field of ``schema``, one row per input row (same index).

        ``schema``: a pydantic model, a JSON schema dict, or ``"json_object"``. Integers
        are ``Int64``, numbers ``Float64``, booleans ``boolean``, enums and ``Literal``
        ``category``, strings ``string``; nested objects and lists stay Python objects, or
        become ``parent.child`` columns with ``flatten=True``. Every answer is validated;
        an invalid one is asked again (``invalid_retries=``, default 2) and then is NA
        with status ``invalid`` (``details=True`` or ``pandas_llm.last_run().failures``).
        ``structured="json_object"`` for servers without ``json_schema`` (llama.cpp);
        ``rows_per_request=k`` packs k rows into one request. ``mode="batch"`` goes through
        the Batch API (half price, the same requests and cache keys; an invalid answer is
        not resent within the job but by the next run; no packing), see :meth:`submit`.

            >>> from pandas_llm.testing import LLMServer
            >>> Review = {"type": "object", "required": ["sentiment", "stars"], "properties": {
            ...     "sentiment": {"enum": ["positive", "negative"]}, "stars": {"type": "integer"}}}
            >>> with LLMServer() as srv:
            ...     df = pd.DataFrame({"text": ["great", "awful"]})
            ...     out = df.llm.extract("Review: {text}", schema=Review, base_url=srv.base_url,
            ...                          api_key="x", cache=False, progress=False)
            >>> out.dtypes.astype(str).tolist()
            ['category', 'Int64']

        Parameters:
            template, **options: as :meth:`map`.
            schema: a pydantic model, a JSON schema dict, or ``"json_object"``.
            flatten: nested objects as ``parent.child`` columns (True, or the separator).
            details: add the per-row details.

        Returns:
            A DataFrame with the input's index and one column per field (dtypes above; with
            ``details=True`` the per-row details too, clashing names prefixed ``_``).

        Raises:
            ConfigError: bad arguments or template, before anything is sent; FatalAPIError: the
                endpoint refused the whole run; KeyboardInterrupt: as :meth:`map`.
        """
        return self._value(prepare, details, template, options, verb="extract", schema=schema, flatten=flatten)

    async def aextract(self, template: Any, schema: Any, *, flatten: bool | str = False, details: bool = False,
                       **options: Any) -> pd.DataFrame:  # fmt: skip
        """The coroutine twin of :meth:`extract`."""
        return await self._avalue(prepare, details, template, options, verb="extract", schema=schema, flatten=flatten)

    def classify(
        self,
        template: Any,
        labels: Any,
        *,
        multi: bool = False,
        reasons: bool = False,
        details: bool = False,
        **options: Any,
    ) -> pd.Series | pd.DataFrame:
        """One label per row from ``labels`` (a categorical Series aligned to the index).

        ``labels``: a list of strings (or integers), ``{label: description}``, or
        ``[True, False]`` (a ``boolean`` Series, for yes/no questions). ``multi=True``: a
        list of labels per row. ``reasons=True``: a DataFrame with ``label`` (or ``labels``)
        and a short ``reason``. A label outside the set cannot be chosen (an enum in the
        schema) and is rejected as ``invalid`` if a server lets one through. ``mode="batch"``
        works as for :meth:`extract`; ``submit(template, labels=...)`` returns the job.

            >>> from pandas_llm.testing import LLMServer
            >>> with LLMServer() as srv:
            ...     df = pd.DataFrame({"text": ["refund please", "app crashes"]})
            ...     out = df.llm.classify("{text}", labels=["billing", "bug"], base_url=srv.base_url,
            ...                           api_key="x", cache=False, progress=False)
            >>> str(out.dtype), set(out) <= {"billing", "bug"}
            ('category', True)

        Parameters:
            template, **options: as :meth:`map`.
            labels: the label set (a list, ``{label: description}``, or ``[True, False]``).
            multi: any number of labels per row; reasons: a short reason per row too.
            details: add the per-row details.

        Returns:
            A Series aligned to the index, dtype ``category`` over ``labels`` (``boolean`` for
            ``[True, False]``, ``object`` lists with ``multi=True``), NA where a row has no
            answer; a DataFrame (label, ``reason``) with ``reasons=True``; ``details=True``
            adds the per-row details.

        Raises:
            ConfigError: bad arguments or template, before anything is sent; FatalAPIError: the
                endpoint refused the whole run; KeyboardInterrupt: as :meth:`map`.
        """
        return self._value(prepare, details, template, options, verb="classify", labels=labels, multi=multi,
                           reasons=reasons)  # fmt: skip

    async def aclassify(self, template: Any, labels: Any, *, multi: bool = False, reasons: bool = False,
                        details: bool = False, **options: Any) -> pd.Series | pd.DataFrame:  # fmt: skip
        """The coroutine twin of :meth:`classify`."""
        return await self._avalue(prepare, details, template, options, verb="classify", labels=labels, multi=multi,
                                  reasons=reasons)  # fmt: skip

    def moderate(
        self, template: Any = None, *, model: str = "omni-moderation-latest", details: bool = False,
        inputs_per_request: int | None = None, **options: Any,
    ) -> pd.DataFrame:  # fmt: skip
        """Each row's text through the free moderation endpoint (``POST /moderations``).

        ``template``: a column name, a template (``"{title}: {body}"``) or a function
        ``row -> str``; on a Series, none. Returns a DataFrame aligned to the index:
        ``flagged`` (``boolean``), one ``boolean`` column per category and one ``Float64``
        ``<category>_score`` column per category (in [0, 1]), with the API's names
        (``"harassment/threatening"``, ``"self-harm/intent"``, ``"illicit/violent"``, ...);
        NA where a row failed (``details=True`` or ``pandas_llm.last_run().failures`` say
        why). Up to ``inputs_per_request`` (default 32) texts per request; the same cache,
        dedup, retries, rate limits (learned from headers), progress and ``last_run()`` as
        :meth:`map`. Costs $0. Keywords as :meth:`map` (``cache``, ``base_url``, ...),
        without generation parameters. Raises ``ConfigError`` for ``mode="batch"``.

            >>> from pandas_llm.testing import LLMServer
            >>> with LLMServer() as srv:
            ...     s = pd.Series(["have a nice day", "I will kill you"])
            ...     out = s.llm.moderate(base_url=srv.base_url, api_key="x", cache=False, progress=False)
            >>> out["flagged"].tolist(), str(out["violence_score"].dtype)
            ([False, True], 'Float64')

        Parameters:
            template: the column, template or function giving each row's text (None on a Series).
            model: the moderation model; inputs_per_request: texts per request (default 32).
            details: the per-row details instead; **options: as :meth:`map`.

        Returns:
            A DataFrame aligned to the index (dtypes above); ``details=True``: the per-row
            details instead.

        Raises:
            ConfigError: bad arguments or template, before anything is sent; FatalAPIError: the
                endpoint refused the whole run; KeyboardInterrupt: as :meth:`map`.
        """
        return self._value(prepare_moderate, details, template, {**options, "model": model},
                           inputs_per_request=inputs_per_request)  # fmt: skip

    async def amoderate(self, template: Any = None, *, model: str = "omni-moderation-latest", details: bool = False,
                        inputs_per_request: int | None = None, **options: Any) -> pd.DataFrame:  # fmt: skip
        """The coroutine twin of :meth:`moderate`."""
        return await self._avalue(prepare_moderate, details, template, {**options, "model": model},
                                  inputs_per_request=inputs_per_request)  # fmt: skip

    def embed(
        self, template: Any = None, *, model: str = "text-embedding-3-small", dimensions: int | None = None,
        as_series: bool = False, details: bool = False, inputs_per_request: int | None = None, **options: Any,
    ) -> Any:  # fmt: skip
        """One embedding vector per row (``POST /embeddings``).

        Returns a ``numpy.float32`` array of shape ``(n_rows, dimensions)``, row i for the
        i-th row of the input (same order as the index); a row without a vector (NA cell,
        failed, over the token limit) is all NaN. ``as_series=True``: a Series aligned to the
        index holding one 1-D float32 array per row (None where a row has none).
        ``dimensions=`` is passed to the API (text-embedding-3 models shorten their vectors).
        ``template``: a column name, a template or a function, as :meth:`moderate`.

        Up to ``inputs_per_request`` (default and most: 2,048) texts per request, at most
        300,000 tokens per request; a text over the model's limit (8,191 tokens for
        text-embedding-3-*) is that row's ``too_long`` error, not sent. Vectors are cached
        per row as float32 bytes; dedup, retries, rate limits, progress, ``last_run()``,
        ``max_cost`` and prices (the price table's) as :meth:`map`. ``mode="batch"`` uses
        the Batch API at half price; ``details=True`` returns the per-row details instead.

            >>> from pandas_llm.testing import LLMServer
            >>> with LLMServer() as srv:
            ...     s = pd.Series(["cat", "dog", "cat"])
            ...     v = s.llm.embed(dimensions=8, base_url=srv.base_url, api_key="x", cache=False, progress=False)
            >>> v.shape, v.dtype.name, bool((v[0] == v[2]).all())
            ((3, 8), 'float32', True)

        Parameters:
            template: the column, template or function giving each row's text (None on a Series).
            model, dimensions: the embedding model and its vector length (None: the model's).
            as_series: a Series of vectors instead of a matrix; details: the per-row details.
            inputs_per_request: texts per request; **options: as :meth:`map`.

        Returns:
            ``numpy.ndarray`` of shape ``(n_rows, dimensions)``, dtype float32 (NaN rows where
            a row has none); a Series of 1-D float32 arrays with ``as_series=True``; the
            per-row details with ``details=True``.

        Raises:
            ConfigError: bad arguments or template, before anything is sent; FatalAPIError: the
                endpoint refused the whole run; KeyboardInterrupt: as :meth:`map`.
        """
        return self._value(prepare_embed, details, template, {**options, "model": model}, dimensions=dimensions,
                           as_series=as_series, inputs_per_request=inputs_per_request)  # fmt: skip

    async def aembed(self, template: Any = None, *, model: str = "text-embedding-3-small", dimensions: int | None = None,
                     as_series: bool = False, details: bool = False, inputs_per_request: int | None = None,
                     **options: Any) -> Any:  # fmt: skip
        """The coroutine twin of :meth:`embed`."""
        return await self._avalue(prepare_embed, details, template, {**options, "model": model},
                                  dimensions=dimensions, as_series=as_series,
                                  inputs_per_request=inputs_per_request)  # fmt: skip

    def estimate(
        self,
        template: Any = None,
        *,
        schema: Any = None,
        labels: Any = None,
        multi: bool = False,
        reasons: bool = False,
        models: Any = None,
        sample: int | None = None,
        output_tokens: int | None = None,
        seed: int | None = None,
        verb: str = "map",
        **options: Any,
    ) -> Estimate | pd.DataFrame:
        """What the verb with the same arguments would send and cost, before paying for it.

        ``labels=`` estimates :meth:`classify`, ``schema=`` :meth:`extract`, neither :meth:`map`;
        ``rows_per_request=``, ``mode=``, ``system=``, ``max_tokens=`` and the other options
        are the verb's. Rows, unique prompts after dedup, cache hits, input tokens (exact:
        the verb's messages, schema and packs), output tokens (from the labels for
        ``classify``; else bounded by ``max_tokens``, or an assumption: ``output_tokens=``
        per answer), dollars for realtime and the Batch API (``expected_cost``: the call's
        mode), and the prompt-cache saving where every request starts with the same 1,024+
        tokens. Nothing is sent, unless ``sample=k``: then k random prompts run for real
        (cached, so not paid twice) to measure output length. Shows as a table in a notebook.

        ``models=["gpt-4o-mini", "gpt-4.1-nano", ...]``: a DataFrame instead, one row per
        model (see ``pandas_llm._verbs.estimate.compare_models``). Raises ConfigError as the verb would.

        ``verb="embed"`` / ``"moderate"``: what :meth:`embed` / :meth:`moderate` would send
        (``template`` may be None on a Series; ``dimensions=`` for embed); no output tokens.

        Parameters:
            template, schema, labels, multi, reasons, **options: the verb's own arguments.
            models: model names to compare; sample: prompts to run for real (k), seed: which.
            output_tokens: the completion tokens assumed per answer; verb: "embed" / "moderate".

        Returns:
            An ``Estimate`` (``rows``, ``unique``, ``cached``, ``to_send``, ``input_tokens``,
            ``output_tokens`` and the dollar figures as ``Range(low, expected, high)``); with
            ``models=`` a DataFrame indexed by ``model`` with float64 ``cost``, ``batch_cost``
            and ``cost_per_1000_rows`` (NaN where the price is unknown).

        Raises:
            ConfigError: as the verb would (bad arguments, template or ``models=``), and for
                ``sample=`` / ``output_tokens=`` that are not whole numbers >= 1.
            FatalAPIError: only with ``sample=k``, as the verb would.
        """
        return _estimate.estimate_call(self._obj, template, options, verb=verb, schema=schema, labels=labels,
                                       multi=multi, reasons=reasons, models=models, sample=sample,
                                       output_tokens=output_tokens, seed=seed)  # fmt: skip


def register() -> None:
    pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
    pd.api.extensions.register_series_accessor("llm")(LLMAccessor)
