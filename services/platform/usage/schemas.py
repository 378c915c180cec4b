from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Meter(BaseModel):
    used: float
    limit: float
    remaining: float


class UsagePublic(BaseModel):
    period: str = Field(description="Calendar month (UTC), `YYYY-MM`.", examples=["2026-11"])
    plan: str
    analyses: Meter
    video_seconds: Meter
    requests_per_minute: int
    resets_at: datetime
