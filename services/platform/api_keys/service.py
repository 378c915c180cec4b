"""API keys: many per user, scoped, shown once, stored as an HMAC, revoked immediately."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.orm import Session

from services.gateway.security import api_key_display_prefix, generate_api_key, hash_api_key
from services.platform.api_keys import repository
from services.platform.api_keys.cache import verified_keys
from services.platform.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from shared.db.models import ApiKey
from shared.db.types import utcnow
from shared.problems import Conflict, NotFound
from shared.settings import Settings

MAX_ACTIVE_KEYS = 50


class ApiKeyNotFound(NotFound):
    code, title = "api_key_not_found", "API key not found"


class TooManyApiKeys(Conflict):
    code, title = "too_many_api_keys", "Too many active API keys"


def create(session: Session, settings: Settings, user_id: uuid.UUID, body: ApiKeyCreate) -> ApiKeyCreated:
    active = [key for key in repository.list_for_user(session, user_id) if key.revoked_at is None]
    if len(active) >= MAX_ACTIVE_KEYS:
        raise TooManyApiKeys(f"Revoke a key first; at most {MAX_ACTIVE_KEYS} may be active.")
    plaintext = generate_api_key()
    api_key = ApiKey(
        user_id=user_id,
        name=body.name,
        prefix=api_key_display_prefix(plaintext),
        key_hash=hash_api_key(plaintext, settings),
        scopes=sorted(set(body.scopes)),
        expires_at=utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None,
        created_at=utcnow(),
    )
    session.add(api_key)
    session.flush()
    return ApiKeyCreated(**ApiKeyPublic.model_validate(api_key).model_dump(), key=plaintext)


def revoke(session: Session, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
    api_key = repository.get_for_user(session, user_id, key_id)
    if api_key is None:
        raise ApiKeyNotFound()
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        session.flush()
    verified_keys.forget(key_id)
