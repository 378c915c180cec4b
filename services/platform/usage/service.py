"""Monthly quota as rate-limit headers: ``"analyses";q=100;w=<month>`` beside the request rate."""

from __future__ import annotations

import math
from datetime import datetime

from services.gateway.ratelimit import WindowState, remember
from services.platform.usage.quota import UsageSnapshot, period_end


def _month_seconds(period: str) -> int:
    year, month = (int(part) for part in period.split("-"))
    start = datetime(year, month, 1, tzinfo=period_end(period).tzinfo)
    return int((period_end(period) - start).total_seconds())


def remember_quota_headers(
    snapshot: UsageSnapshot, scope_state: dict, *, now: datetime | None = None
) -> None:
    now = now or datetime.now(snapshot.resets_at.tzinfo)
    reset_in = max(1, math.ceil((snapshot.resets_at - now).total_seconds()))
    window = _month_seconds(snapshot.period)
    remember(
        WindowState("analyses", snapshot.analyses_limit, window, snapshot.analyses_used, reset_in),
        scope_state,
    )
    seconds_used = math.ceil(snapshot.seconds_used)
    remember(
        WindowState("video-seconds", snapshot.seconds_limit, window, seconds_used, reset_in), scope_state
    )
