"""Whether a call can go through the Batch API: checked before anything is planned or sent."""

from __future__ import annotations

from .._config import Settings
from .._errors import ConfigError
from .._run.budget import Meter
from .client import BatchAPI

__all__ = ["check_batch", "batch_possible", "no_batch_api"]


def check_batch(settings: Settings) -> None:
    """Raise ConfigError, before planning, for what a Batch API job cannot do with ``settings``
    (a function client, no API key; max_cost without a price or an output bound)."""
    BatchAPI(settings)
    if settings.max_cost is not None:
        Meter.for_settings(settings, batch=True)


def batch_possible(settings: Settings) -> bool:
    """False for what can never take batches (a function client, no API key); nothing is sent."""
    try:
        BatchAPI(settings)
    except ConfigError:
        return False
    return True


async def no_batch_api(settings: Settings) -> str | None:
    """Why the endpoint cannot take batches (it serves no Batch API), or None (one probe)."""
    async with BatchAPI(settings) as api:
        return await api.available()
