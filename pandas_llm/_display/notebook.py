"""The notebook display: one compact ipywidgets box, updated live while the cell runs.

    pandas-llm [██████████░░░░░░░░]  412 / 1,000 requests · 58.2 req/s · ETA 0:07
    400 ok · 3 failed · 200 from cache · 16 in flight
    tokens 12,345 in / 6,789 out · $0.0123 spent · ~$0.0310 projected · cache saved $0.0040
    rate limited: paused 2.1 s · 5 rate-limit 429s · 7 retries · 3 timeouts  (only when it happens)

When the run ends the box stays, with the final figures, a verdict ("done in 12.3 s",
"interrupted ...", "stopped at max_cost ...") and one line of failures by kind. Widgets
are updated from the run's event-loop thread; ipykernel sends the changes to the page at
once, while the cell is still running. At most ~10 draws a second (ThrottledObserver),
each changing at most three widgets.

Where widgets cannot be drawn (QtConsole, Spyder, VS Code without the widget renderer, a
notebook saved and read as text) the frontend shows the output's ``text/plain``: the same
lines as plain text, never ``VBox(children=...)``. It is the first progress line when the
run starts, and the output is updated once when the run ends so that a saved notebook
holds the final summary. ``progress="text"`` draws the tqdm bar instead (live in any
frontend that shows a cell's stderr).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

from .._stats import RunStats
from .observer import ThrottledObserver
from .snapshot import Snapshot

__all__ = ["WidgetObserver"]

_STYLE = "font-size: 0.92em; line-height: 1.45; color: var(--jp-ui-font-color1, inherit)"


class WidgetObserver(ThrottledObserver):
    """Live progress, tokens and dollars in an ipywidgets box (Jupyter)."""

    def __init__(
        self,
        *,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        display: Callable[[Any], None] | None = None,
    ):
        super().__init__(min_interval=min_interval, clock=clock)
        self._display = display
        self._handle: Any = None  # IPython's DisplayHandle: updated once, with the final text
        self.box: Any = None

    def start(self, stats: RunStats) -> None:
        super().start(stats)  # builds the box and draws the first figures, then shows them
        show = self._display or _display_updatable
        self._handle = show(self)

    def _close(self) -> None:
        if self._handle is not None:  # the final summary becomes the output's text/plain too
            self._handle.update(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        """The widget for frontends that draw widgets, the same figures as text for the others."""
        data = self.box._repr_mimebundle_()
        data["text/plain"] = repr(self)
        return data

    def __repr__(self) -> str:
        return f"pandas-llm {self.text}" if self.box is not None else "<pandas-llm progress (not started)>"

    def _open(self, stats: RunStats) -> None:
        import ipywidgets as w

        self.bar = w.IntProgress(
            value=0, min=0, max=max(stats.unique, 1), bar_style="info",
            layout=w.Layout(width="320px", min_width="120px", margin="2px 8px"),
        )  # fmt: skip
        self.head = w.HTML()
        self.body = w.HTML()
        title = w.HTML("<b style='white-space: nowrap'>pandas-llm</b>", layout=w.Layout(flex="0 0 auto"))
        self.box = w.VBox([w.HBox([title, self.bar, self.head]), self.body])
        self.box.add_class("pandas-llm-progress")

    def draw(self, snap: Snapshot, *, final: bool) -> None:
        bar = self.bar
        bar.max = max(snap.total, 1)
        bar.value = snap.done if snap.total else 1
        if final:
            bar.bar_style = _final_style(snap)
            head = f"{snap.position()} · {_e(snap.verdict())}"
        else:
            head = f"{snap.position()} · {snap.speed()}"
        lines = [_e(snap.counts()), _e(snap.money())]
        advice = snap.advice() if final else None
        if advice:
            lines.insert(0, f"<b>{_e(advice)}</b>")
        trouble = snap.trouble()
        if trouble:
            lines.append(f"<span style='color: var(--jp-warn-color0, #b26b00)'>{_e(trouble)}</span>")
        failures = snap.failures() if final else None
        if failures:
            lines.append(f"<span style='color: var(--jp-error-color0, #c62828)'>{_e(failures)}</span>")
        self.head.value = f"<span style='{_STYLE}'>{head}</span>"
        self.body.value = f"<div style='{_STYLE}'>" + "<br>".join(lines) + "</div>"

    # For tests and users who want the numbers back: the text the box shows now.
    @property
    def text(self) -> str:
        import re

        raw = f"{self.head.value}\n{self.body.value}".replace("<br>", "\n")
        return html.unescape(re.sub(r"<[^>]+>", "", raw))


def _display_updatable(obj: Any) -> Any:
    from IPython.display import display

    return display(obj, display_id=True)


def _final_style(snap: Snapshot) -> str:
    if snap.outcome != "done":
        return "danger"
    if snap.n_failed or snap.unsent or snap.cut_short or snap.budget_reached or snap.deadline_reached:
        return "warning"
    return "success"


def _e(text: str) -> str:
    return html.escape(text, quote=False)
