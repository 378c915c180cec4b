"""Typed dependencies: settings, the database session (commits when the endpoint succeeds),
Redis, and the authenticated principal (JWT user or API key) with its rate limit and scopes."""

from __future__ import annotations

import functools
import hmac
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import anyio
import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import event, or_, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from services.gateway import ratelimit
from services.gateway.security import (
    API_KEY_PREFIX,
    InvalidToken,
    decode_access_token,
    hash_api_key,
    is_well_formed_api_key,
    password_stamp,
)
from services.platform.api_keys.cache import verified_keys
from services.platform.usage.quota import plan_limits
from services.platform.usage.snapshots import remember_usage_stamp
from services.platform.usage.stamps import read_stamp
from shared.db.models import ApiKey, User
from shared.problems import Forbidden, Unauthorized
from shared.settings import Settings

SCOPE_READ = "analyses:read"
SCOPE_WRITE = "analyses:write"
ALL_SCOPES = (SCOPE_READ, SCOPE_WRITE)
# last_used_at is written at most this often per key, so reads stay reads.
LAST_USED_RESOLUTION = timedelta(seconds=60)

AfterCommit = Callable[[], Awaitable[None]]


# Dependencies that do no I/O are coroutines: FastAPI runs a plain function on a worker thread,
# and every request would wait for a thread (behind all others) only to read an attribute.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request: committed after the endpoint returns and before the response is
    sent (so a failed commit is a 500, never a false 2xx); then the after-commit hooks run
    (queueing jobs that must only see committed rows)."""
    # A request waits for a session here, on the event loop, holding no thread: there are as many
    # slots as pooled connections, so the session's queries never wait for a connection.
    slots: anyio.Semaphore = request.app.state.session_slots
    await slots.acquire()
    try:
        session: Session = request.app.state.session_factory()
    except BaseException:
        slots.release()
        raise
    # Commits run on their own thread limiter: with every worker thread of the default pool
    # waiting for a row lock, the transaction holding it must still be able to commit.
    limiter = request.app.state.commit_limiter

    def commit_and_close() -> None:
        try:
            session.commit()
        finally:
            session.close()

    try:
        try:
            yield session
        except BaseException:
            if _holds_connection(session):
                await anyio.to_thread.run_sync(session.close, limiter=limiter)  # close() rolls back
            raise
        if _holds_connection(session) or session.new or session.dirty or session.deleted:
            await anyio.to_thread.run_sync(commit_and_close, limiter=limiter)
    finally:
        # A session that never reached the database (a cached principal merged into it opens a
        # transaction but no connection) has nothing to commit or return to the pool: closing it
        # does no I/O, so it needs no thread.
        if not _holds_connection(session):
            session.close()
        slots.release()
    for hook in session.info.pop("after_commit", []):
        await hook()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_CONNECTED = "holds_connection"


@event.listens_for(Session, "after_begin")
def _note_connection(session: Session, transaction, connection) -> None:
    # Fired when a transaction first takes a connection; a session's info outlives its transactions.
    session.info[_CONNECTED] = True


@event.listens_for(Session, "after_transaction_end")
def _note_connection_returned(session: Session, transaction) -> None:
    if transaction.parent is None:
        session.info.pop(_CONNECTED, None)


def _holds_connection(session: Session) -> bool:
    return session.info.get(_CONNECTED, False)


def after_commit(session: Session, hook: AfterCommit) -> None:
    session.info.setdefault("after_commit", []).append(hook)


async def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis


RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]


@dataclass(frozen=True)
class Principal:
    user: User
    api_key: ApiKey | None
    scopes: frozenset[str]

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def rate_limit_identity(self) -> str:
        return f"key:{self.api_key.id}" if self.api_key else f"user:{self.user.id}"


bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    scheme_name="BearerAuth",
    description="A JWT access token from `POST /v1/auth/login`, or an API key (`mr_live_…`).",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="ApiKeyAuth", description="An API key (`mr_live_…`)."
)


def _principal_from_api_key(
    session: Session, settings: Settings, key: str, *, may_query: bool = True
) -> Principal | None:
    """The key's principal, or the 401 that fits. With ``may_query=False`` (on the event loop) it
    answers only from the verified-key cache and returns None when the database is needed: a key
    not verified in the last second, or a ``last_used_at`` that is due to be written."""
    if not is_well_formed_api_key(key):
        raise Unauthorized("The API key is malformed.")
    key_hash = hash_api_key(key, settings)
    # Verified keys are remembered for at most a second (api_keys/cache.py): revocation still
    # takes effect within 1 s, and a hit costs no query.
    cache_scope = settings.database_url
    cached = verified_keys.get(session, cache_scope, key_hash, settings.api_key_cache_seconds)
    if cached is not None:
        api_key, user = cached
    elif not may_query:
        return None
    else:
        api_key = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        user = api_key.user if api_key is not None else None
    now = datetime.now(UTC)
    if api_key is None or api_key.revoked_at is not None:
        raise Unauthorized("The API key is unknown or revoked.")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise Unauthorized("The API key has expired.")
    if not user.is_active:
        raise Unauthorized("The account is disabled.")
    if cached is None:
        verified_keys.put(cache_scope, key_hash, api_key, user)
    last_used = verified_keys.last_used(api_key.id) or api_key.last_used_at
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        if not may_query:
            return None
        verified_keys.mark_used(api_key.id, now)
        # Its own short transaction: a row lock on the key must not last as long as the request.
        with session.get_bind().connect() as connection:
            connection.execute(
                update(ApiKey)
                .where(ApiKey.id == api_key.id)
                .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION))
                .values(last_used_at=now)
            )
            connection.commit()
    return Principal(user, api_key, frozenset(api_key.scopes))


def _principal_from_jwt(session: Session, settings: Settings, token: str) -> Principal:
    try:
        claims = decode_access_token(token, settings)
    except InvalidToken as exc:
        raise Unauthorized("The access token is invalid or expired.") from exc
    user = session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("The access token's account does not exist or is disabled.")
    if not hmac.compare_digest(claims.password_stamp, password_stamp(user.password_hash, settings)):
        raise Unauthorized("The password was changed since this access token was issued; sign in again.")
    return Principal(user, None, frozenset(ALL_SCOPES))


class AmbiguousCredentials(Unauthorized):
    code, title = "ambiguous_credentials", "More than one credential"


@dataclass(frozen=True)
class PresentedCredential:
    kind: Literal["api_key", "jwt"]
    value: str


def presented_credential(headers: Headers) -> PresentedCredential | None:
    """The one credential a request presents, read from its raw headers.

    A request authenticates with exactly one credential: `Authorization: Bearer <JWT or API key>`
    or `X-API-Key: <API key>`. A header that is present counts as presented, even when it is empty
    or not a Bearer credential, so a broken credential is refused rather than skipped in favour of
    another; two different credentials are refused as ambiguous (the same key in both headers is
    one credential). Cookies are never credentials for the API (the dashboard's are scoped to
    `/dashboard`)."""
    authorizations = headers.getlist("authorization")
    header_keys = headers.getlist("x-api-key")
    if len(authorizations) > 1 or len(header_keys) > 1:
        raise AmbiguousCredentials("Send one `Authorization` or one `X-API-Key` header, not several.")
    values: list[str] = []
    if authorizations:
        scheme, _, token = authorizations[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthorized("The Authorization header must be `Bearer <access token or API key>`.")
        values.append(token.strip())
    if header_keys:
        values.append(header_keys[0].strip())
    if not values:
        return None
    if len(set(values)) > 1:
        raise AmbiguousCredentials(
            "Send one credential: either `Authorization: Bearer …` or `X-API-Key: …`, not both."
        )
    value = values[0]
    if not value:
        raise Unauthorized("The credential is empty.")
    kind: Literal["api_key", "jwt"] = "api_key" if header_keys or value.startswith(API_KEY_PREFIX) else "jwt"
    return PresentedCredential(kind, value)


def _checkable_offline(credential: PresentedCredential, settings: Settings) -> bool:
    """Whether a presented credential could be valid, judged without the database: an API key's
    format and checksum, a JWT's signature and claims."""
    if credential.kind == "api_key":
        return is_well_formed_api_key(credential.value)
    try:
        decode_access_token(credential.value, settings)
    except InvalidToken:
        return False
    return True


def admissible_credential(headers: Headers, settings: Settings) -> PresentedCredential:
    """The request's one credential if it could be valid; 401 for none at all, garbage, forged
    or expired tokens and mistyped keys. Judged from the headers alone: no database, no thread."""
    credential = presented_credential(headers)
    if credential is None:
        raise Unauthorized("Send an access token or API key: `Authorization: Bearer …` or `X-API-Key: …`.")
    if not _checkable_offline(credential, settings):
        raise Unauthorized("The credentials are malformed, invalid or expired.")
    return credential


# Where the admission middleware (services/gateway/admission.py) leaves the credential it let in.
ADMITTED_CREDENTIAL = "admitted_credential"


async def refuse_hopeless_credentials(request: Request, settings: SettingsDep) -> PresentedCredential:
    """Runs before a database session is taken. The admission middleware has already refused a
    hopeless credential before the body was read, and left the one it admitted in the request's
    state; a request that reached the route another way is judged here by the same rule."""
    admitted = request.scope.get("state", {}).get(ADMITTED_CREDENTIAL)
    if admitted is not None:
        return admitted
    return admissible_credential(request.headers, settings)


async def authenticate(
    request: Request,
    credential: Annotated[PresentedCredential, Depends(refuse_hopeless_credentials)],
    session: SessionDep,
    settings: SettingsDep,
    redis_client: RedisDep,
    # Declared so the OpenAPI document lists both security schemes; the credential itself is read
    # by presented_credential, which also sees the headers these schemes ignore.
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    _header_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    if credential.kind == "api_key":
        # A key verified in the last second needs no database: checked here, on the event loop,
        # without a thread hop; otherwise in a thread, with its queries.
        principal = _principal_from_api_key(session, settings, credential.value, may_query=False)
        if principal is None:
            principal = await run_in_threadpool(_principal_from_api_key, session, settings, credential.value)
    else:
        principal = await run_in_threadpool(_principal_from_jwt, session, settings, credential.value)
    limits = plan_limits(principal.user.plan, settings)
    # The usage stamp rides along with the request count: usage reads then need no round trip of
    # their own while the counters are unchanged (usage/snapshots.py).
    state, replies = await ratelimit.hit_and_read(
        redis_client,
        settings,
        principal.rate_limit_identity,
        limit=limits.requests_per_minute,
        window=60,
        policy="requests",
        also=functools.partial(read_stamp, settings=settings, user_id=principal.user_id),
    )
    scope_state = request.scope.setdefault("state", {})
    remember_usage_stamp(scope_state, replies[-1])
    ratelimit.enforce(state, scope_state)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


def require_scopes(*scopes: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        missing = sorted(set(scopes) - principal.scopes)
        if missing:
            raise Forbidden(f"The API key lacks the scope(s): {', '.join(missing)}.", missing_scopes=missing)
        return principal

    return check


async def require_user_session(principal: CurrentPrincipal) -> Principal:
    """Account management (API keys) needs a signed-in user; an API key cannot mint keys."""
    if principal.api_key is not None:
        raise Forbidden("Manage API keys with a user access token, not with an API key.")
    return principal


ReadPrincipal = Annotated[Principal, Depends(require_scopes(SCOPE_READ))]
WritePrincipal = Annotated[Principal, Depends(require_scopes(SCOPE_WRITE))]
UserPrincipal = Annotated[Principal, Depends(require_user_session)]
