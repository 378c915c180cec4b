"""Operator commands (``moodreel users …``) on the real database, and password change and reset
through the API: the new password works, the old one and other sessions' refresh tokens do not,
and a reset token works once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services.cli import app as cli
from services.gateway.main import create_app
from shared.settings import PlanLimits
from tests.gateway.conftest import PASSWORD, delete_prefixed_keys, make_settings, new_api_key, sign_up
from tests.platform.auth.test_auth import assert_problem

NEW_PASSWORD = "a much better passphrase"


@pytest.fixture
def admin_settings(database_url, tmp_path, redis_client, monkeypatch):
    limits = PlanLimits(analyses_per_month=5, video_seconds_per_month=600, requests_per_minute=1000)
    settings = make_settings(database_url, tmp_path, plans={"free": limits, "pro": limits})
    # The commands read the process' settings, as they do on a server.
    monkeypatch.setattr("shared.settings.get_settings", lambda: settings)
    yield settings
    delete_prefixed_keys(redis_client, settings.redis_key_prefix)


@pytest.fixture
def admin_client(admin_settings) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings), raise_server_exceptions=False) as client:
        yield client


def users(*args: str):
    return CliRunner().invoke(cli, ["users", *args])


def login(client, email: str, password: str):
    return client.post("/v1/auth/login", data={"username": email, "password": password})


def test_list_set_plan_disable_enable(admin_client, admin_settings):
    account = sign_up(admin_client)
    key = new_api_key(admin_client, account)["key"]
    listed = users("list", "--q", account.email.split("@")[0])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if account.email in line)
    assert row.split()[1:3] == ["free", "active"] and row.split()[-1] == "1"

    assert users("set-plan", account.email, "pro").exit_code == 0
    assert admin_client.get("/v1/auth/me", headers=account.headers).json()["plan"] == "pro"
    unknown = users("set-plan", account.email, "platinum")
    assert unknown.exit_code == 2 and "plans: free, pro" in unknown.output

    assert users("disable", account.email).exit_code == 0
    assert "disabled" in users("list").stdout
    assert_problem(login(admin_client, account.email, PASSWORD), 401, "invalid_credentials")
    refreshed = admin_client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert_problem(refreshed, 401, "invalid_refresh_token")
    assert_problem(admin_client.get("/v1/usage", headers={"X-API-Key": key}), 401, "unauthorized")

    assert users("enable", account.email).exit_code == 0
    assert login(admin_client, account.email, PASSWORD).status_code == 200
    missing = users("disable", "nobody@example.com")
    assert missing.exit_code == 1 and "no account has the e-mail nobody@example.com" in missing.stderr


def test_password_change_needs_the_current_password_and_ends_other_sessions(admin_client):
    account = sign_up(admin_client)
    wrong = admin_client.post(
        "/v1/auth/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=account.headers,
    )
    assert_problem(wrong, 400, "invalid_current_password")
    key = new_api_key(admin_client, account)["key"]
    with_key = admin_client.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={"X-API-Key": key},
    )
    assert_problem(with_key, 403, "forbidden")
    changed = admin_client.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=account.headers,
    )
    assert changed.status_code == 200, changed.text
    assert changed.headers["cache-control"] == "no-store"
    # This session continues with the new tokens; every other one ends at once: access tokens
    # issued before the change (this request's own included) and every refresh token.
    mine = {"Authorization": f"Bearer {changed.json()['access_token']}"}
    assert admin_client.get("/v1/auth/me", headers=mine).status_code == 200
    stale = admin_client.get("/v1/auth/me", headers=account.headers)
    assert_problem(stale, 401, "unauthorized")
    assert "password was changed" in stale.json()["detail"]
    assert_problem(login(admin_client, account.email, PASSWORD), 401, "invalid_credentials")
    assert login(admin_client, account.email, NEW_PASSWORD).status_code == 200
    refreshed = admin_client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert_problem(refreshed, 401, "invalid_refresh_token")
    rotated = admin_client.post("/v1/auth/refresh", json={"refresh_token": changed.json()["refresh_token"]})
    assert rotated.status_code == 200
    # API keys belong to programs: they keep working.
    assert admin_client.get("/v1/usage", headers={"X-API-Key": key}).status_code == 200


def test_password_change_is_throttled_like_sign_in(admin_client, admin_settings):
    account = sign_up(admin_client)
    wrong = {"current_password": "not it at all", "new_password": NEW_PASSWORD}
    for _ in range(admin_settings.login_max_failures):
        refused = admin_client.post("/v1/auth/password", json=wrong, headers=account.headers)
        assert_problem(refused, 400, "invalid_current_password")
    throttled = admin_client.post("/v1/auth/password", json=wrong, headers=account.headers)
    assert_problem(throttled, 429, "rate_limited")
    assert int(throttled.headers["retry-after"]) >= 1
    # The same counter as the sign-in form: the right password is refused too until it resets.
    right = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert admin_client.post("/v1/auth/password", json=right, headers=account.headers).status_code == 429
    assert_problem(login(admin_client, account.email, PASSWORD), 429, "rate_limited")


def test_reset_token_from_the_cli_works_once(admin_client):
    account = sign_up(admin_client)
    issued = users("reset-password", account.email, "--minutes", "30")
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    assert token.startswith("mr_reset_")

    reset = admin_client.post("/v1/auth/password-reset", json={"token": token, "new_password": NEW_PASSWORD})
    assert reset.status_code == 204, reset.text
    assert_problem(admin_client.get("/v1/auth/me", headers=account.headers), 401, "unauthorized")
    assert login(admin_client, account.email, NEW_PASSWORD).status_code == 200
    assert_problem(login(admin_client, account.email, PASSWORD), 401, "invalid_credentials")
    again = admin_client.post(
        "/v1/auth/password-reset", json={"token": token, "new_password": "yet another one!"}
    )
    assert_problem(again, 400, "invalid_reset_token")

    other = sign_up(admin_client)
    forged = token.replace(token.split(".")[0], "mr_reset_" + "0" * 32)
    assert_problem(
        admin_client.post("/v1/auth/password-reset", json={"token": forged, "new_password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_problem(
        admin_client.post("/v1/auth/password-reset", json={"token": tampered, "new_password": NEW_PASSWORD}),
        400,
        "invalid_reset_token",
    )
    assert login(admin_client, other.email, PASSWORD).status_code == 200
