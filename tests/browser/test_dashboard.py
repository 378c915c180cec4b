"""A user's path through the dashboard in a real Chromium against the dev stack: sign up, create
an API key, upload a generated spoken clip with its transcript, watch the results arrive over SSE,
export them, revoke the key. Screenshots of each step go to test-artifacts/browser/."""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest

from shared.contract.features.demo_media import make_spoken_clip
from shared.contract.labels import EMOTIONS, SENTIMENTS

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]
PASSWORD = "correct horse battery staple"


def test_sign_up_key_upload_results_revoke(dev_stack, browser, artifacts, tmp_path):
    clip = make_spoken_clip(tmp_path / "clip", size=(320, 240))
    context = browser.new_context(base_url=dev_stack.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())
    fragment_requests: list[str] = []
    page.on("request", lambda r: fragment_requests.append(r.url) if r.url.endswith("/live") else None)

    # Sign up: lands on the analyses page with an empty usage meter.
    page.goto("/dashboard/signup")
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/analyses")
    meter = page.locator("[data-meter=Analyses]")
    assert re.search(r"0\s*/\s*100", meter.inner_text())
    page.screenshot(path=artifacts / "1-analyses-empty.png", full_page=True)

    # Session cookies: HttpOnly, SameSite=Strict, scoped to the dashboard.
    cookies = {c["name"]: c for c in context.cookies()}
    for name in ("mr_access", "mr_refresh", "mr_csrf"):
        assert cookies[name]["httpOnly"] and cookies[name]["sameSite"] == "Strict"
        assert cookies[name]["path"] == "/dashboard"

    # A POST without the CSRF token is refused even with the session cookies.
    forged = context.request.post("/dashboard/keys", form={"name": "forged"}, max_redirects=0)
    assert forged.status == 403

    # Create an API key: shown once, and it works against the API.
    page.click("text=API keys")
    page.fill("input[name=name]", "browser-test")
    page.click("button:has-text('Create key')")
    key = page.locator("#new-key").input_value()
    assert key.startswith("mr_live_")
    page.screenshot(path=artifacts / "2-key-created.png", full_page=True)
    usage = httpx.get(f"{dev_stack.base_url}/v1/usage", headers={"X-API-Key": key}, timeout=10)
    assert usage.status_code == 200, usage.text
    page.reload()
    assert page.locator("#new-key").count() == 0, "a key must be shown only once"
    assert key not in page.content()

    # Upload the clip with its SRT transcript; results arrive live.
    page.click("text=New analysis")
    page.set_input_files("input[name=video_file]", str(clip.video))
    page.set_input_files("input[name=transcript_file]", str(clip.transcript))
    page.click("button:has-text('Analyse')")
    page.wait_for_url(re.compile(r".*/dashboard/analyses/[0-9a-f-]{36}$"))
    analysis_id = page.url.rsplit("/", 1)[1]
    live = page.locator("[data-live-events]").count() == 1
    page.screenshot(path=artifacts / "3-submitted.png", full_page=True)
    page.wait_for_selector("[data-status=succeeded]", timeout=240_000)
    page.wait_for_load_state("networkidle")
    cards = page.locator("[data-utterance]")
    assert cards.count() == len(clip.segments)
    assert page.locator("[data-utterance-count]").inner_text() == str(len(clip.segments))
    first_text = clip.segments[0]["text"]
    assert first_text in cards.first.inner_text()
    dominant = page.locator("[data-dominant-emotion]").inner_text().strip()
    assert dominant in EMOTIONS
    assert page.locator("[data-dominant-sentiment]").inner_text().strip() in SENTIMENTS
    assert page.locator("svg[aria-label^='Emotion scores'] rect title").count() == 7 * len(clip.segments)
    # each used modality's badge names what that modality alone says ("text: joy 61%")
    text_badge = cards.first.locator("[data-modality=text]").inner_text()
    assert re.fullmatch(rf"text: ({'|'.join(EMOTIONS)}) \d+%", text_badge), text_badge
    page.screenshot(path=artifacts / "4-results.png", full_page=True)
    # The label picker: htmx swaps the corrected card in; the API shows the correction beside the prediction.
    first_card = cards.first
    first_card.locator("select[name=emotion]").select_option("surprise")
    first_card.locator("select[name=sentiment]").select_option("negative")
    first_card.locator("button:has-text('Save label')").click()
    page.wait_for_selector("[data-utterance] [data-corrected-emotion]")
    assert (
        page.locator("[data-utterance]").first.locator("[data-corrected-emotion]").inner_text() == "surprise"
    )
    page.screenshot(path=artifacts / "4a-corrected.png", full_page=True)
    if live:
        # The page opened while the job ran: SSE events drove fragment refreshes, then the reload.
        assert fragment_requests, "no live refresh happened"
    assert page.locator("[data-live-events]").count() == 0

    # The same results through the API with the key, and the export buttons' download.
    detail = httpx.get(
        f"{dev_stack.base_url}/v1/analyses/{analysis_id}", headers={"X-API-Key": key}, timeout=10
    ).json()
    assert detail["summary"]["dominant_emotion"] == dominant
    assert detail["utterances"][0]["correction"]["emotion"] == "surprise"
    assert detail["utterances"][0]["correction"]["sentiment"] == "negative"
    exported = context.request.get(f"/dashboard/analyses/{analysis_id}/export?format=json")
    assert exported.status == 200
    assert len(json.loads(exported.body())["utterances"]) == len(clip.segments)
    srt = context.request.get(f"/dashboard/analyses/{analysis_id}/export?format=srt")
    assert srt.status == 200 and "-->" in srt.text()

    # The usage meter counted the analysis.
    page.click("text=Analyses")
    assert re.search(r"1\s*/\s*100", page.locator("[data-meter=Analyses]").inner_text())
    assert page.locator("[data-status=succeeded]").count() == 1
    page.screenshot(path=artifacts / "4b-analyses-list.png", full_page=True)
    page.click("nav a[href='/dashboard/api']")
    assert f"API={dev_stack.base_url}" in page.locator("pre").first.inner_text()
    page.screenshot(path=artifacts / "4c-api-samples.png", full_page=True)

    # Revoke the key: the API refuses it at once.
    page.click("text=API keys")
    row = page.locator("[data-key-row=browser-test]")
    row.locator("button:has-text('Revoke')").click()
    page.wait_for_selector("[data-key-row=browser-test] >> text=revoked")
    page.screenshot(path=artifacts / "5-key-revoked.png", full_page=True)
    refused = httpx.get(f"{dev_stack.base_url}/v1/usage", headers={"X-API-Key": key}, timeout=10)
    assert refused.status_code == 401

    # Sign out ends the session: dashboard pages redirect to sign-in.
    page.click("button:has-text('Sign out')")
    page.wait_for_url("**/dashboard/login")
    page.goto("/dashboard/keys")
    page.wait_for_url("**/dashboard/login?next=%2Fdashboard%2Fkeys")
    assert console_errors == [], console_errors
    context.close()


def test_failed_analysis_shows_its_error_and_can_be_deleted(dev_stack, browser, artifacts, tmp_path):
    not_media = tmp_path / "notes.mp4"
    not_media.write_bytes(b"these are meeting notes, not a video\n" * 50)
    context = browser.new_context(base_url=dev_stack.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto("/dashboard/signup")
    page.fill("input[name=email]", f"browser-{uuid.uuid4().hex[:8]}@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/analyses")

    # Neither a file nor a URL: the form says so and nothing is submitted.
    page.click("text=New analysis")
    page.click("button:has-text('Analyse')")
    assert "Choose a video file or enter a URL" in page.locator("[role=alert]").inner_text()

    page.set_input_files("input[name=video_file]", str(not_media))
    page.click("button:has-text('Analyse')")
    page.wait_for_url(re.compile(r".*/dashboard/analyses/[0-9a-f-]{36}$"))
    page.wait_for_selector("[data-status=failed]", timeout=120_000)
    assert page.locator("[data-error-code]").inner_text() == "not_media"
    page.screenshot(path=artifacts / "failed.png", full_page=True)
    # A failed analysis is refunded: the meter shows none used.
    page.click("text=Analyses")
    assert re.search(r"0\s*/\s*100", page.locator("[data-meter=Analyses]").inner_text())
    assert page.locator("[data-status=failed]").count() == 1

    page.locator("a:has-text('Open')").first.click()
    page.click("button:has-text('Delete')")
    page.wait_for_url("**/dashboard/analyses")
    assert page.locator("[data-status]").count() == 0
    context.close()
