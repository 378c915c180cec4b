"""Keyset pagination, newest first, on (created_at, id): stable while rows are added, with opaque
cursors. Shared by the analyses list and the webhook delivery log."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Select, and_, or_

from shared.problems import BadRequest

Cursor = tuple[datetime, uuid.UUID]


class InvalidCursor(BadRequest):
    code, title = "invalid_cursor", "The cursor is invalid"


class Keyed(Protocol):
    created_at: datetime
    id: uuid.UUID


def encode_cursor(row: Keyed) -> str:
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Cursor:
    """Raises :class:`InvalidCursor` (400) for anything that is not a cursor this API issued."""
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        created, _, row_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("The cursor is not one this API returned.") from exc


def newest_first(statement: Select, model: Any, *, limit: int, cursor: Cursor | None) -> Select:
    """The page after `cursor`, plus one extra row that tells the caller whether more follow."""
    if cursor is not None:
        created_at, row_id = cursor
        statement = statement.where(
            or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < row_id))
        )
    return statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
