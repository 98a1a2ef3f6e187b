"""pandas-llm: an LLM over every row of a DataFrame, resumable, rate-limit aware and cheap.

    import pandas_llm  # registers the .llm accessor on DataFrame and Series
    df["fr"] = df.llm.map("Translate to French: {text}", model="gpt-4o-mini")

Importing registers the accessors and does nothing else: no logging set-up, no I/O. With Dask
installed, ``ddf.llm`` is registered when ``dask.dataframe`` is imported (see pandas_llm.dask).
"""

from .accessor import LLMAccessor
from .accessor import register as _register
from .dask import install as _install_dask
from .batch_view import BatchStatus
from .config import BatchLimits, Settings, configure, current_settings, settings
from .errors import (
    APIError,
    ConfigError,
    FatalAPIError,
    LocalServerError,
    PandasLLMError,
    QuotaError,
    RateLimitError,
    RequestError,
    RequestShapeError,
    RetryableError,
    StoreError,
    TemplateError,
)
from .estimate import Estimate
from .packing import PackingReport
from .jobs import BatchJob
from .ledger import list_batches
from .pipeline import RunReport, RunWarning, last_run
from .pricing import Price
from .structured import PromptOrderWarning

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "BatchJob",
    "BatchLimits",
    "BatchStatus",
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
    "RequestError",
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
