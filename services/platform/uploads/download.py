"""Media from upload storage (``shared.storage``: local directory or S3 bucket) into a job's
workspace. URLs go through ``shared.net.fetch`` instead; uploads are already on storage the
operator controls, so only completion and size are checked here.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Upload
from shared.db.session import session_scope
from shared.net.fetch import FetchError
from shared.settings import Settings
from shared.storage import StorageError, get_storage


async def fetch_upload(
    sessions: sessionmaker[Session], upload_id: uuid.UUID, workspace: Path, settings: Settings
) -> Path:
    def load() -> Upload | None:
        with session_scope(sessions) as session:
            return session.get(Upload, upload_id)

    upload = await asyncio.to_thread(load)
    if upload is None or upload.completed_at is None:
        raise FetchError("download_failed", "the upload does not exist or was never completed")
    return await asyncio.to_thread(_download, upload.storage_key, workspace / "media", settings)


def _download(key: str, destination: Path, settings: Settings) -> Path:
    limit = min(settings.max_media_bytes, settings.worker_temp_max_bytes)
    storage = get_storage(settings)
    try:
        size = storage.size(key)
        if size is None:
            raise FetchError("download_failed", "the uploaded file is missing from storage")
        if size > limit:
            raise FetchError("too_large", f"the upload is {size} bytes; the limit is {limit}")
        storage.download_to(key, destination)
    except StorageError as exc:
        destination.unlink(missing_ok=True)
        raise FetchError("download_failed", f"upload storage failed: {exc}", transient=True) from exc
    return destination
