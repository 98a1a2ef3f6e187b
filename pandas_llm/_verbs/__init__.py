"""The verbs as values: what each sends, how its answers are checked and assembled, and
the one place that chooses realtime, batch or auto (dispatch.py).

``structured``: map / extract / classify (schemas, labels, packing); ``endpoints``: embed
and moderate; ``estimate`` (with ``figures``): what a verb would send and cost.
"""

from .dispatch import Job, Mode, start
from .structured import PromptOrderWarning, check_prompt_order, job_verb, prepare, requests_for

__all__ = ["Job", "Mode", "start", "PromptOrderWarning", "check_prompt_order", "job_verb", "prepare", "requests_for"]
