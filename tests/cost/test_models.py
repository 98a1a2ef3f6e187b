"""One table of model families: the tokenizer, the output limit and the context window agree."""

from __future__ import annotations

import ast
import pathlib

import pytest

from pandas_llm._cost import models, tokens
from pandas_llm._run import budget

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("f", models.FAMILIES, ids=lambda f: f.prefix)
def test_every_family_answers_for_its_tokenizer_and_its_limits(f):
    model = f.prefix + "-x"
    assert models.family(model) == f
    assert tokens.encoding_name_for(model) == f.encoding
    assert models.context_window(model) == f.context_window
    if f.max_output is not None:
        assert models.max_output_tokens(model) == f.max_output


def test_a_longer_prefix_is_never_hidden_by_a_shorter_one():
    prefixes = [f.prefix for f in models.FAMILIES]
    for i, p in enumerate(prefixes):
        assert not any(p.startswith(q) for q in prefixes[:i]), f"{p!r} comes after a prefix of it"


def test_the_budget_reads_the_one_table():
    assert budget.context_window is models.context_window
    assert budget.max_output_tokens is models.max_output_tokens
    assert not hasattr(budget, "_LIMITS") and not hasattr(tokens, "_PREFIXES")
    check = budget.ContextCheck.for_model("gpt-4-32k")
    assert (check.window, check.bytes_ok) == (32_768, 32_768 - 8_192)
    assert budget.ContextCheck.for_model("gpt-35-turbo") is None  # its tokenizer alone is known


def _imports(path: pathlib.Path) -> set[str]:
    """The pandas_llm modules ``path`` imports, as ``pandas_llm.<...>`` names."""
    package = "pandas_llm." + ".".join(path.relative_to(ROOT).parent.parts[1:])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            found.add(f"{base}.{node.module}" if node.module else base)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pandas_llm"):
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", ["meter", "models", "tokens"])
def test_the_cost_layer_imports_only_the_ground(name):
    ground = {"pandas_llm._errors", "pandas_llm._pricing", "pandas_llm._config", "pandas_llm._backends"}
    for module in _imports(ROOT / "pandas_llm" / "_cost" / f"{name}.py"):
        assert module in ground or module.startswith("pandas_llm._cost."), module


def test_the_plan_layer_prices_without_importing_the_run_layer():
    imported = _imports(ROOT / "pandas_llm" / "_plan" / "endpoints.py")
    assert "pandas_llm._cost.meter" in imported
    assert not [m for m in imported if m.startswith("pandas_llm._run")]
