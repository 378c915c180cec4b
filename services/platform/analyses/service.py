"""Submitting, reading, listing, cancelling and exporting analyses."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.gateway.deps import Principal
from services.platform.analyses import repository
from services.platform.analyses.schemas import (
    NAME_MAX_CHARS,
    AnalysisCreate,
    AnalysisDetail,
    AnalysisError,
    AnalysisLinks,
    AnalysisPublic,
    AnalysisSource,
    LabelScores,
    UtteranceCorrection,
    UtteranceLabelUpdate,
    UtteranceResultPublic,
    utterance_public,
)
from services.platform.analyses.thumbnails import thumbnail_key, thumbnail_prefix
from services.platform.usage import quota
from shared.contract.predictions import NO_EVIDENCE, FrameFaces
from shared.db.models import Analysis, AnalysisStatus, IdempotencyRecord, Upload
from shared.db.types import utcnow
from shared.net.urls import UrlNotAllowed, UrlPolicy
from shared.problems import (
    BadRequest,
    Conflict,
    NotFound,
    Problem,
    ServiceUnavailable,
    TooManyRequests,
    UnprocessableContent,
)
from shared.settings import Settings
from shared.storage import LocalStorage, StorageError, get_storage


class AnalysisNotFound(NotFound):
    code, title = "analysis_not_found", "Analysis not found"


class UrlRejected(BadRequest):
    code, title = "url_not_allowed", "The URL is not allowed"


class TranscriptInvalid(UnprocessableContent):
    code, title = "transcript_invalid", "The transcript cannot be parsed"


class UploadNotFound(NotFound):
    code, title = "upload_not_found", "Upload not found"


class UploadIncomplete(Conflict):
    code, title = "upload_incomplete", "The upload has not been completed"


class IdempotencyConflict(Conflict):
    code, title = "idempotency_key_reused", "The Idempotency-Key was used with a different request"


class IdempotencyInProgress(Conflict):
    code, title = "idempotency_key_in_progress", "A request with this Idempotency-Key is in progress"


class QuotaExhausted(TooManyRequests):
    code, title = "quota_exceeded", "Monthly quota exhausted"


class UtteranceNotFound(NotFound):
    code, title = "utterance_not_found", "Utterance not found"


class AnalysisNotFinished(Conflict):
    code, title = "analysis_not_finished", "The analysis has no results yet"


class ThumbnailNotStored(NotFound):
    """No thumbnail for this utterance: its frames were not read for faces, or it was not stored."""

    code, title = "thumbnail_not_stored", "The thumbnail is not stored"


class MediaNotStored(NotFound):
    """The analysis has no stored media to play: it was submitted by URL (the worker fetches a
    URL's media into a temporary workspace and keeps no copy), or its upload was deleted."""

    code, title = "media_not_stored", "The media is not stored"


class RangeNotSatisfiable(Problem):
    """The `Range` header asks for bytes the media does not have (or is not a `bytes=` range).
    `Content-Range: bytes */<size>` gives the media's size; ask again within it."""

    status, code, title = 416, "range_not_satisfiable", "Range not satisfiable"


@dataclass
class Submission:
    status_code: int
    body: dict[str, Any]
    location: str
    replayed: bool
    analysis_id: uuid.UUID | None  # set when a new analysis must be queued


def check_submitted_url(url: str, settings: Settings, field: str) -> None:
    try:
        UrlPolicy.from_settings(settings).check(url)
    except UrlNotAllowed as exc:
        raise UrlRejected(f"{field}: {exc.reason}", field=field) from exc


def request_fingerprint(body: AnalysisCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _transcript_text(body: AnalysisCreate) -> tuple[str | None, str | None]:
    """The transcript as stored (text) and its format: srt, vtt or json."""
    transcript = body.transcript
    if transcript is None:
        return None, None
    if isinstance(transcript, list):
        return json.dumps([segment.model_dump() for segment in transcript]), "json"
    stripped = transcript.lstrip("\ufeff \t\r\n")
    if stripped.startswith("WEBVTT"):
        return transcript, "vtt"
    if stripped.startswith(("[", "{")):
        return transcript, "json"
    return transcript, "srt"


def validate_transcript(text: str, transcript_format: str, settings: Settings) -> None:
    """Syntax only: times against the media's duration are checked by the worker after probing."""
    from shared.contract.features.transcripts import TranscriptError, parse_transcript

    source: str | list = (
        json.loads(text) if transcript_format == "json" and text.lstrip().startswith("[") else text
    )
    try:
        parse_transcript(source, None, settings)
    except TranscriptError as exc:
        raise TranscriptInvalid(str(exc), line=exc.line) from exc
    except json.JSONDecodeError as exc:
        raise TranscriptInvalid(f"invalid JSON: {exc.msg}", line=exc.lineno) from exc


def _checked_upload(session: Session, settings: Settings, user_id: uuid.UUID, upload_id: uuid.UUID) -> Upload:
    upload = session.get(Upload, upload_id)
    if upload is None or upload.user_id != user_id:
        raise UploadNotFound()
    if upload.completed_at is None:
        # S3 uploads go straight to the bucket: confirm the object is there, with the size declared.
        try:
            stored_size = get_storage(settings).size(upload.storage_key) if upload.backend == "s3" else None
        except StorageError as exc:
            raise UploadIncomplete("The upload could not be checked; try again.") from exc
        if stored_size is None:
            raise UploadIncomplete("PUT the file to the upload URL before submitting it.")
        if stored_size != upload.size_bytes:
            raise UploadIncomplete(
                f"The stored file has {stored_size} bytes, not the declared {upload.size_bytes}."
            )
        upload.completed_at = utcnow()
    return upload


def _replay_or_conflict(record: IdempotencyRecord, fingerprint: str) -> Submission:
    if record.request_hash != fingerprint:
        raise IdempotencyConflict("Use a new Idempotency-Key for a different request.")
    if record.status_code == 0:
        raise IdempotencyInProgress("Retry once the first request has completed.")
    return Submission(record.status_code, record.response_body, record.location or "", True, None)


def create(
    session: Session,
    settings: Settings,
    principal: Principal,
    body: AnalysisCreate,
    idempotency_key: str | None,
) -> Submission:
    fingerprint = request_fingerprint(body)
    record: IdempotencyRecord | None = None
    if idempotency_key is not None:
        existing = repository.get_idempotency_record(session, principal.user_id, idempotency_key)
        if existing is not None and existing.expires_at <= utcnow():
            session.delete(existing)
            session.flush()
            existing = None
        if existing is not None:
            return _replay_or_conflict(existing, fingerprint)
        record = IdempotencyRecord(
            user_id=principal.user_id,
            key=idempotency_key,
            request_hash=fingerprint,
            status_code=0,
            response_body={},
            expires_at=utcnow() + timedelta(hours=settings.idempotency_ttl_hours),
        )
        try:
            # Claims the key; a concurrent request with the same key waits here for ours (PostgreSQL).
            with session.begin_nested():
                session.add(record)
                session.flush()
        except IntegrityError:
            winner = repository.get_idempotency_record(session, principal.user_id, idempotency_key)
            if winner is None:
                raise IdempotencyInProgress("Retry once the first request has completed.") from None
            session.refresh(winner)
            return _replay_or_conflict(winner, fingerprint)

    if body.video_url is not None:
        check_submitted_url(body.video_url, settings, "video_url")
    if body.callback_url is not None:
        check_submitted_url(body.callback_url, settings, "callback_url")
    transcript, transcript_format = _transcript_text(body)
    if transcript is not None and transcript_format is not None:
        validate_transcript(transcript, transcript_format, settings)
    upload = _checked_upload(session, settings, principal.user_id, body.upload_id) if body.upload_id else None

    # A plain read, so a request over the quota is refused without queueing on the row lock that
    # concurrent reservations hold until they commit; the reservation below stays the authority.
    snapshot = quota.snapshot(session, principal.user_id, principal.user.plan, settings=settings)
    if snapshot.analyses_used >= snapshot.analyses_limit:
        raise _quota_problem(
            quota.ANALYSIS, snapshot.analyses_limit, snapshot.analyses_used, snapshot.resets_at
        )
    if snapshot.seconds_used >= snapshot.seconds_limit:
        raise _quota_problem(quota.SECONDS, snapshot.seconds_limit, snapshot.seconds_used, snapshot.resets_at)
    analysis = Analysis(
        id=uuid.uuid4(),
        user_id=principal.user_id,
        status=AnalysisStatus.queued.value,
        source_url=body.video_url,
        upload_id=upload.id if upload else None,
        transcript=transcript,
        transcript_format=transcript_format,
        options=body.options.model_dump(mode="json", exclude_none=True),
        callback_url=body.callback_url,
        name=body.name or default_name(upload.filename if upload else body.video_url or ""),
        user_metadata=body.metadata or {},
    )
    session.add(analysis)
    session.flush()
    try:
        quota.reserve(
            session,
            principal.user_id,
            analysis.id,
            quota.ANALYSIS,
            1,
            plan=principal.user.plan,
            settings=settings,
        )
    except quota.QuotaExceeded as exc:
        raise _quota_problem(exc.kind, exc.limit, exc.used, exc.resets_at) from exc
    public = to_public(analysis).model_dump(mode="json")
    location = f"/v1/analyses/{analysis.id}"
    if record is not None:
        record.status_code, record.response_body, record.location = 202, public, location
        session.flush()
    return Submission(202, public, location, False, analysis.id)


def _quota_problem(kind: str, limit: float, used: float, resets_at) -> Problem:
    retry_after = max(1, int((resets_at - utcnow()).total_seconds()))
    what = "analyses" if kind == quota.ANALYSIS else "video seconds"
    return QuotaExhausted(
        f"The monthly limit of {limit:g} {what} is used up; it resets at {resets_at.isoformat()}.",
        retry_after=retry_after,
        quota=kind,
        limit=limit,
        used=used,
        resets_at=resets_at,
    )


def mark_enqueue_failed(session: Session, settings: Settings, analysis_id: uuid.UUID) -> None:
    """The queue refused the job after the row was committed: fail it and give the quota back."""
    analysis = session.get(Analysis, analysis_id)
    if analysis is None or analysis.status != AnalysisStatus.queued.value:
        return
    analysis.status = AnalysisStatus.failed.value
    analysis.error_code = "queue_unavailable"
    analysis.error_message = "The job queue was unavailable; submit the analysis again."
    analysis.finished_at = utcnow()
    quota.refund(session, analysis_id, settings=settings)


# --- reading --------------------------------------------------------------------------------
def links(analysis_id: uuid.UUID) -> AnalysisLinks:
    base = f"/v1/analyses/{analysis_id}"
    return AnalysisLinks(self=base, events=f"{base}/events", export=f"{base}/export?format=json")


def default_name(source: str) -> str | None:
    """An upload's filename, or a URL's last path segment (decoded), cut to the name limit."""
    if "://" in source:
        source = unquote(urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1])
    return source.strip()[:NAME_MAX_CHARS] or None


def to_public(analysis: Analysis) -> AnalysisPublic:
    return AnalysisPublic(
        id=analysis.id,
        name=analysis.name,
        metadata=analysis.user_metadata or {},
        status=analysis.status,  # type: ignore[arg-type]
        source=AnalysisSource(video_url=analysis.source_url, upload_id=analysis.upload_id),
        options=analysis.options or {},
        transcript=analysis.transcript_kind,  # type: ignore[arg-type]
        callback_url=analysis.callback_url,
        duration_seconds=analysis.duration_seconds,
        utterance_count=analysis.utterance_count or 0,
        model_version=analysis.model_version,
        error=AnalysisError(code=analysis.error_code, message=analysis.error_message or "")
        if analysis.error_code
        else None,
        summary=analysis.summary,
        created_at=analysis.created_at,
        updated_at=analysis.updated_at,
        started_at=analysis.started_at,
        finished_at=analysis.finished_at,
        links=links(analysis.id),
    )


def get(session: Session, user_id: uuid.UUID, analysis_id: uuid.UUID) -> Analysis:
    analysis = repository.get_for_user(session, user_id, analysis_id)
    if analysis is None:
        raise AnalysisNotFound()
    return analysis


def detail(session: Session, user_id: uuid.UUID, analysis_id: uuid.UUID) -> AnalysisDetail:
    analysis = get(session, user_id, analysis_id)
    # A failed analysis was refunded: whatever was scored before the failure is not a result.
    failed = analysis.status == AnalysisStatus.failed.value
    rows = [] if failed else repository.utterances(session, analysis.id)
    return AnalysisDetail(
        **to_public(analysis).model_dump(),
        utterances=[utterance_public(row, analysis.transcript_kind) for row in rows],
    )


# --- stored media ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredMedia:
    """Where an analysis' upload is: a local file (``path``) or an S3 object (``url``, presigned)."""

    content_type: str
    size: int
    path: Path | None = None
    url: str | None = None


# Long enough to watch a long video: a browser re-reads ranges from the URL it was redirected to.
MEDIA_URL_TTL_SECONDS = 4 * 3600
_BYTE_RANGE = re.compile(r"\s*(?:(\d+)-(\d*)|-(\d+))\s*")


def stored_media(
    session: Session, settings: Settings, user_id: uuid.UUID, analysis_id: uuid.UUID
) -> StoredMedia:
    """The owner's upload of an analysis, to play; :class:`MediaNotStored` when there is none."""
    analysis = get(session, user_id, analysis_id)
    upload = analysis.upload
    if upload is None or upload.completed_at is None:
        raise MediaNotStored(
            "This analysis was submitted by URL; its media was fetched for the analysis and not stored."
            if analysis.source_url
            else "The uploaded media of this analysis is no longer stored."
        )
    storage = get_storage(settings)
    if isinstance(storage, LocalStorage):
        path = storage.path(upload.storage_key)
        if not path.is_file():
            raise MediaNotStored("The uploaded media of this analysis is no longer stored.")
        return StoredMedia(upload.content_type, path.stat().st_size, path=path)
    try:
        url = storage.presign_get(upload.storage_key, upload.content_type, MEDIA_URL_TTL_SECONDS)
    except StorageError as exc:
        raise ServiceUnavailable("The media store is unavailable; try again shortly.") from exc
    return StoredMedia(upload.content_type, upload.size_bytes, url=url)


def thumbnail(
    session: Session, settings: Settings, user_id: uuid.UUID, analysis_id: uuid.UUID, index: int
) -> bytes:
    """The owner's JPEG of an utterance's middle face frame (services.platform.analyses.thumbnails)."""
    analysis = get(session, user_id, analysis_id)
    try:
        image = get_storage(settings).read(thumbnail_key(analysis.id, index))
    except StorageError as exc:
        raise ServiceUnavailable("The media store is unavailable; try again shortly.") from exc
    if image is None:
        raise ThumbnailNotStored(f"Utterance {index} of this analysis has no stored thumbnail.")
    return image


def check_byte_ranges(header: str, size: int) -> None:
    """Refuse a ``Range`` header that is not ``bytes=`` ranges or that no byte of the media
    satisfies (RFC 9110 §14); satisfiable ones are served by the file response."""
    unit, _, ranges = header.partition("=")
    parts = ranges.split(",")
    matches = [_BYTE_RANGE.fullmatch(part) for part in parts]
    refusal = RangeNotSatisfiable(
        f"The media has {size} bytes; ask for ranges within bytes=0-{max(size - 1, 0)}.",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if unit.strip().lower() != "bytes" or not ranges or len(parts) > 100 or not all(matches):
        raise refusal
    for match in matches:
        first, last, suffix = match.groups()  # type: ignore[union-attr]
        if suffix is not None:
            if int(suffix) == 0 or size == 0:
                raise refusal
        elif int(first) >= size or (last and int(last) < int(first)):
            raise refusal


# --- corrections ----------------------------------------------------------------------------
def correct_utterance(
    session: Session, user_id: uuid.UUID, analysis_id: uuid.UUID, index: int, body: UtteranceLabelUpdate
) -> UtteranceResultPublic:
    """Store the owner's labels beside the prediction; neither label clears the correction."""
    analysis = get(session, user_id, analysis_id)
    row = repository.utterance(session, analysis.id, index)
    if row is None:
        raise UtteranceNotFound(f"The analysis has no utterance {index}.")
    if body.emotion is None and body.sentiment is None:
        row.corrected_emotion = row.corrected_sentiment = row.corrected_by = row.corrected_at = None
    else:
        row.corrected_emotion, row.corrected_sentiment = body.emotion, body.sentiment
        row.corrected_by, row.corrected_at = user_id, utcnow()
    session.flush()
    return utterance_public(row, analysis.transcript_kind)


# --- cancelling and deleting ----------------------------------------------------------------
def delete(session: Session, settings: Settings, user_id: uuid.UUID, analysis_id: uuid.UUID) -> bool:
    """Cancel a running analysis (its row stays, status ``canceled``) or delete a finished one;
    results and stored media go in both cases. Returns whether the job was cancelled."""
    analysis = get(session, user_id, analysis_id)
    repository.delete_utterances(session, analysis.id)
    try:
        get_storage(settings).delete_prefix(thumbnail_prefix(analysis.id))
    except StorageError as exc:
        raise ServiceUnavailable("The media store is unavailable; retry the deletion.") from exc
    upload = analysis.upload
    if upload is not None and repository.upload_used_elsewhere(session, upload.id, analysis.id):
        analysis.upload_id = None  # another analysis of the same upload still needs the media
    elif upload is not None:
        try:
            get_storage(settings).delete(upload.storage_key)
        except StorageError as exc:
            raise ServiceUnavailable("The media store is unavailable; retry the deletion.") from exc
        analysis.upload_id = None
        session.delete(upload)
    cancelled = not AnalysisStatus(analysis.status).is_terminal
    if cancelled:
        analysis.status = AnalysisStatus.canceled.value
        analysis.finished_at = utcnow()
        analysis.summary = None
        analysis.utterance_count = 0
        quota.refund(session, analysis.id, settings=settings)
    else:
        session.delete(analysis)
    session.flush()
    return cancelled


# --- export ---------------------------------------------------------------------------------
def _srt_time(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def export(analysis: AnalysisDetail, export_format: str) -> tuple[str, str]:
    """(body, media type) of the analysis in ``json``, ``csv`` or ``srt``."""
    if analysis.status != "succeeded":
        raise AnalysisNotFinished(f"The analysis is {analysis.status}; export it once it has succeeded.")
    if export_format == "json":
        return analysis.model_dump_json(indent=2), "application/json"
    if export_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        emotion_labels = sorted({k for u in analysis.utterances if u.emotion for k in u.emotion.scores})
        sentiment_labels = sorted({k for u in analysis.utterances if u.sentiment for k in u.sentiment.scores})
        writer.writerow(
            [
                "index",
                "start",
                "end",
                "speaker",
                "text",
                "emotion",
                "emotion_confidence",
                "sentiment",
                "sentiment_confidence",
                "modalities_used",
                "reason",
                "visual_masked",
                "face_frames",
                "face_box",
            ]
            + [_csv_safe(f"emotion_{label}") for label in emotion_labels]
            + [_csv_safe(f"sentiment_{label}") for label in sentiment_labels]
            + ["corrected_emotion", "corrected_sentiment", "corrected_at", "analysis_name"]
        )
        for u in analysis.utterances:
            writer.writerow(
                [
                    u.index,
                    f"{u.start:.3f}",
                    f"{u.end:.3f}",
                    _csv_safe(u.speaker or ""),
                    _csv_safe(u.text),
                    *_label_cells(u.emotion),
                    *_label_cells(u.sentiment),
                    _csv_safe(" ".join(u.modalities_used)),
                    u.reason or "",
                    _csv_safe(u.modalities_masked.get("visual", "")),
                    *_face_cells(u.faces),
                ]
                + _score_cells(u.emotion, emotion_labels)
                + _score_cells(u.sentiment, sentiment_labels)
                + _correction_cells(u.correction)
                + [_csv_safe(analysis.name or "")]
            )
        return buffer.getvalue(), "text/csv; charset=utf-8"
    cues = []
    for number, u in enumerate(analysis.utterances, start=1):
        if u.emotion is None or u.sentiment is None:
            caption = f"[{(u.reason or NO_EVIDENCE).replace('_', ' ')}]"
        else:
            caption = _srt_safe(f"[{u.emotion.label} {u.emotion.confidence:.0%} · {u.sentiment.label}]")
        speaker = _srt_safe(u.speaker or "")
        text = f"{speaker}: {_srt_safe(u.text)}" if speaker else _srt_safe(u.text)
        lines = "\n".join(filter(None, [caption, text]))
        cues.append(f"{number}\n{_srt_time(u.start)} --> {_srt_time(u.end)}\n{lines}\n")
    return "\n".join(cues), "application/x-subrip; charset=utf-8"


def _label_cells(scores: LabelScores | None) -> list[str]:
    """Label and confidence; empty where there is no label (no evidence)."""
    return ["", ""] if scores is None else [_csv_safe(scores.label), f"{scores.confidence:.4f}"]


def _score_cells(scores: LabelScores | None, labels: list[str]) -> list[str]:
    return ["" if scores is None else f"{scores.scores.get(label, 0.0):.4f}" for label in labels]


def export_filename(analysis: AnalysisDetail, export_format: str) -> str:
    """``Content-Disposition`` of an export: the analysis' name as the file name (RFC 6266
    ``filename*``; SRT has no header of its own, so this is where an SRT file carries it), with
    the id as the plain-ASCII fallback."""
    fallback = f"moodreel-{analysis.id}.{export_format}"
    if not analysis.name:
        return f'attachment; filename="{fallback}"'
    # No path separators, control or format characters: the name is only ever a file name.
    stem = "".join(c if c.isprintable() and c not in '/\\:*?"<>|' else "_" for c in analysis.name).strip(" .")
    if not stem:
        return f'attachment; filename="{fallback}"'
    return (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(f'{stem}.{export_format}', safe='')}"
    )


def _face_cells(faces: list[FrameFaces]) -> list[str]:
    """CSV cells: sampled frames where the tracked face was seen ("3/4"), and its box in the frame
    nearest the utterance's middle as "x y width height" (normalised), empty without faces."""
    if not faces:
        return ["", ""]
    seen = [frame for frame in faces if frame.used is not None]
    box = ""
    if seen:
        middle = faces[len(faces) // 2].time
        nearest = min(seen, key=lambda frame: abs(frame.time - middle))
        face = nearest.boxes[nearest.used]
        box = f"{face.x:.4f} {face.y:.4f} {face.width:.4f} {face.height:.4f}"
    return [f"{len(seen)}/{len(faces)}", box]


def _correction_cells(correction: UtteranceCorrection | None) -> list[str]:
    if correction is None:
        return ["", "", ""]
    return [correction.emotion or "", correction.sentiment or "", correction.corrected_at.isoformat()]


# Spreadsheets evaluate a cell whose first character (after any leading blanks or quotes) is one of
# these, including the full-width forms some of them also accept.
_FORMULA_TRIGGERS = frozenset("=+-@\t\r\n|%\uff1d\uff0b\uff0d\uff20")


def _csv_safe(value: str) -> str:
    """Neutralise spreadsheet formulas (CSV injection) in a cell: a leading ``'`` makes it text."""
    stripped = value.lstrip(" \"'")
    if value[:1] in _FORMULA_TRIGGERS or stripped[:1] in _FORMULA_TRIGGERS:
        return "'" + value
    return value


# Line breaks of every kind: a blank line inside a cue would end it and start an injected one.
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")


def _srt_safe(value: str) -> str:
    """One line of cue text that cannot end the cue, forge a timing line or carry markup: line
    breaks become spaces, and ``<``/``>`` (tags, ``-->``) become the look-alikes ``‹``/``›``."""
    flat = " ".join(_LINE_BREAKS.sub(" ", value).split())
    return flat.replace("<", "\u2039").replace(">", "\u203a")
