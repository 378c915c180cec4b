"""Stamps of the usage counters in Redis: each committed change to a user's ``usage_periods`` row
gives the user a new stamp, which tells a cached read (snapshots.py) that it is out of date.

A stamp is a random value, never a counter: a stamp that expired, or a Redis that restarted
empty, can never bring back a value a cached read was tagged with. A charge or refund calls
:func:`usage_changed` on its session; the stamp is replaced once the session's outermost
transaction commits (a savepoint's release or rollback changes nothing; an extra new stamp only
costs one query), from the thread that committed. A read that finds no stamp creates one
(:func:`read_stamp`), so every read is tagged with a value only a later change replaces.
"""

from __future__ import annotations

import threading
import uuid

import redis
from redis.asyncio.client import Pipeline
from sqlalchemy import event
from sqlalchemy.orm import Session

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# A stamp outlives every snapshot tagged with it by far; users who stop using the service stop
# costing a key (their next read creates a new stamp).
STAMP_TTL_SECONDS = 86_400
_PENDING = "usage_changed"


def _stamp_key_for(prefix: str, user_id: uuid.UUID) -> str:
    return f"{prefix}usage:stamp:{user_id}"


def stamp_key(settings: Settings, user_id: uuid.UUID) -> str:
    return _stamp_key_for(settings.redis_key_prefix, user_id)


def usage_changed(session: Session, user_id: uuid.UUID, settings: Settings) -> None:
    """Record that ``session`` changed the user's counters: their stamp is bumped once it commits."""
    pending: dict[tuple[str, str], set[uuid.UUID]] = session.info.setdefault(_PENDING, {})
    pending.setdefault((settings.redis_url, settings.redis_key_prefix), set()).add(user_id)


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _sync_client(url: str) -> redis.Redis:
    with _clients_lock:
        if url not in _clients:
            # Short timeouts: a commit has already happened; an unreachable Redis must not hold it.
            _clients[url] = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return _clients[url]


@event.listens_for(Session, "after_commit")
def _replace_stamps(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the outer transaction decides
        return
    pending: dict[tuple[str, str], set[uuid.UUID]] = session.info.pop(_PENDING, {})
    for (url, prefix), user_ids in pending.items():
        try:
            with _sync_client(url).pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.set(_stamp_key_for(prefix, user_id), uuid.uuid4().hex, ex=STAMP_TTL_SECONDS)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("usage_stamp_not_replaced", users=len(user_ids), error=str(exc))


@event.listens_for(Session, "after_rollback")
def _forget_stamps(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_PENDING, None)


def read_stamp(pipe: Pipeline, settings: Settings, user_id: uuid.UUID) -> None:
    """Queue, on ``pipe``, the reading of the user's stamp (created when there is none); the
    pipeline's last reply is then the stamp."""
    key = stamp_key(settings, user_id)
    pipe.set(key, uuid.uuid4().hex, nx=True, ex=STAMP_TTL_SECONDS)
    pipe.get(key)
