from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.db.types import STORABLE_TEXT_PATTERN

EventType = Literal["analysis.succeeded", "analysis.failed"]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class WebhookEndpointCreate(BaseModel):
    url: str = Field(max_length=2048, examples=["https://example.com/hooks/moodreel"])
    description: str = Field(default="", max_length=200, pattern=STORABLE_TEXT_PATTERN)
    event_types: list[EventType] = Field(
        default_factory=list, description="Events to receive; empty means every event."
    )


class WebhookEndpointUpdate(BaseModel):
    url: str | None = Field(default=None, max_length=2048)
    description: str | None = Field(default=None, max_length=200, pattern=STORABLE_TEXT_PATTERN)
    event_types: list[EventType] | None = None
    is_active: bool | None = None


class WebhookEndpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    url: str
    description: str
    event_types: list[str]
    is_active: bool
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointPublic):
    secret: str = Field(
        description="The Standard Webhooks signing secret (`whsec_…`). Shown only in this response."
    )


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpointPublic]


class CallbackSecret(BaseModel):
    secret: str = Field(description="Signs deliveries to the `callback_url` of your analyses.")


class WebhookDeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    endpoint_id: uuid.UUID | None = Field(description="Null for an analysis' callback_url.")
    analysis_id: uuid.UUID | None
    url: str
    message_id: str = Field(description="The `webhook-id` header; the same on every attempt.")
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveryDetail(WebhookDeliveryPublic):
    payload: dict[str, Any]


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")
