"""The analyses list shows times in the browser's own time zone (here Asia/Tokyo, UTC+9)."""

from __future__ import annotations

import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx

from tests.browser.test_api_docs_offline import docs_gateway  # noqa: F401 - a plain gateway fixture
from tests.dashboard.helpers import PASSWORD


def test_times_are_shown_in_the_browsers_zone(browser, docs_gateway, artifacts):  # noqa: F811
    context = browser.new_context(base_url=docs_gateway, timezone_id="Asia/Tokyo", locale="sv-SE")
    page = context.new_page()
    try:
        email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
        page.goto("/dashboard/signup")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/analyses")
        with httpx.Client(base_url=docs_gateway, timeout=30) as api:
            token = api.post("/v1/auth/login", data={"username": email, "password": PASSWORD}).json()
            created = api.post(
                "/v1/analyses",
                json={"video_url": "https://93.184.215.14/v.mp4", "name": "zone check"},
                headers={"Authorization": f"Bearer {token['access_token']}"},
            )
            assert created.status_code == 202, created.text
        page.reload()
        shown = page.locator("time[data-local-time]").first
        utc = datetime.fromisoformat(shown.get_attribute("datetime"))
        expected = utc.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M")
        assert shown.inner_text() == expected
        assert shown.get_attribute("title") == utc.strftime("%Y-%m-%d %H:%M") + " UTC"
    finally:
        page.screenshot(path=str(artifacts / "analyses.png"))
        context.close()


def test_the_upload_form_refuses_a_file_over_the_limit_before_sending(browser, docs_gateway, artifacts):  # noqa: F811
    context = browser.new_context(base_url=docs_gateway)
    page = context.new_page()
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    try:
        page.goto("/dashboard/signup")
        page.fill("input[name=email]", f"browser-{uuid.uuid4().hex[:8]}@example.com")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/analyses")
        page.goto("/dashboard/analyses/new")
        assert "up to 100 KB" in page.inner_text("form[data-upload-form]")
        posts.clear()
        big = {"name": "big.mp4", "mimeType": "video/mp4", "buffer": b"\0" * 150_000}
        page.set_input_files("input[name=video_file]", files=[big])
        error = page.locator("[data-file-size-error]")
        assert error.inner_text() == "This file is 150 KB; the limit is 100 KB."
        page.click("form[data-upload-form] button[type=submit]")
        page.wait_for_timeout(500)
        assert posts == [] and page.url.endswith("/dashboard/analyses/new")
        assert page.locator("form[data-upload-form] button[type=submit]").is_enabled()
        small = {"name": "small.mp4", "mimeType": "video/mp4", "buffer": b"\0" * 50_000}
        page.set_input_files("input[name=video_file]", files=[small])
        assert error.is_hidden()
    finally:
        page.screenshot(path=str(artifacts / "new-analysis.png"))
        context.close()
