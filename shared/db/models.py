"""SQLAlchemy 2 models. The gateway writes accounts, keys and submissions; the worker writes
status, utterance results and webhook deliveries with the same classes (sync sessions)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db.types import UTCDateTime, utcnow

# Stable constraint names so migrations are identical on PostgreSQL and SQLite.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class AnalysisStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (AnalysisStatus.succeeded, AnalysisStatus.failed, AnalysisStatus.canceled)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    plan: Mapped[str] = mapped_column(String(32), default="free")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Whether the utterances this user corrected may become training data (off until they opt in).
    training_consent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RefreshToken(Base):
    """Refresh tokens are stored as SHA-256 digests; each use rotates it within its family, and
    presenting a rotated token again revokes the whole family (token theft detection)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiKey(Base):
    """Only the HMAC of the key is stored; ``prefix`` (the first characters) lets users tell keys
    apart in listings."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    backend: Mapped[str] = mapped_column(String(16))
    # Object key in the bucket (s3) or path relative to the uploads directory (local).
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class Analysis(Base):
    __tablename__ = "analyses"
    __table_args__ = (Index("ix_analyses_user_created", "user_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=AnalysisStatus.queued.value, index=True)
    source_url: Mapped[str | None] = mapped_column(Text)
    upload_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("uploads.id", ondelete="SET NULL"))
    # The transcript as submitted: SRT/VTT text, or JSON segments serialised as text.
    transcript: Mapped[str | None] = mapped_column(Text)
    transcript_format: Mapped[str | None] = mapped_column(String(8))
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # What the user calls it (default: the upload's filename or the URL's last segment), and their
    # own small JSON object; `metadata` is the column, the attribute name is taken by SQLAlchemy.
    name: Mapped[str | None] = mapped_column(String(200))
    user_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    utterance_count: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any] | None]
    model_version: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    upload: Mapped[Upload | None] = relationship()

    @property
    def transcript_kind(self) -> str:
        """Where the words came from: the transcript's format (srt, vtt, json), or "none": no
        transcript, so the words were not analysed."""
        return (self.transcript_format or "none") if self.transcript else "none"


class UtteranceResult(Base):
    """One scored utterance; unique per (analysis, index) so a re-run job upserts instead of
    duplicating."""

    __tablename__ = "utterance_results"
    __table_args__ = (UniqueConstraint("analysis_id", "index"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    analysis_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text, default="")
    speaker: Mapped[str | None] = mapped_column(String(100))
    # Labels and scores are None for an utterance without evidence (``reason`` says why).
    emotion: Mapped[str | None] = mapped_column(String(16))
    emotion_scores: Mapped[dict[str, Any] | None]
    sentiment: Mapped[str | None] = mapped_column(String(16))
    sentiment_scores: Mapped[dict[str, Any] | None]
    reason: Mapped[str | None] = mapped_column(String(32))
    # Modality names used for this prediction (subset of shared.contract.labels.MODALITIES).
    modalities: Mapped[list[Any]] = mapped_column(default=list)
    # Each used modality's own head ({"text": {"emotion": {...}, "sentiment": {...}}, ...}): what
    # drove the fused result (shared.contract.predictions.ModalityScores).
    modality_scores: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # The owner's correction, beside the prediction (which is kept): labels of shared.contract.labels, or
    # None where that head was not corrected; who corrected it and when.
    corrected_emotion: Mapped[str | None] = mapped_column(String(16))
    corrected_sentiment: Mapped[str | None] = mapped_column(String(16))
    corrected_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    corrected_at: Mapped[datetime | None] = mapped_column(index=True)
    # Why a modality the media had was not used ({"audio": "no_speech"}: shared.contract.features.speech).
    modalities_masked: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # Per sampled frame, the faces found and the one read (shared.contract.predictions.FrameFaces).
    faces: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsagePeriod(Base):
    """Per user per calendar month (UTC) counters; changed only by conditional UPDATEs
    (services/platform/usage/quota.py), never read-then-written."""

    __tablename__ = "usage_periods"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)  # "YYYY-MM"
    analyses_used: Mapped[int] = mapped_column(Integer, default=0)
    seconds_used: Mapped[float] = mapped_column(Float, default=0.0)


class UsageEntry(Base):
    """The ledger: one row per charge (kind "analysis" or "seconds") per analysis. Its unique key
    makes a re-run job's charge a no-op; ``refunded_at`` makes refunds happen once."""

    __tablename__ = "usage_entries"
    __table_args__ = (UniqueConstraint("analysis_id", "kind"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    analysis_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(16))
    period: Mapped[str] = mapped_column(String(7))
    amount: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    refunded_at: Mapped[datetime | None]


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(200), default="")
    # Standard Webhooks "whsec_" secret; needed in clear to sign, so never returned after creation.
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event to one receiver (a registered endpoint, or an analysis' callback_url)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_user_created", "user_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    analysis_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("analyses.id", ondelete="SET NULL"))
    url: Mapped[str] = mapped_column(Text)
    # The Standard Webhooks message id (webhook-id header), stable across retries.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """The first response to an ``Idempotency-Key``; replayed for the same body, 409 otherwise."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any]]
    location: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
