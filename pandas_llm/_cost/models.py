"""The one table of model families: tokenizer, output limit and context window by name prefix.

A model's name is read without a fine-tune prefix (``ft:gpt-4o-mini:org::id``) or a
provider prefix (``openai/gpt-4o``); the first prefix it starts with names its family,
so the longer names come first. A request can never produce more completion tokens than
the family's output limit, and its prompt plus its ``max_tokens`` must fit the context
window (the API refuses it otherwise, after the prompt was sent). None: not published
here (a family whose tokenizer alone is known).

    >>> family("ft:gpt-4.1-mini:org::x")
    Family(prefix='gpt-4.1', encoding='o200k_base', max_output=32768, context_window=1047576)
    >>> context_window("gpt-4o-mini"), max_output_tokens("gpt-4"), family("my-llama")
    (128000, 8192, None)
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CL100K", "O200K", "Family", "context_window", "family", "max_output_tokens"]

O200K = "o200k_base"
CL100K = "cl100k_base"


class Family(NamedTuple):
    """Models whose names start with ``prefix``: their tiktoken ``encoding`` and their
    limits in tokens (``max_output`` per answer, ``context_window`` for prompt and answer)."""

    prefix: str
    encoding: str | None
    max_output: int | None
    context_window: int | None


# OpenAI's published limits. First match wins: the o-series and gpt-4o/4.1/4.5 come
# before plain "gpt-4", "o1-mini" before "o1".
FAMILIES: tuple[Family, ...] = (
    Family("gpt-4o-mini", O200K, 16_384, 128_000),
    Family("gpt-4o", O200K, 16_384, 128_000),
    Family("chatgpt-4o", O200K, 16_384, 128_000),
    Family("gpt-4.1", O200K, 32_768, 1_047_576),
    Family("gpt-4.5", O200K, 16_384, 128_000),
    Family("gpt-4-turbo", CL100K, 4_096, 128_000),
    Family("gpt-4-1106", CL100K, 4_096, 128_000),
    Family("gpt-4-0125", CL100K, 4_096, 128_000),
    Family("gpt-4-32k", CL100K, 8_192, 32_768),
    Family("gpt-4", CL100K, 8_192, 8_192),
    Family("gpt-3.5", CL100K, 4_096, 16_385),
    Family("gpt-35", CL100K, None, None),  # Azure's deployment spelling
    Family("gpt-5", O200K, 128_000, 400_000),
    Family("gpt-oss", O200K, None, None),  # o200k_harmony: the same ranks, only extra special tokens
    Family("o1-mini", O200K, 65_536, 128_000),
    Family("o1", O200K, 100_000, 200_000),
    Family("o3", O200K, 100_000, 200_000),
    Family("o4", O200K, 100_000, 200_000),
    Family("text-embedding-", CL100K, None, None),
)


def family(model: str) -> Family | None:
    """The family of ``model``, or None if no prefix of the table matches."""
    name = model.lower().removeprefix("ft:").rpartition("/")[2]
    for f in FAMILIES:
        if name.startswith(f.prefix):
            return f
    return None


def context_window(model: str) -> int | None:
    """The context window of ``model`` in tokens (prompt and answer together), or None if unknown.

    >>> context_window("gpt-4o-mini"), context_window("openai/gpt-4.1-nano"), context_window("my-llama")
    (128000, 1047576, None)
    """
    f = family(model)
    return None if f is None else f.context_window


def max_output_tokens(model: str, *, provider: str | None = None) -> int | None:
    """The most completion tokens ``model`` can produce in one answer, or None if unknown.

    The table's output limit; for other models in the price table, the context window
    (prompt and answer share it, so it bounds the answer too).

    >>> max_output_tokens("gpt-4o-mini"), max_output_tokens("ft:gpt-4.1-mini:org::x"), max_output_tokens("my-llama")
    (16384, 32768, None)
    """
    f = family(model)
    if f is not None and f.max_output is not None:
        return f.max_output
    try:
        from genai_prices import Usage, calc_price  # ~0.15 s to import, so only when needed

        window = calc_price(Usage(), model, provider_id=provider).model.context_window
    except LookupError:
        return None
    return int(window) if window else None
