from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.predictions import ModalityScores

AnalysisStatusName = Literal["queued", "processing", "succeeded", "failed", "canceled"]

TRANSCRIPT_EXAMPLE = "1\n00:00:00,000 --> 00:00:02,500\nJOEY: How you doin'?\n"


class TranscriptSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: float = Field(ge=0, description="Seconds from the start of the media.")
    end: float = Field(gt=0)
    text: str = Field(default="", max_length=10_000)
    speaker: str | None = Field(default=None, max_length=100)


class AnalysisOptions(BaseModel):
    """Per-analysis choices. Dialogue context is not one: it follows the deployed model's
    FeatureSpec (`context_turns`), since other features would change the spec hash it refuses."""

    model_config = ConfigDict(extra="forbid")

    window_seconds: float | None = Field(
        default=None,
        ge=0.5,
        le=60,
        description="Without a transcript the media is cut into windows of this length "
        "(default from the server's settings).",
    )


class AnalysisCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "video_url": "https://media.example.com/friends-s01e01.mp4",
                    "transcript": TRANSCRIPT_EXAMPLE,
                    "callback_url": "https://hooks.example.com/moodreel",
                    "options": {"window_seconds": 4.0},
                }
            ]
        },
    )

    video_url: str | None = Field(default=None, max_length=2048)
    upload_id: uuid.UUID | None = Field(default=None, description="From `POST /v1/uploads`, once uploaded.")
    transcript: str | list[TranscriptSegment] | None = Field(
        default=None,
        max_length=2_000_000,
        description="SRT or WebVTT text, or JSON segments `[{start, end, text, speaker?}]`. Without "
        "one, the media is scored in fixed windows.",
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="Receives `analysis.succeeded` / `analysis.failed`."
    )
    options: AnalysisOptions = Field(default_factory=AnalysisOptions)

    @model_validator(mode="after")
    def exactly_one_source(self) -> AnalysisCreate:
        if (self.video_url is None) == (self.upload_id is None):
            raise ValueError("give exactly one of video_url and upload_id")
        return self


class LabelScores(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]


class UtteranceResultPublic(BaseModel):
    index: int
    start: float
    end: float
    text: str
    speaker: str | None
    emotion: LabelScores
    sentiment: LabelScores
    modalities_used: list[str]
    modality_scores: dict[str, ModalityScores] = Field(
        default_factory=dict,
        description="each used modality's own emotion and sentiment scores: what drove the result",
    )
    modalities_masked: dict[str, str] = Field(
        default_factory=dict,
        description="why a modality was not used: audio 'no_audio', 'silent', 'no_speech' or "
        "'too_little_speech' (the speech gate found no voice in the utterance's span)",
    )


class AnalysisError(BaseModel):
    code: str = Field(examples=["not_media"])
    message: str


class AnalysisSource(BaseModel):
    video_url: str | None = None
    upload_id: uuid.UUID | None = None


class AnalysisLinks(BaseModel):
    self: str
    events: str
    export: str


class AnalysisPublic(BaseModel):
    id: uuid.UUID
    status: AnalysisStatusName
    source: AnalysisSource
    options: dict[str, Any]
    callback_url: str | None
    duration_seconds: float | None
    utterance_count: int
    model_version: str | None
    error: AnalysisError | None
    summary: dict[str, Any] | None = Field(
        description="Dominant emotion and sentiment, their shares, and emotion share over time."
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: AnalysisLinks


class AnalysisDetail(AnalysisPublic):
    utterances: list[UtteranceResultPublic]


class AnalysisPage(BaseModel):
    items: list[AnalysisPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")
