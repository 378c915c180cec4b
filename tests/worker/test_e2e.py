"""End to end: real gateway, arq worker, model server (tiny checkpoint), PostgreSQL and Redis.

Every analysis is submitted through the public API with an API key, and observed through the
API (status, results, SSE, delivery log), the database (ledger, rows) and loopback receivers.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time

import pytest
from sqlalchemy import update

from services.platform.webhooks.delivery import verify
from shared.contract.features.transcripts import window_utterances
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.db.models import User
from tests.worker import api
from tests.worker.helpers import events, ledger, utterance_rows
from tests.worker.loopback import RecordingServer, redirect_to, send_bytes, serve_file, status
from tests.worker.stack import wait_until

pytestmark = pytest.mark.slow


def webhook_route(receiver: RecordingServer, path: str, *, fail_first: int = 0):
    """A receiver route answering 500 ``fail_first`` times, then 200; returns the hits list."""
    hits: list[tuple[dict[str, str], bytes]] = []
    lock = threading.Lock()

    def route(handler) -> None:
        _, _, headers, body = receiver.requests[-1]
        with lock:
            hits.append((headers, body))
            failing = len(hits) <= fail_first
        send_bytes(handler, b"nope" if failing else b"ok", status=500 if failing else 200)

    receiver.routes[path] = route
    return hits


def register_endpoint(user: api.ApiUser, url: str, **extra) -> dict:
    response = user.http.post("/v1/webhooks/endpoints", json={"url": url, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def test_happy_path_post_sse_results_and_webhooks(api_url, clips, receiver, sessions, e2e_dir):
    user = api.new_user(api_url)
    endpoint = register_endpoint(user, receiver.url("/hooks/happy"), description="e2e")
    assert endpoint["secret"].startswith("whsec_")
    listed = user.http.get("/v1/webhooks/endpoints").json()["items"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    endpoint_hits = webhook_route(receiver, "/hooks/happy")
    callback_hits = webhook_route(receiver, "/hooks/happy-callback")

    created = user.submit(
        video_url=clips.url("spoken.mp4"),
        transcript=clips.spoken_srt,
        callback_url=receiver.url("/hooks/happy-callback"),
    )
    assert created["status"] == "queued"
    stream = user.events(created["id"])

    types = [e.type for e in stream]
    assert types[0] == "status" and stream[0].data["status"] in ("queued", "processing")
    assert types[-2:] == ["summary", "status"] and stream[-1].data["status"] == "succeeded"
    utterance_events = [e.data for e in stream if e.type == "utterance"]
    assert [u["index"] for u in utterance_events] == [0, 1, 2, 3]
    assert all(e.id for e in stream)

    analysis = user.get(created["id"])
    assert analysis["status"] == "succeeded" and analysis["error"] is None
    assert analysis["duration_seconds"] == pytest.approx(clips.spoken_duration, abs=0.1)
    utterances = analysis["utterances"]
    assert [u["text"] for u in utterances] == [u["text"] for u in utterance_events]
    assert utterances[0]["text"].startswith("I can't believe")
    for u in utterances:
        assert u["emotion"]["label"] in EMOTIONS and u["sentiment"]["label"] in SENTIMENTS
        assert sum(u["emotion"]["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert u["emotion"]["confidence"] == pytest.approx(u["emotion"]["scores"][u["emotion"]["label"]])
        assert set(u["modalities_used"]) <= set(MODALITIES) and "text" in u["modalities_used"]
        # each used modality's own head, and only those: what drove the fused result
        assert list(u["modality_scores"]) == u["modalities_used"]
        for own in u["modality_scores"].values():
            assert own["emotion"]["label"] in EMOTIONS and own["sentiment"]["label"] in SENTIMENTS
            assert sum(own["emotion"]["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    assert [u["modality_scores"] for u in utterances] == [u["modality_scores"] for u in utterance_events]
    summary = analysis["summary"]
    assert summary["dominant_emotion"] in EMOTIONS and summary["dominant_sentiment"] in SENTIMENTS
    assert sum(summary["emotion_share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["timeline"][0]["start"] == 0.0

    # Charged once, for the probed duration in whole seconds.
    entries = ledger(sessions, created["id"])
    assert entries["seconds"].amount == math.ceil(analysis["duration_seconds"])
    assert entries["seconds"].refunded_at is None
    assert user.usage()["video_seconds"]["used"] == math.ceil(analysis["duration_seconds"])

    # Both receivers get one signed analysis.succeeded; each verifies with its own secret.
    wait_until(lambda: endpoint_hits and callback_hits, 30, "webhook deliveries")
    callback_secret = user.http.get("/v1/webhooks/callback-secret").json()["secret"]
    for hits, secret in ((endpoint_hits, endpoint["secret"]), (callback_hits, callback_secret)):
        headers, body = hits[0]
        verify(secret, headers, body)
        payload = json.loads(body)
        assert payload["type"] == "analysis.succeeded"
        assert payload["data"]["id"] == created["id"] and payload["data"]["summary"] == summary
    log = user.http.get("/v1/webhooks/deliveries", params={"analysis_id": created["id"]}).json()["items"]
    wait_until(
        lambda: all(
            d["status"] == "succeeded"
            for d in user.http.get("/v1/webhooks/deliveries", params={"analysis_id": created["id"]}).json()[
                "items"
            ]
        ),
        10,
        "delivery log",
    )
    assert sorted(d["endpoint_id"] is None for d in log) == [False, True]

    # The job's temporary directory is gone.
    assert list((e2e_dir / "worker-tmp").iterdir()) == []


def test_without_a_transcript_utterances_come_from_speech_and_say_so(api_url, clips):
    user = api.new_user(api_url)
    created = user.submit(video_url=clips.url("spoken.mp4"))
    assert created["transcript"] == "none"
    stream = user.events(created["id"])
    analysis = user.get(created["id"])
    assert analysis["status"] == "succeeded" and analysis["transcript"] == "none"
    summary = analysis["summary"]
    assert (summary["transcript"], summary["segmentation"]) == ("none", "speech")
    utterances = analysis["utterances"]
    assert utterances and all(u["transcript"] == "none" and u["text"] == "" for u in utterances)
    assert all(u["speaker"] and u["speaker"].startswith("S") for u in utterances)
    assert "text" not in {m for u in utterances for m in u["modalities_used"]}
    # the speech spans the clip's lines, not its silent lead-in
    assert utterances[0]["start"] >= 0.2 and utterances[-1]["end"] <= clips.spoken_duration
    assert [s["speaker"] for s in summary["speakers"]] == sorted({u["speaker"] for u in utterances})
    assert [e.data["transcript"] for e in stream if e.type == "utterance"] == ["none"] * len(utterances)


def test_webhook_receiver_sees_retries_after_a_500(api_url, clips, receiver):
    user = api.new_user(api_url)
    endpoint = register_endpoint(user, receiver.url("/hooks/flaky"), event_types=["analysis.succeeded"])
    hits = webhook_route(receiver, "/hooks/flaky", fail_first=1)
    created = user.submit(video_url=clips.url("short.mp4"))
    assert user.wait(created["id"])["status"] == "succeeded"

    wait_until(lambda: len(hits) >= 2, 30, "the retried delivery")
    first, second = hits[0][0], hits[1][0]
    assert first["webhook-id"] == second["webhook-id"]  # receivers deduplicate on it
    for headers, body in hits:
        verify(endpoint["secret"], headers, body)

    def delivered() -> dict | None:
        items = user.http.get("/v1/webhooks/deliveries", params={"endpoint_id": endpoint["id"]}).json()[
            "items"
        ]
        return items[0] if items and items[0]["status"] == "succeeded" else None

    wait_until(lambda: delivered() is not None, 10, "the delivery log")
    delivery = delivered()
    assert delivery["attempts"] == 2 and delivery["last_status_code"] == 200
    detail = user.http.get(f"/v1/webhooks/deliveries/{delivery['id']}").json()
    assert detail["payload"]["type"] == "analysis.succeeded"
    time.sleep(1.5)
    assert len(hits) == 2  # no delivery after the success

    # A resend from the delivery log: one more attempt, same webhook-id, through the worker.
    resent = user.http.post(f"/v1/webhooks/deliveries/{delivery['id']}/resend")
    assert resent.status_code == 202, resent.text
    wait_until(lambda: len(hits) == 3, 30, "the resent delivery")
    assert hits[2][0]["webhook-id"] == first["webhook-id"]
    verify(endpoint["secret"], *hits[2])


MEDIA_ERRORS = [
    ("noise.mp4", "not_media"),
    ("empty.mp4", "not_media"),
    ("cut-index.mp4", "corrupt"),
    ("subtitles.mkv", "no_streams"),
    ("long.mp4", "too_long"),
    ("wide.mp4", "too_large_resolution"),
    ("huge.mp4", "too_large"),
    ("missing.mp4", "download_failed"),
]


@pytest.mark.parametrize(("clip", "code"), MEDIA_ERRORS)
def test_media_errors_fail_with_their_code_and_refund(api_url, clips, sessions, clip, code):
    user = api.new_user(api_url)
    created = user.submit(video_url=clips.url(clip))
    analysis = user.wait(created["id"])
    assert analysis["status"] == "failed"
    assert analysis["error"]["code"] == code and analysis["error"]["message"]
    assert all(entry.refunded_at is not None for entry in ledger(sessions, created["id"]).values())
    usage = user.usage()
    assert usage["analyses"]["used"] == 0 and usage["video_seconds"]["used"] == 0


def test_transcript_outside_the_media_is_transcript_invalid(api_url, clips, sessions):
    user = api.new_user(api_url)
    late = "1\n00:01:00,000 --> 00:01:02,000\nThis line is after the end of the clip.\n"
    created = user.submit(video_url=clips.url("short.mp4"), transcript=late)
    analysis = user.wait(created["id"])
    assert analysis["error"]["code"] == "transcript_invalid"
    assert all(entry.refunded_at is not None for entry in ledger(sessions, created["id"]).values())


def test_quota_exceeded_charges_nothing(api_url, clips, sessions):
    user = api.new_user(api_url)
    with sessions() as session:
        session.execute(update(User).where(User.id == user.user_id).values(plan="tiny"))
        session.commit()
    created = user.submit(video_url=clips.url("short.mp4"))
    analysis = user.wait(created["id"])
    assert analysis["error"]["code"] == "quota_exceeded"
    entries = ledger(sessions, created["id"])
    assert "seconds" not in entries and entries["analysis"].refunded_at is not None
    assert user.usage()["video_seconds"]["used"] == 0


def test_ssrf_urls_are_refused_and_reach_nothing(api_url, media_server, receiver):
    user = api.new_user(api_url)
    with RecordingServer({"/": status(200, b"internal")}) as internal:
        media_server.routes["/media/to-internal"] = redirect_to(internal.url("/"))
        direct = user.submit(video_url=internal.url("/video.mp4"), callback_url=internal.url("/hook"))
        redirected = user.submit(video_url=media_server.url("/media/to-internal"))
        for created in (direct, redirected):
            analysis = user.wait(created["id"])
            assert analysis["error"]["code"] == "url_not_allowed"
        # The failure webhook to the internal callback is refused at send time too.
        wait_until(
            lambda: any(
                d["attempts"] >= 1
                for d in user.http.get(
                    "/v1/webhooks/deliveries", params={"analysis_id": direct["id"]}
                ).json()["items"]
            ),
            20,
            "the callback attempt",
        )
        item = user.http.get("/v1/webhooks/deliveries", params={"analysis_id": direct["id"]}).json()["items"][
            0
        ]
        assert item["last_status_code"] is None and item["last_error"].startswith("url_not_allowed")
        assert internal.connections == 0
    # Cloud metadata is refused at submission, before any job exists.
    response = user.http.post("/v1/analyses", json={"video_url": "http://169.254.169.254/latest/meta-data"})
    assert response.status_code in (400, 422)
    assert response.headers["content-type"].startswith("application/problem+json")


def test_worker_killed_mid_job_completes_exactly_once(
    api_url, clips, worker, model_server, receiver, sessions, redis_client, namespace
):
    user = api.new_user(api_url)
    hits = webhook_route(receiver, "/hooks/killed")
    # One-second windows (17 for the 16 s clip), scored two per request, stored as they arrive.
    expected = len(window_utterances(clips.spoken_duration, 1.0))
    created = user.submit(
        video_url=clips.url("spoken.mp4"),
        options={"window_seconds": 1.0},
        callback_url=receiver.url("/hooks/killed"),
    )
    analysis_id = created["id"]

    def scored() -> int:
        return sum(e.type == "utterance" for e in events(redis_client, analysis_id, namespace))

    wait_until(lambda: scored() >= 1, 90, "the first scored utterances", interval=0.02)
    model_server.signal(signal.SIGSTOP)  # hold the job mid-way inside a model request
    try:
        partial = scored()
        assert 1 <= partial < expected
        worker.kill()
    finally:
        model_server.signal(signal.SIGCONT)
    assert user.get(analysis_id)["status"] == "processing"
    # arq hands a job whose worker died to another one when its in-progress lock expires
    # (the job timeout); expire it now instead of waiting.
    redis_client.delete(f"arq:in-progress:{analysis_id}")
    worker.start()

    analysis = user.wait(analysis_id)
    assert analysis["status"] == "succeeded"
    rows = utterance_rows(sessions, analysis_id)
    assert [r.index for r in rows] == list(range(expected)) == [u["index"] for u in analysis["utterances"]]
    entries = ledger(sessions, analysis_id)
    assert (
        entries["seconds"].amount == math.ceil(clips.spoken_duration)
        and entries["seconds"].refunded_at is None
    )
    assert user.usage()["video_seconds"]["used"] == math.ceil(clips.spoken_duration)
    processing = [
        e
        for e in events(redis_client, analysis_id, namespace)
        if e.type == "status" and e.data["status"] == "processing"
    ]
    assert len(processing) == 2  # two runs, one result
    wait_until(lambda: hits, 30, "the webhook")
    time.sleep(1.0)
    assert len(hits) == 1


def test_model_server_down_then_back_is_retried_to_success(
    api_url, clips, model_server, redis_client, namespace
):
    user = api.new_user(api_url)
    model_server.stop()
    try:
        created = user.submit(video_url=clips.url("short.mp4"))
        # The job starts, cannot reach the model, and is re-queued with backoff.
        wait_until(
            lambda: (
                sum(
                    e.type == "status" and e.data["status"] == "processing"
                    for e in events(redis_client, created["id"], namespace)
                )
                >= 2
            ),
            30,
            "a retried try",
        )
        assert user.get(created["id"])["status"] == "processing"
    finally:
        model_server.start()
    analysis = user.wait(created["id"])
    assert analysis["status"] == "succeeded" and analysis["utterance_count"] >= 1


def test_arq_health_check_passes_while_the_worker_runs(worker, worker_env):
    import os
    import subprocess

    from tests.worker.stack import BIN, REPO_ROOT

    done = subprocess.run(
        [str(BIN / "arq"), "--check", "services.preprocess.worker.WorkerSettings"],
        cwd=REPO_ROOT,
        env={**os.environ, **worker_env},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_transient_source_errors_are_retried(api_url, clips, media_server):
    """A 503 from the video's server is worth another try; the retry succeeds."""
    user = api.new_user(api_url)
    good = serve_file(clips.paths["short.mp4"].read_bytes())
    calls: list[int] = []

    def flaky(handler) -> None:
        calls.append(1)
        if len(calls) == 1:
            send_bytes(handler, b"busy", status=503)
        else:
            good(handler)

    media_server.routes["/media/flaky.mp4"] = flaky
    created = user.submit(video_url=media_server.url("/media/flaky.mp4"))
    assert user.wait(created["id"])["status"] == "succeeded"
    assert len(calls) == 2


def test_canceled_analysis_stops_and_is_refunded(
    api_url, clips, model_server, sessions, redis_client, namespace
):
    user = api.new_user(api_url)
    created = user.submit(
        video_url=clips.url("spoken.mp4"), options={"segmentation": "windows", "window_seconds": 1.0}
    )
    analysis_id = created["id"]
    wait_until(
        lambda: any(e.type == "utterance" for e in events(redis_client, analysis_id, namespace)),
        90,
        "the first scored utterance",
        interval=0.02,
    )
    model_server.signal(signal.SIGSTOP)
    try:
        response = user.http.delete(f"/v1/analyses/{analysis_id}")
        assert response.status_code == 204, response.text
    finally:
        model_server.signal(signal.SIGCONT)
    # The worker notices before its next chunk and stops: the analysis stays canceled, refunded.
    time.sleep(3.0)
    analysis = user.get(analysis_id)
    assert analysis["status"] == "canceled"
    assert all(entry.refunded_at is not None for entry in ledger(sessions, analysis_id).values())
    assert user.usage()["video_seconds"]["used"] == 0


def test_sigterm_lets_the_running_job_finish(api_url, clips, worker, redis_client, namespace):
    user = api.new_user(api_url)
    created = user.submit(video_url=clips.url("short.mp4"))
    wait_until(
        lambda: any(
            e.type == "status" and e.data["status"] == "processing"
            for e in events(redis_client, created["id"], namespace)
        ),
        60,
        "the job to start",
        interval=0.02,
    )
    worker.signal(signal.SIGTERM)
    try:
        assert worker.proc.wait(timeout=60) == 0
        # It stopped taking jobs but finished this one before exiting.
        assert user.get(created["id"])["status"] == "succeeded"
    finally:
        worker.start()


def test_analysis_of_an_upload(api_url, clips):
    """Local upload storage: POST /v1/uploads, PUT the bytes to the gateway, analyse by upload_id."""
    user = api.new_user(api_url)
    data = clips.paths["short.mp4"].read_bytes()
    target = user.http.post(
        "/v1/uploads", json={"filename": "short.mp4", "content_type": "video/mp4", "size_bytes": len(data)}
    )
    assert target.status_code == 201, target.text
    upload = target.json()
    put = user.http.put(upload["url"], content=data, headers=upload["headers"])
    assert put.status_code == 200, put.text
    created = user.submit(upload_id=upload["upload_id"])
    analysis = user.wait(created["id"])
    assert analysis["status"] == "succeeded", analysis["error"]
    assert analysis["duration_seconds"] == pytest.approx(3.0, abs=0.1)
