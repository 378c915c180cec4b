"""The ``analyses`` and ``utterance_results`` tables: the API's reads and writes and the
``analyse_video`` job's.

Every function takes a Session and only flushes; ``session_scope`` in the caller commits, so one
call is one transaction. The job's writes are idempotent so a job that is killed and run again
converges on the same rows: utterances upsert on (analysis_id, index), and terminal status
changes only apply to a non-terminal analysis.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from services.platform.pagination import Cursor, newest_first
from shared.contract.predictions import UtterancePrediction
from shared.db.models import Analysis, AnalysisStatus, IdempotencyRecord, UtteranceResult
from shared.db.session import dialect_insert
from shared.db.types import utcnow


def get_for_user(session: Session, user_id: uuid.UUID, analysis_id: uuid.UUID) -> Analysis | None:
    return session.scalar(select(Analysis).where(Analysis.id == analysis_id, Analysis.user_id == user_id))


def utterances(session: Session, analysis_id: uuid.UUID) -> Sequence[UtteranceResult]:
    return session.scalars(
        select(UtteranceResult)
        .where(UtteranceResult.analysis_id == analysis_id)
        .order_by(UtteranceResult.index)
    ).all()


def utterance(session: Session, analysis_id: uuid.UUID, index: int) -> UtteranceResult | None:
    return session.scalar(
        select(UtteranceResult).where(
            UtteranceResult.analysis_id == analysis_id, UtteranceResult.index == index
        )
    )


def delete_utterances(session: Session, analysis_id: uuid.UUID) -> None:
    session.execute(delete(UtteranceResult).where(UtteranceResult.analysis_id == analysis_id))


def page(
    session: Session,
    user_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    cursor: Cursor | None,
    query: str | None = None,
) -> list[Analysis]:
    """Newest first; keyset pagination on (created_at, id) stays stable while rows are added.
    ``query`` keeps the analyses whose name contains it, case-insensitively (``%``/``_`` literal)."""
    statement = select(Analysis).where(Analysis.user_id == user_id)
    if status is not None:
        statement = statement.where(Analysis.status == status)
    if query:
        escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(func.lower(Analysis.name).like(f"%{escaped}%", escape="\\"))
    return list(session.scalars(newest_first(statement, Analysis, limit=limit, cursor=cursor)))


def get_idempotency_record(session: Session, user_id: uuid.UUID, key: str) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key)
    )


def upload_used_elsewhere(session: Session, upload_id: uuid.UUID, analysis_id: uuid.UUID) -> bool:
    """Whether an analysis other than ``analysis_id`` was submitted with this upload."""
    other = session.scalar(
        select(Analysis.id).where(Analysis.upload_id == upload_id, Analysis.id != analysis_id).limit(1)
    )
    return other is not None


# --- the analyse_video job -----------------------------------------------------------------------
NON_TERMINAL = (AnalysisStatus.queued.value, AnalysisStatus.processing.value)


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
    statement = dialect_insert(session)(UtteranceResult).values(rows)
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
