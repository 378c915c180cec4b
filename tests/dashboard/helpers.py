"""A live gateway for the dashboard tests, and signing in through the dashboard's forms as a
browser would (CSRF token from the page)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from shared.db.models import User
from shared.db.session import make_session_factory, session_scope
from tests.fixtures.db import migrate
from tests.worker import stack

PASSWORD = "correct horse battery staple"


@contextmanager
def local_gateway(directory: Path, **extra_env: str) -> Iterator[tuple[str, str]]:
    """The gateway under uvicorn on a loopback port over a migrated SQLite database in directory,
    with its own Redis key prefix and local storage (``extra_env`` adds or overrides settings);
    yields its base URL and database URL."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "MOODREEL_DATABASE_URL": f"sqlite:///{directory / 'moodreel.db'}",
        "MOODREEL_DATA_DIR": str(directory / "data"),
        "MOODREEL_REDIS_KEY_PREFIX": f"moodreel-dash-{tag}:",
        "MOODREEL_QUEUE_NAME": f"moodreel-dash-{tag}:queue",
        "MOODREEL_STORAGE_BACKEND": "local",
    } | extra_env
    migrate(env["MOODREEL_DATABASE_URL"])
    process = stack.gateway(env, directory)
    process.start(timeout=90)
    try:
        yield f"http://127.0.0.1:{process.port}", env["MOODREEL_DATABASE_URL"]
    finally:
        process.stop()


@contextmanager
def stored_for(database_url: str, email: str) -> Iterator[tuple[Session, uuid.UUID]]:
    """A transaction on the gateway's database, committed on leaving, and the id of the account
    that signed up as ``email``: for putting rows the test needs straight into the database."""
    engine = create_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session, session.scalar(select(User.id).where(User.email == email))
    finally:
        engine.dispose()


def csrf_from(page: httpx.Response) -> str:
    marker = 'name="csrf_token" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


def signed_in_client(base_url: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base_url, timeout=30.0)
    token = csrf_from(client.get("/dashboard/signup"))
    email = f"dash-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post(
        "/dashboard/signup", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/analyses"
    return client, email
