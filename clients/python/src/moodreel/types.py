"""The API's documents as typed dictionaries (what ``json()`` gives, with names for the keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

AnalysisStatus = Literal["queued", "processing", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
ExportFormat = Literal["json", "csv", "srt"]


class LabelScores(TypedDict):
    label: str
    confidence: float
    scores: dict[str, float]


class ModalityScores(TypedDict):
    emotion: LabelScores
    sentiment: LabelScores


class Utterance(TypedDict):
    index: int
    start: float
    end: float
    text: str
    speaker: str | None
    emotion: LabelScores
    sentiment: LabelScores
    modalities_used: list[str]
    modality_scores: dict[str, ModalityScores]


class AnalysisErrorInfo(TypedDict):
    code: str
    message: str


class AnalysisSource(TypedDict):
    video_url: str | None
    upload_id: str | None


class Analysis(TypedDict):
    id: str
    status: AnalysisStatus
    source: AnalysisSource
    options: dict[str, Any]
    callback_url: str | None
    duration_seconds: float | None
    utterance_count: int
    model_version: str | None
    error: AnalysisErrorInfo | None
    summary: dict[str, Any] | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    links: dict[str, str]
    name: NotRequired[str | None]
    metadata: NotRequired[dict[str, Any]]


class AnalysisDetail(Analysis):
    utterances: list[Utterance]


class AnalysisPage(TypedDict):
    items: list[Analysis]
    next_cursor: str | None


class UploadTarget(TypedDict):
    upload_id: str
    method: str
    url: str
    headers: dict[str, str]
    expires_at: str
    backend: str


class Meter(TypedDict):
    used: float
    limit: float
    remaining: float


class Usage(TypedDict):
    period: str
    plan: str
    analyses: Meter
    video_seconds: Meter
    requests_per_minute: int
    resets_at: str


class ApiKey(TypedDict):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: str
    last_used_at: str | None
    expires_at: str | None
    revoked_at: str | None


class ApiKeyCreated(ApiKey):
    key: str


class Tokens(TypedDict):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of an analysis: ``type`` is ``status``, ``utterance`` or ``summary``;
    ``id`` resumes the stream after it (``Last-Event-ID``)."""

    type: str
    data: dict[str, Any]
    id: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES
