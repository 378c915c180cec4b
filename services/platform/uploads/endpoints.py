from __future__ import annotations

import os
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, status
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import ReadPrincipal, SessionDep, SettingsDep, WritePrincipal
from services.gateway.openapi import problem_responses
from services.gateway.security import verify_upload_signature
from services.platform.uploads import service
from services.platform.uploads.schemas import UploadCreate, UploadPublic, UploadTarget
from shared.db.models import Upload
from shared.db.types import utcnow
from shared.problems import BadRequest, Forbidden

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadTarget,
    responses=problem_responses(401, 403, 413, 415, 422, 429),
    summary="Start an upload: returns where to PUT the file, then submit its `upload_id`",
)
def create_upload(
    body: UploadCreate,
    request: Request,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> UploadTarget:
    return service.create(session, settings, principal.user_id, body, str(request.base_url))


@router.get(
    "/{upload_id}",
    response_model=UploadPublic,
    responses=problem_responses(401, 403, 404, 429),
    summary="An upload",
)
def get_upload(upload_id: uuid.UUID, principal: ReadPrincipal, session: SessionDep) -> UploadPublic:
    upload = session.get(Upload, upload_id)
    if upload is None or upload.user_id != principal.user_id:
        raise service.UploadNotFound()
    return UploadPublic.model_validate(upload)


async def verified_upload_id(
    upload_id: Annotated[str, Path(description="The upload's id, as signed in its URL.")],
    settings: SettingsDep,
    # Raw strings: the signature check, not request validation, answers any malformed value.
    expires: Annotated[str, Query(description="Unix time the URL expires, as signed.")] = "",
    signature: Annotated[str, Query(description="The URL's signature.")] = "",
) -> uuid.UUID:
    """Runs first, before a database session is taken: anyone can send this request without
    credentials, so a malformed or forged URL costs one HMAC and nothing else."""
    if not verify_upload_signature(upload_id, expires, signature, settings):
        raise Forbidden("The upload URL is invalid or has expired.", code="upload_url_invalid")
    return uuid.UUID(upload_id)  # a URL this gateway signed names a canonical UUID


@router.put(
    "/{upload_id}/content",
    response_model=UploadPublic,
    responses=problem_responses(400, 403, 404, 409, 413, 415),
    summary="Local storage only: the signed PUT target returned by `POST /v1/uploads`",
)
async def put_upload_content(
    request: Request,
    signed_id: Annotated[uuid.UUID, Depends(verified_upload_id)],
    session: SessionDep,
    settings: SettingsDep,
    content_type: Annotated[str, Header(alias="Content-Type")] = "",
) -> UploadPublic:
    storage = service.local_storage(settings)
    upload = await run_in_threadpool(session.get, Upload, signed_id)
    if upload is None:
        raise service.UploadNotFound()
    if upload.completed_at is not None:
        raise service.UploadAlreadyCompleted()
    if content_type.split(";", 1)[0].strip().lower() != upload.content_type:
        raise service.UnsupportedUploadType(f"Send Content-Type: {upload.content_type}, as signed.")
    declared = request.headers.get("content-length")
    if declared is not None and declared != str(upload.size_bytes):
        raise service.UploadTooLarge(f"Content-Length must be {upload.size_bytes}.")
    destination = storage.path(upload.storage_key)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + f".{uuid.uuid4().hex}.part")
    received = 0
    try:
        with partial.open("wb") as handle:
            async for chunk in request.stream():
                received += len(chunk)
                if received > upload.size_bytes:
                    raise service.UploadTooLarge(f"The upload was declared as {upload.size_bytes} bytes.")
                await run_in_threadpool(handle.write, chunk)
        if received != upload.size_bytes:
            raise BadRequest(
                f"Received {received} bytes of the declared {upload.size_bytes}.", code="upload_incomplete"
            )
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    upload.completed_at = utcnow()
    return UploadPublic.model_validate(upload)
