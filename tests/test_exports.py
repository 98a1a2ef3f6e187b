"""The public face: __all__ is exactly the public names; importing has no side effects."""

from __future__ import annotations

import subprocess
import sys

import pandas_llm


def test_all_is_exactly_the_public_names():
    public = {n for n in dir(pandas_llm) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(pandas_llm, n)).__name__ == "module"}
    assert set(pandas_llm.__all__) == public - modules


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
