"""Sign-up, sign-in and refresh-token rotation."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.gateway.security import (
    create_access_token,
    create_password_reset_token,
    hash_password,
    hash_refresh_token,
    new_refresh_token,
    password_reset_user_id,
    verify_password,
    verify_password_reset,
)
from services.platform.auth import repository
from services.platform.auth.schemas import AccountUpdate, TokenPair
from shared.db.models import RefreshToken, User
from shared.db.types import utcnow
from shared.problems import BadRequest, Conflict, Unauthorized
from shared.settings import Settings


class EmailTaken(Conflict):
    code, title = "email_taken", "An account with this e-mail already exists"


class InvalidCredentials(Unauthorized):
    code, title = "invalid_credentials", "Incorrect e-mail or password"


class InvalidCurrentPassword(BadRequest):
    code, title = "invalid_current_password", "The current password is not correct"


class InvalidResetToken(BadRequest):
    """The token is malformed, expired, for another server, or spent: it works once, until the
    password changes. Ask the operator for a new one (``moodreel users reset-password EMAIL``)."""

    code, title = "invalid_reset_token", "The password reset token is invalid, expired or already used"


class InvalidRefreshToken(Unauthorized):
    code, title = "invalid_refresh_token", "The refresh token is invalid, expired or already used"


def signup(session: Session, settings: Settings, email: str, password: str) -> User:
    user = User(email=email, password_hash=hash_password(password), plan=settings.default_plan)
    session.add(user)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise EmailTaken() from exc
    return user


def authenticate(session: Session, email: str, password: str) -> User:
    user = repository.get_user_by_email(session, email)
    # Unknown e-mails still pay for one argon2 verification (no timing oracle).
    valid = verify_password(password, user.password_hash if user else None)
    if user is None or not valid or not user.is_active:
        raise InvalidCredentials()
    return user


def issue_tokens(
    session: Session, settings: Settings, user: User, family_id: uuid.UUID | None = None
) -> TokenPair:
    access_token, expires_in = create_access_token(user.id, user.password_hash, settings)
    refresh_token = new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=hash_refresh_token(refresh_token),
            expires_at=utcnow() + timedelta(days=settings.refresh_token_days),
        )
    )
    session.flush()
    return TokenPair(access_token=access_token, expires_in=expires_in, refresh_token=refresh_token)


def rotate_refresh_token(session: Session, settings: Settings, presented: str) -> TokenPair:
    """Exchange a refresh token for a new pair. Presenting an already used token means it was
    copied: the whole family is revoked, and the thief's and the owner's sessions both end."""
    stored = repository.get_refresh_token(session, hash_refresh_token(presented))
    now = utcnow()
    if stored is None or stored.revoked_at is not None or stored.expires_at <= now:
        raise InvalidRefreshToken()
    # Conditional UPDATE: of two concurrent refreshes with the same token only one wins.
    claimed = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        repository.revoke_family(session, stored.family_id)
        session.commit()  # the revocation must persist although the request fails
        raise InvalidRefreshToken()
    user = session.get(User, stored.user_id)
    if user is None or not user.is_active:
        raise InvalidRefreshToken()
    return issue_tokens(session, settings, user, stored.family_id)


def logout(session: Session, presented: str) -> None:
    stored = repository.get_refresh_token(session, hash_refresh_token(presented))
    if stored is not None:
        repository.revoke_family(session, stored.family_id)
        session.flush()


def update_account(session: Session, user: User, body: AccountUpdate) -> User:
    if body.training_consent is not None:
        user.training_consent = body.training_consent
    session.flush()
    return user


def _set_password(session: Session, user: User, new_password: str) -> None:
    """New hash; every refresh token of the account is revoked and every access token issued
    before stops working (its password stamp no longer matches), so all sessions end at once.
    API keys are kept: they belong to programs and are revoked on their own."""
    user.password_hash = hash_password(new_password)
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.flush()


def change_password(
    session: Session, settings: Settings, user: User, current_password: str, new_password: str
) -> TokenPair:
    """Every session ends but the caller's, which continues with the returned tokens."""
    if not verify_password(current_password, user.password_hash):
        raise InvalidCurrentPassword()
    _set_password(session, user, new_password)
    return issue_tokens(session, settings, user)


def issue_reset_token(session: Session, settings: Settings, email: str, *, minutes: int = 30) -> str:
    """For the operator (``moodreel users reset-password``): no e-mail server is needed."""
    user = repository.get_user_by_email(session, email.strip().lower())
    if user is None:
        raise LookupError(f"no account has the e-mail {email}")
    return create_password_reset_token(user.id, user.password_hash, settings, minutes=minutes)


def reset_password(session: Session, settings: Settings, token: str, new_password: str) -> User:
    parsed = password_reset_user_id(token)
    user = session.get(User, parsed[0]) if parsed else None
    if parsed is None or user is None or not user.is_active:
        raise InvalidResetToken()
    if not verify_password_reset(user.id, parsed[1], parsed[2], user.password_hash, settings):
        raise InvalidResetToken()
    _set_password(session, user, new_password)
    return user
