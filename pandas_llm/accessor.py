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

from typing import Any

import pandas as pd

from . import _runner
from .config import current_settings
from .pipeline import Run

__all__ = ["LLMAccessor"]


class LLMAccessor:
    """``df.llm`` / ``s.llm``: apply an LLM to every row."""

    def __init__(self, obj: pd.DataFrame | pd.Series):
        self._obj = obj

    def _run(self, template: Any, options: dict[str, Any]) -> Run:
        settings = current_settings().merged(**options)
        return Run(self._obj, template, settings)

    def map(self, template: Any, *, details: bool = False, **options: Any) -> pd.Series | pd.DataFrame:
        """Send one prompt per row; return the answers as a string Series aligned to the index.

        ``template`` is a ``str.format`` template naming columns (``"Translate: {text}"``;
        on a Series, ``"{}"``) or a function ``row -> str | list[message]``. Keywords:
        ``model``, ``system``, ``temperature``, ``max_tokens`` and other generation
        parameters by their API names, ``concurrency``, ``cache`` (a path, or False),
        ``progress``, ``timeout``, ``base_url``, ``api_key``, ``client``. Rows already
        answered come from the cache; failed rows are NA (``details=True`` shows why).
        """
        run = self._run(template, options)
        _runner.run_sync(run.execute)
        return run.result(details=details)

    async def amap(self, template: Any, *, details: bool = False, **options: Any) -> pd.Series | pd.DataFrame:
        """The coroutine twin of :meth:`map`, for code already inside an event loop."""
        import asyncio

        import contextvars

        ctx = contextvars.copy_context()
        run = await asyncio.to_thread(ctx.run, self._run, template, options)
        await run.execute()
        return run.result(details=details)


def register() -> None:
    pd.api.extensions.register_dataframe_accessor("llm")(LLMAccessor)
    pd.api.extensions.register_series_accessor("llm")(LLMAccessor)
