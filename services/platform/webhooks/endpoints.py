from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from starlette.concurrency import run_in_threadpool

from services.gateway.deps import ReadPrincipal, SessionDep, SettingsDep, WritePrincipal, after_commit
from services.gateway.openapi import problem_responses
from services.gateway.pagination import CursorQuery
from services.platform.webhooks import repository, service
from services.platform.webhooks.delivery import callback_secret
from services.platform.webhooks.schemas import (
    CallbackSecret,
    DeliveryStatus,
    WebhookDeliveryDetail,
    WebhookDeliveryPage,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointPublic,
    WebhookEndpointUpdate,
)
from shared.db.session import session_scope
from shared.problems import ServiceUnavailable

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post(
    "/endpoints",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookEndpointCreated,
    responses=problem_responses(400, 401, 403, 409, 422, 429),
    summary="Register a webhook endpoint (the signing secret is shown only in this response)",
)
def create_endpoint(
    body: WebhookEndpointCreate, principal: WritePrincipal, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointCreated:
    return service.create_endpoint(session, settings, principal.user_id, body)


@router.get(
    "/endpoints",
    response_model=WebhookEndpointList,
    responses=problem_responses(401, 403, 429),
    summary="List webhook endpoints",
)
def list_endpoints(principal: ReadPrincipal, session: SessionDep) -> WebhookEndpointList:
    endpoints = repository.list_endpoints(session, principal.user_id)
    return WebhookEndpointList(items=[WebhookEndpointPublic.model_validate(e) for e in endpoints])


@router.get(
    "/endpoints/{endpoint_id}",
    response_model=WebhookEndpointPublic,
    responses=problem_responses(401, 403, 404, 429),
    summary="Get a webhook endpoint",
)
def get_endpoint(
    endpoint_id: uuid.UUID, principal: ReadPrincipal, session: SessionDep
) -> WebhookEndpointPublic:
    return WebhookEndpointPublic.model_validate(service.get_endpoint(session, principal.user_id, endpoint_id))


@router.patch(
    "/endpoints/{endpoint_id}",
    response_model=WebhookEndpointPublic,
    responses=problem_responses(400, 401, 403, 404, 422, 429),
    summary="Change a webhook endpoint's URL, description, events or active flag",
)
def update_endpoint(
    endpoint_id: uuid.UUID,
    body: WebhookEndpointUpdate,
    principal: WritePrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> WebhookEndpointPublic:
    endpoint = service.update_endpoint(session, settings, principal.user_id, endpoint_id, body)
    return WebhookEndpointPublic.model_validate(endpoint)


@router.delete(
    "/endpoints/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 429),
    summary="Delete a webhook endpoint and its delivery log",
)
def delete_endpoint(endpoint_id: uuid.UUID, principal: WritePrincipal, session: SessionDep) -> None:
    service.delete_endpoint(session, principal.user_id, endpoint_id)


@router.get(
    "/callback-secret",
    response_model=CallbackSecret,
    responses=problem_responses(401, 403, 429),
    summary="The secret that signs deliveries to your analyses' callback_url",
)
def get_callback_secret(principal: ReadPrincipal, settings: SettingsDep) -> CallbackSecret:
    return CallbackSecret(secret=callback_secret(principal.user_id, settings))


@router.get(
    "/deliveries",
    response_model=WebhookDeliveryPage,
    responses=problem_responses(400, 401, 403, 429),
    summary="The delivery log, newest first",
)
def list_deliveries(
    principal: ReadPrincipal,
    session: SessionDep,
    endpoint_id: uuid.UUID | None = None,
    analysis_id: uuid.UUID | None = None,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: CursorQuery = None,
) -> WebhookDeliveryPage:
    only = repository.DeliveryFilter(endpoint_id=endpoint_id, analysis_id=analysis_id, status=status)
    return service.page_deliveries(session, principal.user_id, only, limit=limit, cursor=cursor)


@router.get(
    "/deliveries/{delivery_id}",
    response_model=WebhookDeliveryDetail,
    responses=problem_responses(401, 403, 404, 429),
    summary="One delivery with its payload",
)
def get_delivery(
    delivery_id: uuid.UUID, principal: ReadPrincipal, session: SessionDep
) -> WebhookDeliveryDetail:
    return WebhookDeliveryDetail.model_validate(service.get_delivery(session, principal.user_id, delivery_id))


@router.post(
    "/deliveries/{delivery_id}/resend",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryDetail,
    responses=problem_responses(401, 403, 404, 409, 429, 503),
    summary="Send a finished delivery once more (same body and webhook-id)",
)
def resend_delivery(
    delivery_id: uuid.UUID, request: Request, principal: WritePrincipal, session: SessionDep
) -> WebhookDeliveryDetail:
    previous_status = service.get_delivery(session, principal.user_id, delivery_id).status
    delivery = service.resend_delivery(session, principal.user_id, delivery_id)
    after_commit(session, _enqueue_delivery(request, delivery_id, restore_to=previous_status))
    return WebhookDeliveryDetail.model_validate(delivery)


@router.post(
    "/endpoints/{endpoint_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryDetail,
    responses=problem_responses(401, 403, 404, 409, 429, 503),
    summary="Send a `webhook.test` event to the endpoint (signed and logged like every delivery)",
)
def send_test_event(
    endpoint_id: uuid.UUID, request: Request, principal: WritePrincipal, session: SessionDep
) -> WebhookDeliveryDetail:
    delivery = service.test_delivery(session, principal.user_id, endpoint_id)
    after_commit(session, _enqueue_delivery(request, delivery.id, restore_to=None))
    return WebhookDeliveryDetail.model_validate(delivery)


def _enqueue_delivery(request: Request, delivery_id: uuid.UUID, *, restore_to: str | None):
    """After the commit: queue one attempt of the delivery. Should the queue refuse it, the
    delivery is not left pending with no job behind it: a resent one gets its status back, a new
    test event is marked failed, and the user can try again later."""
    app_state = request.app.state

    async def enqueue() -> None:
        # A fresh arq job id: the first one's result may still be kept, which would refuse it.
        try:
            await app_state.arq.enqueue_job(
                "deliver_webhook", str(delivery_id), _queue_name=app_state.settings.queue_name
            )
        except Exception as exc:

            def restore() -> None:
                with session_scope(app_state.session_factory) as fresh:
                    service.restore_status(fresh, delivery_id, restore_to or "failed")

            await run_in_threadpool(restore)
            raise ServiceUnavailable("The job queue is unavailable; try again shortly.") from exc

    return enqueue
