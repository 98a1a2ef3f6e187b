"""Estimate a run before paying for it: rows, unique prompts, cache hits, tokens, dollars.

Without ``sample`` nothing is sent: the frame is planned exactly as ``map`` would plan it
(render, dedup, cache look-up) and the prompts still to send are counted with tiktoken.
Output length is what no one knows in advance: it is bounded by ``max_tokens`` if set,
else an assumption that is stated (``output_tokens=``, default 100 per answer). With
``sample=k``, k random distinct prompts are run for real through the normal ``map``
(so they are cached and not paid twice) and the output length is extrapolated from their
answers, with a range (the mean's ~95% interval).

    >>> import pandas as pd, pandas_llm
    >>> df = pd.DataFrame({"text": ["hello", "world", "hello"]})
    >>> est = df.llm.estimate("Say: {text}", model="gpt-4o-mini", max_tokens=50, cache=False)
    >>> est.rows, est.unique, est.to_send, est.input_tokens
    (3, 2, 2, 20)
    >>> est.output_tokens
    Range(low=0, expected=None, high=100)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .._config import Settings, current_settings
from .._cost.models import context_window
from .._cost.tokens import count_message_tokens, count_text_tokens, encoding_name_for
from .._errors import ConfigError
from .._plan.endpoints import Embeddings, Moderations
from .._plan.planner import make_plan
from .._plan.replay import Replay
from .._pricing import resolve_price
from .._stats import last_run
from .._store.store import Store
from .endpoints import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODERATION_MODEL, _settings, template_for
from .figures import DEFAULT_OUTPUT_TOKENS, Estimate, Range, plan_counts
from .structured import requests_for

__all__ = ["Estimate", "Range", "estimate", "estimate_call", "estimate_endpoint", "compare_models", "DEFAULT_OUTPUT_TOKENS",
           "CACHE_MIN_TOKENS"]  # fmt: skip


def estimate_call(data: pd.DataFrame | pd.Series, template: Any, options: dict[str, Any], *, verb: str,
                  schema: Any, labels: Any, multi: bool, reasons: bool, models: Any, sample: int | None,
                  output_tokens: int | None, seed: int | None) -> Estimate | pd.DataFrame:  # fmt: skip
    """``df.llm.estimate(...)``: the estimate of the verb its arguments name (``labels=``: classify,
    ``schema=``: extract, else map; ``verb="embed"`` / ``"moderate"``), or one row per model
    with ``models=``. A sample (``sample=k``) runs through the verb itself, ``details=True``."""
    if verb in ("embed", "moderate"):
        dimensions = options.pop("dimensions", None)
        return estimate_endpoint(data, template, options, verb, dimensions=dimensions)
    settings = current_settings().merged(**options)
    verb = "classify" if labels is not None else "extract" if schema is not None else "map"
    kw = dict(schema=schema, labels=labels, multi=multi, reasons=reasons)
    # a function template planned more than once (per model, for the sample) is called once a row
    replays: list[Replay] | None = [] if _is_function(template) and (sample or models is not None) else None

    def one(s: Settings) -> Estimate:
        def run_sample(subset: pd.DataFrame | pd.Series, template: Any) -> pd.DataFrame:
            o = {**options, "model": s.model}
            if verb == "classify":
                return subset.llm.classify(template, labels, multi=multi, reasons=reasons, details=True, **o)
            return subset.llm.map(template, schema=schema, details=True, **o)

        return estimate(data, template, s, verb=verb, **kw, sample=sample, output_tokens=output_tokens, seed=seed,
                        run_sample=run_sample, replays=replays)  # fmt: skip

    if models is not None:
        return compare_models(models, settings, one)
    return one(settings)


def estimate(
    data: pd.DataFrame | pd.Series,
    template: Any,
    settings: Settings,
    *,
    verb: str = "map",
    schema: Any = None,
    labels: Any = None,
    multi: bool = False,
    reasons: bool = False,
    sample: int | None = None,
    output_tokens: int | None = None,
    seed: int | None = None,
    run_sample: Callable[[pd.DataFrame | pd.Series, Any], pd.DataFrame] | None = None,
    replays: list[Replay] | None = None,
) -> Estimate:
    """Plan ``data`` like the verb would and price it; ``sample=k`` runs k prompts for real.

    ``verb`` ("map", "extract", "classify") with ``schema=`` / ``labels=`` / ``multi=`` /
    ``reasons=`` as the verb takes them: the requests counted are the verb's own (its
    system instruction and ``response_format``, billed as input), packed when
    ``settings.rows_per_request > 1`` (the packs' prompts and envelope schema), priced at
    Batch API rates when ``settings.mode == "batch"`` (see ``Estimate.expected_cost``).
    ``run_sample(subset, template) -> details frame`` runs the sample (the accessor passes its
    own verb with ``details=True`` and the same options). ``replays``: a function template is
    called once per row of ``data`` (replay.Replay, kept there for the next estimate of the
    same call), and every plan and the sample use those results; a function template with
    ``sample=k`` is always called once per row. Raises ConfigError as the verb would,
    before the function is called.
    """
    for name, value in (("sample", sample), ("output_tokens", output_tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a whole number >= 1 or None, got {value!r}")
    if sample and run_sample is None:
        raise ConfigError("estimate(sample=k) needs a way to run the sample")
    sends = requests_for(settings, template, verb=verb, schema=schema, labels=labels, multi=multi, reasons=reasons)
    if _is_function(template) and (sample or replays is not None):
        if replays is None:
            replays = []
        if not replays:
            replays.append(Replay.record(data, template, settings))
        template = replays[0]
        sends = requests_for(settings, template, verb=verb, schema=schema, labels=labels, multi=multi,
                             reasons=reasons)  # fmt: skip
    price = resolve_price(settings.model, settings.prices)
    observed: np.ndarray | None = None
    sampled = 0
    sample_cost: float | None = 0.0
    if sample and run_sample is not None:
        rows = _pick(data, sends.template, sends.settings, sample, seed, sends.extra)
        sampled = len(rows)
        if sampled:
            details = run_sample(
                data.iloc[rows], template.take(rows.tolist()) if isinstance(template, Replay) else template
            )
            observed = _observed(details)
            fresh = details[~details["from_cache"]]
            sample_cost = None if fresh["cost"].isna().any() and len(fresh) else float(fresh["cost"].sum())

    packer = sends.packer
    store = Store(settings.cache_path)
    try:
        plan = make_plan(data, sends.template, sends.settings, store, extra=sends.extra)
        to_send = len(plan.todo)
        if packer is not None:
            packer.prepare(plan, store)  # rows already answered in a pack are cache hits too
    finally:
        store.close()
    known = encoding_name_for(settings.model) is not None
    rf = sends.extra["response_format"] if sends.extra else None
    requests: list[tuple[list[dict[str, Any]], int]]
    if packer is not None:
        requests = list(packer.layout(plan))
        rf_single, rf_pack = packer.response_format_tokens
    else:
        requests = [(plan.messages_of(u), 1) for u in plan.todo.tolist()]
        rf_single = rf_pack = _schema_tokens(rf, settings.model)
    params = settings.params
    limit = params.get("max_completion_tokens") or params.get("max_tokens")
    window = context_window(settings.model) if known else None
    fits = math.inf if window is None else window - (limit or 1)  # as map's check (budget.ContextCheck)
    input_tokens = too_long = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown tokenizer is said in the table instead
        for messages, n in requests:
            tokens = count_message_tokens(messages, settings.model)
            if n == 1 and tokens > fits:  # map does not send it (status too_long)
                too_long += 1
                continue
            input_tokens += tokens + (rf_pack if n > 1 else rf_single)
        prefix = _cacheable_prefix(requests, rf, settings.model)
    cached_input = prefix * max(0, len(requests) - too_long - 1)
    rows_sent = sum(n for _, n in requests) - too_long
    per_answer = _answer_tokens(sends, settings.model, packed=packer is not None, multi=multi, reasons=reasons)
    if observed is None and output_tokens is None and per_answer is not None:
        out, basis = Range(*(round(rows_sent * per_answer),) * 3), f"~{per_answer:.1f} per answer (the labels' JSON)"
    else:
        out, basis = _output(rows_sent, observed, limit, output_tokens)
    if packer is not None:
        packs = sum(1 for _, n in requests if n > 1)
        extra_out = packs * _PACK_ENVELOPE + (rows_sent * _ITEM_ID if per_answer is None else 0)
        out = out.scale(lambda x: x + extra_out)
        basis += f"; {len(requests):,} requests ({packs:,} packs of up to {packer.k} rows)"
    return Estimate(
        model=settings.model,
        **plan_counts(plan),
        to_send=len(plan.todo) - too_long,
        input_tokens=input_tokens,
        input_exact=known,
        output_tokens=out,
        output_basis=basis,
        price=price,
        sampled=sampled,
        sample_cost=sample_cost if price is not None else None,
        max_cost=settings.max_cost,
        requests=(len(requests) if packer is not None else to_send) - too_long,
        mode=settings.mode,
        cached_input_tokens=cached_input,
        cache_prefix_tokens=prefix,
        too_long=too_long,
        context_window=window,
    )


def compare_models(models: Any, settings: Settings, one: Callable[[Settings], Estimate]) -> pd.DataFrame:
    """The same job priced for each model, one row each (index ``model``): ``input_tokens``,
    ``output_tokens`` (expected, or the bound), ``cost`` and ``batch_cost`` (USD, NaN when the
    price is unknown), ``cost_per_1000_rows`` (USD, at the call's mode)."""
    if isinstance(models, str) or not models:
        raise ConfigError("models= must be a list of model names, e.g. models=['gpt-4o-mini', 'gpt-4.1-nano']")
    rows = []
    for model in models:
        est = one(settings.merged(model=model))
        cost, batch = est.cost, est.batch_cost
        bill = est.expected_cost
        rows.append({
            "model": model,
            "input_tokens": est.input_tokens,
            "output_tokens": _point(est.output_tokens),
            "cost": np.nan if cost is None else _point(cost),
            "batch_cost": np.nan if batch is None else _point(batch),
            "cost_per_1000_rows": np.nan if bill is None or not est.rows else _point(bill) * 1000 / est.rows,
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("model")


def _point(r: Range) -> float:
    return float(r.expected if r.expected is not None else r.high)


#: Completion tokens a packed answer adds: the envelope per pack, an id per item.
_PACK_ENVELOPE = 4
_ITEM_ID = 5
#: Providers cache prompt prefixes from this many tokens on, in steps of _CACHE_STEP (OpenAI).
CACHE_MIN_TOKENS = 1024
_CACHE_STEP = 128


def _schema_tokens(response_format: Any, model: str) -> int:
    if response_format is None:
        return 0
    from .._structured.packing import _counter, _rf_tokens

    return _rf_tokens(response_format, _counter(model))


def _answer_tokens(sends: Any, model: str, *, packed: bool, multi: bool, reasons: bool) -> float | None:
    """Completion tokens of one classify answer (a label's JSON; averaged over labels), or None
    when the answer's length is not known from the schema (free text, extract, reasons)."""
    if sends.labels is None or reasons:
        return None
    field = "labels" if multi else "label"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        texts = [orjson.dumps({"id": 10, field: [x] if multi else x} if packed else {field: [x] if multi else x})
                 for x in sends.labels]  # fmt: skip
        sizes = [count_text_tokens(t.decode() + ("," if packed else ""), model) for t in texts]
    return sum(sizes) / len(sizes)


def _cacheable_prefix(requests: list[tuple[list[dict[str, Any]], int]], rf: Any, model: str) -> int:
    """Prompt tokens the provider's cache can serve on every request after the first: the
    first two requests' common beginning (the schema, then the messages), counted when it is
    at least CACHE_MIN_TOKENS long, in steps of _CACHE_STEP; 0 with fewer than 2 requests."""
    if len(requests) < 2:
        return 0
    head = orjson.dumps(rf).decode() + "\n" if rf is not None else ""
    a, b = (head + "\n".join(str(m.get("content", "")) for m in r[0]) for r in requests[:2])
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    tokens = count_text_tokens(a[:n], model) if n >= CACHE_MIN_TOKENS else 0
    return tokens - tokens % _CACHE_STEP if tokens >= CACHE_MIN_TOKENS else 0


def _is_function(template: Any) -> bool:
    return callable(template) and not isinstance(template, (str, Replay))


def _pick(data: Any, template: Any, settings: Settings, k: int, seed: int | None, extra: Any = None) -> np.ndarray:
    """The positions of k random rows asking distinct prompts (NA rows excluded), in frame order."""
    with Store(None) as scratch:
        plan = make_plan(data, template, settings, scratch, extra=extra)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(plan.keys), size=min(k, len(plan.keys)), replace=False)
    return np.sort(plan.first_row[chosen])


def _observed(details: pd.DataFrame) -> np.ndarray:
    """The completion tokens of the sample's answers, one per request, cached ones included: read
    from the run's per-request outcomes (``details`` shows a duplicate's share, and 0 for a row
    from the cache, so that its rows add up to the run's figures); ``details`` if that run is
    not the sample's."""
    plan: Any = getattr(last_run(), "plan", None)
    outcomes = getattr(plan, "outcomes", None)
    if outcomes is not None and plan.index.equals(details.index):
        answered = np.isin(outcomes.status, ["ok", "length"]) & (outcomes.completion_tokens > 0)
        return outcomes.completion_tokens[answered].astype(float)
    answered = details[details["status"].isin(["ok", "length"]) & (details["completion_tokens"] > 0)]
    return answered["completion_tokens"].to_numpy(dtype=float)


def _output(n: int, observed: np.ndarray | None, limit: int | None, assumed: int | None) -> tuple[Range, str]:
    """Completion tokens of ``n`` requests, and how that figure was arrived at."""
    if observed is not None and len(observed):
        m = len(observed)
        mean = float(observed.mean())
        half = 2 * float(observed.std(ddof=1)) / math.sqrt(m) if m > 1 else 0.0
        lo = max(float(observed.min()), mean - half)
        hi = min(float(observed.max()), mean + half)
        if limit:
            hi = min(hi, limit)
        basis = f"from {m:,} sampled answer{'s' if m > 1 else ''}: mean {mean:,.1f} per answer"
        return Range(round(n * lo), round(n * mean), round(n * hi)), basis
    note = " (the sample gave no answers)" if observed is not None else ""
    if assumed is not None:
        per = min(assumed, limit) if limit else assumed
        return Range(n * per, n * per, n * per), f"assumed {per:,} per answer (output_tokens=){note}"
    if limit:
        return Range(0, None, n * limit), f"at most max_tokens={limit:,} per answer; sample=k measures it{note}"
    per = DEFAULT_OUTPUT_TOKENS
    return (
        Range(n * per, n * per, n * per),
        f"assumed {per} per answer: pass sample=k to measure, max_tokens= to bound{note}",
    )


def estimate_endpoint(data: Any, template: Any, options: Mapping[str, Any], verb: str, *,
                      dimensions: Any = None) -> Any:  # fmt: skip
    """What ``embed`` / ``moderate`` with the same arguments would send and cost (nothing is
    sent): rows, distinct texts, cache hits, input tokens (tiktoken for OpenAI's embedding
    models, else ~4 characters a token) and dollars, realtime and Batch API. No output tokens."""
    moderate = verb == "moderate"
    settings = _settings(options, DEFAULT_MODERATION_MODEL if moderate else DEFAULT_EMBEDDING_MODEL, verb)
    kind: Any = Moderations() if moderate else Embeddings(dimensions)
    store = Store(settings.cache_path)
    try:
        plan = make_plan(data, template_for(data, template, verb), settings, store, kind=kind)
    finally:
        store.close()
    exact = encoding_name_for(settings.model) is not None
    tokens = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for u in plan.todo.tolist():
            text = orjson.loads(plan.body_of(u))["input"]
            tokens += count_text_tokens(text, settings.model) if exact else len(text) // 4 + 1
    return Estimate(
        model=settings.model,
        **plan_counts(plan),
        to_send=len(plan.todo),
        input_tokens=tokens,
        input_exact=exact or moderate,
        output_tokens=Range(0, 0, 0),
        output_basis="the moderation endpoint is free" if moderate else "embeddings have no output tokens",
        price=kind.meter(settings).price,
        max_cost=settings.max_cost,
        mode=settings.mode,
    )
