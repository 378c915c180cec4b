"""The dashboard's server side over real HTTP (the gateway under uvicorn on a loopback port, a
migrated SQLite database, this machine's Redis with a unique key prefix): sign-in redirects, the
CSRF and open-redirect guards, static files, the SSE/export relays' ownership, and refresh-token
rotation shared by concurrent requests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.dashboard.helpers import PASSWORD, csrf_from, local_gateway, signed_in_client


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[str]:
    # Above the gateway's 10 MB request-body limit, so the upload form's own bound is exercised.
    media_limit = {"MOODREEL_MAX_MEDIA_BYTES": "20000000"}
    with local_gateway(tmp_path_factory.mktemp("dashboard-gateway"), **media_limit) as (base_url, _):
        yield base_url


def test_pages_redirect_to_sign_in(gateway):
    with httpx.Client(base_url=gateway) as client:
        response = client.get("/dashboard/keys")
        assert response.status_code == 303
        assert response.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fkeys"
        fragment = client.get("/dashboard/analyses", headers={"HX-Request": "true"})
        assert fragment.status_code == 204 and fragment.headers["HX-Redirect"] == "/dashboard/login"


def test_csrf_token_and_origin_are_required(gateway):
    with httpx.Client(base_url=gateway) as client:
        token = csrf_from(client.get("/dashboard/login"))
        form = {"email": "nobody@example.com", "password": "wrong-password"}
        assert client.post("/dashboard/login", data=form).status_code == 403
        assert client.post("/dashboard/login", data={**form, "csrf_token": "x" * 64}).status_code == 403
        cross_site = client.post(
            "/dashboard/login", data={**form, "csrf_token": token}, headers={"Origin": "https://evil.example"}
        )
        assert cross_site.status_code == 403
        # A fresh browser (no seed cookie) cannot reuse someone else's token either.
        with httpx.Client(base_url=gateway) as stranger:
            assert stranger.post("/dashboard/login", data={**form, "csrf_token": token}).status_code == 403
        wrong = client.post("/dashboard/login", data={**form, "csrf_token": token})
        assert wrong.status_code == 401 and 'role="alert"' in wrong.text


def test_sign_in_never_redirects_off_site(gateway):
    client, email = signed_in_client(gateway)
    with httpx.Client(base_url=gateway) as fresh:
        token = csrf_from(fresh.get("/dashboard/login"))
        for target in ("//evil.example/x", "https://evil.example", "/dashboard\\@evil.example", "/v1/usage"):
            response = fresh.post(
                "/dashboard/login",
                data={"email": email, "password": PASSWORD, "csrf_token": token, "next": target},
            )
            assert response.status_code == 303 and response.headers["location"] == "/dashboard/analyses"
        ok = fresh.post(
            "/dashboard/login",
            data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/dashboard/keys"},
        )
        assert ok.headers["location"] == "/dashboard/keys"
    client.close()


def test_static_files_stay_inside_their_folder(gateway):
    with httpx.Client(base_url=gateway) as client:
        css = client.get("/dashboard/static/app.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert ".btn" in css.text or "btn" in css.text
        assert client.get("/dashboard/static/vendor/htmx.min.js").status_code == 200
        for path in ("../views.py", "..%2Fviews.py", "%2e%2e/session.py", "../templates/base.html"):
            assert client.get(f"/dashboard/static/{path}").status_code == 404


def submit_uploaded_analysis(base_url: str, client: httpx.Client) -> str:
    """An analysis of a (tiny, never processed) upload, submitted through the API with a key."""
    keys = client.get("/dashboard/keys")
    form = {"name": "t", "csrf_token": csrf_from(keys), "scope_read": "true", "scope_write": "true"}
    created = client.post("/dashboard/keys", data=form)
    assert created.status_code == 303
    key_page = client.get("/dashboard/keys")
    marker = 'id="new-key" class="field font-mono" readonly value="'
    key = key_page.text[key_page.text.index(marker) + len(marker) :].split('"', 1)[0]
    with httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=30.0) as api:
        upload = {"filename": "a.mp4", "content_type": "video/mp4", "size_bytes": 64}
        target = api.post("/v1/uploads", json=upload)
        assert target.status_code == 201, target.text
        put = httpx.put(target.json()["url"], content=b"\x00" * 64, headers=target.json()["headers"])
        assert put.status_code == 200, put.text
        analysis = api.post("/v1/analyses", json={"upload_id": target.json()["upload_id"]})
    assert analysis.status_code == 202, analysis.text
    return analysis.json()["id"]


def test_event_and_export_relays_belong_to_the_owner(gateway):
    owner, _ = signed_in_client(gateway)
    other, _ = signed_in_client(gateway)
    analysis_id = submit_uploaded_analysis(gateway, owner)

    page = owner.get(f"/dashboard/analyses/{analysis_id}")
    assert (
        page.status_code == 200
        and f'data-live-events="/dashboard/analyses/{analysis_id}/events"' in page.text
    )
    with owner.stream("GET", f"/dashboard/analyses/{analysis_id}/events") as events:
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        first = next(events.iter_lines())
        assert first.startswith("retry:")
    assert other.get(f"/dashboard/analyses/{analysis_id}/events").status_code == 404
    assert other.get(f"/dashboard/analyses/{analysis_id}").status_code == 404
    assert other.get(f"/dashboard/analyses/{analysis_id}/export?format=json").status_code == 404
    assert owner.get(f"/dashboard/analyses/{analysis_id}/export?format=exe").status_code == 400
    owner.close()
    other.close()


def test_concurrent_requests_share_one_refresh_rotation(gateway):
    """With an expired access token, a page's parallel requests all refresh with the same
    single-use refresh token; they must share one rotation, not revoke the token family."""
    client, _ = signed_in_client(gateway)
    refresh = client.cookies["mr_refresh"]
    cookies = {"mr_access": "expired.or.garbage", "mr_refresh": refresh, "mr_csrf": client.cookies["mr_csrf"]}

    def one_browser_connection(_: int) -> httpx.Response:
        # Each parallel connection of the page carries the same cookies.
        with httpx.Client(base_url=gateway, timeout=30.0, cookies=cookies) as browser:
            return browser.get("/dashboard/keys")

    # Threads, not asyncio.run: Playwright's sync API may own this thread's event loop.
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(one_browser_connection, range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    rotated = {r.cookies.get("mr_refresh") for r in responses}
    assert len(rotated) == 1 and refresh not in rotated
    # The family is intact: the rotated token still signs the user in.
    after = {"mr_access": "expired", "mr_refresh": rotated.pop(), "mr_csrf": cookies["mr_csrf"]}
    with httpx.Client(base_url=gateway, cookies=after) as browser:
        assert browser.get("/dashboard/keys").status_code == 200
    client.close()


def test_api_problems_are_shown_in_the_form(gateway):
    """The API's own checks apply: a loopback URL is refused with its problem message, and the
    analysis is not created."""
    client, _ = signed_in_client(gateway)
    form_page = client.get("/dashboard/analyses/new")
    token = csrf_from(form_page)
    refused = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token, "video_url": "http://127.0.0.1:9/private.mp4"},
        files={"video_file": ("", b"", "application/octet-stream")},
    )
    assert refused.status_code in (400, 422), refused.text
    alert = refused.text.split('role="alert"', 1)[1].split("</div>", 1)[0]
    assert "video_url:" in alert  # the API's UrlRejected detail, "<field>: <reason>"
    bad_window = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token, "video_url": "https://example.com/a.mp4", "window_seconds": "soon"},
    )
    assert bad_window.status_code == 422 and "Window seconds must be a number" in bad_window.text
    bad_segmentation = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token, "video_url": "https://example.com/a.mp4", "segmentation": "sentences"},
    )
    assert bad_segmentation.status_code == 422 and 'role="alert"' in bad_segmentation.text
    assert '<option value="speech" selected>' in client.get("/dashboard/analyses/new").text
    listing = client.get("/dashboard/analyses")
    assert "No analyses yet" in listing.text
    client.close()


def test_key_problems_are_shown_on_the_keys_page(gateway):
    """A key without scopes and revoking an unknown key: the API's problem, on the keys page."""
    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/keys"))
    no_scopes = client.post("/dashboard/keys", data={"name": "none", "csrf_token": token})
    assert no_scopes.status_code == 422 and 'role="alert"' in no_scopes.text
    unknown = client.post(f"/dashboard/keys/{uuid.uuid4()}/revoke", data={"csrf_token": token})
    assert unknown.status_code == 404 and 'role="alert"' in unknown.text
    client.close()


def test_api_page_shows_samples_for_this_server(gateway):
    client, _ = signed_in_client(gateway)
    page = client.get("/dashboard/api")
    assert page.status_code == 200
    assert f"API={gateway}\n" in page.text
    assert f'base_url="{gateway}"' in page.text.replace("&#34;", '"')
    client.close()


def test_upload_form_takes_videos_above_the_json_body_limit_up_to_the_media_limit(gateway):
    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/analyses/new"))
    video = b"\x00" * 11_000_000  # over MOODREEL_MAX_REQUEST_BODY_BYTES (10 MB), under the media limit
    accepted = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token},
        files={"video_file": ("big.mp4", video, "video/mp4")},
    )
    assert accepted.status_code == 303 and accepted.headers["location"].startswith("/dashboard/analyses/")
    too_big = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token},
        files={"video_file": ("huge.mp4", b"\x00" * 23_000_000, "video/mp4")},
    )
    assert too_big.status_code == 413 and "limited to 22 MB" in too_big.text
    # Signed-out posts are not even parsed.
    with httpx.Client(base_url=gateway) as stranger:
        refused = stranger.post("/dashboard/analyses", files={"video_file": ("a.mp4", b"x", "video/mp4")})
        assert refused.status_code == 303 and refused.headers["location"].startswith("/dashboard/login")
    client.close()


def test_invalid_fields_are_named_in_the_form(gateway):
    with httpx.Client(base_url=gateway) as client:
        token = csrf_from(client.get("/dashboard/signup"))
        short = client.post(
            "/dashboard/signup", data={"email": "short@example.com", "password": "short", "csrf_token": token}
        )
        assert short.status_code == 422
        alert = short.text.split('role="alert"', 1)[1].split("</div>", 1)[0]
        assert "password:" in alert and "10 characters" in alert


def test_unexpected_api_answers_keep_the_live_fragment(gateway):
    """A fragment refresh the API turns away (here: an unknown analysis) answers 204, so htmx keeps
    what is on screen; a page answers with the problem's status and message."""
    client, _ = signed_in_client(gateway)
    missing = uuid.uuid4()
    fragment = client.get(f"/dashboard/analyses/{missing}/live", headers={"HX-Request": "true"})
    assert fragment.status_code == 204 and fragment.content == b""
    page = client.get(f"/dashboard/analyses/{missing}/live")
    assert page.status_code == 404 and "Page not found" in page.text
    client.close()
