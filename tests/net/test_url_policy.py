"""Every check of a user URL gives the same answer: an analysis' video and callback URLs, a webhook
endpoint's URL at registration, and the connect-time check that media downloads and webhook
deliveries make (``shared.net.fetch``) all ask one policy."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.main import create_app
from shared.net.fetch import FetchError, resolve_checked
from shared.net.urls import UrlNotAllowed, UrlPolicy, check_private_url_switches
from shared.settings import Settings
from tests.gateway.conftest import make_settings, new_api_key, sign_up

EXEMPT_PORT = 8765  # nothing listens: only the checks run, no request is sent
PUBLIC_URL = "https://93.184.215.14/clip.mp4"

VERDICTS = [
    (f"http://127.0.0.1:{EXEMPT_PORT}/v.mp4", True),
    (f"http://127.0.0.1:{EXEMPT_PORT + 1}/v.mp4", False),
    ("http://127.0.0.1/v.mp4", False),
    (f"http://10.0.0.1:{EXEMPT_PORT}/v.mp4", False),
    (f"http://[::1]:{EXEMPT_PORT}/v.mp4", False),
    (f"http://169.254.169.254:{EXEMPT_PORT}/latest/meta-data", False),
]


@pytest.fixture
def gateway(sqlite_url, tmp_path):
    settings = make_settings(sqlite_url, tmp_path, private_url_origins=[f"127.0.0.1:{EXEMPT_PORT}"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, settings


def accepted(response: httpx.Response) -> bool:
    if response.status_code in (201, 202):
        return True
    assert response.status_code == 400 and response.json()["code"] == "url_not_allowed", response.text
    return False


async def connect_check_accepts(url: str, settings) -> bool:
    try:
        await resolve_checked(httpx.URL(url), settings)
    except FetchError as exc:
        assert exc.code == "url_not_allowed"
        return False
    return True


async def test_submission_registration_and_fetch_agree(gateway):
    client, settings = gateway
    headers = {"X-API-Key": new_api_key(client, sign_up(client))["key"]}
    for url, allowed in VERDICTS:
        callback = {"video_url": PUBLIC_URL, "callback_url": url}
        answers = {
            "video_url": accepted(client.post("/v1/analyses", json={"video_url": url}, headers=headers)),
            "callback_url": accepted(client.post("/v1/analyses", json=callback, headers=headers)),
            "webhook endpoint": accepted(
                client.post("/v1/webhooks/endpoints", json={"url": url}, headers=headers)
            ),
            "fetch/delivery": await connect_check_accepts(url, settings),
        }
        assert answers == dict.fromkeys(answers, allowed), url


@pytest.mark.parametrize(
    ("configured", "allowed", "refused"),
    [
        ("media.example:8000", "http://MEDIA.Example.:8000/v.mp4", "http://media.example:8001/v.mp4"),
        ("Media.Example.:8000", "http://media.example:8000/v.mp4", "http://media.example/v.mp4"),
        ("bücher.example:443", "https://xn--bcher-kva.example/v.mp4", "http://bücher.example/v.mp4"),
        ("media.example:80", "http://media.example/v.mp4", "https://media.example/v.mp4"),
        ("[fd00::1]:8000", "http://[fd00:0::1]:8000/v.mp4", "http://[fd00::1]:8001/v.mp4"),
        ("fd00::1:8000", "http://[fd00::1]:8000/v.mp4", "http://10.0.0.1:8000/v.mp4"),
    ],
)
def test_an_exempt_origin_matches_however_it_is_spelled(configured, allowed, refused):
    policy = UrlPolicy.from_settings(Settings(private_url_origins=[configured]))
    loopback = lambda host, port: ["127.0.0.1"]  # noqa: E731
    assert policy.check(allowed, resolver=loopback).connect_address in ("127.0.0.1", "fd00::1")
    with pytest.raises(UrlNotAllowed, match="private or reserved"):
        policy.check(refused, resolver=loopback)


def test_the_exemption_covers_loopback_and_private_but_never_link_local():
    policy = UrlPolicy.from_settings(Settings(private_url_origins=["media.example:80"]))
    policy.check("http://media.example/v.mp4", resolver=lambda host, port: ["10.0.0.5", "127.0.0.1"])
    with pytest.raises(UrlNotAllowed, match="private or reserved"):
        policy.check("http://media.example/v.mp4", resolver=lambda host, port: ["169.254.169.254"])


@pytest.mark.parametrize("entry", ["media.example", "media.example:0", "127.1:80", "a b:80", ":80"])
def test_a_malformed_exempt_origin_stops_start_up(entry):
    settings = Settings(private_url_origins=[entry])
    with pytest.raises(ValueError, match="private_url_origins"):
        check_private_url_switches(settings)


def test_production_ignores_the_switches_without_the_second_one():
    switches = {"allow_private_urls": True, "private_url_origins": ["127.0.0.1:8000"]}
    url = "http://127.0.0.1:8000/v.mp4"
    with pytest.raises(UrlNotAllowed):
        UrlPolicy.from_settings(Settings(environment="production", **switches)).check(url)
    UrlPolicy.from_settings(
        Settings(environment="production", allow_private_urls_in_production=True, **switches)
    ).check(url)
    UrlPolicy.from_settings(Settings(environment="development", **switches)).check(url)


def test_the_connect_address_is_a_checked_one_preferring_ipv4():
    checked = UrlPolicy().check(
        "https://videos.example.com/v.mp4",
        resolver=lambda host, port: ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "93.184.215.14"],
    )
    assert checked.connect_address == "93.184.215.14"
    assert (checked.host, checked.port) == ("videos.example.com", 443)
