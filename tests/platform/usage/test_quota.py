"""services/platform/usage/quota.py: atomic monthly reservations, idempotent charges and refunds."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
import redis

from services.platform.usage import quota
from shared.db.models import User
from shared.db.session import make_session_factory, session_scope
from shared.settings import PlanLimits, Settings
from tests.gateway.conftest import REDIS_URL, delete_prefixed_keys

SETTINGS = Settings(
    plans={"tiny": PlanLimits(analyses_per_month=3, video_seconds_per_month=100, requests_per_minute=10)},
    default_plan="tiny",
    # Charges bump usage stamps in Redis under this prefix; they are deleted after the module.
    redis_key_prefix=f"moodreel-test-{uuid.uuid4().hex[:8]}:",
)


@pytest.fixture(scope="module", autouse=True)
def _delete_usage_stamps():
    yield
    client = redis.Redis.from_url(REDIS_URL)
    delete_prefixed_keys(client, SETTINGS.redis_key_prefix)
    client.close()


def make_user(session, plan="tiny") -> uuid.UUID:
    user = User(email=f"{uuid.uuid4().hex}@example.com", password_hash="x", plan=plan)
    session.add(user)
    session.commit()
    return user.id


def test_reserve_until_limit_then_refund(db_session):
    user_id = make_user(db_session)
    analyses = [uuid.uuid4() for _ in range(4)]
    for analysis_id in analyses[:3]:
        quota.reserve(db_session, user_id, analysis_id, quota.ANALYSIS, 1, settings=SETTINGS)
    with pytest.raises(quota.QuotaExceeded) as raised:
        quota.reserve(db_session, user_id, analyses[3], quota.ANALYSIS, 1, settings=SETTINGS)
    assert raised.value.limit == 3 and raised.value.used == 3
    db_session.commit()
    assert quota.refund(db_session, analyses[0]) == 1
    assert quota.refund(db_session, analyses[0]) == 0  # once only
    quota.reserve(db_session, user_id, analyses[3], quota.ANALYSIS, 1, settings=SETTINGS)
    db_session.commit()
    assert quota.snapshot(db_session, user_id, "tiny", settings=SETTINGS).analyses_used == 3


def test_reserve_is_idempotent_per_analysis_and_kind(db_session):
    user_id = make_user(db_session)
    analysis_id = uuid.uuid4()
    for _ in range(3):
        quota.reserve(db_session, user_id, analysis_id, quota.SECONDS, 40.5, settings=SETTINGS)
    db_session.commit()
    snap = quota.snapshot(db_session, user_id, "tiny", settings=SETTINGS)
    assert snap.seconds_used == pytest.approx(40.5)
    with pytest.raises(quota.QuotaExceeded):
        quota.reserve(db_session, user_id, uuid.uuid4(), quota.SECONDS, 60, settings=SETTINGS)
    assert quota.refund(db_session, analysis_id, quota.SECONDS) == pytest.approx(40.5)
    # A job re-run after a refund is charged again, once.
    quota.reserve(db_session, user_id, analysis_id, quota.SECONDS, 30, settings=SETTINGS)
    db_session.commit()
    assert quota.snapshot(db_session, user_id, "tiny", settings=SETTINGS).seconds_used == pytest.approx(30)


def test_months_are_separate_and_reset_time_is_next_month():
    assert quota.current_period(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == "2026-12"
    assert quota.period_end("2026-12") == datetime(2027, 1, 1, tzinfo=UTC)
    assert quota.period_end("2026-11") == datetime(2026, 12, 1, tzinfo=UTC)


def test_concurrent_reservations_never_overspend(pg_url):
    from tests.fixtures.db import empty_all_tables, engine_for

    engine = engine_for(pg_url)
    empty_all_tables(engine)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        user_id = make_user(session)
    barrier = threading.Barrier(12)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        try:
            with session_scope(factory) as session:
                quota.reserve(session, user_id, uuid.uuid4(), quota.ANALYSIS, 1, settings=SETTINGS)
            ok = True
        except quota.QuotaExceeded:
            ok = False
        with lock:
            outcomes.append(ok)

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes.count(True) == 3 and len(outcomes) == 12
    with session_scope(factory) as session:
        assert quota.snapshot(session, user_id, "tiny", settings=SETTINGS).analyses_used == 3
