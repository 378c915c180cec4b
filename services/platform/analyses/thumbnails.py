"""Face thumbnails: per utterance a small JPEG of the frame of its middle face record
(``faces[len(faces) // 2]``), written by the worker after feature extraction through the media
storage (local directory or S3) under ``thumbnails/<analysis id>/<utterance index>.jpg``, read by
the owner-only thumbnail endpoint, and deleted with the analysis."""

from __future__ import annotations

import uuid

from shared.storage import MediaStorage

CONTENT_TYPE = "image/jpeg"


def thumbnail_prefix(analysis_id: uuid.UUID) -> str:
    return f"thumbnails/{analysis_id}"


def thumbnail_key(analysis_id: uuid.UUID, index: int) -> str:
    return f"{thumbnail_prefix(analysis_id)}/{index}.jpg"


def store_thumbnails(storage: MediaStorage, analysis_id: uuid.UUID, thumbnails: list[bytes | None]) -> int:
    """Replace the analysis' thumbnails (a re-run may have fewer utterances); returns how many were
    stored. Raises ``StorageError``."""
    storage.delete_prefix(thumbnail_prefix(analysis_id))
    stored = 0
    for index, image in enumerate(thumbnails):
        if image is not None:
            storage.put(thumbnail_key(analysis_id, index), image, CONTENT_TYPE)
            stored += 1
    return stored
