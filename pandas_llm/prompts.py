"""Prompts: a template and a row become chat messages.

A template is a ``str.format``-style string whose ``{column}`` placeholders name columns
(``{}`` names the values of a Series), or a callable ``row -> str | list[message]``.
Templates are checked against the columns before anything is sent. Cell values are
inserted literally (a ``{`` inside a value is just a character), and attribute or index
access in a placeholder (``{a.__class__}``, ``{a[0]}``) is refused.

    >>> import pandas as pd
    >>> t = compile_template("Translate to French: {text}", ["text", "id"])
    >>> t.columns
    ('text',)
    >>> t.render(("I {love} it",))
    'Translate to French: I {love} it'
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import TemplateError

__all__ = ["Template", "compile_template", "to_messages", "Row"]

SERIES_FIELD = ""  # the name `{}` stands for when the frame is a Series


class Row(dict):
    """A row handed to a callable template: ``row["col"]`` and ``row.col`` both work."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Template:
    """A checked template: ``columns`` are the columns it reads, in placeholder order."""

    source: str | Callable[..., Any]
    columns: tuple[Any, ...]
    _fmt: str | None = None

    @property
    def is_callable(self) -> bool:
        return self._fmt is None

    def render(self, values: Sequence[Any]) -> Any:
        """Render one row given the values of ``columns`` (str templates only)."""
        return self._fmt.format(*values)  # type: ignore[union-attr]

    def render_row(self, row: Row) -> Any:
        """Render one row given all its cells (callable templates)."""
        return self.source(row)  # type: ignore[operator]


def compile_template(template: Any, columns: Sequence[Any], *, series: bool = False) -> Template:
    """Check ``template`` against ``columns`` and prepare it for fast rendering."""
    if callable(template) and not isinstance(template, str):
        return Template(template, tuple(columns))
    if not isinstance(template, str):
        raise TemplateError(
            f"template must be a str with {{column}} placeholders or a callable row -> str, "
            f"got {type(template).__name__}"
        )
    by_name = {str(c): c for c in columns}
    used: list[Any] = []
    parts: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(
            f"cannot parse template {template!r}: {exc}. Write a literal brace as '{{{{' or '}}}}'."
        ) from exc
    for literal, field_name, spec, conversion in parsed:
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if field_name is None:
            continue
        if field_name == "" and not series:
            raise TemplateError(
                "'{}' only works on a Series (s.llm.map); on a DataFrame name the column, "
                f"e.g. '{{{_first(columns)}}}'"
            )
        if field_name != "" and ("." in field_name or "[" in field_name) and field_name not in by_name:
            raise TemplateError(
                f"placeholder {{{field_name}}} uses attribute or index access, which is not "
                "allowed; name a column instead"
            )
        if spec and ("{" in spec):
            raise TemplateError(f"nested placeholders in a format spec are not allowed: {{{field_name}:{spec}}}")
        if series:
            if field_name not in ("", "0") and field_name not in by_name:
                raise TemplateError(
                    f"a Series template uses '{{}}' for the value; {{{field_name}}} is unknown"
                )
            column = SERIES_FIELD
        else:
            if field_name not in by_name:
                close = difflib.get_close_matches(field_name, list(by_name), n=1)
                hint = f" Did you mean {{{close[0]}}}?" if close else ""
                raise TemplateError(
                    f"unknown placeholder {{{field_name}}} in the template.{hint} "
                    f"Available columns: {', '.join(map(str, columns)) or '(none)'}. "
                    "Write a literal brace as '{{' or '}}'."
                )
            column = by_name[field_name]
        if column in used:
            index = used.index(column)
        else:
            index = len(used)
            used.append(column)
        parts.append(
            "{" + str(index) + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        )
    return Template(template, tuple(used), "".join(parts))


def _first(columns: Sequence[Any]) -> str:
    return str(columns[0]) if len(columns) else "column"


def to_messages(rendered: Any, system: str | None) -> list[dict[str, Any]]:
    """Turn a rendered prompt (a str, or a list of messages) into chat messages."""
    if isinstance(rendered, str):
        messages = [{"role": "user", "content": rendered}]
    elif isinstance(rendered, list) and all(isinstance(m, dict) and "role" in m for m in rendered):
        messages = rendered
    else:
        raise TemplateError(
            "a callable template must return a str or a list of {'role': ..., 'content': ...} "
            f"messages, got {type(rendered).__name__}"
        )
    if system is not None and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return messages
