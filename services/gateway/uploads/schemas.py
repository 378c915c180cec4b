from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.uploads.media_types import ALLOWED_CONTENT_TYPES, EXTENSION_TYPES, GENERIC_TYPES


def _case_insensitive(extension: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in extension)


# What resolve_content_type accepts: a listed media type, or a generic one (or none) with a
# filename whose extension tells the type (a name that is only an extension, `.mp4`, has none).
_FILENAME_WITH_MEDIA_EXTENSION = (
    r"[^/]\.(" + "|".join(_case_insensitive(ext.lstrip(".")) for ext in sorted(EXTENSION_TYPES)) + r")$"
)
UPLOAD_TYPE_RULE = {
    "anyOf": [
        {
            "required": ["content_type"],
            "properties": {"content_type": {"enum": sorted(ALLOWED_CONTENT_TYPES)}},
        },
        {
            "properties": {
                "content_type": {"enum": sorted(GENERIC_TYPES)},
                "filename": {"pattern": _FILENAME_WITH_MEDIA_EXTENSION},
            }
        },
    ]
}


class UploadCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"filename": "interview.mp4", "content_type": "video/mp4", "size_bytes": 48_213_004}
            ],
            **UPLOAD_TYPE_RULE,
        },
    )

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(
        default="",
        max_length=100,
        description="As the browser reports it (`File.type`); empty or `application/octet-stream` is "
        "resolved from the file extension.",
    )
    size_bytes: int = Field(ge=1, description="Exact size; the PUT must send exactly this many bytes.")


class UploadTarget(BaseModel):
    upload_id: uuid.UUID
    method: Literal["PUT"] = "PUT"
    url: str = Field(description="PUT the file's bytes here (presigned S3 URL, or the gateway itself).")
    headers: dict[str, str] = Field(description="Send these headers with the PUT, unchanged.")
    expires_at: datetime
    backend: Literal["local", "s3"]


class UploadPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    backend: str
    created_at: datetime
    expires_at: datetime
    completed_at: datetime | None
