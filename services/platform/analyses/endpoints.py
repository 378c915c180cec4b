from __future__ import annotations

import time
import uuid
from pathlib import PurePath
from typing import Annotated, Literal

from arq.constants import abort_jobs_ss
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import (
    ReadPrincipal,
    RedisDep,
    SessionDep,
    SettingsDep,
    WritePrincipal,
    after_commit,
)
from services.gateway.openapi import problem_responses
from services.gateway.pagination import CursorQuery, decode_cursor, encode_cursor
from services.platform.analyses import repository, service
from services.platform.analyses.events import EVENT_ID_PATTERN, apublish_event, is_valid_event_id, stream_key
from services.platform.analyses.schemas import (
    AnalysisCreate,
    AnalysisDetail,
    AnalysisPage,
    AnalysisPublic,
    UtteranceLabelUpdate,
    UtteranceResultPublic,
)
from services.platform.analyses.sse import EventStreamResponse, analysis_event_stream, initial_events
from shared.db.models import Analysis
from shared.db.session import session_scope
from shared.db.types import STORABLE_TEXT_PATTERN
from shared.logging import get_logger
from shared.problems import BadRequest, ServiceUnavailable

router = APIRouter(prefix="/v1/analyses", tags=["analyses"])
log = get_logger(__name__)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retries with the same key and body return the first response; "
        "a different body is a 409.",
    ),
]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AnalysisPublic,
    responses={
        202: {"description": "Queued; poll `Location`, stream `/events`, or wait for the webhook."},
        **problem_responses(400, 401, 403, 404, 409, 422, 429, 503),
    },
    summary="Submit a video for analysis",
)
def create_analysis(
    body: AnalysisCreate,
    request: Request,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    submission = service.create(session, settings, principal, body, idempotency_key)
    headers = {"Location": submission.location}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    if submission.analysis_id is not None:
        after_commit(session, _enqueue_hook(request, submission.analysis_id))
    return JSONResponse(submission.body, status_code=submission.status_code, headers=headers)


def _enqueue_hook(request: Request, analysis_id: uuid.UUID):
    app_state = request.app.state

    async def enqueue() -> None:
        settings = app_state.settings
        try:
            await app_state.arq.enqueue_job(
                "analyse_video", str(analysis_id), _job_id=str(analysis_id), _queue_name=settings.queue_name
            )
        except Exception as exc:  # Redis down or refusing: do not leave a queued row nobody runs
            log.error("enqueue_failed", analysis_id=str(analysis_id), error=str(exc))

            def fail() -> None:
                with session_scope(app_state.session_factory) as session:
                    service.mark_enqueue_failed(session, settings, analysis_id)

            await run_in_threadpool(fail)
            raise ServiceUnavailable("The job queue is unavailable; the analysis was not started.") from exc

    return enqueue


@router.get(
    "",
    response_model=AnalysisPage,
    responses=problem_responses(400, 401, 403, 429),
    summary="List analyses, newest first",
)
def list_analyses(
    principal: ReadPrincipal,
    session: SessionDep,
    status_filter: Annotated[
        Literal["queued", "processing", "succeeded", "failed", "canceled"] | None, Query(alias="status")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: CursorQuery = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=STORABLE_TEXT_PATTERN,
            description="Only names containing this (any case).",
        ),
    ] = None,
) -> AnalysisPage:
    position = decode_cursor(cursor) if cursor is not None else None
    rows = repository.page(
        session, principal.user_id, status=status_filter, limit=limit, cursor=position, query=q
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return AnalysisPage(items=[service.to_public(row) for row in rows[:limit]], next_cursor=next_cursor)


@router.get(
    "/{analysis_id}",
    response_model=AnalysisDetail,
    responses=problem_responses(401, 403, 404, 429),
    summary="An analysis with its per-utterance results and summary",
)
def get_analysis(analysis_id: uuid.UUID, principal: ReadPrincipal, session: SessionDep) -> AnalysisDetail:
    return service.detail(session, principal.user_id, analysis_id)


@router.put(
    "/{analysis_id}/utterances/{index}/label",
    response_model=UtteranceResultPublic,
    responses=problem_responses(401, 403, 404, 422, 429),
    summary="Correct an utterance's emotion and/or sentiment (the prediction is kept beside it)",
)
def label_utterance(
    analysis_id: uuid.UUID,
    index: Annotated[int, Path(ge=0, le=1_000_000)],
    body: UtteranceLabelUpdate,
    principal: WritePrincipal,
    session: SessionDep,
) -> UtteranceResultPublic:
    return service.correct_utterance(session, principal.user_id, analysis_id, index, body)


@router.delete(
    "/{analysis_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 429, 503),
    summary="Cancel a running analysis, or delete a finished one, with its results and stored media",
)
async def delete_analysis(
    analysis_id: uuid.UUID,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
    redis_client: RedisDep,
) -> Response:
    cancelled = await run_in_threadpool(service.delete, session, settings, principal.user_id, analysis_id)
    if cancelled:

        async def announce() -> None:
            # The stream held the scored utterances (results, deleted with the cancel): it restarts
            # with the final status, which also ends any open SSE stream.
            await redis_client.delete(stream_key(analysis_id, settings))
            await apublish_event(redis_client, analysis_id, "status", {"status": "canceled"}, settings)
            # Ask arq to abort the job if a worker is running it (workers started with allow_abort_jobs).
            await redis_client.zadd(abort_jobs_ss, {str(analysis_id): int(time.time() * 1000)})

        after_commit(session, announce)
    else:
        after_commit(session, lambda: redis_client.delete(stream_key(analysis_id, settings)))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{analysis_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: `status`, `utterance` and `summary` events; ids resume "
            "with `Last-Event-ID`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problem_responses(400, 401, 403, 404, 429, 503),
    },
    summary="Live progress as Server-Sent Events",
)
async def analysis_events(
    analysis_id: uuid.UUID,
    request: Request,
    principal: ReadPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    redis_client: RedisDep,
    # The pattern is documented, and checked below so that a bad id is the stream's own 400 problem.
    after: Annotated[
        str, Header(alias="Last-Event-ID", json_schema_extra={"pattern": EVENT_ID_PATTERN})
    ] = "0",
) -> StreamingResponse:
    if not is_valid_event_id(after):
        raise BadRequest("Last-Event-ID is not an event id of this stream.", code="invalid_event_id")

    def check_and_release() -> None:
        service.get(session, principal.user_id, analysis_id)
        session.commit()  # returns the connection to the pool before the stream starts

    await run_in_threadpool(check_and_release)
    factory = request.app.state.session_factory
    user_id = principal.user_id
    slot = request.app.state.stream_slots.acquire(principal.rate_limit_identity)
    try:
        backlog = await initial_events(redis_client, settings, analysis_id, after)
    except BaseException:
        slot.release()
        raise

    async def load_status() -> dict | None:
        def load() -> dict | None:
            with session_scope(factory) as fresh:
                analysis = fresh.get(Analysis, analysis_id)
                if analysis is None or analysis.user_id != user_id:
                    return None
                current = {"status": analysis.status}
                if analysis.error_code:
                    current |= {"error_code": analysis.error_code, "error_message": analysis.error_message}
                return current

        return await run_in_threadpool(load)

    return EventStreamResponse(
        analysis_event_stream(
            request.app.state.event_hub, settings, analysis_id, after, backlog, load_status
        ),
        slot,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{analysis_id}/export",
    responses={
        200: {
            "description": "The results as JSON, CSV, or SRT subtitles with emotions as captions.",
            "content": {"application/json": {}, "text/csv": {}, "application/x-subrip": {}},
        },
        **problem_responses(401, 403, 404, 409, 422, 429),
    },
    summary="Export results (json, csv, srt)",
)
def export_analysis(
    analysis_id: uuid.UUID,
    principal: ReadPrincipal,
    session: SessionDep,
    export_format: Annotated[Literal["json", "csv", "srt"], Query(alias="format")] = "json",
) -> Response:
    detail = service.detail(session, principal.user_id, analysis_id)
    content, media_type = service.export(detail, export_format)
    disposition = service.export_filename(detail, export_format)
    return Response(content, media_type=media_type, headers={"Content-Disposition": disposition})


@router.get(
    "/{analysis_id}/utterances/{index}/thumbnail",
    response_class=Response,
    responses={
        200: {
            "description": "A JPEG (long side at most 320 px) of the frame of the utterance's middle "
            "face record, `faces[len(faces) // 2]`: draw that record's boxes over it (they are "
            "normalised to the frame). Stored for each utterance with a non-empty `faces`.",
            "content": {"image/jpeg": {}},
        },
        **problem_responses(401, 403, 404, 429, 503),
    },
    summary="An utterance's face thumbnail",
)
def utterance_thumbnail(
    analysis_id: uuid.UUID,
    index: Annotated[int, Path(ge=0, le=1_000_000)],
    principal: ReadPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    image = service.thumbnail(session, settings, principal.user_id, analysis_id, index)
    headers = {
        "Cache-Control": "private, max-age=3600",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    return Response(image, media_type="image/jpeg", headers=headers)


@router.get(
    "/{analysis_id}/media",
    response_class=FileResponse,
    responses={
        200: {"description": "The uploaded media as stored (`Accept-Ranges: bytes`)."},
        206: {"description": "The requested byte range(s), with `Content-Range`."},
        307: {"description": "S3 storage: a presigned URL of the object (it answers range requests)."},
        **problem_responses(401, 403, 404, 416, 429, 503),
    },
    summary="The analysis' uploaded media, for playing (range requests)",
)
def analysis_media(
    analysis_id: uuid.UUID,
    principal: ReadPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    byte_range: Annotated[str | None, Header(alias="Range", max_length=1000)] = None,
) -> Response:
    media = service.stored_media(session, settings, principal.user_id, analysis_id)
    headers = {"Cache-Control": "private, no-store", "Content-Security-Policy": "default-src 'none'; sandbox"}
    if media.url is not None:
        return RedirectResponse(media.url, status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers=headers)
    if byte_range is not None:
        service.check_byte_ranges(byte_range, media.size)
    return FileResponse(
        media.path,  # type: ignore[arg-type]
        media_type=media.content_type,
        headers=headers,
        content_disposition_type="inline",
        filename=f"moodreel-{analysis_id}{PurePath(media.path).suffix}",  # type: ignore[arg-type]
    )
