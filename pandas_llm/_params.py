"""The chat-completions parameters: one table of their names, with what the API takes.

``PARAM_CHECKS`` is the one list: a parameter the verbs pass through by its API name
(``temperature=``, ``max_tokens=``, ...) is a key of it, checked before any request.
``GENERATION_PARAMS`` are its names; ``CHAT_FIELDS`` the request body's fields a chat
client takes by name (the rest of a body goes as ``extra_body``).

    >>> "temperature" in GENERATION_PARAMS, "model" in CHAT_FIELDS, "top_k" in CHAT_FIELDS
    (True, True, False)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._errors import ConfigError

__all__ = ["CHAT_FIELDS", "GENERATION_PARAMS", "PARAM_CHECKS", "check_params", "check_positive", "check_whole"]


def is_whole(value: Any) -> bool:
    """An integer, not a bool (``concurrency=True`` is a mistake, not 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A real number, not a bool, not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and value == value


def _in_range(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: is_number(v) and low <= v <= high


def _whole_from(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: is_whole(v) and low <= v <= high


def _stop(v: Any) -> bool:
    if isinstance(v, str):
        return True
    return isinstance(v, (list, tuple)) and 1 <= len(v) <= 4 and all(isinstance(x, str) for x in v)


def _logit_bias(v: Any) -> bool:
    if not isinstance(v, Mapping):
        return False
    for token, bias in v.items():
        if not (is_whole(token) or (isinstance(token, str) and token.isdigit())):
            return False
        if not (is_number(bias) and -100 <= bias <= 100):
            return False
    return True


def _of(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, types) and not (bool not in types and isinstance(v, bool))


#: The chat-completions parameters checked before any request: name -> (check, what the API takes).
PARAM_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_in_range(0, 2), "a number from 0 to 2"),
    "top_p": (_in_range(0, 1), "a number from 0 to 1"),
    "max_tokens": (_whole_from(1), "a whole number >= 1 (tokens)"),
    "max_completion_tokens": (_whole_from(1), "a whole number >= 1 (tokens)"),
    "frequency_penalty": (_in_range(-2, 2), "a number from -2 to 2"),
    "presence_penalty": (_in_range(-2, 2), "a number from -2 to 2"),
    "seed": (is_whole, "a whole number"),
    "stop": (_stop, "a string or a list of 1 to 4 strings"),
    "logprobs": (_of(bool), "True or False"),
    "top_logprobs": (_whole_from(0, 20), "a whole number from 0 to 20"),
    "logit_bias": (_logit_bias, "a dict {token id: bias from -100 to 100}"),
    "response_format": (_of(Mapping), "a dict such as {'type': 'json_object'} (or pass schema=)"),
    "reasoning_effort": (_of(str), "a string such as 'low', 'medium' or 'high'"),
    "verbosity": (_of(str), "a string such as 'low', 'medium' or 'high'"),
    "service_tier": (_of(str), "a string such as 'auto', 'default' or 'flex'"),
    "tools": (_of(list, tuple), "a list of tool definitions"),
    "tool_choice": (_of(str, Mapping), "'none', 'auto', 'required' or a dict"),
    "parallel_tool_calls": (_of(bool), "True or False"),
    "modalities": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings"),
    "prediction": (_of(Mapping), "a dict"),
    "user": (_of(str), "a string"),
    "store": (_of(bool), "True or False"),
    "metadata": (
        lambda v: isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
        "a dict of strings",
    ),  # fmt: skip
}


def check_positive(name: str, value: Any) -> None:
    """A positive number (seconds, dollars, per minute) or None."""
    if value is not None and not (is_number(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number or None, got {value!r}")


def check_whole(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")


def check_params(params: Mapping[str, Any]) -> None:
    """Raise ConfigError for a generation parameter the API would refuse (or, worse, accept
    and bill): checked before any request, with the API's name and range in the message.

        >>> check_params({"temperature": "hot"})
        Traceback (most recent call last):
        ...
        pandas_llm._errors.ConfigError: temperature='hot': the API takes a number from 0 to 2
    """
    for name, value in params.items():
        rule = PARAM_CHECKS.get(name)
        if rule is not None and not rule[0](value):
            raise ConfigError(f"{name}={value!r}: the API takes {rule[1]}")


#: Chat-completions parameters that change the answer; passed through by their API names.
GENERATION_PARAMS = frozenset(PARAM_CHECKS)

#: Body fields a chat client's create() takes by name: the parameters, the model and messages.
CHAT_FIELDS = GENERATION_PARAMS | {"model", "messages", "n"}
