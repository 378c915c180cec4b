"""The analyses API: submission (queued in the real arq queue), SSRF and transcript checks,
idempotency, quota, pagination, results, export, cancel/delete."""

from __future__ import annotations

import csv
import io
import json
import pickle
import uuid

import pytest
from sqlalchemy import func, select, update

from services.platform.analyses.events import publish_event, stream_key
from shared.contract.labels import EMOTIONS, SENTIMENTS
from shared.db.models import Analysis, UsagePeriod, UtteranceResult
from shared.db.session import make_session_factory, session_scope
from shared.db.types import utcnow
from tests.fixtures.db import engine_for
from tests.gateway.conftest import new_api_key, sign_up
from tests.platform.auth.test_auth import assert_problem

PUBLIC_URL = "https://93.184.215.14/clip.mp4"
SRT = "1\n00:00:00,000 --> 00:00:02,000\nHello there.\n\n2\n00:00:02,500 --> 00:00:04,000\nGeneral Kenobi!\n"


def submit(client, key, body=None, **headers):
    return client.post(
        "/v1/analyses",
        json=body if body is not None else {"video_url": PUBLIC_URL},
        headers={"X-API-Key": key, **headers},
    )


def queued_job(redis_client, settings, analysis_id: str) -> dict | None:
    if redis_client.zscore(settings.queue_name, analysis_id) is None:
        return None
    raw = redis_client.get(f"arq:job:{analysis_id}")
    return pickle.loads(raw) if raw else None


def test_submit_is_accepted_and_queued_after_commit(client, api_key, settings, redis_client, database_url):
    response = submit(
        client, api_key, {"video_url": PUBLIC_URL, "transcript": SRT, "options": {"window_seconds": 3}}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"/v1/analyses/{body['id']}"
    assert body["status"] == "queued" and body["source"]["video_url"] == PUBLIC_URL
    assert body["options"] == {"segmentation": "windows", "window_seconds": 3.0}
    job = queued_job(redis_client, settings, body["id"])
    assert job is not None and job["f"] == "analyse_video" and job["a"] == (body["id"],)
    with engine_for(database_url).connect() as connection:
        row = connection.execute(select(Analysis.transcript_format, Analysis.status)).one()
        assert tuple(row) == ("srt", "queued")
        assert connection.execute(select(UsagePeriod.analyses_used)).scalar_one() == 1
    fetched = client.get(body["links"]["self"], headers={"X-API-Key": api_key}).json()
    assert fetched["id"] == body["id"] and fetched["utterances"] == []


def test_json_segment_transcript_accepted(client, api_key):
    segments = [
        {"start": 0, "end": 1.5, "text": "Hi", "speaker": "A"},
        {"start": 1.5, "end": 3, "text": "Yo"},
    ]
    response = submit(client, api_key, {"video_url": PUBLIC_URL, "transcript": segments})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/video.mp4",
        "http://localhost/video.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/v.mp4",
        "http://0x7f.1/v.mp4",
        "http://127.1/v.mp4",
        "http://[::ffff:127.0.0.1]/v.mp4",
        "http://10.0.0.8/v.mp4",
        "file:///etc/passwd",
        "http://user:pw@93.184.215.14/v.mp4",
    ],
)
def test_ssrf_urls_rejected_and_nothing_queued(client, api_key, settings, redis_client, url):
    body = assert_problem(submit(client, api_key, {"video_url": url}), 400, "url_not_allowed")
    assert body["field"] == "video_url"
    assert redis_client.zcard(settings.queue_name) == 0
    callback = submit(client, api_key, {"video_url": PUBLIC_URL, "callback_url": url})
    assert_problem(callback, 400, "url_not_allowed")


def test_invalid_transcript_is_422_with_line(client, api_key):
    broken = "1\n00:00:05,000 --> 00:00:01,000\nBackwards\n"
    body = assert_problem(
        submit(client, api_key, {"video_url": PUBLIC_URL, "transcript": broken}), 422, "transcript_invalid"
    )
    assert body["line"] == 2


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"video_url": PUBLIC_URL, "upload_id": str(uuid.uuid4())},
        {"video_url": PUBLIC_URL, "options": {"window_seconds": 0.01}},
        {"video_url": PUBLIC_URL, "unexpected": 1},
        # dialogue context follows the model's FeatureSpec; a per-request switch would be ignored
        {"video_url": PUBLIC_URL, "options": {"context": False}},
        {"video_url": PUBLIC_URL, "options": {"segmentation": "sentences"}},
        {"video_url": PUBLIC_URL, "options": {"speakers": 0}},
        {"video_url": PUBLIC_URL, "options": {"speakers": 11}},
        {"video_url": PUBLIC_URL, "options": {"speakers": "two"}},
    ],
)
def test_payload_validation(client, api_key, payload):
    assert_problem(submit(client, api_key, payload), 422, "validation_error")


def test_idempotent_replay_and_conflict(client, api_key, settings, redis_client, database_url):
    first = submit(client, api_key, {"video_url": PUBLIC_URL}, **{"Idempotency-Key": "order-42"})
    replay = submit(client, api_key, {"video_url": PUBLIC_URL}, **{"Idempotency-Key": "order-42"})
    assert first.status_code == replay.status_code == 202
    assert replay.json() == first.json() and replay.headers["location"] == first.headers["location"]
    assert replay.headers["idempotent-replayed"] == "true"
    conflict = submit(client, api_key, {"video_url": PUBLIC_URL + "?v=2"}, **{"Idempotency-Key": "order-42"})
    assert_problem(conflict, 409, "idempotency_key_reused")
    with engine_for(database_url).connect() as connection:
        assert connection.execute(select(func.count()).select_from(Analysis)).scalar_one() == 1
        assert connection.execute(select(UsagePeriod.analyses_used)).scalar_one() == 1
    assert redis_client.zcard(settings.queue_name) == 1
    other = submit(client, api_key, {"video_url": PUBLIC_URL}, **{"Idempotency-Key": "order-43"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_idempotency_keys_are_per_user(client, api_key):
    other_key = new_api_key(client, sign_up(client))["key"]
    a = submit(client, api_key, None, **{"Idempotency-Key": "same"})
    b = submit(client, other_key, None, **{"Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_quota_exhausted_is_429_with_retry_after_and_refund_frees_it(client, api_key, settings):
    ids = [submit(client, api_key).json()["id"] for _ in range(5)]  # the test plan allows 5
    response = submit(client, api_key)
    body = assert_problem(response, 429, "quota_exceeded")
    assert int(response.headers["retry-after"]) > 0 and body["limit"] == 5 and body["quota"] == "analysis"
    usage_response = client.get("/v1/usage", headers={"X-API-Key": api_key})
    assert usage_response.json()["analyses"] == {"used": 5, "limit": 5, "remaining": 0}
    assert '"analyses";r=0;t=' in usage_response.headers["ratelimit"]
    # Cancelling a queued analysis gives its unit back.
    assert client.delete(f"/v1/analyses/{ids[0]}", headers={"X-API-Key": api_key}).status_code == 204
    assert submit(client, api_key).status_code == 202


def test_other_users_cannot_see_analyses(client, api_key):
    analysis_id = submit(client, api_key).json()["id"]
    other_key = new_api_key(client, sign_up(client))["key"]
    for path in ("", "/events", "/export"):
        response = client.get(f"/v1/analyses/{analysis_id}{path}", headers={"X-API-Key": other_key})
        assert_problem(response, 404, "analysis_not_found")
    assert_problem(
        client.delete(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": other_key}),
        404,
        "analysis_not_found",
    )
    assert client.get("/v1/analyses", headers={"X-API-Key": other_key}).json()["items"] == []


def test_pagination_and_status_filter(client, api_key, database_url):
    ids = [submit(client, api_key).json()["id"] for _ in range(5)]
    with engine_for(database_url).begin() as connection:
        connection.execute(
            update(Analysis).where(Analysis.id.in_([uuid.UUID(i) for i in ids[:2]])).values(status="failed")
        )
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/analyses", params=params, headers={"X-API-Key": api_key}).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once
    failed = client.get("/v1/analyses", params={"status": "failed"}, headers={"X-API-Key": api_key}).json()
    assert sorted(item["id"] for item in failed["items"]) == sorted(ids[:2])
    bad = client.get("/v1/analyses", params={"cursor": "!!notacursor"}, headers={"X-API-Key": api_key})
    assert_problem(bad, 400, "invalid_cursor")
    assert_problem(
        client.get("/v1/analyses", params={"status": "bogus"}, headers={"X-API-Key": api_key}),
        422,
        "validation_error",
    )


# Two sampled frames: two faces in the first (the second one tracked), none tracked in the second.
FACES = [
    {
        "time": 4.375,
        "boxes": [
            {"x": 0.1, "y": 0.2, "width": 0.3, "height": 0.4, "score": 0.9},
            {"x": 0.6, "y": 0.25, "width": 0.2, "height": 0.3, "score": 0.8},
        ],
        "used": 1,
    },
    {"time": 5.125, "boxes": [], "used": None},
]


def store_results(database_url: str, analysis_id: str, count: int = 3) -> None:
    """What the worker writes when it finishes (shared/db models)."""
    factory = make_session_factory(engine_for(database_url))
    with session_scope(factory) as session:
        for index in range(count):
            emotion = {label: 0.01 for label in EMOTIONS} | {"joy": 0.94}
            sentiment = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
            session.add(
                UtteranceResult(
                    analysis_id=uuid.UUID(analysis_id),
                    index=index,
                    start=index * 2.0,
                    end=index * 2.0 + 1.5,
                    text=["Hello, there.", "=cmd()", "Bye"][index % 3],
                    speaker="A" if index % 2 == 0 else None,
                    emotion="joy",
                    emotion_scores=emotion,
                    sentiment="positive",
                    sentiment_scores=sentiment,
                    modalities=["text", "audio"] if index != 1 else ["text"],
                    modalities_masked={} if index != 1 else {"audio": "no_speech"},
                    faces=FACES if index == 2 else [],
                )
            )
        analysis = session.get(Analysis, uuid.UUID(analysis_id))
        analysis.status, analysis.utterance_count, analysis.duration_seconds = "succeeded", count, 6.0
        analysis.summary = {"dominant_emotion": "joy", "dominant_sentiment": "positive"}
        analysis.finished_at = utcnow()


def test_segmentation_and_speaker_options_are_kept_and_the_transcript_kind_is_told(client, api_key):
    options = {"segmentation": "windows", "speakers": 2, "window_seconds": 2}
    without = submit(client, api_key, {"video_url": PUBLIC_URL, "options": options})
    assert without.status_code == 202, without.text
    assert without.json()["options"] == {"segmentation": "windows", "speakers": 2, "window_seconds": 2.0}
    assert without.json()["transcript"] == "none"
    with_srt = submit(client, api_key, {"video_url": PUBLIC_URL, "transcript": SRT}).json()
    assert with_srt["transcript"] == "srt"
    segments = [{"start": 0, "end": 1, "text": "hi"}]
    assert (
        submit(client, api_key, {"video_url": PUBLIC_URL, "transcript": segments}).json()["transcript"]
        == "json"
    )
    listed = client.get("/v1/analyses", headers={"X-API-Key": api_key}).json()["items"]
    assert sorted(item["transcript"] for item in listed) == ["json", "none", "srt"]


def test_a_window_length_without_a_segmentation_asks_for_fixed_windows(client, api_key):
    windowed = submit(client, api_key, {"video_url": PUBLIC_URL, "options": {"window_seconds": 1}})
    assert windowed.status_code == 202, windowed.text
    assert windowed.json()["options"] == {"segmentation": "windows", "window_seconds": 1.0}
    spoken = {"segmentation": "speech", "window_seconds": 3}
    kept = submit(client, api_key, {"video_url": PUBLIC_URL, "options": spoken}).json()["options"]
    assert kept == {"segmentation": "speech", "window_seconds": 3.0}


def test_utterances_without_a_transcript_say_so(client, api_key, database_url):
    analysis_id = submit(client, api_key).json()["id"]
    store_results(database_url, analysis_id)
    detail = client.get(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).json()
    assert detail["transcript"] == "none"
    assert {u["transcript"] for u in detail["utterances"]} == {"none"}
    exported = client.get(f"/v1/analyses/{analysis_id}/export?format=json", headers={"X-API-Key": api_key})
    assert [u["speaker"] for u in json.loads(exported.text)["utterances"]] == [
        u["speaker"] for u in detail["utterances"]
    ]


def test_results_and_exports(client, api_key, database_url):
    analysis_id = submit(client, api_key).json()["id"]
    assert_problem(
        client.get(f"/v1/analyses/{analysis_id}/export", headers={"X-API-Key": api_key}),
        409,
        "analysis_not_finished",
    )
    store_results(database_url, analysis_id)
    detail = client.get(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).json()
    assert detail["status"] == "succeeded" and detail["summary"]["dominant_emotion"] == "joy"
    first = detail["utterances"][0]
    assert first["emotion"]["label"] == "joy" and first["emotion"]["confidence"] == pytest.approx(0.94)
    assert set(first["emotion"]["scores"]) == set(EMOTIONS) and set(first["sentiment"]["scores"]) == set(
        SENTIMENTS
    )
    assert first["modalities_used"] == ["text", "audio"] and first["modalities_masked"] == {}
    masked = detail["utterances"][1]
    assert (masked["modalities_used"], masked["modalities_masked"]) == (["text"], {"audio": "no_speech"})
    assert first["faces"] == [] and detail["utterances"][2]["faces"] == FACES

    exported = client.get(f"/v1/analyses/{analysis_id}/export?format=json", headers={"X-API-Key": api_key})
    assert exported.headers["content-type"].startswith("application/json")
    assert json.loads(exported.text)["utterances"] == detail["utterances"]

    as_csv = client.get(f"/v1/analyses/{analysis_id}/export?format=csv", headers={"X-API-Key": api_key})
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in as_csv.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == 3 and rows[0]["emotion"] == "joy" and rows[0]["emotion_joy"] == "0.9400"
    assert rows[1]["text"] == "'=cmd()"  # formula neutralised
    assert (rows[0]["face_frames"], rows[0]["face_box"]) == ("", "")
    # the tracked face in the frame nearest the middle of the sampled frames' times
    assert (rows[2]["face_frames"], rows[2]["face_box"]) == ("1/2", "0.6000 0.2500 0.2000 0.3000")

    srt = client.get(f"/v1/analyses/{analysis_id}/export?format=srt", headers={"X-API-Key": api_key}).text
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\n[joy 94% · positive]\nA: Hello, there.\n")
    assert "3\n00:00:04,000 --> 00:00:05,500\n" in srt
    assert_problem(
        client.get(f"/v1/analyses/{analysis_id}/export?format=xml", headers={"X-API-Key": api_key}),
        422,
        "validation_error",
    )


HOSTILE_SPEAKER = "=cmd|' /C calc'!A0"
HOSTILE_TEXT = "fine\n\n99\n00:00:00,000 --> 00:09:00,000\n<font color=red>INJECTED</font>\r\n\r\nend"


def test_exports_escape_every_field(client, api_key, database_url):
    """Speaker and text are user-supplied: no formula survives in any CSV cell and no SRT cue can be
    forged by line breaks, timing arrows or tags."""
    analysis_id = submit(client, api_key).json()["id"]
    store_results(database_url, analysis_id, count=2)
    factory = make_session_factory(engine_for(database_url))
    with session_scope(factory) as session:
        session.execute(
            update(UtteranceResult)
            .where(UtteranceResult.analysis_id == uuid.UUID(analysis_id))
            .values(speaker=HOSTILE_SPEAKER, text=HOSTILE_TEXT)
        )
        session.execute(
            update(UtteranceResult)
            .where(UtteranceResult.analysis_id == uuid.UUID(analysis_id), UtteranceResult.index == 1)
            .values(speaker=" @SUM(A1)", text="\uff1d1+1")
        )
    headers = {"X-API-Key": api_key}
    as_csv = client.get(f"/v1/analyses/{analysis_id}/export?format=csv", headers=headers).text
    rows = list(csv.reader(io.StringIO(as_csv)))
    assert len(rows) == 3
    for row in rows:
        for cell in row:
            assert cell.lstrip(' "')[:1] not in ("=", "+", "@", "\t", "\r", "|", "\uff1d"), cell
    assert rows[1][3] == "'" + HOSTILE_SPEAKER and rows[2][3] == "' @SUM(A1)" and rows[2][4] == "'\uff1d1+1"

    srt = client.get(f"/v1/analyses/{analysis_id}/export?format=srt", headers=headers).text
    cues = srt.strip("\n").split("\n\n")
    assert len(cues) == 2  # no injected cue
    for number, cue in enumerate(cues, start=1):
        lines = cue.split("\n")
        assert lines[0] == str(number) and "-->" in lines[1] and len(lines) == 4
        assert "-->" not in "\n".join(lines[2:]) and "<" not in cue and ">" not in "\n".join(lines[2:])
    assert cues[0].split("\n")[3].startswith("=cmd|' /C calc'!A0: fine 99 00:00:00,000 --\u203a")


def test_delete_finished_removes_everything(client, api_key, database_url, redis_client, settings):
    analysis_id = submit(client, api_key).json()["id"]
    store_results(database_url, analysis_id)
    # The event stream holds the scored utterances too: it goes with the analysis.
    publish_event(redis_client, analysis_id, "utterance", {"index": 0, "emotion": "joy"}, settings)
    assert redis_client.exists(stream_key(analysis_id, settings))
    assert client.delete(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).status_code == 204
    assert_problem(
        client.get(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}), 404, "analysis_not_found"
    )
    with engine_for(database_url).connect() as connection:
        assert connection.execute(select(func.count()).select_from(UtteranceResult)).scalar_one() == 0
    assert not redis_client.exists(stream_key(analysis_id, settings))


def test_delete_running_cancels(client, api_key, database_url, redis_client, settings):
    analysis_id = submit(client, api_key).json()["id"]
    with engine_for(database_url).begin() as connection:
        connection.execute(update(Analysis).values(status="processing"))
    store_results_partial = 2
    factory = make_session_factory(engine_for(database_url))
    with session_scope(factory) as session:
        for index in range(store_results_partial):
            session.add(
                UtteranceResult(
                    analysis_id=uuid.UUID(analysis_id),
                    index=index,
                    start=0,
                    end=1,
                    emotion="joy",
                    emotion_scores={},
                    sentiment="neutral",
                    sentiment_scores={},
                )
            )
    publish_event(redis_client, analysis_id, "utterance", {"index": 0, "emotion": "joy"}, settings)
    assert client.delete(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).status_code == 204
    detail = client.get(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).json()
    assert detail["status"] == "canceled" and detail["utterances"] == []
    events = redis_client.xrange(f"{settings.redis_key_prefix}analysis:{analysis_id}:events")
    assert json.loads(events[-1][1][b"data"]) == {"status": "canceled"}
    assert len(events) == 1  # the scored utterance went with the results
    assert client.get("/v1/usage", headers={"X-API-Key": api_key}).json()["analyses"]["used"] == 0


def test_enqueue_failure_fails_the_analysis_and_refunds(database_url, tmp_path, redis_client):
    from fastapi.testclient import TestClient

    from services.gateway.main import create_app
    from tests.gateway.conftest import make_settings

    settings = make_settings(database_url, tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = new_api_key(client, sign_up(client))["key"]

        async def refuse(*args, **kwargs):
            raise ConnectionError("queue down")

        client.app.state.arq.enqueue_job = refuse
        response = submit(client, key)
        assert_problem(response, 503, "service_unavailable")
        listed = client.get("/v1/analyses", headers={"X-API-Key": key}).json()["items"]
        assert [(a["status"], a["error"]["code"]) for a in listed] == [("failed", "queue_unavailable")]
        assert client.get("/v1/usage", headers={"X-API-Key": key}).json()["analyses"]["used"] == 0


def test_oversized_bodies_refused(database_url, tmp_path, redis_client):
    from fastapi.testclient import TestClient

    from services.gateway.main import create_app
    from tests.gateway.conftest import delete_prefixed_keys, make_settings

    settings = make_settings(database_url, tmp_path, max_request_body_bytes=4096)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            key = new_api_key(client, sign_up(client))["key"]
            big = {"video_url": PUBLIC_URL, "transcript": SRT + "x" * 5000}
            assert_problem(submit(client, key, big), 413, "payload_too_large")

            def chunks():
                yield json.dumps(big).encode()

            chunked = client.post(
                "/v1/analyses",
                content=chunks(),
                headers={"X-API-Key": key, "Content-Type": "application/json"},
            )
            assert_problem(chunked, 413, "payload_too_large")
            assert submit(client, key).status_code == 202
    finally:
        delete_prefixed_keys(redis_client, settings.redis_key_prefix)
