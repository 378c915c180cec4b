"""Usage reads served from memory under Redis stamps (services/platform/usage/): unchanged
counters cost no query, every committed charge or refund shows on the next read, a rolled-back
one never bumps the stamp, a change committed during a read is not hidden by it, and a change
the stamps missed is seen within ``usage_cache_seconds``."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import update

from services.platform.usage import quota
from services.platform.usage.snapshots import current_snapshot, remember_usage_stamp
from services.platform.usage.stamps import read_stamp, stamp_key
from shared.db.models import UsagePeriod, User
from shared.db.session import make_session_factory, session_scope
from tests.fixtures.db import engine_for
from tests.gateway.conftest import new_api_key
from tests.platform.api_keys.test_key_cache import statements


def _used(client, headers) -> int:
    response = client.get("/v1/usage", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["analyses"]["used"]


def _read_stamp(redis_client, settings, user_id) -> bytes:
    """The stamp as ``authenticate`` reads it: created when there is none."""
    with redis_client.pipeline(transaction=True) as pipe:
        read_stamp(pipe, settings, user_id)
        return pipe.execute()[-1]


def _user_id(database_url) -> uuid.UUID:
    with session_scope(make_session_factory(engine_for(database_url))) as session:
        return session.query(User.id).one()[0]


def test_unchanged_counters_are_read_once_and_every_committed_change_shows(
    client, account, database_url, settings
):
    headers = {"X-API-Key": new_api_key(client, account)["key"]}
    assert _used(client, headers) == 0
    with statements(client) as seen:
        assert [_used(client, headers) for _ in range(3)] == [0, 0, 0]
    assert not [s for s in seen if "usage_periods" in s], seen

    submitted = client.post(
        "/v1/analyses", json={"video_url": "https://93.184.215.14/v.mp4"}, headers=headers
    )
    assert submitted.status_code == 202, submitted.text
    assert _used(client, headers) == 1

    # A refund committed by another process (the worker's session, not the gateway's) shows too.
    with session_scope(make_session_factory(engine_for(database_url))) as session:
        assert quota.refund(session, uuid.UUID(submitted.json()["id"]), settings=settings) == 1
    assert _used(client, headers) == 0


def test_a_rolled_back_charge_does_not_bump_the_stamp(client, account, database_url, settings, redis_client):
    assert _used(client, account.headers) == 0
    user_id = _user_id(database_url)
    key = stamp_key(settings, user_id)
    before = redis_client.get(key)
    session = make_session_factory(engine_for(database_url))()
    try:
        quota.reserve(session, user_id, uuid.uuid4(), quota.SECONDS, 5, settings=settings)
        session.rollback()
    finally:
        session.close()
    assert redis_client.get(key) == before
    with session_scope(make_session_factory(engine_for(database_url))) as session:
        quota.reserve(session, user_id, uuid.uuid4(), quota.SECONDS, 5, settings=settings)
    assert redis_client.get(key) not in (None, before)
    assert client.get("/v1/usage", headers=account.headers).json()["video_seconds"]["used"] == 5


def test_a_change_committed_during_a_read_is_not_hidden_by_it(account, database_url, settings, redis_client):
    user_id = _user_id(database_url)
    factory = make_session_factory(engine_for(database_url))
    reads: list[int] = []

    def read(charge_after: bool = False) -> quota.UsageSnapshot:
        with session_scope(factory) as session:
            snapshot = quota.snapshot(session, user_id, "free", settings=settings)
        if charge_after:
            # A charge commits after the query and before its result is cached.
            with session_scope(factory) as session:
                quota.reserve(session, user_id, uuid.uuid4(), quota.ANALYSIS, 1, settings=settings)
        reads.append(snapshot.analyses_used)
        return snapshot

    def request_state() -> dict:
        # What authenticate leaves for the request: the stamp read before the endpoint runs.
        state: dict = {}
        remember_usage_stamp(state, _read_stamp(redis_client, settings, user_id))
        return state

    async def scenario() -> list[int]:
        return [
            (await current_snapshot(request_state(), user_id, "free", settings, reader)).analyses_used
            for reader in (lambda: read(charge_after=True), read, read)
        ]

    assert asyncio.run(scenario()) == [0, 1, 1]
    assert reads == [0, 1]  # the third read was served from the cache


def test_a_change_the_stamps_missed_is_seen_within_the_cache_time(client, account, database_url, settings):
    settings.usage_cache_seconds = 0.5
    assert _used(client, account.headers) == 0
    with session_scope(make_session_factory(engine_for(database_url))) as session:
        quota.reserve(session, _user_id(database_url), uuid.uuid4(), quota.ANALYSIS, 1, settings=settings)
    assert _used(client, account.headers) == 1
    # Written behind the service's back: no stamp is bumped, so only the cache's age ends it.
    with engine_for(database_url).begin() as connection:
        connection.execute(update(UsagePeriod).values(analyses_used=3))
    changed_at = time.monotonic()
    while _used(client, account.headers) != 3:
        assert time.monotonic() - changed_at <= settings.usage_cache_seconds + 0.25
        time.sleep(0.05)


def test_the_cache_can_be_switched_off(client, account, settings):
    settings.usage_cache_seconds = 0
    assert _used(client, account.headers) == 0
    with statements(client) as seen:
        _used(client, account.headers)
    assert [s for s in seen if "from usage_periods" in s], seen


def test_savepoints_leave_the_stamp_to_the_outer_transaction(
    client, account, database_url, settings, redis_client
):
    if database_url.startswith("sqlite"):
        pytest.skip("pysqlite commits when the outermost SAVEPOINT is released: no outer rollback")
    assert _used(client, account.headers) == 0
    user_id = _user_id(database_url)
    key = stamp_key(settings, user_id)
    factory = make_session_factory(engine_for(database_url))
    before = _read_stamp(redis_client, settings, user_id)

    # A charge in a released savepoint of a transaction that then rolls back: nothing committed.
    session = factory()
    try:
        with session.begin_nested():
            quota.reserve(session, user_id, uuid.uuid4(), quota.ANALYSIS, 1, settings=settings)
        assert redis_client.get(key) == before
        session.rollback()
    finally:
        session.close()
    assert redis_client.get(key) == before

    # A charge in the outer transaction survives a savepoint that rolls back: the commit restamps.
    session = factory()
    try:
        quota.reserve(session, user_id, uuid.uuid4(), quota.ANALYSIS, 1, settings=settings)
        savepoint = session.begin_nested()
        savepoint.rollback()
        session.commit()
    finally:
        session.close()
    assert redis_client.get(key) != before
    assert _used(client, account.headers) == 1


def test_a_lost_stamp_never_brings_back_a_cached_read(client, account, database_url, settings, redis_client):
    """The stamp expires or Redis restarts empty: the next read gets a new stamp, never one a
    cached entry was tagged with, so a change committed meanwhile shows."""
    headers = {"X-API-Key": new_api_key(client, account)["key"]}
    assert _used(client, headers) == 0  # cached under the current stamp
    user_id = _user_id(database_url)
    key = stamp_key(settings, user_id)
    redis_client.delete(key)
    with engine_for(database_url).begin() as connection:  # a change whose stamp was lost
        connection.execute(
            UsagePeriod.__table__.insert().values(
                user_id=user_id, period=quota.current_period(), analyses_used=2, seconds_used=0.0
            )
        )
    assert _used(client, headers) == 2
    assert redis_client.get(key) is not None
