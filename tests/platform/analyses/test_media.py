"""Playing an analysis' upload: ``GET /v1/analyses/{id}/media`` with range requests, over a real
uvicorn server (local storage) and through a presigned URL on moto's S3 server (S3 storage)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.main import create_app
from tests.gateway.conftest import http_client, new_api_key, sign_up
from tests.platform.auth.test_auth import assert_problem
from tests.platform.uploads.test_uploads import MEDIA, s3_gateway, s3_server, start_upload  # noqa: F401

SIZE = len(MEDIA)


def uploaded_analysis(client, key: str, content_type: str = "video/mp4") -> str:
    target = start_upload(client, key, content_type=content_type).json()
    put = client.put(target["url"], content=MEDIA, headers=target["headers"])
    assert put.status_code == 200, put.text
    submitted = client.post(
        "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": key}
    )
    assert submitted.status_code == 202, submitted.text
    return submitted.json()["id"]


def test_local_media_answers_ranges(server_url):
    with http_client(server_url) as client:
        key = new_api_key(client, sign_up(client))["key"]
        analysis_id = uploaded_analysis(client, key)
        path, auth = f"/v1/analyses/{analysis_id}/media", {"X-API-Key": key}

        whole = client.get(path, headers=auth)
        assert whole.status_code == 200 and whole.content == MEDIA
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-type"] == "video/mp4"
        assert whole.headers["content-disposition"].startswith("inline")
        assert whole.headers["cache-control"] == "private, no-store"

        part = client.get(path, headers=auth | {"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == MEDIA[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{SIZE}"
        assert part.headers["content-length"] == "100"
        # What a media element asks first: from a byte to the end.
        open_ended = client.get(path, headers=auth | {"Range": "bytes=10-"})
        assert open_ended.status_code == 206 and open_ended.content == MEDIA[10:]
        assert open_ended.headers["content-range"] == f"bytes 10-{SIZE - 1}/{SIZE}"
        suffix = client.get(path, headers=auth | {"Range": "bytes=-16"})
        assert suffix.status_code == 206 and suffix.content == MEDIA[-16:]
        # A last byte past the end is cut to the media's end (RFC 9110 §14.1.2).
        beyond = client.get(path, headers=auth | {"Range": f"bytes={SIZE - 4}-{SIZE * 2}"})
        assert beyond.status_code == 206 and beyond.content == MEDIA[-4:]
        several = client.get(path, headers=auth | {"Range": "bytes=0-3, 20-23"})
        assert several.status_code == 206
        assert several.headers["content-type"].startswith("multipart/byteranges; boundary=")
        assert MEDIA[0:4] in several.content and MEDIA[20:24] in several.content

        for bad in (
            f"bytes={SIZE}-",
            f"bytes={SIZE + 10}-{SIZE + 20}",
            "bytes=-0",
            "bytes=9-3",
            "items=0-1",
            "bytes=abc",
        ):
            refused = client.get(path, headers=auth | {"Range": bad})
            assert_problem(refused, 416, "range_not_satisfiable")
            assert refused.headers["content-range"] == f"bytes */{SIZE}", bad

        # Owner only: another account's key sees no such analysis; no credential is a 401.
        stranger = new_api_key(client, sign_up(client))["key"]
        assert_problem(client.get(path, headers={"X-API-Key": stranger}), 404, "analysis_not_found")
        assert client.get(path).status_code == 401
        assert_problem(
            client.get(f"/v1/analyses/{uuid.uuid4()}/media", headers=auth), 404, "analysis_not_found"
        )


def test_url_sources_have_no_stored_media(client, api_key, settings):
    submitted = client.post(
        "/v1/analyses",
        json={"video_url": "https://93.184.215.14/talk.mp4"},
        headers={"X-API-Key": api_key},
    )
    assert submitted.status_code == 202, submitted.text
    refused = client.get(f"/v1/analyses/{submitted.json()['id']}/media", headers={"X-API-Key": api_key})
    assert_problem(refused, 404, "media_not_stored")
    assert "submitted by URL" in refused.json()["detail"]


def test_deleted_upload_media_is_not_stored(client, api_key, settings):
    analysis_id = uploaded_analysis(client, api_key, content_type="audio/mpeg")
    for stored in (settings.data_dir / "uploads").rglob("*"):
        if stored.is_file():
            stored.unlink()
    refused = client.get(f"/v1/analyses/{analysis_id}/media", headers={"X-API-Key": api_key})
    assert_problem(refused, 404, "media_not_stored")


def test_s3_media_is_a_presigned_url_that_answers_ranges(s3_gateway, s3_server):  # noqa: F811
    settings, _, _ = s3_gateway
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        key = new_api_key(client, sign_up(client))["key"]
        target = start_upload(client, key).json()
        assert (
            httpx.put(target["url"], content=MEDIA, headers=target["headers"], timeout=30).status_code == 200
        )
        submitted = client.post(
            "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": key}
        )
        path = f"/v1/analyses/{submitted.json()['id']}/media"
        redirect = client.get(path, headers={"X-API-Key": key}, follow_redirects=False)
        assert redirect.status_code == 307
        assert redirect.headers["cache-control"] == "private, no-store"
        url = redirect.headers["location"]
        assert url.startswith(s3_server) and "X-Amz-Signature=" in url and "X-Amz-Expires=14400" in url
        stranger = new_api_key(client, sign_up(client))["key"]
        assert_problem(client.get(path, headers={"X-API-Key": stranger}), 404, "analysis_not_found")

    part = httpx.get(url, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == MEDIA[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{SIZE}"
    assert part.headers["content-type"] == "video/mp4"
    assert httpx.get(url, headers={"Range": f"bytes={SIZE}-"}, timeout=30).status_code == 416
    # The signature covers the object: another key under the same query is refused.
    forged = url.replace("/uploads/", "/uploads/x", 1)
    assert httpx.get(forged, timeout=30).status_code == 403


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=0-"])
def test_range_on_the_first_byte(client, api_key, header):
    analysis_id = uploaded_analysis(client, api_key)
    part = client.get(f"/v1/analyses/{analysis_id}/media", headers={"X-API-Key": api_key, "Range": header})
    assert part.status_code == 206 and part.content == MEDIA[: len(part.content)]
    assert part.headers["content-range"].startswith("bytes 0-")
