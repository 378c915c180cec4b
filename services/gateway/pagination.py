"""Keyset pagination, newest first, on (created_at, id): stable while rows are added, with opaque
cursors. Shared by the analyses list and the webhook delivery log; the query is
``services.platform.pagination.newest_first``.

A cursor is the position itself, `<microseconds since the epoch>_<row id hex>`: every string of
that pattern (stated in the OpenAPI document) is a position, so a well-formed cursor is never
refused, and anything else is `400 invalid_cursor`."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Protocol

from fastapi import Query

from services.platform.pagination import Cursor
from shared.problems import BadRequest

# 16 digits of microseconds reach the year 2286.
CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{32}$"
_CURSOR = re.compile(r"(?P<micros>[0-9]{1,16})_(?P<id>[0-9a-f]{32})")
# Validated by decode_cursor (400 invalid_cursor), documented as the pattern.
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=200,
        json_schema_extra={"pattern": CURSOR_PATTERN},
        description="`next_cursor` of the previous page.",
    ),
]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class InvalidCursor(BadRequest):
    code, title = "invalid_cursor", "The cursor is invalid"


class Keyed(Protocol):
    created_at: datetime
    id: uuid.UUID


def encode_cursor(row: Keyed) -> str:
    micros = (row.created_at - _EPOCH) // _MICROSECOND
    return f"{micros}_{row.id.hex}"


def decode_cursor(cursor: str) -> Cursor:
    """Raises :class:`InvalidCursor` (400) for anything that is not of the cursor pattern."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidCursor("The cursor is not one this API returned.")
    return _EPOCH + int(match["micros"]) * _MICROSECOND, uuid.UUID(hex=match["id"])
