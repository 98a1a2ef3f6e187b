"""Deprecated: import the exceptions from ``pandas_llm`` itself (``pandas_llm.PandasLLMError``).

Kept so that ``from pandas_llm.errors import ...``, which the README once showed, still works;
it warns once per import of this module.
"""

import warnings

from ._errors import *  # noqa: F403
from ._errors import __all__  # noqa: F401

warnings.warn(
    "pandas_llm.errors is deprecated: import the exceptions from pandas_llm (e.g. pandas_llm.PandasLLMError).",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):  # RequestError: BadRequestError's old name, with a DeprecationWarning
    from ._errors import deprecated_name

    return deprecated_name("pandas_llm", name)
