"""Schedules: each schedule of the broker, its next and last tick, its active scheduler.

The rows are ``aqueue schedules``' (``aqueue._schedule_state.schedule_rows``): a passive
declare of each lease queue and the latest status the active scheduler wrote.
"""

from __future__ import annotations

from .._schedule_state import ScheduleRow, schedule_rows

__all__ = ["ScheduleRow", "schedule_rows"]
