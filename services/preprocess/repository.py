"""The worker's database work: sync SQLAlchemy on the shared models, run in a thread.

Every function takes a Session and only flushes; ``session_scope`` in the caller commits, so one
call is one transaction. Writes are idempotent so a job that is killed and run again converges
on the same rows: utterances upsert on (analysis_id, index), deliveries insert on their
deterministic message id, and terminal status changes only apply to a non-terminal analysis.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from shared.db.models import Analysis, AnalysisStatus, UtteranceResult, WebhookDelivery, WebhookEndpoint
from shared.db.types import utcnow
from shared.predictions import UtterancePrediction

NON_TERMINAL = (AnalysisStatus.queued.value, AnalysisStatus.processing.value)


def _insert(session: Session):
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def get_analysis(session: Session, analysis_id: uuid.UUID, *, lock: bool = False) -> Analysis | None:
    statement = select(Analysis).where(Analysis.id == analysis_id)
    if lock:
        # Serialises with the gateway's cancel (which updates the same row) on PostgreSQL.
        statement = statement.with_for_update()
    return session.scalar(statement)


def mark_processing(session: Session, analysis_id: uuid.UUID) -> bool:
    """queued/processing → processing; False when the analysis is gone or already terminal."""
    result = session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.status.in_(NON_TERMINAL))
        .values(status=AnalysisStatus.processing.value, started_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def renew_lease(session: Session, analysis_id: uuid.UUID) -> None:
    """The running job's heartbeat: ``updated_at`` is the lease the reconciler reads."""
    session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.status == AnalysisStatus.processing.value)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def set_media_facts(session: Session, analysis_id: uuid.UUID, duration: float) -> None:
    session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id)
        .values(duration_seconds=duration, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def utterance_row(analysis_id: uuid.UUID, index: int, prediction: UtterancePrediction) -> dict[str, Any]:
    return {
        "analysis_id": analysis_id,
        "index": index,
        "start": prediction.start,
        "end": prediction.end,
        "text": prediction.text,
        "speaker": prediction.speaker,
        "emotion": prediction.emotion.label,
        "emotion_scores": prediction.emotion.scores,
        "sentiment": prediction.sentiment.label,
        "sentiment_scores": prediction.sentiment.scores,
        "modalities": list(prediction.modalities_used),
        "modality_scores": prediction.model_dump(mode="json")["modalities"],
        "modalities_masked": dict(prediction.modalities_masked),
        "faces": [frame.model_dump(mode="json") for frame in prediction.faces],
    }


def upsert_utterances(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    statement = _insert(session)(UtteranceResult).values(rows)
    updated = {name: statement.excluded[name] for name in rows[0] if name not in ("analysis_id", "index")}
    session.execute(statement.on_conflict_do_update(index_elements=["analysis_id", "index"], set_=updated))


def delete_utterances_from(session: Session, analysis_id: uuid.UUID, count: int) -> None:
    """Drop rows past ``count`` (a re-run that found fewer utterances, e.g. a new model spec)."""
    session.execute(
        UtteranceResult.__table__.delete().where(
            UtteranceResult.analysis_id == analysis_id, UtteranceResult.index >= count
        )
    )


def finish(
    session: Session,
    analysis_id: uuid.UUID,
    status: AnalysisStatus,
    *,
    summary: dict[str, Any] | None = None,
    utterance_count: int | None = None,
    model_version: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Move a non-terminal analysis to ``status``; False when it was already terminal (canceled)."""
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": utcnow(),
        "updated_at": utcnow(),
        "error_code": error_code,
        "error_message": error_message,
    }
    if summary is not None:
        values["summary"] = summary
    if utterance_count is not None:
        values["utterance_count"] = utterance_count
    if model_version is not None:
        values["model_version"] = model_version
    result = session.execute(
        update(Analysis)
        .where(Analysis.id == analysis_id, Analysis.status.in_(NON_TERMINAL))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


# --- webhook deliveries ---------------------------------------------------------------------------
def message_id(analysis_id: uuid.UUID, event_type: str, receiver: str) -> str:
    """Deterministic per (analysis, event, receiver): a re-run job creates no second delivery."""
    return "msg_" + uuid.uuid5(analysis_id, f"{event_type}:{receiver}").hex


def create_deliveries(
    session: Session, analysis: Analysis, event_type: str, payload: dict[str, Any]
) -> list[uuid.UUID]:
    """One delivery per active endpoint subscribed to ``event_type`` plus the callback_url.

    Returns the ids of every delivery of this event that is still pending (new or left over from a
    killed run), so the caller can (re-)enqueue them; arq's job ids keep that idempotent.
    """
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.user_id == analysis.user_id, WebhookEndpoint.is_active.is_(True)
        )
    ).all()
    receivers: list[tuple[uuid.UUID | None, str, str]] = [
        (endpoint.id, endpoint.url, str(endpoint.id))
        for endpoint in endpoints
        if not endpoint.event_types or event_type in endpoint.event_types
    ]
    if analysis.callback_url:
        receivers.append((None, analysis.callback_url, "callback"))
    for endpoint_id, url, receiver in receivers:
        msg_id = message_id(analysis.id, event_type, receiver)
        session.execute(
            _insert(session)(WebhookDelivery)
            .values(
                id=uuid.uuid4(),
                user_id=analysis.user_id,
                endpoint_id=endpoint_id,
                analysis_id=analysis.id,
                url=url,
                message_id=msg_id,
                event_type=event_type,
                payload=payload,
                status="pending",
                attempts=0,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
    return pending_deliveries(session, analysis.id)


def pending_deliveries(session: Session, analysis_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.analysis_id == analysis_id, WebhookDelivery.status == "pending"
            )
        ).all()
    )
