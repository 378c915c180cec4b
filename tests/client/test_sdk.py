"""The Python SDK (clients/python) against the real stack: uploads, SSE with resume, results,
exports, usage, API keys, webhooks, problems as exceptions, and its retry policy."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
import uuid
from pathlib import Path

import moodreel
import pytest
from moodreel import AsyncMoodreel, Moodreel, RetryPolicy, webhooks

from tests.worker.loopback import RecordingServer, send_bytes
from tests.worker.stack import wait_until

pytestmark = pytest.mark.slow


def signed_up_clients(api_url: str) -> tuple[Moodreel, Moodreel]:
    """A user's token client (account management) and an API-key client, made with the SDK."""
    email = f"sdk-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    anonymous = Moodreel(api_url, api_key="")
    anonymous.auth.signup(email, password)
    tokens = anonymous.auth.login(email, password)
    anonymous.close()
    account = Moodreel(api_url, access_token=tokens["access_token"])
    created = account.api_keys.create("sdk-test")
    assert created["key"].startswith("mr_live_")
    return account, Moodreel(api_url, api_key=created["key"])


@pytest.fixture
def clients(api_url):
    account, keyed = signed_up_clients(api_url)
    yield account, keyed
    account.close()
    keyed.close()


def test_upload_stream_wait_export_usage_and_webhook(clients, clips, receiver):
    _, client = clients
    hits: list[tuple[dict[str, str], bytes]] = []

    def hook(handler) -> None:
        _, _, headers, body = receiver.requests[-1]
        hits.append((headers, body))
        send_bytes(handler, b"ok")

    path = f"/hooks/sdk-{uuid.uuid4().hex[:8]}"
    receiver.routes[path] = hook
    endpoint = client.webhooks.create_endpoint(receiver.url(path), event_types=["analysis.succeeded"])

    transcript = Path(clips.paths["spoken.mp4"]).with_suffix(".srt")
    transcript.write_text(clips.spoken_srt)
    analysis = client.analyses.create(
        file=clips.paths["spoken.mp4"], transcript=transcript, metadata={"ticket": 42}
    )
    assert analysis["status"] == "queued" and analysis["source"]["upload_id"]
    assert analysis["name"] == "spoken.mp4" and analysis["metadata"] == {"ticket": 42}

    events = list(client.analyses.stream(analysis["id"], timeout=120))
    assert events[-1].type == "status" and events[-1].data["status"] == "succeeded"
    utterance_events = [event for event in events if event.type == "utterance"]
    cues = clips.spoken_srt.count("-->")
    assert len(utterance_events) == cues and all(event.id for event in utterance_events)

    result = client.analyses.wait(analysis["id"], timeout=30)
    assert result["status"] == "succeeded" and len(result["utterances"]) == cues
    assert [u["emotion"]["label"] for u in result["utterances"]] == [
        e.data["emotion"]["label"] for e in sorted(utterance_events, key=lambda e: e.data["index"])
    ]

    rows = list(csv.DictReader(io.StringIO(client.analyses.export(analysis["id"], "csv"))))
    assert len(rows) == cues
    assert client.analyses.export(analysis["id"], "srt").count("-->") == cues
    exported = json.loads(client.analyses.export(analysis["id"], "json"))
    assert exported["id"] == analysis["id"] and exported["name"] == "spoken.mp4"
    assert [item["id"] for item in client.analyses.list(q="SPOKEN")["items"]] == [analysis["id"]]
    assert client.analyses.list(q="other")["items"] == []

    usage = client.usage.get()
    assert usage["analyses"]["used"] == 1 and usage["video_seconds"]["used"] > 0

    wait_until(lambda: len(hits) >= 1, 30, "the analysis.succeeded webhook")
    headers, body = hits[0]
    payload = webhooks.verify(endpoint["secret"], headers, body)
    assert payload["type"] == "analysis.succeeded" and payload["data"]["id"] == analysis["id"]
    assert payload["data"]["name"] == "spoken.mp4" and payload["data"]["metadata"] == {"ticket": 42}
    with pytest.raises(moodreel.WebhookVerificationError):
        webhooks.verify(endpoint["secret"], headers, body.replace(b"succeeded", b"failed"))
    other_secret = client.webhooks.callback_secret()
    with pytest.raises(moodreel.WebhookVerificationError):
        webhooks.verify(other_secret, headers, body)


def test_stream_resumes_after_last_event_id(clients, clips):
    _, client = clients
    analysis = client.analyses.create(url=clips.url("spoken.mp4"), transcript=clips.spoken_srt)
    first = list(client.analyses.stream(analysis["id"], timeout=120))
    with_ids = [event for event in first if event.id]
    assert len(with_ids) >= 3
    resumed = list(client.analyses.stream(analysis["id"], last_event_id=with_ids[1].id, timeout=30))
    assert [event.id for event in resumed] == [event.id for event in with_ids[2:]]


def test_idempotency_key_makes_one_analysis(clients, clips):
    _, client = clients
    key = f"sdk-{uuid.uuid4().hex}"
    first = client.analyses.create(url=clips.url("short.mp4"), idempotency_key=key)
    again = client.analyses.create(url=clips.url("short.mp4"), idempotency_key=key)
    assert first["id"] == again["id"]
    with pytest.raises(moodreel.ConflictError) as caught:
        client.analyses.create(url=clips.url("spoken.mp4"), idempotency_key=key)
    assert caught.value.code == "idempotency_key_reused" and caught.value.status == 409
    ids = [item["id"] for item in client.analyses.iterate(page_size=1)]
    assert ids == [first["id"]]
    client.analyses.cancel(first["id"])


def test_problems_are_exceptions_with_code_status_and_fields(clients, clips):
    account, client = clients
    with pytest.raises(moodreel.ValidationError) as caught:
        client.analyses.create(url=clips.url("short.mp4"), transcript="1\n00:00:05,000 --> nonsense\nHi\n")
    assert caught.value.code == "transcript_invalid" and caught.value.status == 422
    assert "line" in caught.value.fields

    with pytest.raises(moodreel.NotFoundError) as not_found:
        client.analyses.get(str(uuid.uuid4()))
    assert not_found.value.code == "analysis_not_found"

    with pytest.raises(moodreel.PermissionDeniedError):
        client.api_keys.list()  # keys cannot manage keys

    failed = client.analyses.create(url=clips.url("noise.mp4"))
    with pytest.raises(moodreel.AnalysisFailedError) as job_failed:
        client.analyses.wait(failed["id"], timeout=60, poll_interval=0.3)
    assert job_failed.value.code == "not_media"

    # A revoked key is refused as such.
    key = account.api_keys.create("short-lived")
    with Moodreel(client.base_url, api_key=key["key"]) as short_lived:
        assert short_lived.usage.get()["plan"]
        account.api_keys.revoke(key["id"])
        with pytest.raises(moodreel.AuthenticationError) as unauthorized:
            short_lived.usage.get()
    assert unauthorized.value.status == 401 and unauthorized.value.code == "unauthorized"


def test_async_client_url_source(clients, clips):
    _, keyed = clients
    api_key = keyed._http.headers["X-API-Key"]

    async def run() -> tuple[list[moodreel.Event], dict]:
        async with AsyncMoodreel(keyed.base_url, api_key=api_key) as client:
            analysis = await client.analyses.create(url=clips.url("spoken.mp4"), transcript=clips.spoken_srt)
            events = [event async for event in client.analyses.stream(analysis["id"], timeout=120)]
            result = await client.analyses.wait(analysis["id"], timeout=30)
            page = await client.analyses.list(status="succeeded")
            assert analysis["id"] in [item["id"] for item in page["items"]]
            return events, result

    events, result = asyncio.run(run())
    assert events[-1].is_terminal and result["status"] == "succeeded"
    assert len(result["utterances"]) == clips.spoken_srt.count("-->")


def test_async_upload_from_file_object(clients, clips):
    _, keyed = clients
    api_key = keyed._http.headers["X-API-Key"]

    async def run() -> dict:
        async with AsyncMoodreel(keyed.base_url, api_key=api_key) as client:
            with Path(clips.paths["short.mp4"]).open("rb") as handle:
                analysis = await client.analyses.create(file=handle)
            return await client.analyses.wait(analysis["id"], timeout=60)

    result = asyncio.run(run())
    assert result["status"] == "succeeded" and result["duration_seconds"] == pytest.approx(3.0, abs=0.2)


# --- the retry policy, against a loopback server that answers what each test needs -------------
class Flaky:
    """Answers each request with the next (status, headers, body) of ``script``, then 200."""

    def __init__(self, server: RecordingServer, script: list[tuple[int, dict[str, str], dict]]):
        self.script, self.lock, self.count = list(script), threading.Lock(), 0
        server.routes["/v1/usage"] = self

    def __call__(self, handler) -> None:
        with self.lock:
            self.count += 1
            status, headers, body = self.script.pop(0) if self.script else (200, {}, {"plan": "free"})
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header(
            "content-type", "application/problem+json" if status >= 400 else "application/json"
        )
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def problem(status: int, code: str) -> dict:
    return {"type": f"/problems/{code}", "title": code, "status": status, "code": code}


@pytest.fixture
def flaky_server():
    with RecordingServer() as server:
        yield server


def test_retries_503_and_429_honouring_retry_after(flaky_server):
    flaky = Flaky(
        flaky_server,
        [
            (503, {}, problem(503, "queue_unavailable")),
            (429, {"Retry-After": "1"}, problem(429, "rate_limited")),
        ],
    )
    with Moodreel(flaky_server.url(""), api_key="mr_live_x", retry=RetryPolicy(backoff=0.01)) as client:
        started = time.monotonic()
        assert client.usage.get()["plan"] == "free"
        assert time.monotonic() - started >= 1.0  # waited the Retry-After second
    assert flaky.count == 3


def test_gives_up_after_max_retries_and_on_quota(flaky_server):
    Flaky(flaky_server, [(502, {}, problem(502, "bad_gateway"))] * 5)
    with (
        Moodreel(
            flaky_server.url(""), api_key="mr_live_x", retry=RetryPolicy(max_retries=2, backoff=0.01)
        ) as client,
        pytest.raises(moodreel.ServerError) as caught,
    ):
        client.usage.get()
    assert caught.value.status == 502 and caught.value.code == "bad_gateway"
    assert len(flaky_server.requests) == 3

    quota = Flaky(
        flaky_server,
        [(429, {"Retry-After": "2"}, problem(429, "quota_exceeded") | {"limit": 100, "used": 100})],
    )
    with (
        Moodreel(flaky_server.url(""), api_key="mr_live_x") as client,
        pytest.raises(moodreel.RateLimitError) as c,
    ):
        client.usage.get()
    assert quota.count == 1 and c.value.fields == {"limit": 100, "used": 100} and c.value.retry_after == 2

    long_wait = Flaky(flaky_server, [(429, {"Retry-After": "3600"}, problem(429, "rate_limited"))])
    with (
        Moodreel(flaky_server.url(""), api_key="mr_live_x") as client,
        pytest.raises(moodreel.RateLimitError),
    ):
        client.usage.get()
    assert long_wait.count == 1


def test_webhook_verification_rejects_stale_and_unsigned():
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"type":"analysis.succeeded","data":{"id":"x"}}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"}
    headers["webhook-signature"] = "v1,bogus " + webhooks.sign(secret, "msg_1", 1700000000, body)
    assert webhooks.verify(secret, headers, body, now=1700000100)["data"]["id"] == "x"
    with pytest.raises(moodreel.WebhookVerificationError, match="tolerance"):
        webhooks.verify(secret, headers, body, now=1700000000 + 301)
    with pytest.raises(moodreel.WebhookVerificationError, match="missing"):
        webhooks.verify(secret, {"webhook-id": "msg_1"}, body)
