"""Durations at the API are seconds (int or float) or timedelta; inside they are float seconds."""

from __future__ import annotations

import datetime
import math
from typing import Union

Duration = Union[int, float, datetime.timedelta]  # noqa: UP007 - a runtime alias on 3.10


def to_seconds(value: object, *, name: str, allow_zero: bool = True) -> float:
    """Convert a duration to seconds, with a clear error for anything else."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(
            f"{name} must be a number of seconds or a datetime.timedelta, not {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0 seconds, not {value!r}")
    return seconds
