"""Accounts and tokens: sign-up, login, throttling, refresh rotation, and every way a token
can be wrong (expired, tampered, alg:none, other audience/issuer/algorithm)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from jose import jwt

from services.gateway.main import check_production_settings
from services.gateway.security import create_access_token, derive_key
from shared.settings import Settings
from tests.gateway.conftest import PASSWORD, sign_up


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["type"] == f"/problems/{code}"
    assert body["title"]
    return body


def test_signup_login_me(client):
    account = sign_up(client, "Ada@Example.com")
    me = client.get("/v1/auth/me", headers=account.headers)
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com" and me.json()["plan"] == "free"
    assert "password" not in me.text and "hash" not in me.text


def test_duplicate_email_is_conflict(client, account):
    response = client.post("/v1/auth/signup", json={"email": account.email.upper(), "password": PASSWORD})
    assert_problem(response, 409, "email_taken")


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "not-an-email", "password": PASSWORD},
        {"email": "a@b.co", "password": "short"},
        {"email": "a@b.co"},
    ],
)
def test_signup_validation_is_422_problem(client, payload):
    body = assert_problem(client.post("/v1/auth/signup", json=payload), 422, "validation_error")
    assert body["errors"]


def test_wrong_password_and_unknown_email_look_the_same(client, account):
    wrong = client.post("/v1/auth/login", data={"username": account.email, "password": "wrong password!"})
    unknown = client.post("/v1/auth/login", data={"username": "nobody@example.com", "password": "whatever12"})
    assert_problem(wrong, 401, "invalid_credentials")
    assert_problem(unknown, 401, "invalid_credentials")
    assert {k: v for k, v in wrong.json().items() if k != "instance"} == {
        k: v for k, v in unknown.json().items() if k != "instance"
    }


def test_login_throttled_after_repeated_failures(client, account):
    for _ in range(3):
        response = client.post(
            "/v1/auth/login", data={"username": account.email, "password": "wrong password!"}
        )
        assert response.status_code == 401
    blocked = client.post("/v1/auth/login", data={"username": account.email, "password": PASSWORD})
    assert_problem(blocked, 429, "rate_limited")
    assert int(blocked.headers["Retry-After"]) > 0


def test_missing_and_malformed_credentials(client):
    assert_problem(client.get("/v1/usage"), 401, "unauthorized")
    response = client.get("/v1/usage", headers={"Authorization": "Bearer not.a.jwt"})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(
        client.get("/v1/usage", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "unauthorized"
    )


def test_expired_token_rejected(client, settings, account, database_url):
    from sqlalchemy import select

    from shared.db.models import User
    from tests.fixtures.db import engine_for

    me = client.get("/v1/auth/me", headers=account.headers).json()
    with engine_for(database_url).connect() as connection:
        password_hash = connection.scalar(select(User.password_hash).where(User.id == uuid.UUID(me["id"])))
    fresh, _ = create_access_token(uuid.UUID(me["id"]), password_hash, settings)
    assert client.get("/v1/usage", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    token, _ = create_access_token(
        uuid.UUID(me["id"]), password_hash, settings, now=datetime.now(UTC) - timedelta(hours=2)
    )
    assert_problem(client.get("/v1/usage", headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized")


def test_tampered_token_rejected(client, account):
    header, payload, signature = account.access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(uuid.uuid4())
    forged = f"{header}.{b64(claims)}.{signature}"
    assert_problem(
        client.get("/v1/usage", headers={"Authorization": f"Bearer {forged}"}), 401, "unauthorized"
    )
    flipped = (
        account.access_token[:-2]
        + ("A" if account.access_token[-2] != "A" else "B")
        + account.access_token[-1]
    )
    assert_problem(
        client.get("/v1/usage", headers={"Authorization": f"Bearer {flipped}"}), 401, "unauthorized"
    )


def test_alg_none_token_rejected(client, account):
    _, payload, _ = account.access_token.split(".")
    for alg in ("none", "None", "NONE"):
        unsigned = f"{b64({'alg': alg, 'typ': 'JWT'})}.{payload}."
        response = client.get("/v1/usage", headers={"Authorization": f"Bearer {unsigned}"})
        assert_problem(response, 401, "unauthorized")


def test_other_algorithm_audience_issuer_and_secret_rejected(client, settings, account):
    me = client.get("/v1/auth/me", headers=account.headers).json()
    now = int(time.time())
    good = {
        "sub": me["id"],
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + 600,
        "typ": "access",
        "pws": jwt.get_unverified_claims(account.access_token)["pws"],
    }
    key = derive_key(settings, "jwt-access").hex()
    variants = [
        jwt.encode(good, key, algorithm="HS512"),
        jwt.encode({**good, "aud": "someone-else"}, key, algorithm="HS256"),
        jwt.encode({**good, "iss": "evil"}, key, algorithm="HS256"),
        jwt.encode({**good, "typ": "refresh"}, key, algorithm="HS256"),
        jwt.encode(good, "another-secret", algorithm="HS256"),
        jwt.encode({k: v for k, v in good.items() if k != "exp"}, key, algorithm="HS256"),
        jwt.encode({k: v for k, v in good.items() if k != "pws"}, key, algorithm="HS256"),
        jwt.encode({**good, "pws": "another-password"}, key, algorithm="HS256"),
    ]
    assert (
        client.get("/v1/usage", headers={"Authorization": f"Bearer {jwt.encode(good, key)}"}).status_code
        == 200
    )
    for token in variants:
        assert_problem(
            client.get("/v1/usage", headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized"
        )


def test_refresh_rotates_and_reuse_revokes_family(client, account):
    first = client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != account.refresh_token
    assert (
        client.get("/v1/auth/me", headers={"Authorization": f"Bearer {rotated['access_token']}"}).status_code
        == 200
    )
    # The old token again: treated as stolen, the whole family is revoked.
    assert_problem(
        client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token}),
        401,
        "invalid_refresh_token",
    )
    assert_problem(
        client.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}),
        401,
        "invalid_refresh_token",
    )


def test_logout_revokes_refresh_token(client, account):
    assert client.post("/v1/auth/logout", json={"refresh_token": account.refresh_token}).status_code == 204
    assert_problem(
        client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token}),
        401,
        "invalid_refresh_token",
    )


def test_production_refuses_default_secret():
    with pytest.raises(RuntimeError, match="MOODREEL_SECRET_KEY"):
        check_production_settings(Settings(environment="production"))
    with pytest.raises(RuntimeError):
        check_production_settings(Settings(environment="production", secret_key="short"))
    check_production_settings(Settings(environment="production", secret_key="x" * 40))
    check_production_settings(Settings(environment="development"))


def test_unknown_route_and_method_are_problems(client):
    assert_problem(client.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(client.put("/v1/usage"), 405, "method_not_allowed")


def test_expired_refresh_token_rejected(client, account, database_url):
    from sqlalchemy import update

    from shared.db.models import RefreshToken
    from tests.fixtures.db import engine_for

    with engine_for(database_url).begin() as connection:
        connection.execute(update(RefreshToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    response = client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert_problem(response, 401, "invalid_refresh_token")


def test_disabled_account_loses_every_credential(client, account, database_url):
    from sqlalchemy import update

    from shared.db.models import User
    from tests.fixtures.db import engine_for
    from tests.gateway.conftest import new_api_key

    key = new_api_key(client, account)["key"]
    with engine_for(database_url).begin() as connection:
        connection.execute(update(User).values(is_active=False))
    assert_problem(client.get("/v1/usage", headers=account.headers), 401, "unauthorized")
    assert_problem(client.get("/v1/usage", headers={"X-API-Key": key}), 401, "unauthorized")
    login = client.post("/v1/auth/login", data={"username": account.email, "password": PASSWORD})
    assert_problem(login, 401, "invalid_credentials")
    refresh = client.post("/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert_problem(refresh, 401, "invalid_refresh_token")


def test_token_of_deleted_user_rejected(client, account, database_url):
    from sqlalchemy import delete

    from shared.db.models import User
    from tests.fixtures.db import engine_for

    with engine_for(database_url).begin() as connection:
        connection.execute(delete(User))
    assert_problem(client.get("/v1/auth/me", headers=account.headers), 401, "unauthorized")


def test_passwords_are_argon2id_hashes(client, account, database_url):
    from sqlalchemy import select

    from shared.db.models import User
    from tests.fixtures.db import engine_for

    with engine_for(database_url).connect() as connection:
        stored = connection.execute(select(User.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


def test_token_responses_are_not_cached_and_security_headers_are_set(client, account):
    login = client.post("/v1/auth/login", data={"username": account.email, "password": PASSWORD})
    assert login.headers["cache-control"] == "no-store"
    refreshed = client.post("/v1/auth/refresh", json={"refresh_token": login.json()["refresh_token"]})
    assert refreshed.headers["cache-control"] == "no-store"
    for response in (login, client.get("/v1/nothing"), client.get("/healthz")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


def test_signups_per_address_are_limited(client):
    from services.platform.auth.endpoints import SIGNUPS_PER_HOUR_PER_ADDRESS

    for index in range(SIGNUPS_PER_HOUR_PER_ADDRESS):
        body = {"email": f"bulk{index}@example.com", "password": PASSWORD}
        assert client.post("/v1/auth/signup", json=body).status_code == 201
    response = client.post("/v1/auth/signup", json={"email": "one-more@example.com", "password": PASSWORD})
    assert_problem(response, 429, "rate_limited")
    assert response.headers["ratelimit-policy"].startswith('"signups";q=20;w=3600')
