"""Replay: a function template called once per row, its results given again to later plans.

A verb call that plans the same rows several times (``estimate`` with ``models=[...]``, one
plan per model; with ``sample=k``, the pick, the sample's own run and the estimate) must
still call the user's function once per row: it may not be pure (random examples, a
timestamp, a paid look-up), and the prompts priced, sampled and sent must be the same.
:meth:`Replay.record` calls it once per row through the planner's own renderer (so
``na=`` and the errors are the plan's); the Replay is then the template of every plan of
that call, and :meth:`Replay.take` the template of a subset of its rows. It holds each
row's result (the function's ``str`` or messages) for as long as the call lasts.

    >>> import pandas as pd
    >>> from pandas_llm._config import Settings
    >>> calls = []
    >>> def fn(row):
    ...     calls.append(row.text)
    ...     return f"Say {row.text}"
    >>> df = pd.DataFrame({"text": ["a", "b", "c"]})
    >>> replay = Replay.record(df, fn, Settings())
    >>> sub = replay.take([2, 0])
    >>> from pandas_llm._plan.planner import make_plan
    >>> from pandas_llm._store.store import Store
    >>> with Store(None) as store:
    ...     plan = make_plan(df.iloc[[2, 0]], sub, Settings(), store)
    >>> [plan.messages_of(u)[0]["content"] for u in plan.todo.tolist()], calls
    (['Say c', 'Say a'], ['a', 'b', 'c'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from .._config import Settings
from .planner import _renderer, frame_of
from .prompts import compile_template

__all__ = ["Replay"]


class Replay:
    """The results of one call per row of a function template, replayed by position.

    Only the planner calls it (its rows know their position in the frame planned), and
    only on the rows it was recorded from (``take``: a subset of them, in the subset's order).
    """

    __slots__ = ("_outputs", "_read_na", "_positions")

    def __init__(self, outputs: list[Any], read_na: list[bool], positions: Sequence[int] | None = None):
        self._outputs, self._read_na, self._positions = outputs, read_na, positions

    @classmethod
    def record(cls, data: pd.DataFrame | pd.Series, fn: Callable[..., Any], settings: Settings) -> Replay:
        """Call ``fn`` once per row of ``data`` as a plan would (``settings.na``); raises what a plan raises."""
        series, frame, names = frame_of(data)
        outputs: list[Any] = []
        read_na: list[bool] = []

        def once(row: Any) -> Any:
            out = fn(row)
            outputs.append(out)
            read_na.append(row._read_na)
            return out

        render = _renderer(frame, compile_template(once, names, series=series), settings)
        for i in range(len(frame)):
            render(i)
        return cls(outputs, read_na)

    def take(self, positions: Sequence[int]) -> Replay:
        """The Replay of the rows at ``positions`` (of the data recorded), in that order."""
        at = [int(p) for p in positions]
        if self._positions is not None:
            at = [self._positions[p] for p in at]
        return Replay(self._outputs, self._read_na, at)

    def __call__(self, row: Any) -> Any:
        i = row._position
        if self._positions is not None:
            i = self._positions[i]
        if self._read_na[i]:
            row._read_na = True  # as the first call read an NA cell: the row is skipped again
        return self._outputs[i]
