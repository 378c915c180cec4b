from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response, status
from starlette.concurrency import run_in_threadpool

from services.gateway import ratelimit
from services.gateway.deps import CurrentPrincipal, RedisDep, SessionDep, SettingsDep, UserPrincipal
from services.gateway.openapi import problem_responses
from services.platform.auth import service
from services.platform.auth.schemas import (
    AccountUpdate,
    PasswordChange,
    PasswordReset,
    RefreshRequest,
    SignupRequest,
    TokenPair,
    UserPublic,
)
from shared.problems import Forbidden

router = APIRouter(prefix="/v1/auth", tags=["auth"])
SIGNUPS_PER_HOUR_PER_ADDRESS = 20
# Token responses must not be cached (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class LoginForm:
    """OAuth2's password grant form (RFC 6749 4.3.2), as `OAuth2PasswordRequestForm` reads it, with
    the non-empty username and password that a login needs stated in the document (an empty form
    field counts as missing)."""

    def __init__(
        self,
        *,
        grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
        username: Annotated[str, Form(min_length=1, max_length=320, description="The account's e-mail.")],
        password: Annotated[
            str, Form(min_length=1, max_length=1024, json_schema_extra={"format": "password"})
        ],
    ):
        self.grant_type = grant_type
        self.username = username
        self.password = password


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses=problem_responses(409, 422, 429),
    summary="Create an account",
)
async def signup(
    body: SignupRequest, request: Request, session: SessionDep, settings: SettingsDep, redis_client: RedisDep
) -> UserPublic:
    client_ip = request.client.host if request.client else "unknown"
    state = await ratelimit.hit(
        redis_client, settings, client_ip, limit=SIGNUPS_PER_HOUR_PER_ADDRESS, window=3600, policy="signups"
    )
    ratelimit.enforce(state, request.scope.setdefault("state", {}))
    user = await run_in_threadpool(service.signup, session, settings, body.email, body.password)
    return UserPublic.model_validate(user)


@router.post(
    "/login",
    response_model=TokenPair,
    responses=problem_responses(401, 422, 429),
    summary="Sign in (OAuth2 password form) for an access token and a refresh token",
)
async def login(
    request: Request,
    response: Response,
    form: Annotated[LoginForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    redis_client: RedisDep,
) -> TokenPair:
    email = form.username.strip().lower()
    client_ip = request.client.host if request.client else "unknown"
    # Counted before the password is checked, so concurrent attempts cannot overtake the count.
    await ratelimit.admit_login_attempt(redis_client, settings, email, client_ip)
    user = await run_in_threadpool(service.authenticate, session, email, form.password)
    await ratelimit.forget_successful_login(redis_client, settings, email, client_ip)
    response.headers.update(NO_STORE)
    return await run_in_threadpool(service.issue_tokens, session, settings, user)


@router.post(
    "/refresh",
    response_model=TokenPair,
    responses=problem_responses(401, 422),
    summary="Exchange a refresh token for a new token pair (rotation)",
)
def refresh(
    body: RefreshRequest, response: Response, session: SessionDep, settings: SettingsDep
) -> TokenPair:
    response.headers.update(NO_STORE)
    return service.rotate_refresh_token(session, settings, body.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(422),
    summary="Revoke a refresh token and every token rotated from it",
)
def logout(body: RefreshRequest, session: SessionDep) -> None:
    service.logout(session, body.refresh_token)


@router.get(
    "/me", response_model=UserPublic, responses=problem_responses(401), summary="The signed-in account"
)
def me(principal: CurrentPrincipal) -> UserPublic:
    return UserPublic.model_validate(principal.user)


@router.patch(
    "/me",
    response_model=UserPublic,
    responses=problem_responses(401, 403, 422, 429),
    summary="Change the signed-in account's settings (training consent)",
)
def update_me(body: AccountUpdate, principal: CurrentPrincipal, session: SessionDep) -> UserPublic:
    if principal.api_key is not None:
        # Consent is the account holder's decision, not a program's.
        raise Forbidden("Change account settings with a user access token, not with an API key.")
    return UserPublic.model_validate(service.update_account(session, principal.user, body))


@router.post(
    "/password",
    response_model=TokenPair,
    responses=problem_responses(400, 401, 403, 422, 429),
    summary="Change the password (signed in): every other session ends; this one continues with "
    "the returned tokens",
)
async def change_password(
    body: PasswordChange,
    request: Request,
    response: Response,
    principal: UserPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    redis_client: RedisDep,
) -> TokenPair:
    email, client_ip = principal.user.email, request.client.host if request.client else "unknown"
    # A wrong current password counts as a failed sign-in: a stolen access token cannot be used
    # to guess the password faster than the sign-in form allows.
    await ratelimit.admit_login_attempt(redis_client, settings, email, client_ip)
    tokens = await run_in_threadpool(
        service.change_password, session, settings, principal.user, body.current_password, body.new_password
    )
    await ratelimit.forget_successful_login(redis_client, settings, email, client_ip)
    response.headers.update(NO_STORE)
    return tokens


@router.post(
    "/password-reset",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(400, 422, 429),
    summary="Set a new password with a reset token issued by the operator",
)
async def reset_password(
    body: PasswordReset, request: Request, session: SessionDep, settings: SettingsDep, redis_client: RedisDep
) -> None:
    client_ip = request.client.host if request.client else "unknown"
    state = await ratelimit.hit(
        redis_client, settings, client_ip, limit=20, window=3600, policy="password-resets"
    )
    ratelimit.enforce(state, request.scope.setdefault("state", {}))
    user = await run_in_threadpool(service.reset_password, session, settings, body.token, body.new_password)
    # The account's sign-in lockout (the reason a reset was asked for, often) ends with it.
    await ratelimit.forget_successful_login(redis_client, settings, user.email, client_ip)
