"""Helpers shared by the end-to-end tests: waiting on analyses, reading events and the ledger."""

from __future__ import annotations

import time
import uuid

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Analysis, UsageEntry, UtteranceResult, WebhookDelivery
from shared.events import AnalysisEvent, read_events_sync
from shared.settings import Settings

TERMINAL = {"succeeded", "failed", "canceled"}


def wait_for_analysis(
    sessions: sessionmaker[Session], analysis_id: uuid.UUID | str, timeout: float = 90.0
) -> Analysis:
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            analysis = session.get(Analysis, uuid.UUID(str(analysis_id)))
            if analysis is not None and analysis.status in TERMINAL:
                return analysis
        if time.monotonic() > deadline:
            raise TimeoutError(f"analysis {analysis_id} still {analysis.status if analysis else 'missing'}")
        time.sleep(0.2)


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


def deliveries(sessions: sessionmaker[Session], analysis_id: uuid.UUID | str) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.analysis_id == uuid.UUID(str(analysis_id)))
            )
        )


def events(client: redis.Redis, analysis_id: uuid.UUID | str, prefix: str) -> list[AnalysisEvent]:
    return read_events_sync(client, analysis_id, settings=Settings(redis_key_prefix=prefix))
