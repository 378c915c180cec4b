from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.platform.uploads.media_types import (
    GENERIC_TYPE_PATTERN,
    MEDIA_FILENAME_PATTERN,
    MEDIA_TYPE_PATTERN,
)

# What resolve_content_type accepts: a media type, or a generic one (or none) with a filename
# whose extension tells the type (a name that is only an extension, `.mp4`, has none).
UPLOAD_TYPE_RULE = {
    "anyOf": [
        {"required": ["content_type"], "properties": {"content_type": {"pattern": MEDIA_TYPE_PATTERN}}},
        {
            "properties": {
                "content_type": {"pattern": GENERIC_TYPE_PATTERN},
                "filename": {"pattern": MEDIA_FILENAME_PATTERN},
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
