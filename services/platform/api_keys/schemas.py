from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.db.types import STORABLE_TEXT_PATTERN

Scope = Literal["analyses:read", "analyses:write"]


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=STORABLE_TEXT_PATTERN, examples=["ci-pipeline"])
    scopes: list[Scope] = Field(default=["analyses:read", "analyses:write"], min_length=1)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Omit for no expiry.")


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The first characters of the key, to tell keys apart.")
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself. Shown only in this response; store it now.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyPublic]
