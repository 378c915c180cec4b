"""Uploads: the local signed PUT (embedded default) and a presigned S3 PUT against moto's S3
server on loopback, each then submitted as an analysis."""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from services.gateway.main import create_app
from services.gateway.security import sign_upload
from services.platform.uploads.service import human_size
from shared.storage import LocalStorage
from tests.fixtures import s3 as moto_s3
from tests.gateway.conftest import make_settings, new_api_key, sign_up
from tests.platform.auth.test_auth import assert_problem

MEDIA = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40


def start_upload(client, key, **overrides):
    body = {"filename": "clip.mp4", "content_type": "video/mp4", "size_bytes": len(MEDIA)} | overrides
    return client.post("/v1/uploads", json=body, headers={"X-API-Key": key})


def test_local_upload_then_submit(client, api_key, settings):
    target = start_upload(client, api_key)
    assert target.status_code == 201, target.text
    target = target.json()
    assert target["backend"] == "local" and target["method"] == "PUT"
    assert target["headers"] == {"Content-Type": "video/mp4"}
    # Not yet uploaded: refused.
    early = client.post(
        "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": api_key}
    )
    assert_problem(early, 409, "upload_incomplete")
    put = client.put(target["url"], content=MEDIA, headers=target["headers"])
    assert put.status_code == 200, put.text
    assert put.json()["completed_at"] is not None
    stored = LocalStorage(settings.data_dir / "uploads")
    key = next((settings.data_dir / "uploads").rglob("*.mp4")).relative_to(settings.data_dir / "uploads")
    assert stored.size(str(key)) == len(MEDIA)
    again = client.put(target["url"], content=MEDIA, headers=target["headers"])
    assert_problem(again, 409, "upload_completed")
    submitted = client.post(
        "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": api_key}
    )
    assert submitted.status_code == 202 and submitted.json()["source"]["upload_id"] == target["upload_id"]
    # Deleting the analysis deletes the media.
    analysis_id = submitted.json()["id"]
    assert client.delete(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).status_code == 204
    assert stored.size(str(key)) is None


def test_local_put_is_bounded_and_signed(client, api_key):
    target = start_upload(client, api_key).json()
    assert_problem(
        client.put(target["url"], content=MEDIA + b"x", headers=target["headers"]), 413, "upload_too_large"
    )
    assert_problem(
        client.put(target["url"], content=MEDIA, headers={"Content-Type": "text/html"}),
        415,
        "unsupported_media_type",
    )
    forged = target["url"].replace("signature=", "signature=A")
    assert_problem(client.put(forged, content=MEDIA, headers=target["headers"]), 403, "upload_url_invalid")
    parts = urllib.parse.urlsplit(target["url"])
    query = dict(urllib.parse.parse_qsl(parts.query))
    other_id = str(uuid.uuid4())
    swapped = f"/v1/uploads/{other_id}/content?" + urllib.parse.urlencode(query)
    assert_problem(client.put(swapped, content=MEDIA, headers=target["headers"]), 403, "upload_url_invalid")


def test_other_users_cannot_submit_my_upload(client, api_key):
    target = start_upload(client, api_key).json()
    client.put(target["url"], content=MEDIA, headers=target["headers"])
    other = new_api_key(client, sign_up(client))["key"]
    response = client.post(
        "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": other}
    )
    assert_problem(response, 404, "upload_not_found")


@pytest.mark.parametrize(
    "filename, content_type, expected",
    [
        ("a.mp4", "video/mp4", "video/mp4"),
        ("a.mov", "video/quicktime", "video/quicktime"),
        ("a.webm", "video/webm", "video/webm"),
        ("a.mkv", "video/x-matroska", "video/x-matroska"),
        ("a.mkv", "", "video/x-matroska"),  # what Chrome on Windows sends for .mkv
        ("a.m4a", "audio/x-m4a", "audio/x-m4a"),  # Safari/Chrome on macOS
        ("a.wav", "audio/wav", "audio/wav"),
        ("a.mp3", "audio/mpeg", "audio/mpeg"),
        ("a.flac", "application/octet-stream", "audio/flac"),
        ("a.MP4", "Video/MP4; codecs=avc1", "video/mp4"),
        ("a.avi", "video/x-msvideo", "video/x-msvideo"),  # AVI, as accepted by URL
        ("a.avi", "video/avi", "video/avi"),
        ("a.AVI", "", "video/x-msvideo"),
    ],
)
def test_accepted_types(client, api_key, filename, content_type, expected):
    response = start_upload(client, api_key, filename=filename, content_type=content_type)
    assert response.status_code == 201, response.text
    assert response.json()["headers"]["Content-Type"] == expected


@pytest.mark.parametrize(
    "filename, content_type",
    [
        ("page.html", "text/html"),
        ("x.exe", "application/x-msdownload"),
        ("x.bin", ""),
        ("a.svg", "image/svg+xml"),
    ],
)
def test_rejected_types(client, api_key, filename, content_type):
    response = start_upload(client, api_key, filename=filename, content_type=content_type)
    assert_problem(response, 415, "unsupported_media_type")


def test_size_bounds(client, api_key, settings):
    body = assert_problem(
        start_upload(client, api_key, size_bytes=settings.max_media_bytes + 1), 413, "upload_too_large"
    )
    assert body["limit"] == settings.max_media_bytes
    assert f"the limit is {human_size(settings.max_media_bytes)}." in body["detail"]
    assert re.search(r"the limit is \d+(\.\d)? (GB|MB|KB)\.", body["detail"]), body["detail"]
    assert_problem(start_upload(client, api_key, size_bytes=0), 422, "validation_error")


def test_filename_is_sanitised(client, api_key):
    response = start_upload(client, api_key, filename="../../etc/pass\x00wd.mp4")
    upload = client.get(f"/v1/uploads/{response.json()['upload_id']}", headers={"X-API-Key": api_key}).json()
    assert upload["filename"] == "pass_wd.mp4"


# moto S3 on loopback (shared fixture)
s3_server = moto_s3.moto_s3_endpoint


@pytest.fixture
def s3_gateway(s3_server, sqlite_url, tmp_path, redis_client):
    """Settings for a gateway whose uploads go to a fresh bucket on moto's S3 server, and that
    bucket's client; the gateway's Redis keys and queued jobs are removed afterwards."""
    from tests.fixtures.db import empty_all_tables, engine_for
    from tests.gateway.conftest import delete_prefixed_keys, delete_queued_jobs

    empty_all_tables(engine_for(sqlite_url))
    bucket = f"moodreel-test-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    settings = make_settings(
        sqlite_url, tmp_path, storage_backend="s3", s3_bucket=bucket, s3_endpoint_url=s3_server
    )
    try:
        yield settings, s3, bucket
    finally:
        delete_queued_jobs(redis_client, settings.queue_name)
        delete_prefixed_keys(redis_client, settings.redis_key_prefix)


def test_presigned_s3_upload_against_moto(s3_gateway, s3_server):
    settings, s3, bucket = s3_gateway
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = new_api_key(client, sign_up(client))["key"]
        target = start_upload(client, key).json()
        assert target["backend"] == "s3" and target["url"].startswith(s3_server)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target["url"]).query))
        assert {"content-length", "content-type"} <= set(query["X-Amz-SignedHeaders"].split(";"))
        submit = {"upload_id": target["upload_id"]}
        assert_problem(
            client.post("/v1/analyses", json=submit, headers={"X-API-Key": key}), 409, "upload_incomplete"
        )
        put = httpx.put(target["url"], content=MEDIA, headers=target["headers"], timeout=30)
        assert put.status_code == 200, put.text
        listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
        assert len(listed) == 1 and listed[0]["Size"] == len(MEDIA)
        object_key = listed[0]["Key"]
        assert object_key.endswith(".mp4") and object_key.startswith("uploads/")
        submitted = client.post("/v1/analyses", json=submit, headers={"X-API-Key": key})
        assert submitted.status_code == 202, submitted.text
        upload = client.get(f"/v1/uploads/{target['upload_id']}", headers={"X-API-Key": key}).json()
        assert upload["completed_at"] is not None
        analysis_id = submitted.json()["id"]
        assert client.delete(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": key}).status_code == 204
        assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_s3_object_of_wrong_size_is_refused(s3_gateway, sqlite_url):
    from tests.fixtures.db import engine_for

    settings, s3, bucket = s3_gateway
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = new_api_key(client, sign_up(client))["key"]
        target = start_upload(client, key).json()
        object_key = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        assert object_key == []
        # Someone bypasses the signed headers (moto does not enforce them): the gateway still checks.
        from shared.db.models import Upload
        from shared.db.session import make_session_factory

        with make_session_factory(engine_for(sqlite_url))() as session:
            storage_key = session.get(Upload, uuid.UUID(target["upload_id"])).storage_key
        s3.put_object(Bucket=bucket, Key=storage_key, Body=MEDIA + b"extra")
        response = client.post(
            "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": key}
        )
        body = assert_problem(response, 409, "upload_incomplete")
        assert "declared" in body["detail"]


def test_presigned_url_uses_the_public_endpoint(s3_server, sqlite_url, tmp_path):
    # As under docker compose: the services reach S3 by one address, clients by another.
    from shared.storage import get_storage

    public = s3_server.replace("127.0.0.1", "localhost")
    bucket = f"moodreel-test-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    settings = make_settings(
        sqlite_url,
        tmp_path,
        storage_backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=s3_server,
        s3_public_endpoint_url=public,
    )
    storage = get_storage(settings)
    url = storage.presign_put("uploads/u/clip.mp4", "video/mp4", len(MEDIA), 60)
    assert url.startswith(f"{public}/{bucket}/uploads/u/clip.mp4?")
    put = httpx.put(url, content=MEDIA, headers={"Content-Type": "video/mp4"}, timeout=30)
    assert put.status_code == 200, put.text
    # The services' own client still talks to the internal endpoint.
    assert storage.size("uploads/u/clip.mp4") == len(MEDIA)
    assert (
        get_storage(settings.model_copy(update={"s3_public_endpoint_url": None}))
        .presign_put("uploads/u/clip.mp4", "video/mp4", len(MEDIA), 60)
        .startswith(f"{s3_server}/{bucket}/")
    )


MALFORMED_UPLOAD_QUERIES = [
    "expires={future}&signature=%C3%96",  # non-ASCII
    "expires={future}&signature=%ED%A0%80",  # an invalid UTF-8 sequence
    "expires={future}&signature=" + "A" * 43,  # right length, wrong value
    "expires={future}&signature=" + "A" * 4000,  # wrong length
    "expires={future}&signature=",
    "expires={future}",
    "signature=" + "A" * 43,
    "expires=&signature=" + "A" * 43,
    "expires=not-a-time&signature=" + "A" * 43,
    "expires=1e10&signature=" + "A" * 43,
    "expires=-1&signature=" + "A" * 43,
    "expires=%D9%A3%D9%A3&signature=" + "A" * 43,  # Arabic-Indic digits
    "expires=" + "9" * 400 + "&signature=" + "A" * 43,
    "expires={future}&expires={future}&signature=%00",
    "",
]


def test_malformed_upload_urls_are_a_403_before_any_database_access(client):
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = client.app.state.engine
    future = int(time.time()) + 600
    event.listen(engine, "before_cursor_execute", count)
    try:
        for upload_id in (str(uuid.uuid4()), "not-a-uuid", "%C3%96"):
            for query in MALFORMED_UPLOAD_QUERIES:
                for headers in ({"Content-Type": "video/mp4"}, {"Content-Type": ""}, {}):
                    path = f"/v1/uploads/{upload_id}/content?{query.format(future=future)}"
                    response = client.put(path, content=MEDIA, headers=headers)
                    assert response.status_code == 403, (path, headers, response.text)
                    assert response.headers["content-type"] == "application/problem+json"
                    assert response.json()["code"] == "upload_url_invalid"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []


def test_expired_upload_url_is_refused(client, api_key, settings):
    target = start_upload(client, api_key).json()
    past = int(time.time()) - 1
    signature = sign_upload(target["upload_id"], past, settings)
    url = f"/v1/uploads/{target['upload_id']}/content?expires={past}&signature={signature}"
    assert_problem(client.put(url, content=MEDIA, headers=target["headers"]), 403, "upload_url_invalid")


def test_human_size():
    assert [human_size(n) for n in (2_000_000_000, 3_500_000, 800_000, 1_000_000, 999)] == [
        "2 GB",
        "3.5 MB",
        "800 KB",
        "1 MB",
        "999 bytes",
    ]


def test_the_last_extension_of_a_filename_tells_its_type():
    from services.platform.uploads.media_types import MEDIA_FILENAME_PATTERN, extension_type

    for name in ("talk.v2.webm", "T\n\u00b3\u00d2.q\u0096.webm", "a.b.c.MP4"):
        assert re.search(MEDIA_FILENAME_PATTERN, name), name
        assert extension_type(name) in {"video/webm", "video/mp4"}, name
    for name in ("clip.webm.txt", "clip.webm\n", ".webm"):
        assert extension_type(name) is None, name
