"""The result page's player in a real Chromium against the dev stack: the upload streams with
range requests (206), clicking a card or the timeline seeks there and plays, and the utterance
under the playhead is highlighted while it plays."""

from __future__ import annotations

import re
import uuid

import pytest

from shared.contract.features.demo_media import ffmpeg_args, make_spoken_clip, run_tool

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]
PASSWORD = "correct horse battery staple"


def playing_card(page) -> int | None:
    current = page.locator("[data-utterance][aria-current=true]")
    assert current.count() <= 1, "at most one utterance is highlighted"
    return int(current.get_attribute("data-index")) if current.count() else None


def test_player_seeks_from_cards_and_timeline_and_highlights(dev_stack, browser, artifacts, tmp_path):
    clip = make_spoken_clip(tmp_path / "clip", size=(320, 240))
    # VP8/Opus in WebM: codecs every Chromium build decodes.
    webm = tmp_path / "interview.webm"
    run_tool(
        ffmpeg_args("-i", str(clip.video), "-c:v", "libvpx", "-b:v", "300k", "-c:a", "libopus", str(webm))
    )
    context = browser.new_context(base_url=dev_stack.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    media_statuses: list[int] = []
    page.on("response", lambda r: media_statuses.append(r.status) if r.url.endswith("/media") else None)

    page.goto("/dashboard/signup")
    page.fill("input[name=email]", f"player-{uuid.uuid4().hex[:8]}@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/analyses")
    page.click("text=New analysis")
    page.fill("input[name=name]", "Player <check>")
    page.set_input_files("input[name=video_file]", str(webm))
    page.set_input_files("input[name=transcript_file]", str(clip.transcript))
    page.click("button:has-text('Analyse')")
    page.wait_for_url(re.compile(r".*/dashboard/analyses/[0-9a-f-]{36}$"))
    page.wait_for_selector("[data-status=succeeded]", timeout=240_000)
    page.wait_for_load_state("networkidle")
    assert "Player <check>" in page.locator("h1").inner_text()

    video = page.locator("video[data-player]")
    assert video.count() == 1
    # Muted, so that playing needs no audio device and no autoplay permission.
    video.evaluate("v => { v.muted = true; }")
    page.wait_for_function("document.querySelector('video[data-player]').readyState >= 1")
    duration = video.evaluate("v => v.duration")
    assert abs(duration - clip.segments[-1]["end"]) < 1.5, duration
    assert 206 in media_statuses, media_statuses  # the media element reads ranges
    assert playing_card(page) is None
    page.screenshot(path=artifacts / "1-player.png", full_page=True)

    # A card: plays from its start, and it is the one highlighted.
    second = clip.segments[1]
    page.locator("[data-utterance][data-index='1'] p").click()
    page.wait_for_function(
        f"(() => {{ const v = document.querySelector('video[data-player]');"
        f" return !v.paused && v.currentTime >= {second['start']} && v.currentTime < {second['end']}; }})()"
    )
    page.wait_for_selector("[data-utterance][data-index='1'][aria-current=true]")
    assert playing_card(page) == 1
    page.screenshot(path=artifacts / "2-card-seek.png", full_page=True)

    # The timeline: a click at the middle of the third utterance plays from there.
    third = clip.segments[2]
    timeline = page.locator("svg[data-seek-timeline]")
    end = float(timeline.get_attribute("data-end"))
    box = timeline.bounding_box()
    middle = (third["start"] + third["end"]) / 2
    page.mouse.click(box["x"] + box["width"] * middle / end, box["y"] + box["height"] / 2)
    page.wait_for_selector("[data-utterance][data-index='2'][aria-current=true]")
    position = video.evaluate("v => v.currentTime")
    assert third["start"] <= position < third["end"], position
    assert playing_card(page) == 2
    assert page.locator("[data-playhead]").get_attribute("visibility") == "visible"
    page.screenshot(path=artifacts / "3-timeline-seek.png", full_page=True)

    # The label picker is not a seek target: choosing a label leaves the playhead where it is.
    video.evaluate("v => v.pause()")
    before = video.evaluate("v => v.currentTime")
    page.locator("[data-utterance][data-index='0'] select[name=emotion]").click()
    assert video.evaluate("v => v.currentTime") == before
    assert console_errors == [], console_errors
    context.close()
