"""Database models and the session factory shared by the gateway and the worker."""

from shared.db.models import (
    Analysis,
    AnalysisStatus,
    ApiKey,
    Base,
    IdempotencyRecord,
    RefreshToken,
    Upload,
    UsageEntry,
    UsagePeriod,
    User,
    UtteranceResult,
    WebhookDelivery,
    WebhookEndpoint,
)
from shared.db.session import create_db_engine, make_session_factory, session_scope

__all__ = [
    "Analysis",
    "AnalysisStatus",
    "ApiKey",
    "Base",
    "IdempotencyRecord",
    "RefreshToken",
    "Upload",
    "UsageEntry",
    "UsagePeriod",
    "User",
    "UtteranceResult",
    "WebhookDelivery",
    "WebhookEndpoint",
    "create_db_engine",
    "make_session_factory",
    "session_scope",
]
