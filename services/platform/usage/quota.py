"""Monthly quota accounting (analyses and video seconds per calendar month, UTC).

Counters live in ``usage_periods`` and are charged by one conditional upsert
(``INSERT ... ON CONFLICT DO UPDATE SET used = used + n WHERE used + n <= limit RETURNING``): the
database serialises concurrent reservations on the row, so two requests can never both take the
last unit, and a reservation is one round trip. Each charge also
writes a ``usage_entries`` row keyed by (analysis, kind): a re-run job's reservation is a no-op
and a refund happens at most once. Functions take a sync ``Session`` and only flush; the caller
commits (the gateway's request dependency, or the worker's unit of work).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from services.platform.usage.stamps import usage_changed
from shared.db.models import UsageEntry, UsagePeriod, User
from shared.db.session import dialect_insert
from shared.db.types import utcnow
from shared.errors import CodedError
from shared.settings import PlanLimits, Settings, get_settings

ANALYSIS = "analysis"
SECONDS = "seconds"


class QuotaExceeded(CodedError):
    code = "quota_exceeded"

    def __init__(self, kind: str, limit: float, used: float, resets_at: datetime):
        super().__init__(None, f"monthly {kind} quota of {limit:g} is used up ({used:g} used)")
        self.kind = kind
        self.limit = limit
        self.used = used
        self.resets_at = resets_at


@dataclass(frozen=True)
class UsageSnapshot:
    period: str
    plan: str
    analyses_used: int
    analyses_limit: int
    seconds_used: float
    seconds_limit: int
    resets_at: datetime


def current_period(now: datetime | None = None) -> str:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now.year:04d}-{now.month:02d}"


def period_end(period: str) -> datetime:
    year, month = (int(part) for part in period.split("-"))
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def plan_limits(plan: str, settings: Settings | None = None) -> PlanLimits:
    settings = settings or get_settings()
    return settings.plans.get(plan) or settings.plans[settings.default_plan]


def _charge(
    session: Session, user_id: uuid.UUID, period: str, kind: str, amount: float, limit: float
) -> bool:
    """One statement: create the month's row charged with ``amount``, or add ``amount`` to it if it
    stays within ``limit``. The row lock it takes is held until the caller commits."""
    if amount > limit:
        return False
    insert = dialect_insert(session)
    column = "analyses_used" if kind == ANALYSIS else "seconds_used"
    statement = insert(UsagePeriod).values(
        user_id=user_id,
        period=period,
        analyses_used=amount if kind == ANALYSIS else 0,
        seconds_used=amount if kind == SECONDS else 0.0,
    )
    current = getattr(UsagePeriod, column)
    statement = statement.on_conflict_do_update(
        index_elements=["user_id", "period"],
        set_={column: current + amount},
        where=current + amount <= limit,
    ).returning(UsagePeriod.user_id)
    return session.execute(statement.execution_options(synchronize_session=False)).first() is not None


def _column_and_limit(kind: str, limits: PlanLimits):
    if kind == ANALYSIS:
        return UsagePeriod.analyses_used, limits.analyses_per_month
    if kind == SECONDS:
        return UsagePeriod.seconds_used, limits.video_seconds_per_month
    raise ValueError(f"unknown usage kind {kind!r}")


def reserve(
    session: Session,
    user_id: uuid.UUID,
    analysis_id: uuid.UUID,
    kind: str,
    amount: float,
    *,
    plan: str | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
) -> UsageEntry:
    """Charge ``amount`` of ``kind`` for ``analysis_id`` or raise :class:`QuotaExceeded`.

    Idempotent per (analysis, kind): an existing unrefunded charge is returned as is.
    """
    existing = session.scalar(
        select(UsageEntry).where(UsageEntry.analysis_id == analysis_id, UsageEntry.kind == kind)
    )
    if existing is not None and existing.refunded_at is None:
        return existing
    settings = settings or get_settings()
    if plan is None:
        plan = session.scalar(select(User.plan).where(User.id == user_id)) or ""
    limits = plan_limits(plan, settings)
    column, limit = _column_and_limit(kind, limits)
    period = current_period(now)
    if not _charge(session, user_id, period, kind, amount, limit):
        used = session.scalar(
            select(column).where(UsagePeriod.user_id == user_id, UsagePeriod.period == period)
        )
        raise QuotaExceeded(kind, limit, float(used or 0), period_end(period))
    usage_changed(session, user_id, settings)
    if existing is not None:
        # A refunded charge charged again (a job retried after a failure): reuse the ledger row.
        existing.period, existing.amount = period, amount
        existing.refunded_at, existing.created_at = None, utcnow()
        session.flush()
        return existing
    entry = UsageEntry(user_id=user_id, analysis_id=analysis_id, kind=kind, period=period, amount=amount)
    session.add(entry)
    session.flush()
    return entry


def refund(
    session: Session, analysis_id: uuid.UUID, kind: str | None = None, *, settings: Settings | None = None
) -> float:
    """Give back the charges of ``analysis_id`` (one kind or all); each charge once. Returns the
    total refunded (0 when there was nothing left to refund)."""
    settings = settings or get_settings()
    kinds = [kind] if kind else [ANALYSIS, SECONDS]
    total = 0.0
    for each in kinds:
        claimed = session.execute(
            update(UsageEntry)
            .where(UsageEntry.analysis_id == analysis_id, UsageEntry.kind == each)
            .where(UsageEntry.refunded_at.is_(None))
            .values(refunded_at=utcnow())
            .returning(UsageEntry.user_id, UsageEntry.period, UsageEntry.amount)
            .execution_options(synchronize_session=False)
        ).first()
        if claimed is None:
            continue
        column = UsagePeriod.analyses_used if each == ANALYSIS else UsagePeriod.seconds_used
        session.execute(
            update(UsagePeriod)
            .where(UsagePeriod.user_id == claimed.user_id, UsagePeriod.period == claimed.period)
            .values({column: column - claimed.amount})
            .execution_options(synchronize_session=False)
        )
        usage_changed(session, claimed.user_id, settings)
        total += claimed.amount
    session.flush()
    return total


def snapshot(
    db: Session | Connection, user_id: uuid.UUID, plan: str, *, settings: Settings | None = None, now=None
) -> UsageSnapshot:
    """This month's counters, read with a session or (one round trip, no transaction) with an
    autocommit connection."""
    period = current_period(now)
    limits = plan_limits(plan, settings)
    row = db.execute(
        select(UsagePeriod.analyses_used, UsagePeriod.seconds_used).where(
            UsagePeriod.user_id == user_id, UsagePeriod.period == period
        )
    ).first()
    return UsageSnapshot(
        period=period,
        plan=plan,
        analyses_used=row.analyses_used if row else 0,
        analyses_limit=limits.analyses_per_month,
        seconds_used=float(row.seconds_used) if row else 0.0,
        seconds_limit=limits.video_seconds_per_month,
        resets_at=period_end(period),
    )
