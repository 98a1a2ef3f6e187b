"""The public face: __all__ is exactly the public names; importing has no side effects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pandas_llm


def test_all_is_exactly_the_public_names():
    """Every internal module is private (a leading underscore), so no subtraction is needed:
    the only public modules are pandas_llm.testing and pandas_llm.local, imported on demand."""
    code = "import pandas_llm; print(sorted(n for n in dir(pandas_llm) if not n.startswith('_')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == str(sorted(pandas_llm.__all__))


def test_the_only_public_modules_are_testing_and_local():
    import pkgutil

    names = {m.name for m in pkgutil.iter_modules(pandas_llm.__path__) if not m.name.startswith("_")}
    assert names == {"testing", "local", "errors"}  # errors: a deprecated alias, see below


def test_the_old_errors_module_still_imports_with_a_deprecation_warning():
    code = "import warnings; warnings.simplefilter('error');from pandas_llm.errors import PandasLLMError"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode != 0 and "DeprecationWarning: pandas_llm.errors is deprecated" in res.stderr
    res = subprocess.run([sys.executable, "-c", code.replace("'error'", "'ignore'")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_import_registers_accessors_and_does_nothing_else(tmp_path):
    code = (
        "import logging, os, pandas as pd, pandas_llm;"
        "assert hasattr(pd.DataFrame, 'llm') and hasattr(pd.Series, 'llm');"
        "assert not logging.getLogger().handlers;"
        "assert not os.path.exists('.pandas_llm');"
        "import threading; assert threading.active_count() == 1"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""


def test_request_error_is_bad_request_error_under_its_deprecated_old_name():
    """A 400 is OpenAI's BadRequestError; the old name read as httpx's RequestError (the opposite)."""
    import warnings

    from pandas_llm import _errors

    assert "BadRequestError" in pandas_llm.__all__ and "RequestError" not in pandas_llm.__all__
    for module in (pandas_llm, _errors):
        with pytest.warns(DeprecationWarning, match="RequestError is deprecated: use .*BadRequestError"):
            assert module.RequestError is pandas_llm.BadRequestError
    with pytest.warns(DeprecationWarning, match="RequestError is deprecated") as caught:
        from pandas_llm import RequestError
    assert len(caught) == 1  # once, though ``from ... import`` asks the module twice
    assert issubclass(RequestError, pandas_llm.APIError)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pandas_llm.errors import RequestError as old
    assert old is pandas_llm.BadRequestError
    with pytest.raises(AttributeError):
        pandas_llm.NoSuchError  # noqa: B018
