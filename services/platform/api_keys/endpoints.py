from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from services.gateway.deps import SessionDep, SettingsDep, UserPrincipal
from services.gateway.openapi import problem_responses
from services.platform.api_keys import repository, service
from services.platform.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyPublic

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=problem_responses(401, 403, 409, 422, 429),
    summary="Create an API key (the key is shown only in this response)",
)
def create_api_key(
    body: ApiKeyCreate, principal: UserPrincipal, session: SessionDep, settings: SettingsDep
) -> ApiKeyCreated:
    return service.create(session, settings, principal.user_id, body)


@router.get(
    "", response_model=ApiKeyList, responses=problem_responses(401, 403, 429), summary="List API keys"
)
def list_api_keys(principal: UserPrincipal, session: SessionDep) -> ApiKeyList:
    keys = repository.list_for_user(session, principal.user_id)
    return ApiKeyList(items=[ApiKeyPublic.model_validate(key) for key in keys])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 429),
    summary="Revoke an API key (effective immediately)",
)
def revoke_api_key(key_id: uuid.UUID, principal: UserPrincipal, session: SessionDep) -> None:
    service.revoke(session, principal.user_id, key_id)
