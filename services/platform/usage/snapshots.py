"""Reads of this month's usage counters, served from memory while nothing has changed.

The database stays the ledger: every charge and refund is one statement in ``usage_periods``
(quota.py), and each committed change bumps the user's stamp in Redis (stamps.py). An
authenticated request reads the stamp in the same round trip that counts it against the rate
limit (``authenticate``), so a usage read costs no query and no extra round trip while the stamp
is the one its cached counters were read under. The stamp is read *before* the counters are
queried: a change committed during that query leaves the cached entry behind the new stamp, and
the next read queries again. Stamps are random, so an expired stamp or an emptied Redis never
brings back a value an entry was tagged with. Were a new stamp lost (Redis unreachable when a
change committed), a cached entry still lives at most ``usage_cache_seconds``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from starlette.concurrency import run_in_threadpool

from services.platform.usage.quota import UsageSnapshot, current_period, plan_limits
from shared.settings import Settings

MAX_ENTRIES = 10_000
_STATE_KEY = "usage_stamp"


def remember_usage_stamp(scope_state: dict, stamp: bytes | None) -> None:
    """Keep the stamp ``authenticate`` read for this request (None: read the database)."""
    if stamp is not None:
        scope_state[_STATE_KEY] = stamp.decode()


@dataclass(frozen=True)
class _Entry:
    stamp: str
    snapshot: UsageSnapshot
    read_at: float


class UsageSnapshotCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, uuid.UUID], _Entry] = {}
        self._lock = threading.Lock()

    def get(self, scope: str, user_id: uuid.UUID, stamp: str, max_age: float) -> UsageSnapshot | None:
        entry = self._entries.get((scope, user_id))
        if entry is None or entry.stamp != stamp or time.monotonic() - entry.read_at >= max_age:
            return None
        if entry.snapshot.period != current_period():
            return None
        return entry.snapshot

    def put(
        self, scope: str, user_id: uuid.UUID, stamp: str, snapshot: UsageSnapshot, read_at: float
    ) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[(scope, user_id)] = _Entry(stamp, snapshot, read_at)


usage_snapshots = UsageSnapshotCache()


async def current_snapshot(
    scope_state: dict,
    user_id: uuid.UUID,
    plan: str,
    settings: Settings,
    read_database: Callable[[], UsageSnapshot],
) -> UsageSnapshot:
    """This month's counters: the cached ones while the request's usage stamp is the one they
    were read under, otherwise ``read_database()`` on a worker thread (and cached). The limits
    always come from ``plan``, so a plan change shows at once."""
    stamp = scope_state.get(_STATE_KEY)
    if stamp is None or settings.usage_cache_seconds <= 0:
        return await run_in_threadpool(read_database)
    cache_scope = settings.database_url
    cached = usage_snapshots.get(cache_scope, user_id, stamp, settings.usage_cache_seconds)
    if cached is None:
        read_at = time.monotonic()
        cached = await run_in_threadpool(read_database)
        usage_snapshots.put(cache_scope, user_id, stamp, cached, read_at)
    limits = plan_limits(plan, settings)
    return replace(
        cached,
        plan=plan,
        analyses_limit=limits.analyses_per_month,
        seconds_limit=limits.video_seconds_per_month,
    )
