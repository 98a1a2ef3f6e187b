"""pandas-llm: an LLM over every row of a DataFrame, resumable, rate-limit aware and cheap.

    import pandas_llm  # registers the .llm accessor on DataFrame and Series
    df["fr"] = df.llm.map("Translate to French: {text}", model="gpt-4o-mini")

Importing registers the accessors and does nothing else: no logging set-up, no I/O. With Dask
installed, ``ddf.llm`` is registered when ``dask.dataframe`` is imported (see pandas_llm._dask.accessor).
"""

from ._accessor import LLMAccessor
from ._accessor import register as _register
from ._backends.base import Backend, Completion
from ._batch.job import BatchJob
from ._batch.status import BatchStatus
from ._config import BatchLimits, Settings, configure, current_settings, settings
from ._dask.accessor import install as _install_dask
from ._errors import (
    APIError,
    BadRequestError,
    ConfigError,
    FatalAPIError,
    LocalServerError,
    PandasLLMError,
    QuotaError,
    RateLimitError,
    RequestShapeError,
    RetryableError,
    StoreError,
    TemplateError,
)
from ._pricing import Price
from ._run.packing import PackingReport
from ._run.run import RunWarning
from ._stats import RunReport, last_run
from ._store.ledger import list_batches
from ._verbs import PromptOrderWarning
from ._verbs.figures import Estimate

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "Backend",
    "BatchJob",
    "BatchLimits",
    "BatchStatus",
    "Completion",
    "ConfigError",
    "Estimate",
    "FatalAPIError",
    "LLMAccessor",
    "LocalServerError",
    "PackingReport",
    "PandasLLMError",
    "Price",
    "PromptOrderWarning",
    "QuotaError",
    "RateLimitError",
    "BadRequestError",
    "RequestShapeError",
    "RetryableError",
    "RunReport",
    "RunWarning",
    "Settings",
    "StoreError",
    "TemplateError",
    "configure",
    "current_settings",
    "last_run",
    "list_batches",
    "settings",
]

_register()
_install_dask()  # ddf.llm once dask.dataframe is imported (never imports Dask itself)


def __getattr__(name: str):  # RequestError: BadRequestError's old name, with a DeprecationWarning
    from ._errors import deprecated_name

    return deprecated_name(__name__, name)
