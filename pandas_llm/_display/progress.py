"""The one notebook-or-terminal decision, and the observers of a run.

``make_observer(True)`` picks the ipywidgets display (notebook.py) in a Jupyter kernel
that can import ipywidgets and the tqdm bar (terminal.py) elsewhere; ``"text"`` the tqdm
bar everywhere (a kernel included: for frontends that cannot draw widgets); ``False``
draws nothing; any object with ``start/update/close`` is used as given. Every run also
logs its summary (observer.LogObserver). ``bar_class`` makes the same decision for the
Batch API's own bar. The displays' names are re-exported here.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from .._pricing import money
from .observer import LogObserver, Observer, Observers, ThrottledObserver
from .snapshot import Snapshot, duration
from .terminal import TqdmObserver

__all__ = [
    "LogObserver",
    "Observer",
    "Observers",
    "Snapshot",
    "ThrottledObserver",
    "TqdmObserver",
    "bar_class",
    "duration",
    "in_notebook",
    "make_observer",
    "money",
]


def in_notebook() -> bool:
    """True in a Jupyter kernel (ipykernel shell) that can import ipywidgets."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it loaded already
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def make_observer(progress: Any) -> Observer:
    """The observers of one run: the display ``progress`` asks for, plus the log summary.

    ``True``: the widget in a Jupyter kernel, else the tqdm bar; ``"text"``: the tqdm bar
    everywhere; ``False``/``None``: no display; anything else is used as the display.
    """
    display: Observer | None
    if progress is False or progress is None:
        display = None
    elif progress == "text":
        display = TqdmObserver()
    elif progress is True:
        if in_notebook():
            from .notebook import WidgetObserver

            display = WidgetObserver()
        else:
            display = TqdmObserver()
    else:
        display = progress  # a user's own observer object
    return Observers(display, LogObserver())


def bar_class(text: bool = False) -> Any:
    """The tqdm class for a bar of our own: tqdm's notebook widget in a Jupyter kernel that can
    draw it (unless ``text``), else the terminal bar; the same decision as ``make_observer``."""
    if not text and in_notebook():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm
