"""Resume: fill a plan's outcomes with the answers already in the cache, in bulk.

A rerun of a finished 1M-row map must come back in seconds, so answers are read in
large batches and written into the outcome arrays column by column (no Record object
and no Python call per row). Two ways to find them, whichever reads less:

- probe: ``WHERE key IN (...)`` in batches of the plan's keys (a cache much larger than
  the plan: other frames, other prompts);
- scan: read every ``ok`` row once and match keys with numpy (a cache about the size of
  the plan: the usual rerun), about twice as fast per row as probing.

Only ``ok`` answers are used; failed ones are sent again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._store.store import Store
from .dedup import KEY_SIZE, Keys
from .outcomes import Outcomes

__all__ = ["load_cached"]

_BATCH = 32768
_SCAN_MIN_KEYS = 20_000  # below this, probing is fast whatever the cache's size
_SCAN_RATIO = 3  # scan when the cache holds at most this many rows per key looked up


def load_cached(store: Store, keys: Keys | Sequence[bytes], outcomes: Outcomes) -> int:
    """Fill ``outcomes`` for every key answered ``ok`` in ``store``; returns how many."""
    k = len(keys)
    if k == 0:
        return 0
    store.want(keys)
    if store.is_empty():  # a new file (a first run): ~2 µs a key of probing saved
        return 0
    blob = getattr(keys, "blob", None)
    if blob is not None and k >= _SCAN_MIN_KEYS and store.count() <= _SCAN_RATIO * k:
        return _scan(store, blob, k, outcomes)
    return _probe(store, keys, outcomes)


def _probe(store: Store, keys: Sequence[bytes], outcomes: Outcomes) -> int:
    found = 0
    step = min(_BATCH, store.max_keys)
    for start, rows in store.answers(keys, step=step):
        if rows:
            where = dict(zip(keys[start : start + step], range(start, start + step)))
            cols: list[Sequence[Any]] = list(zip(*rows))
            _fill(outcomes, np.fromiter((where[key] for key in cols[0]), np.int64, len(rows)), cols)
            found += len(rows)
    return found


def _scan(store: Store, blob: bytes, k: int, outcomes: Outcomes) -> int:
    mine = np.frombuffer(blob, dtype=np.uint64).reshape(k, 4)
    order = np.argsort(mine[:, 0], kind="stable")
    heads = mine[order, 0]
    found = 0
    for rows in store.all_answers(_BATCH):
        cols: list[Sequence[Any]] = list(zip(*rows))
        joined = b"".join(cols[0])
        if len(joined) != KEY_SIZE * len(rows):  # a key of another size: not one of ours
            cols[0] = tuple(key if len(key) == KEY_SIZE else b"\0" * KEY_SIZE for key in cols[0])
            joined = b"".join(cols[0])
        theirs = np.frombuffer(joined, dtype=np.uint64).reshape(len(rows), 4)
        pos = np.minimum(np.searchsorted(heads, theirs[:, 0]), k - 1)
        cand = order[pos]
        hit = np.flatnonzero((heads[pos] == theirs[:, 0]) & (mine[cand] == theirs).all(axis=1))
        if len(hit) == 0:
            continue
        if len(hit) < len(rows):
            cols = [[col[i] for i in hit.tolist()] for col in cols]
        _fill(outcomes, cand[hit], cols)
        found += len(hit)
    return found


def _fill(outcomes: Outcomes, us: np.ndarray, cols: Sequence[Sequence[Any]]) -> None:
    """Write one batch of ``ok`` rows (the store's ``ANSWER_FIELDS``) into the outcome arrays."""
    n = len(us)
    outcomes.output[us] = _objects(cols[1], n)
    outcomes.status[us] = "ok"
    outcomes.error[us] = None
    memo: dict[Any, Any] = {}  # one str object per distinct finish_reason, not one per row
    outcomes.finish_reason[us] = _objects([memo.setdefault(v, v) for v in cols[2]], n)
    outcomes.prompt_tokens[us] = cols[3]
    outcomes.completion_tokens[us] = cols[4]
    outcomes.cached_tokens[us] = cols[5]
    outcomes.cost[us] = [math.nan if c is None else c for c in cols[6]]
    outcomes.attempts[us] = cols[7]
    outcomes.from_cache[us] = True


def _objects(values: Sequence[Any], n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = values
    return out
