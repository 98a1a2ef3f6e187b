"""Structured verbs: ``extract``, ``classify`` and ``map(schema=...)`` / packing, as one run each.

This module wires the stages together for the accessor: the schema (schema.py) becomes
the request's ``response_format`` and, where needed, an instruction; every answer is
validated before it is stored (parse.py, through the engine's ``validate`` hook);
``rows_per_request`` packs rows (packing.py); the stored answers become typed columns
(columns.py).

Prompt layout: what is fixed comes first and the row's content last, so providers'
automatic prompt caching can reuse the prefix. Instructions this library adds (the
labels, the schema for ``json_object``) go into the system message, after the user's
own ``system=``. A template that puts a ``{column}`` before a long fixed instruction
defeats that caching; :func:`check_prompt_order` warns about it (PromptOrderWarning).
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .._config import Settings, current_settings
from .._errors import ConfigError, find_stack_level
from .._plan.prompts import to_messages
from .._run.packing import Packer
from .._structured.columns import build_frame, columns_for, take
from .._structured.parse import Parser
from .._structured.schema import Schema, as_schema
from .dispatch import Job, start

__all__ = [
    "PromptOrderWarning",
    "Answers",
    "Requests",
    "prepare",
    "requests_for",
    "job_verb",
    "check_prompt_order",
    "classify_schema",
    "LONG_FIXED_TEXT",
]

#: Fixed text longer than this (characters) after a ``{column}`` triggers the warning.
LONG_FIXED_TEXT = 1000
#: The JSON field of classify's reason. It sorts before "label"/"labels" on purpose:
#: canonical requests sort keys, and the model must write the reason before the label.
REASON_FIELD = "explanation"


class PromptOrderWarning(UserWarning):
    """A template puts row content before a long fixed instruction (prompt caching is lost)."""


def check_prompt_order(template: Any) -> None:
    """Warn when a str template has a ``{column}`` before ``LONG_FIXED_TEXT`` characters of
    fixed text: providers cache the longest common *prefix*, so that text is paid in full
    on every row. Put the instructions first (or in ``system=``) and the columns last."""
    if not isinstance(template, str):
        return
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return  # compile_template reports it
    seen_field = False
    after = 0
    for literal, field_name, _, _ in parts:
        if seen_field:
            after += len(literal)
        if field_name is not None:
            seen_field = True
    if seen_field and after >= LONG_FIXED_TEXT:
        warnings.warn(
            f"the template has {after} characters of fixed text after its first {{column}}. Providers "
            "cache the common beginning of prompts (cheaper, faster), so put the fixed instructions "
            "first, or in system=..., and the {column} placeholders at the end.",
            PromptOrderWarning,
            stacklevel=find_stack_level(),
        )


def prepare(
    data: pd.DataFrame | pd.Series,
    template: Any,
    options: Mapping[str, Any],
    *,
    verb: str,
    schema: Any = None,
    labels: Any = None,
    multi: bool = False,
    reasons: bool = False,
    flatten: bool | str = False,
) -> Job:
    """Plan one verb's run (nothing is sent). ``verb``: "map", "extract" or "classify".

    Returns a :class:`~pandas_llm._verbs.dispatch.Job` (realtime or batch, as ``mode=`` says):
    ``await job.wait()``, then ``job.result(details)``. A batch job's JSONL lines carry the very
    request bodies a realtime run sends (response_format, instruction), so realtime and batch
    share cache keys; its answers are checked by the same parser, and its result is assembled
    by the same finisher. An invalid batch answer stays ``invalid`` until the next run."""
    settings = current_settings().merged(**options)
    sends = requests_for(settings, template, verb=verb, schema=schema, labels=labels, multi=multi, reasons=reasons)
    if sends.spec is None:  # plain map (maybe packed): the answers as a string Series
        return start(data, sends.template, sends.settings, extra=sends.extra, packing=sends.packer)
    answers = Answers(Parser(sends.spec))
    finish = _finisher(sends.spec, answers, verb, labels=sends.labels, multi=multi, reasons=reasons, flatten=flatten)
    return start(data, sends.template, sends.settings, extra=sends.extra, validate=answers.error,
                 packing=sends.packer, finish=finish)  # fmt: skip


class Answers:
    """The answer check the engine (and a batch's collector) calls on every answer before it
    is stored, keeping the value it parsed: the result takes it from here instead of parsing
    the answer a second time. Answers read from the cache were not checked here: they are
    parsed when the result is assembled (a stored answer that no longer validates is invalid)."""

    def __init__(self, parser: Parser):
        self.parser = parser
        self._values: dict[str, Any] = {}

    def error(self, text: str | None) -> str | None:
        """The validation error of an answer, or None (then its value is kept)."""
        value, error = self.parser.parse(text)
        if error is None and text is not None:
            self._values[text] = value
        return error

    def parse(self, text: str | None) -> tuple[Any, str | None]:
        """``(value, None)`` or ``(None, error)``: the value kept by :meth:`error` (given once:
        two requests with the same answer text get their own objects), else parsed now."""
        if text is not None and text in self._values:
            return self._values.pop(text), None
        return self.parser.parse(text)


@dataclass
class Requests:
    """What a verb's run sends, known before any data: see :func:`requests_for`."""

    settings: Settings  # the run's settings (system= carries the added instruction)
    template: Any  # the template as the run renders it
    extra: dict[str, Any] | None  # {"response_format": ...} of a structured verb
    spec: Schema | None  # the row's answer schema (None: text)
    labels: list[Any] | None  # classify's labels
    packer: Packer | None  # rows_per_request > 1


def requests_for(settings: Settings, template: Any, *, verb: str, schema: Any = None, labels: Any = None,
                 multi: bool = False, reasons: bool = False) -> Requests:  # fmt: skip
    """The requests one verb call sends (the same for a run and for its estimate); checks the
    arguments, raising ConfigError. A plain ``map`` (no schema, no packing) is returned as given."""
    task: str | None = None
    if verb == "classify":
        schema, task, labels = classify_schema(labels, multi=multi, reasons=reasons)
    elif verb == "extract" and schema is None:
        raise ConfigError("extract needs schema=: a pydantic model, a JSON schema dict, or 'json_object'")
    if schema is None and settings.rows_per_request == 1:
        return Requests(settings, template, None, None, labels, None)
    spec = as_schema(schema) if schema is not None else None
    if spec is not None and "response_format" in settings.params:
        raise ConfigError("pass either schema= or response_format=, not both")
    structured = settings.structured  # json_schema | json_object
    added = _join(task, spec.instruction(structured) if spec is not None else None)
    single_system = _join(settings.system, added)
    packer = None
    if settings.rows_per_request > 1:
        packer = Packer(settings, settings.rows_per_request, row=spec, single_system=single_system,
                        head=_join(settings.system, task), structured=structured, template=template)  # fmt: skip
    if callable(template) and not isinstance(template, str) and added:
        template = _with_instruction(template, settings.system, added)
        run_settings = replace(settings, system=None)  # the wrapper adds it (same text as below)
    else:
        run_settings = replace(settings, system=single_system)
    extra = {"response_format": spec.response_format(structured)} if spec is not None else None
    return Requests(run_settings, template, extra, spec, labels, packer)


def job_verb(schema: Any, labels: Any, *, multi: bool, reasons: bool, flatten: bool | str) -> dict[str, Any]:
    """``submit``'s verb, as :func:`prepare` keywords: ``labels=`` classify, ``schema=`` extract, else map.

    >>> job_verb(None, ["a", "b"], multi=False, reasons=True, flatten=False)["verb"]
    'classify'
    """
    if labels is not None:
        if schema is not None:
            raise ConfigError("pass labels= (a classify job) or schema= (an extract job), not both")
        if flatten:
            raise ConfigError("flatten= goes with schema= (an extract job), not with labels=")
        return {"verb": "classify", "labels": labels, "multi": multi, "reasons": reasons}
    if multi or reasons:
        raise ConfigError("multi= and reasons= go with labels=, e.g. submit('{text}', labels=['a', 'b'], multi=True)")
    if schema is not None:
        return {"verb": "extract", "schema": schema, "flatten": flatten}
    if flatten:
        raise ConfigError("flatten= goes with schema= (an extract job)")
    return {"verb": "map"}


def classify_schema(labels: Any, *, multi: bool = False, reasons: bool = False) -> tuple[dict, str, list]:
    """``(json schema, instruction, labels)`` for a classification over ``labels``.

    ``labels``: strings, integers, ``[True, False]``, or ``{label: description}``.

    >>> schema, text, labels = classify_schema(["bug", "feature"])
    >>> schema["properties"]["label"]
    {'type': 'string', 'enum': ['bug', 'feature']}
    """
    described: dict[Any, str] = {}
    if isinstance(labels, Mapping):
        described = {k: str(v) for k, v in labels.items() if v}
        labels = list(labels)
    elif isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, pd.Index, np.ndarray)):
        raise ConfigError("labels= must be a list of labels, e.g. labels=['billing', 'bug', 'other'], or [True, False]")
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if not labels:
        raise ConfigError("labels= is empty; give at least two labels")
    if all(isinstance(x, bool) for x in labels):
        if sorted(labels) != [False, True]:
            raise ConfigError(f"boolean labels must be exactly [True, False], got {labels!r}")
        if multi:
            raise ConfigError("multi=True needs a label set, not [True, False]")
        kind: dict[str, Any] = {"type": "boolean"}
        words = "true or false"
    elif all(isinstance(x, str) for x in labels) or all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        if len(set(labels)) != len(labels):
            dupes = sorted({str(x) for x in labels if labels.count(x) > 1})
            raise ConfigError(f"labels= has duplicates: {dupes}")
        if any(isinstance(x, str) and not x.strip() for x in labels):
            raise ConfigError("labels= has an empty label")
        if len(labels) == 1 and not multi:
            raise ConfigError(
                f"labels={labels!r} has one label: every row would get it, and each answer would be paid "
                "for nothing. Give at least two labels, labels=[True, False] for a yes/no question, or "
                "multi=True to ask which rows it applies to."
            )
        kind = {"type": "string" if isinstance(labels[0], str) else "integer", "enum": labels}
        words = orjson.dumps(labels).decode()[1:-1].replace(",", ", ")
    else:
        raise ConfigError(f"labels= must be all strings, all integers, or [True, False]; got {labels!r}")
    name = "labels" if multi else "label"
    props: dict[str, Any] = {}
    if reasons:
        props[REASON_FIELD] = {"type": "string", "description": "one short sentence: why this label"}
    props[name] = {"type": "array", "items": kind} if multi else kind
    schema = {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    if kind["type"] == "boolean":
        text = "Answer the question about the input with true or false."
    elif multi:
        text = f"Classify the input: choose every label that applies (none, one or several) from: {words}."
    else:
        text = f"Classify the input: answer with exactly one of these labels: {words}."
    if described:
        text += "\nWhat the labels mean:\n" + "\n".join(f"- {k}: {v}" for k, v in described.items())
    if reasons:
        text += f'\nFirst give a short reason in "{REASON_FIELD}", then the {name.rstrip("s")}.'
    return schema, text + "\nReply in JSON.", labels


def _finisher(spec: Schema, answers: Answers, verb: str, **how: Any) -> Callable[[Any, bool], Any]:
    """The verb's result from a finished job's outcomes (a realtime Run or a BatchJob alike);
    ``details=True`` adds per-row details. Warns once about failed rows, counting "invalid" too."""

    def finish(job: Any, details: bool) -> Any:
        plan = job.rows
        values = _parse_outcomes(plan.outcomes, answers)
        job.warn()
        if verb == "map":
            out: Any = pd.Series(take(_objects(values), plan.codes), index=plan.index, name=job.name)
        elif verb == "extract":
            columns = columns_for(spec, how["flatten"]) if spec.schema is not None else None
            out = build_frame(values, plan.codes, plan.index, columns)
        else:
            out = _classified(values, plan.codes, plan.index, job.name, **how)
        if not details:
            return out
        info = plan.outcomes.details(plan.codes, plan.index)
        frame = out.to_frame() if isinstance(out, pd.Series) else out
        clash = [c for c in info.columns if c in frame.columns]
        return pd.concat([frame, info.rename(columns={c: f"_{c}" for c in clash})], axis=1)

    return finish


def _parse_outcomes(outcomes: Any, answers: Answers) -> list[Any]:
    """One value per distinct request, each answer parsed once (see :class:`Answers`); a stored
    answer that no longer validates (a pydantic validator changed) becomes ``invalid``, never a value."""
    values: list[Any] = [None] * len(outcomes.status)
    for u in np.flatnonzero(outcomes.status == "ok").tolist():
        value, error = answers.parse(outcomes.output[u])
        if error is None:
            values[u] = value
        else:
            outcomes.status[u], outcomes.error[u] = "invalid", error
    return values


def _classified(values: list[Any], codes: np.ndarray, index: pd.Index, name: Any, *, labels: list, multi: bool,
                reasons: bool, **_: Any) -> pd.Series | pd.DataFrame:  # fmt: skip
    field = "labels" if multi else "label"
    picked = [v.get(field) if isinstance(v, dict) else None for v in values]
    if multi:
        order = {x: i for i, x in enumerate(labels)}
        picked = [None if p is None else sorted({order[x]: x for x in p if x in order}.values(), key=order.__getitem__)
                  for p in picked]  # fmt: skip
        column = take(_objects(picked), codes)
    elif all(isinstance(x, bool) for x in labels):
        column = take(pd.array(picked, dtype="boolean"), codes)
    else:
        column = take(pd.Categorical(picked, categories=labels), codes)
    if not reasons:
        return pd.Series(column, index=index, name=name)
    why = [v.get(REASON_FIELD) if isinstance(v, dict) else None for v in values]
    return pd.DataFrame({field: column, "reason": take(pd.array(why, dtype="string"), codes)}, index=index)


def _objects(values: list[Any]) -> Any:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return pd.array(arr, dtype=object)


def _join(*parts: str | None) -> str | None:
    text = "\n\n".join(p for p in parts if p)
    return text or None


def _with_instruction(fn: Callable[..., Any], system: str | None, added: str) -> Callable[..., Any]:
    """A template function whose messages carry our instruction in the system message."""

    def render(row: Any) -> list[dict[str, Any]]:
        messages = to_messages(fn(row), None)
        if messages and messages[0].get("role") == "system":
            first = {**messages[0], "content": _join(messages[0].get("content"), added)}
            return [first, *messages[1:]]
        return [{"role": "system", "content": _join(system, added)}, *messages]

    render.__qualname__ = getattr(fn, "__qualname__", "template")
    return render
