"""OpenAPI documentation of the webhook payloads Moodreel sends (sent by ``delivery.py``)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI, Header
from pydantic import BaseModel, Field

from services.platform.analyses.schemas import AnalysisError


class WebhookAnalysis(BaseModel):
    id: uuid.UUID
    name: str | None
    metadata: dict[str, Any] = Field(description="The object given at submission.")
    status: Literal["succeeded", "failed"]
    duration_seconds: float | None
    utterance_count: int
    model_version: str | None
    summary: dict[str, Any] | None
    error: AnalysisError | None
    created_at: datetime
    finished_at: datetime | None


class WebhookEvent(BaseModel):
    type: Literal["analysis.succeeded", "analysis.failed"]
    timestamp: datetime
    data: WebhookAnalysis = Field(description="The analysis without its utterances; GET it for those.")


class WebhookTestData(BaseModel):
    endpoint_id: str
    message: str


class WebhookTestEvent(BaseModel):
    type: Literal["webhook.test"]
    timestamp: datetime
    data: WebhookTestData = Field(description="Which endpoint was tested; nothing else happened.")


SIGNATURE_HELP = (
    "Standard Webhooks: `webhook-signature` is `v1,` + base64 HMAC-SHA256 with the endpoint's "
    "`whsec_` secret over `{webhook-id}.{webhook-timestamp}.{body}`. Reject timestamps older "
    "than 5 minutes; compare in constant time. Answer 2xx within 10 s; other answers are "
    "retried with exponential backoff."
)


def document_webhooks(app: FastAPI) -> None:
    for event_type in ("analysis.succeeded", "analysis.failed"):

        def receiver(
            body: WebhookEvent,
            webhook_id: str = Header(
                alias="webhook-id", description="Stable across retries (deduplicate on it)."
            ),
            webhook_timestamp: str = Header(alias="webhook-timestamp", description="Unix seconds."),
            webhook_signature: str = Header(
                alias="webhook-signature", description="`v1,<base64>` (space-separated list)."
            ),
        ) -> None:
            """Documentation only."""

        app.webhooks.post(
            event_type,
            summary=f"`{event_type}` — sent to your webhook endpoints and the analysis' callback_url",
            description=SIGNATURE_HELP,
        )(receiver)

    def test_receiver(
        body: WebhookTestEvent,
        webhook_id: str = Header(alias="webhook-id"),
        webhook_timestamp: str = Header(alias="webhook-timestamp"),
        webhook_signature: str = Header(alias="webhook-signature"),
    ) -> None:
        """Documentation only."""

    app.webhooks.post(
        "webhook.test",
        summary="`webhook.test` — sent to one endpoint by `POST /v1/webhooks/endpoints/{id}/test`",
        description=SIGNATURE_HELP,
    )(test_receiver)
