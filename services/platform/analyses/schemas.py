from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.contract.predictions import FrameFaces, ModalityScores
from shared.db.models import UtteranceResult
from shared.db.types import STORABLE_TEXT_PATTERN

AnalysisStatusName = Literal["queued", "processing", "succeeded", "failed", "canceled"]
ModalityName = Literal["text", "audio", "visual"]
# Where an analysis' words came from; "none": no transcript, so the words were not analysed.
TranscriptKind = Literal["none", "srt", "vtt", "json"]
TRANSCRIPT_DESCRIPTION = (
    "The transcript the words came from: `srt`, `vtt` or `json`; `none`: there was no transcript, "
    "so the words were not analysed (add a transcript for text)."
)

# Validation work is bounded by the schema, not by the body: pydantic refuses a longer list
# before validating its items (more cues than the media's utterance limit fail in the worker).
MAX_TRANSCRIPT_SEGMENTS = 5000
MAX_TRANSCRIPT_CHARS = 2_000_000
NAME_MAX_CHARS = 200
METADATA_MAX_BYTES = 4096

TRANSCRIPT_EXAMPLE = "1\n00:00:00,000 --> 00:00:02,500\nJOEY: How you doin'?\n"


TranscriptText = Annotated[
    str, StringConstraints(max_length=MAX_TRANSCRIPT_CHARS, pattern=STORABLE_TEXT_PATTERN)
]


class TranscriptSegment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: float = Field(ge=0, description="Seconds from the start of the media.")
    end: float = Field(gt=0)
    text: str = Field(default="", max_length=10_000, pattern=STORABLE_TEXT_PATTERN)
    speaker: str | None = Field(default=None, max_length=100, pattern=STORABLE_TEXT_PATTERN)


class AnalysisOptions(BaseModel):
    """Per-analysis choices. Dialogue context is not one: it follows the deployed model's
    FeatureSpec (`context_turns`, `context_next`), since other features would change the spec hash
    it refuses."""

    model_config = ConfigDict(extra="forbid")

    segmentation: Literal["speech", "windows"] | None = Field(
        default=None,
        description="Without a transcript: `speech` makes the utterances from the speech found in "
        "the audio and tells the speakers apart by voice (S1, S2, ... in order of first "
        "appearance); `windows` cuts fixed windows of `window_seconds`. Default: `windows` "
        "when `window_seconds` is given, else the server's settings (`speech`).",
    )
    speakers: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="How many people speak, when known; otherwise the number is estimated. A "
        "transcript's speaker names win: voices only name the utterances it leaves without one.",
    )
    window_seconds: float | None = Field(
        default=None,
        ge=0.5,
        le=60,
        description="The window length for `segmentation: windows` (and for media without "
        "speech); default from the server's settings.",
    )
    modalities: list[ModalityName] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Which modalities the model may use (default: all). The others are masked "
        "with the reason 'not_requested'; an utterance left with none has no label ('no_evidence').",
        examples=[["text", "audio"]],
    )

    @model_validator(mode="after")
    def windows_when_a_window_is_given(self) -> AnalysisOptions:
        # A client that names a window length without a segmentation asks for fixed windows.
        if self.segmentation is None and self.window_seconds is not None:
            self.segmentation = "windows"
        return self

    @field_validator("modalities")
    @classmethod
    def distinct_modalities(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each modality at most once")
        return value


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
            ],
            # The document states the rule exactly_one_source enforces.
            "oneOf": [
                {
                    "required": ["video_url"],
                    "properties": {"video_url": {"type": "string"}, "upload_id": {"type": "null"}},
                },
                {
                    "required": ["upload_id"],
                    "properties": {"upload_id": {"type": "string"}, "video_url": {"type": "null"}},
                },
            ],
        },
    )

    video_url: str | None = Field(default=None, max_length=2048)
    upload_id: uuid.UUID | None = Field(default=None, description="From `POST /v1/uploads`, once uploaded.")
    transcript: (
        TranscriptText | Annotated[list[TranscriptSegment], Field(max_length=MAX_TRANSCRIPT_SEGMENTS)] | None
    ) = Field(
        default=None,
        description="SRT or WebVTT text, or JSON segments `[{start, end, text, speaker?}]`. Without "
        "one, the media is scored in fixed windows.",
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="Receives `analysis.succeeded` / `analysis.failed`."
    )
    options: AnalysisOptions = Field(default_factory=AnalysisOptions)
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=NAME_MAX_CHARS,
        description="What to call it (searchable with `?q=`); default: the upload's filename or the "
        "URL's last path segment.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description=f"Your own JSON object, returned with the results, exports and webhooks (at most "
        f"{METADATA_MAX_BYTES} bytes as JSON).",
    )

    @field_validator("metadata")
    @classmethod
    def small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value, separators=(",", ":")).encode()) > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is larger than {METADATA_MAX_BYTES} bytes as JSON")
        return value

    @model_validator(mode="after")
    def exactly_one_source(self) -> AnalysisCreate:
        if (self.video_url is None) == (self.upload_id is None):
            raise ValueError("give exactly one of video_url and upload_id")
        return self


class LabelScores(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]


EmotionLabel = Literal["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
SentimentLabel = Literal["negative", "neutral", "positive"]


class UtteranceLabelUpdate(BaseModel):
    """The owner's labels for one utterance. The request replaces the utterance's correction: a
    head left out (or null) is not corrected; neither head removes the correction."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"emotion": "sadness", "sentiment": "negative"}]}
    )

    emotion: EmotionLabel | None = None
    sentiment: SentimentLabel | None = None


class UtteranceCorrection(BaseModel):
    emotion: EmotionLabel | None = Field(description="The corrected emotion; null: not corrected.")
    sentiment: SentimentLabel | None = Field(description="The corrected sentiment; null: not corrected.")
    corrected_by: uuid.UUID | None = Field(description="The account that corrected it.")
    corrected_at: datetime


class UtteranceResultPublic(BaseModel):
    index: int
    start: float
    end: float
    text: str
    speaker: str | None = Field(
        description="The transcript's speaker, or S1, S2, ... told apart by voice (in order of "
        "first appearance); null when unknown."
    )
    transcript: TranscriptKind = Field(description=TRANSCRIPT_DESCRIPTION)
    speaker: str | None
    emotion: LabelScores | None = Field(description="null when there is no evidence (see reason)")
    sentiment: LabelScores | None = Field(description="null when there is no evidence (see reason)")
    reason: Literal["no_evidence"] | None = Field(
        default=None,
        description="why emotion and sentiment are null: 'no_evidence' (every modality was absent "
        "or masked: see modalities_masked)",
    )
    modalities_used: list[str]
    modality_scores: dict[str, ModalityScores] = Field(
        default_factory=dict,
        description="each used modality's own emotion and sentiment scores: what drove the result",
    )
    modalities_masked: dict[str, str] = Field(
        default_factory=dict,
        description="why a modality was not used: audio 'no_audio', 'silent', 'no_speech' or "
        "'too_little_speech' (the speech gate found no voice in the utterance's span); visual "
        "'no_video' or 'no_face' (no face in the sampled frames); text 'language_unsupported' (the "
        "transcript's language is not one the text encoder reads); any 'not_requested' (left out "
        "of options.modalities)",
    )
    faces: list[FrameFaces] = Field(
        default_factory=list,
        description="per sampled frame: its time, every face found (box normalised to the frame, "
        "largest first, with the detector's score) and which face the visual modality read",
    )
    correction: UtteranceCorrection | None = Field(
        default=None,
        description="The owner's labels, beside the model's prediction (which stays as it was).",
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
    name: str | None
    metadata: dict[str, Any]
    status: AnalysisStatusName
    source: AnalysisSource
    options: dict[str, Any]
    transcript: TranscriptKind = Field(description=TRANSCRIPT_DESCRIPTION)
    callback_url: str | None
    duration_seconds: float | None
    utterance_count: int
    model_version: str | None
    error: AnalysisError | None
    summary: dict[str, Any] | None = Field(
        description="Dominant emotion and sentiment, their shares, emotion share over time, and "
        "per speaker (`speakers`: speaking time and their own shares, in order of first appearance)."
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


def _scores(label: str | None, scores: dict[str, float] | None) -> LabelScores | None:
    if label is None:  # no evidence, no label
        return None
    return LabelScores(label=label, confidence=float(scores.get(label, 0.0)), scores=scores)


def utterance_public(row: UtteranceResult, transcript: str) -> UtteranceResultPublic:
    """The public shape of one utterance, built only here: the API's results, the SSE
    ``utterance`` events and the exports all come from it. ``transcript`` is the analysis'
    ``transcript_kind``, which all its utterances' words share."""
    return UtteranceResultPublic(
        index=row.index,
        start=row.start,
        end=row.end,
        text=row.text,
        speaker=row.speaker,
        transcript=transcript,  # type: ignore[arg-type]
        emotion=_scores(row.emotion, row.emotion_scores),
        sentiment=_scores(row.sentiment, row.sentiment_scores),
        reason=row.reason,
        modalities_used=list(row.modalities or []),
        modality_scores=row.modality_scores or {},
        correction=UtteranceCorrection(
            emotion=row.corrected_emotion,  # type: ignore[arg-type]
            sentiment=row.corrected_sentiment,  # type: ignore[arg-type]
            corrected_by=row.corrected_by,
            corrected_at=row.corrected_at,
        )
        if row.corrected_at is not None
        else None,
        modalities_masked=row.modalities_masked or {},
        faces=row.faces or [],
    )
