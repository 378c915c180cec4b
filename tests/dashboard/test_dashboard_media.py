"""The result page's player source: the dashboard relays the API's media route with the browser's
Range header (206 from local storage), to the owner only."""

from __future__ import annotations

import httpx

from tests.dashboard.helpers import csrf_from, signed_in_client
from tests.dashboard.test_dashboard_http import gateway  # noqa: F401 - the module's gateway fixture

MEDIA = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 64


def test_player_streams_the_owners_upload_with_ranges(gateway):  # noqa: F811
    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/analyses/new"))
    submitted = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token},
        files={"video_file": ("talk.webm", MEDIA, "video/webm")},
    )
    assert submitted.status_code == 303, submitted.text[-2000:]
    page_path = submitted.headers["location"]
    page = client.get(page_path)
    media_path = f"{page_path}/media"
    assert "<video" in page.text and "data-player" in page.text
    assert f'src="{media_path}"' in page.text

    part = client.get(media_path, headers={"Range": "bytes=4-259"})
    assert part.status_code == 206 and part.content == MEDIA[4:260]
    assert part.headers["content-range"] == f"bytes 4-259/{len(MEDIA)}"
    assert part.headers["accept-ranges"] == "bytes" and part.headers["content-type"] == "video/webm"
    refused = client.get(media_path, headers={"Range": f"bytes={len(MEDIA)}-"})
    assert refused.status_code == 416 and refused.headers["content-range"] == f"bytes */{len(MEDIA)}"
    assert refused.headers["content-type"] == "application/problem+json"

    stranger, _ = signed_in_client(gateway)
    assert stranger.get(media_path).status_code == 404
    with httpx.Client(base_url=gateway) as anonymous:
        assert anonymous.get(media_path).status_code == 303  # to sign-in
    stranger.close()
    client.close()


def test_an_audio_upload_gets_an_audio_player(gateway):  # noqa: F811
    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/analyses/new"))
    submitted = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token},
        files={"video_file": ("memo.mp3", b"ID3" + bytes(2000), "audio/mpeg")},
    )
    assert submitted.status_code == 303, submitted.text[-2000:]
    page = client.get(submitted.headers["location"])
    assert "<audio" in page.text and "<video" not in page.text and "data-player" in page.text
    client.close()
