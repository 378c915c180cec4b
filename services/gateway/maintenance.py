"""Housekeeping the gateway's tables need: expired idempotency records and uploads that were
started but never completed (their partial objects too). Run periodically: `moodreel purge`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.db.models import Analysis, IdempotencyRecord, Upload
from shared.db.types import utcnow
from shared.logging import get_logger
from shared.settings import Settings
from shared.storage import StorageError, get_storage

log = get_logger(__name__)


@dataclass(frozen=True)
class PurgeReport:
    idempotency_records: int
    uploads: int


def purge_expired(session: Session, settings: Settings) -> PurgeReport:
    now = utcnow()
    records = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now)).rowcount
    used_uploads = select(Analysis.upload_id).where(Analysis.upload_id.is_not(None))
    stale = session.scalars(
        select(Upload).where(
            Upload.expires_at <= now, Upload.completed_at.is_(None), Upload.id.not_in(used_uploads)
        )
    ).all()
    storage = get_storage(settings)
    removed = 0
    for upload in stale:
        try:
            storage.delete(upload.storage_key)  # a PUT may have landed without anyone submitting it
        except StorageError as exc:
            log.warning("purge_upload_failed", upload_id=str(upload.id), error=str(exc))
            continue
        session.delete(upload)
        removed += 1
    session.flush()
    return PurgeReport(idempotency_records=records or 0, uploads=removed)
