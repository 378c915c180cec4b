"""``moodreel users …``: the operator's account commands, run on the server against its database
(``MOODREEL_DATABASE_URL``). Changes reach running gateways within ``api_key_cache_seconds``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

users_app = typer.Typer(no_args_is_help=True, help="Accounts: list, change plans, disable, reset passwords.")


@contextmanager
def _session() -> Iterator:
    from shared.db.session import create_db_engine, make_session_factory, session_scope
    from shared.settings import get_settings

    engine = create_db_engine(settings=get_settings())
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _user(session, email: str):
    from services.platform.auth import repository

    user = repository.get_user_by_email(session, email.strip().lower())
    if user is None:
        typer.echo(f"moodreel: no account has the e-mail {email}", err=True)
        raise typer.Exit(1)
    return user


@users_app.command("list")
def list_users(
    q: str | None = typer.Option(None, "--q", help="only e-mails containing this"),
    limit: int = typer.Option(100, min=1, max=10_000),
) -> None:
    """Accounts, newest first: e-mail, plan, state, created, API keys."""
    from sqlalchemy import func, select

    from shared.db.models import ApiKey, User

    with _session() as session:
        keys = (
            select(func.count(ApiKey.id))
            .where(ApiKey.user_id == User.id, ApiKey.revoked_at.is_(None))
            .scalar_subquery()
        )
        statement = select(User, keys).order_by(User.created_at.desc()).limit(limit)
        if q:
            statement = statement.where(User.email.contains(q.strip().lower(), autoescape=True))
        rows = session.execute(statement).all()
    typer.echo(f"{'email':40} {'plan':10} {'state':9} {'created':20} keys")
    for user, key_count in rows:
        state = "active" if user.is_active else "disabled"
        typer.echo(
            f"{user.email:40} {user.plan:10} {state:9} {user.created_at:%Y-%m-%d %H:%M:%S} {key_count}"
        )


@users_app.command("set-plan")
def set_plan(
    email: str = typer.Argument(...), plan: str = typer.Argument(..., help="a plan of MOODREEL_PLANS")
) -> None:
    """Move an account to another plan (its limits apply from the next request)."""
    from shared.settings import get_settings

    plans = get_settings().plans
    if plan not in plans:
        raise typer.BadParameter(
            f"unknown plan {plan!r}; plans: {', '.join(sorted(plans))}", param_hint="PLAN"
        )
    with _session() as session:
        user = _user(session, email)
        previous, user.plan = user.plan, plan
    typer.echo(f"{email}: plan {previous} -> {plan}")


def _set_active(email: str, active: bool) -> None:
    from sqlalchemy import update

    from shared.db.models import RefreshToken
    from shared.db.types import utcnow

    with _session() as session:
        user = _user(session, email)
        user.is_active = active
        if not active:
            # Sign-ins already made cannot be refreshed; API keys and tokens are refused as soon
            # as each gateway sees the change.
            session.execute(
                update(RefreshToken)
                .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
    typer.echo(f"{email}: {'enabled' if active else 'disabled'}")


@users_app.command("disable")
def disable(email: str = typer.Argument(...)) -> None:
    """Disable an account: sign-in, tokens and API keys stop working (within a second)."""
    _set_active(email, False)


@users_app.command("enable")
def enable(email: str = typer.Argument(...)) -> None:
    """Enable a disabled account again."""
    _set_active(email, True)


@users_app.command("reset-password")
def reset_password(
    email: str = typer.Argument(...),
    minutes: int = typer.Option(30, min=5, max=24 * 60, help="how long the token works"),
) -> None:
    """Print a single-use, short-lived password reset token (no e-mail server needed); give it to
    the user, who sets a new password with it on the dashboard's /dashboard/reset-password page or
    through `POST /v1/auth/password-reset`. It is spent once the password changes."""
    from services.platform.auth.service import issue_reset_token
    from shared.settings import get_settings

    with _session() as session:
        _user(session, email)
        token = issue_reset_token(session, get_settings(), email, minutes=minutes)
    typer.echo(token)
