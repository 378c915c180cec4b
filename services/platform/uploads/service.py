"""Upload targets: a presigned S3 PUT, or a signed PUT to the gateway (local storage), bounded to
the declared size and to the media types browsers actually send."""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from pathlib import PurePath

from sqlalchemy.orm import Session

from services.gateway.security import sign_upload
from services.platform.uploads.media_types import (
    ALLOWED_CONTENT_TYPES,
    EXTENSION_TYPES,
    GENERIC_TYPES,
    declared_type,
    extension_type,
)
from services.platform.uploads.schemas import UploadCreate, UploadTarget
from shared.db.models import Upload
from shared.db.types import utcnow
from shared.problems import Conflict, NotFound, PayloadTooLarge, UnsupportedMediaType
from shared.settings import Settings
from shared.storage import LocalStorage, S3Storage, get_storage

_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\]")


class UnsupportedUploadType(UnsupportedMediaType):
    code, title = "unsupported_media_type", "Only video and audio files can be uploaded"


class UploadTooLarge(PayloadTooLarge):
    code, title = "upload_too_large", "The file is larger than allowed"


class UploadNotFound(NotFound):
    code, title = "upload_not_found", "Upload not found"


class UploadAlreadyCompleted(Conflict):
    code, title = "upload_completed", "The upload was already completed"


def resolve_content_type(filename: str, content_type: str) -> str:
    declared = declared_type(content_type)
    if declared in GENERIC_TYPES:
        resolved = extension_type(filename)
        if resolved is None:
            raise UnsupportedUploadType(f"Cannot tell the media type of {filename!r}; send content_type.")
        return resolved
    if declared not in ALLOWED_CONTENT_TYPES:
        raise UnsupportedUploadType(
            f"{content_type!r} is not accepted; upload MP4, QuickTime, WebM, Matroska or common audio files.",
            accepted=sorted(ALLOWED_CONTENT_TYPES),
        )
    return declared


def clean_filename(filename: str) -> str:
    name = _UNSAFE_FILENAME.sub("_", os.path.basename(filename.replace("\\", "/"))).strip() or "upload"
    return name[:255]


def human_size(size: int) -> str:
    """Bytes in the decimal units people read on their file managers: 2 GB, 3.5 MB, 800 KB."""
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


def create(
    session: Session, settings: Settings, user_id: uuid.UUID, body: UploadCreate, base_url: str
) -> UploadTarget:
    if body.size_bytes > settings.max_media_bytes:
        size, limit = human_size(body.size_bytes), human_size(settings.max_media_bytes)
        raise UploadTooLarge(f"The file is {size}; the limit is {limit}.", limit=settings.max_media_bytes)
    content_type = resolve_content_type(body.filename, body.content_type)
    filename = clean_filename(body.filename)
    upload_id = uuid.uuid4()
    suffix = PurePath(filename).suffix.lower()
    storage = get_storage(settings)
    expires_at = utcnow() + timedelta(seconds=settings.upload_url_ttl_seconds)
    upload = Upload(
        id=upload_id,
        user_id=user_id,
        filename=filename,
        content_type=content_type,
        size_bytes=body.size_bytes,
        backend=storage.backend,
        storage_key=f"uploads/{user_id}/{upload_id}{suffix if suffix in EXTENSION_TYPES else ''}",
        expires_at=expires_at,
    )
    session.add(upload)
    session.flush()
    headers = {"Content-Type": content_type}
    if isinstance(storage, S3Storage):
        url = storage.presign_put(
            upload.storage_key, content_type, body.size_bytes, settings.upload_url_ttl_seconds
        )
    else:
        expires = int(expires_at.timestamp())
        signature = sign_upload(upload_id, expires, settings)
        url = f"{base_url.rstrip('/')}/v1/uploads/{upload_id}/content?expires={expires}&signature={signature}"
    return UploadTarget(
        upload_id=upload_id, url=url, headers=headers, expires_at=expires_at, backend=storage.backend
    )


def local_storage(settings: Settings) -> LocalStorage:
    storage = get_storage(settings)
    if not isinstance(storage, LocalStorage):
        raise UploadNotFound("This server stores uploads in S3; PUT to the presigned URL.")
    return storage
