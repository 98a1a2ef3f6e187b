"""Token counts: offline, equal to tiktoken's own, and fast enough to call per row."""

from __future__ import annotations

import gzip
import warnings

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public

from pandas_llm._cost import tokens

SAMPLES = [
    "hello world",
    "tiktoken is great!",
    "Translate to French: The café's crème brûlée costs €4.50 (1234567 units).",
    "  leading spaces\n\n\ttabs and\r\nCRLF  ",
    "def f(x):\n    return x ** 2  # squares\n",
    "日本語のテキストと한국어 텍스트, emoji 🎉👩‍💻, and Ünïcödé",
    "I'm sure they'll say it's fine, WE'LL SEE, don't you think?",
    "<|endoftext|> is counted as text, not as a special token",
    "",
]

COOKBOOK_MESSAGES = [  # from OpenAI's cookbook "How to count tokens with tiktoken"
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more time to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


def _clear_caches() -> None:
    tokens.encoding_for.cache_clear()
    tokens._loaded.clear()
    tokens._warned_models.clear()


@pytest.fixture
def offline(no_network, monkeypatch, tmp_path):
    """No network, an empty tiktoken cache, and the encodings loaded afresh."""
    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))
    _clear_caches()
    yield cache_dir
    _clear_caches()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """tiktoken's own constructors (its pattern, its parser, its hash check) fed the
    same local files, to prove our copy of the encoding definitions is exact."""
    directory = tmp_path_factory.mktemp("bpe")
    built = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # "" disables tiktoken's cache

        def local(url, expected_hash):
            name = url.rsplit("/", 1)[1]
            path = directory / name
            path.write_bytes(gzip.decompress(tokens._bpe_path(name.split(".")[0]).read_bytes()))
            return tiktoken.load.load_tiktoken_bpe(str(path), expected_hash)

        mp.setattr(openai_public, "load_tiktoken_bpe", local)
        for name in ("o200k_base", "cl100k_base"):
            built[name] = tiktoken.Encoding(**getattr(openai_public, name)())
    return built


def test_known_counts_offline(offline):
    assert tokens.count_text_tokens("hello world", "gpt-4o-mini") == 2
    assert tokens.encoding_for("gpt-4o-mini").encode_ordinary("hello world") == [24912, 2375]
    assert tokens.encoding_for("gpt-4").encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert list(offline.iterdir()) == []  # tiktoken's cache was neither read nor seeded


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_same_tokens_as_tiktoken(offline, reference, name):
    ours = tokens._load(name)
    theirs = reference[name]
    assert ours.n_vocab == theirs.n_vocab
    assert ours._special_tokens == theirs._special_tokens
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), text


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("llama3", None),
        ("Qwen/Qwen2.5-0.5B-Instruct", None),
    ],
)
def test_model_to_encoding(model, encoding):
    assert tokens.encoding_name_for(model) == encoding


def test_unknown_model_falls_back_and_warns_once(offline):
    with pytest.warns(UserWarning, match="'llama3'.*o200k_base"):
        assert tokens.count_text_tokens("hello world", "llama3") == 2
    tokens.encoding_for.cache_clear()  # the once-only rule must not rest on the lru cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tokens.count_text_tokens("hello world", "llama3") == 2
    with pytest.warns(UserWarning, match="'mistral'"):
        tokens.encoding_for("mistral")


def test_cookbook_message_counts(offline):
    # The cookbook reports 129 (gpt-3.5-turbo, gpt-4) and 124 (gpt-4o, gpt-4o-mini),
    # equal to the prompt_tokens the API returned for these messages.
    assert tokens.count_message_tokens(COOKBOOK_MESSAGES, "gpt-4") == 129
    assert tokens.count_message_tokens(COOKBOOK_MESSAGES, "gpt-3.5-turbo") == 129
    assert tokens.count_message_tokens(COOKBOOK_MESSAGES, "gpt-4o-mini") == 124


def test_message_overheads(offline):
    hello = [{"role": "user", "content": "hello world"}]
    assert tokens.count_message_tokens([], "gpt-4o") == 3  # reply priming only
    assert tokens.count_message_tokens(hello, "gpt-4o") == 3 + 3 + 1 + 2
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    assert tokens.count_message_tokens(named, "gpt-4o") == 9 + 1 + tokens.count_text_tokens("bob", "gpt-4o")


def test_content_parts_count_their_text(offline):
    as_string = [{"role": "user", "content": "hello world, twice"}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": ", twice"},
            ],
        }
    ]
    assert tokens.count_message_tokens(as_parts, "gpt-4o") == tokens.count_message_tokens(as_string, "gpt-4o")
    assert tokens.count_message_tokens([{"role": "assistant", "content": None}], "gpt-4o") == 7


def test_approx_is_chars_over_four():
    messages = [{"role": "user", "content": "x" * 40}]
    assert tokens.approx_message_tokens(messages) == 3 + 3 + 1 + 10
    assert (
        tokens.approx_message_tokens([{"role": "user", "content": [{"type": "text", "text": "x" * 41}]}])
        == 3 + 3 + 1 + 11
    )


def test_approx_errs_high_on_english_prose(offline):
    for text in [SAMPLES[0]] + [m["content"] for m in COOKBOOK_MESSAGES]:
        messages = [{"role": "user", "content": text}]
        assert tokens.approx_message_tokens(messages) >= tokens.count_message_tokens(messages, "gpt-4o")


def test_a_tampered_bpe_file_is_refused(offline, monkeypatch, tmp_path):
    bad = tmp_path / "o200k_base.tiktoken.gz"
    bad.write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    monkeypatch.setattr(tokens, "_bpe_path", lambda name: bad)
    with pytest.raises(RuntimeError, match="does not match"):
        tokens.encoding_for("gpt-4o")
