"""One credential per request: a presented credential that fails verification is refused even
beside a valid one, two different credentials are ambiguous, cookies never authenticate the API."""

from __future__ import annotations

import pytest

from services.gateway.dashboard.session import ACCESS_COOKIE
from services.gateway.security import generate_api_key
from tests.gateway.conftest import new_api_key
from tests.platform.auth.test_auth import assert_problem


@pytest.fixture
def key(client, account) -> str:
    return new_api_key(client, account)["key"]


def test_valid_key_with_invalid_bearer_is_refused(client, key):
    response = client.get("/v1/usage", headers={"X-API-Key": key, "Authorization": "Bearer not-a-token"})
    assert_problem(response, 401, "ambiguous_credentials")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_valid_token_with_invalid_key_is_refused(client, account):
    headers = {**account.headers, "X-API-Key": generate_api_key()}
    assert_problem(client.get("/v1/usage", headers=headers), 401, "ambiguous_credentials")


def test_two_valid_credentials_are_ambiguous(client, account, key):
    headers = {**account.headers, "X-API-Key": key}
    body = assert_problem(client.get("/v1/analyses", headers=headers), 401, "ambiguous_credentials")
    assert "not both" in body["detail"]


def test_the_same_key_in_both_headers_is_one_credential(client, key):
    headers = {"X-API-Key": key, "Authorization": f"Bearer {key}"}
    assert client.get("/v1/usage", headers=headers).status_code == 200


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer   "])
def test_authorization_that_is_no_bearer_credential_is_refused_beside_a_valid_key(client, key, authorization):
    response = client.get("/v1/usage", headers={"X-API-Key": key, "Authorization": authorization})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    alone = client.get("/v1/usage", headers={"Authorization": authorization})
    assert_problem(alone, 401, "unauthorized")


def test_empty_api_key_header_is_refused_beside_a_valid_token(client, account):
    response = client.get("/v1/usage", headers={**account.headers, "X-API-Key": ""})
    assert response.status_code == 401, response.text


def test_repeated_headers_are_ambiguous(client, key):
    response = client.get("/v1/usage", headers=[("X-API-Key", key), ("X-API-Key", key)])
    assert_problem(response, 401, "ambiguous_credentials")
    response = client.get("/v1/usage", headers=[("Authorization", f"Bearer {key}")] * 2)
    assert_problem(response, 401, "ambiguous_credentials")


def test_dashboard_cookie_is_not_an_api_credential(client, account, key):
    client.cookies.set(ACCESS_COOKIE, account.access_token)
    try:
        assert_problem(client.get("/v1/usage"), 401, "unauthorized")
        # Beside a header, the header alone decides.
        assert client.get("/v1/usage", headers={"X-API-Key": key}).status_code == 200
    finally:
        client.cookies.clear()


def test_single_credentials_still_work(client, account, key):
    assert client.get("/v1/usage", headers=account.headers).status_code == 200
    assert client.get("/v1/usage", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/v1/usage", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert (
        client.get("/v1/usage", headers={"authorization": f"bearer {account.access_token}"}).status_code
        == 200
    )
