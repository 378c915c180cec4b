"""Verified API keys, remembered for at most ``api_key_cache_seconds`` (≤ 1 s) per process.

A hit skips the key-and-user query: the remembered rows are detached copies, merged into the
request's session without SQL. A revocation through the API evicts the key at once in the
process that handled it; any other change (another process, a direct database write, a disabled
account) is seen when the entry expires, so within a second. ``last_used_at`` is written at
most once a minute per key."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import inspect
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from shared.db.models import ApiKey, User

MAX_ENTRIES = 10_000
Row = TypeVar("Row", ApiKey, User)


def detached_copy(row: Row) -> Row:
    """A detached instance with the row's column values (no relationships), safe to share."""
    mapper = inspect(row).mapper
    copy = mapper.class_manager.new_instance()
    for attribute in mapper.column_attrs:
        set_committed_value(copy, attribute.key, getattr(row, attribute.key))
    make_transient_to_detached(copy)
    return copy


@dataclass(frozen=True)
class _Entry:
    api_key: ApiKey
    user: User
    loaded_at: float


class VerifiedKeyCache:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._last_used: dict[uuid.UUID, datetime] = {}
        self._lock = threading.Lock()

    def get(self, session: Session, scope: str, key_hash: str, ttl: float) -> tuple[ApiKey, User] | None:
        """The key and its user attached to ``session``, if verified less than ``ttl`` s ago."""
        if ttl <= 0:
            return None
        entry = self._entries.get((scope, key_hash))
        if entry is None or time.monotonic() - entry.loaded_at >= ttl:
            return None
        return session.merge(entry.api_key, load=False), session.merge(entry.user, load=False)

    def verified_recently(self, scope: str, key_hash: str, ttl: float) -> bool:
        """Whether the key was verified less than ``ttl`` s ago (no session needed)."""
        entry = self._entries.get((scope, key_hash))
        return entry is not None and ttl > 0 and time.monotonic() - entry.loaded_at < ttl

    def put(self, scope: str, key_hash: str, api_key: ApiKey, user: User) -> None:
        entry = _Entry(detached_copy(api_key), detached_copy(user), time.monotonic())
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
                self._last_used.clear()
            self._entries[(scope, key_hash)] = entry
            known, stored = self._last_used.get(api_key.id), api_key.last_used_at
            if stored is not None:
                self._last_used[api_key.id] = max(known, stored) if known else stored

    def last_used(self, key_id: uuid.UUID) -> datetime | None:
        return self._last_used.get(key_id)

    def mark_used(self, key_id: uuid.UUID, when: datetime) -> None:
        with self._lock:
            self._last_used[key_id] = when

    def forget(self, key_id: uuid.UUID) -> None:
        """Evict a key (revoked here): the next request checks the database."""
        with self._lock:
            for cache_key in [k for k, entry in self._entries.items() if entry.api_key.id == key_id]:
                del self._entries[cache_key]

    def forget_user(self, user_id: uuid.UUID) -> None:
        """Evict every key of an account (disabled or changed here)."""
        with self._lock:
            for cache_key in [k for k, entry in self._entries.items() if entry.user.id == user_id]:
                del self._entries[cache_key]


verified_keys = VerifiedKeyCache()
