"""Helpers shared by the end-to-end tests: stored rows, the usage ledger, the event stream."""

from __future__ import annotations

import uuid

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.platform.analyses.events import AnalysisEvent, read_events_sync
from shared.db.models import UsageEntry, UtteranceResult
from shared.settings import Settings


def utterance_rows(sessions: sessionmaker[Session], analysis_id: uuid.UUID | str) -> list[UtteranceResult]:
    with sessions() as session:
        return list(
            session.scalars(
                select(UtteranceResult)
                .where(UtteranceResult.analysis_id == uuid.UUID(str(analysis_id)))
                .order_by(UtteranceResult.index)
            )
        )


def ledger(sessions: sessionmaker[Session], analysis_id: uuid.UUID | str) -> dict[str, UsageEntry]:
    with sessions() as session:
        entries = session.scalars(
            select(UsageEntry).where(UsageEntry.analysis_id == uuid.UUID(str(analysis_id)))
        )
        return {entry.kind: entry for entry in entries}


def events(client: redis.Redis, analysis_id: uuid.UUID | str, prefix: str) -> list[AnalysisEvent]:
    return read_events_sync(client, analysis_id, settings=Settings(redis_key_prefix=prefix))
