"""Admission: a request to an authenticated operation whose credentials cannot be valid is
refused from its headers, before its body is read, with the problem the authentication
dependency gives; every other request is routed as before; and refusals take no worker thread."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from services.gateway.admission import needs_credentials, route_rules
from services.gateway.main import create_app
from services.gateway.security import generate_api_key
from tests.gateway.conftest import running_server, sign_up

GARBAGE_JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."


def raw_exchange(base_url: str, head: str, timeout: float = 10) -> bytes:
    """Send only a request head over a fresh connection and return what the server answers
    within ``timeout`` (b"" when it answers nothing: it is still waiting for the body)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
    return received


@pytest.mark.timeout(120)
def test_an_unauthenticated_request_is_refused_before_its_body_arrives(settings):
    """The head announces 500 kB of JSON and no body follows: the refusal must not wait for it
    (FastAPI reads and parses a body before it checks credentials)."""
    with running_server(create_app(settings)) as base_url:
        for credentials in ("", f"Authorization: Bearer {GARBAGE_JWT}\r\n", "X-API-Key: mr_live_nope\r\n"):
            head = (
                "POST /v1/analyses HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"{credentials}Content-Length: 500000\r\n\r\n"
            )
            answer = raw_exchange(base_url, head)
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
            assert b"application/problem+json" in answer


def test_the_refusal_is_the_authentication_problem(client):
    response = client.post("/v1/analyses", content=b"{not json", headers={"Content-Type": "application/json"})
    # Not the 422 of the unparsable body: the missing credential is the answer.
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="moodreel"'
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    body = response.json()
    assert body["code"] == "unauthorized" and body["instance"] == "/v1/analyses"
    assert body["detail"].startswith("Send an access token or API key")
    for headers, code in (
        ({"Authorization": f"Bearer {GARBAGE_JWT}"}, "unauthorized"),
        ({"Authorization": "Basic dTpw"}, "unauthorized"),
        ({"X-API-Key": "mr_live_short"}, "unauthorized"),
        (
            {"Authorization": f"Bearer {generate_api_key()}", "X-API-Key": generate_api_key()},
            "ambiguous_credentials",
        ),
    ):
        refused = client.get(f"/v1/analyses/{uuid.uuid4()}", headers=headers)
        assert refused.status_code == 401 and refused.json()["code"] == code, refused.text


def test_other_requests_are_routed_as_before(client, api_key):
    # Unknown paths, unrouted methods and public operations are not admission's to answer.
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong_method = client.put("/v1/usage")
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "GET"
    assert client.head("/v1/usage").status_code == 405
    signup = client.post("/v1/auth/signup", content=b"{", headers={"Content-Type": "application/json"})
    assert signup.status_code == 422
    upload = client.put(f"/v1/uploads/{uuid.uuid4()}/content?expires=1&signature=x", content=b"x")
    assert upload.status_code == 403 and upload.json()["code"] == "upload_url_invalid"
    assert client.get("/healthz").json() == {"status": "ok"}
    # A credential that could be valid is admitted, and the route authenticates it.
    assert client.get("/v1/usage", headers={"X-API-Key": api_key}).status_code == 200
    unknown = client.get("/v1/usage", headers={"X-API-Key": generate_api_key()})
    assert unknown.status_code == 401 and "unknown or revoked" in unknown.json()["detail"]


def test_the_operations_that_need_credentials_are_those_the_api_documents_as_secured(client):
    rules = route_rules(client.app.routes)
    document = client.get("/openapi.json").json()
    checked = 0
    for path, operations in document["paths"].items():
        concrete = path.replace("{", "").replace("}", "")  # a value for each path parameter
        for method, operation in operations.items():
            secured = bool(operation.get("security"))
            assert needs_credentials(rules, method.upper(), concrete) == secured, (method, path)
            checked += 1
    assert checked > 20
    assert not needs_credentials(rules, "GET", "/dashboard/analyses")
    assert not needs_credentials(rules, "GET", "/v1/nothing")


@pytest.mark.timeout(60)  # before the fix these requests wait for a worker thread forever
def test_refusals_take_no_worker_thread(client):
    """With every worker thread taken, requests refused for their credentials or signed URL are
    still answered: no dependency on their path runs on a thread."""
    borrowers = client.portal.call(_take_all_threads)
    try:
        statuses = [
            client.get("/v1/usage").status_code,
            client.get("/v1/analyses", headers={"Authorization": f"Bearer {GARBAGE_JWT}"}).status_code,
            client.put(
                f"/v1/uploads/{uuid.uuid4()}/content?expires=1&signature=%C3%96", content=b"x"
            ).status_code,
            client.get("/healthz").status_code,
        ]
    finally:
        client.portal.call(_give_back_threads, borrowers)
    assert statuses == [401, 401, 403, 200]


async def _take_all_threads() -> list[object]:
    limiter = anyio.to_thread.current_default_thread_limiter()
    borrowers = []
    while limiter.available_tokens:
        borrower = object()
        limiter.acquire_on_behalf_of_nowait(borrower)
        borrowers.append(borrower)
    return borrowers


async def _give_back_threads(borrowers: list[object]) -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    for borrower in borrowers:
        limiter.release_on_behalf_of(borrower)


def _large_body_head(credential_header: str, length: int) -> str:
    return (
        "POST /v1/analyses HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"{credential_header}\r\nContent-Length: {length}\r\n\r\n"
    )


@contextmanager
def _waiting_bodies(base_url: str, heads: list[str]) -> Iterator[list[socket.socket]]:
    """Connections that sent a large body's head and none of the body: admitted, they wait."""
    parts = urlsplit(base_url)
    sockets = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in heads]
    try:
        for sock, head in zip(sockets, heads, strict=True):
            sock.sendall(head.encode())
        time.sleep(0.5)
        for sock in sockets:  # no answer yet: admitted and reading
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.timeout(120)
def test_large_bodies_in_flight_are_bounded_per_client_and_per_process(settings, client, account):
    """Two large JSON bodies of one account wait for their bytes; its third is refused with 429
    at once, before its body is read, while its small requests and another account's large body
    go on; made-up keys share their address's slots; the process has a cap of its own; and once a
    body finishes, the account may send a large body again."""
    settings.max_concurrent_large_bodies_total = 5
    length = settings.large_body_bytes + 1
    mine = f"Authorization: Bearer {account.access_token}"
    theirs = f"Authorization: Bearer {sign_up(client).access_token}"
    made_up = [f"X-API-Key: {generate_api_key()}" for _ in range(3)]

    def refused(head: str) -> bool:
        answer = raw_exchange(base_url, head)
        assert b"application/problem+json" in answer and b"retry-after: 1" in answer.lower(), answer[:300]
        return answer.startswith(b"HTTP/1.1 429 ") and b"too_many_large_bodies" in answer

    with (
        running_server(create_app(settings)) as base_url,
        _waiting_bodies(base_url, [_large_body_head(mine, length)] * 2) as waiting,
    ):
        assert refused(_large_body_head(mine, length))  # the account's two slots are taken
        made_up_heads = [_large_body_head(header, length) for header in made_up]
        with _waiting_bodies(base_url, made_up_heads[:2]):
            assert refused(made_up_heads[2])  # made-up keys: one address, two slots
            with _waiting_bodies(base_url, [_large_body_head(theirs, length)]):
                assert refused(_large_body_head(theirs, length))  # five in flight: the process is full
        with httpx.Client(base_url=base_url, headers={"Authorization": mine.split(": ", 1)[1]}) as http:
            assert http.get("/v1/usage").status_code == 200
            transcript = [{"start": 0, "end": 1, "text": "x" * 200}] * (length // 200)
            body = {"video_url": "https://93.184.215.14/v.mp4", "transcript": transcript}
            assert http.post("/v1/analyses", json=body).status_code == 429
            waiting.pop().close()
            deadline = time.monotonic() + 10
            while (answer := http.post("/v1/analyses", json=body)).status_code == 429:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert answer.status_code in (202, 422), answer.text


@pytest.mark.timeout(60)
def test_a_large_body_that_does_not_arrive_in_time_is_refused_and_frees_its_slot(settings, account):
    settings.large_body_read_seconds = 1.0
    head = _large_body_head(f"Authorization: Bearer {account.access_token}", settings.large_body_bytes + 1)
    with running_server(create_app(settings)) as base_url:
        for _ in range(settings.max_concurrent_large_bodies + 1):
            started = time.monotonic()
            answer = raw_exchange(base_url, head, timeout=10)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
            assert b"body_too_slow" in answer
            assert 0.9 <= time.monotonic() - started < 5
