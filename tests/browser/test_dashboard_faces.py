"""The result page's face thumbnails in a real Chromium against the dev stack, whose tiny model
reads faces (Haar detector): a generated video showing scikit-image's astronaut photograph gets,
on the card of the utterance that shows it, the thumbnail of its middle sampled frame (served by
the worker's stored JPEG) with the face's box drawn over it where the face is."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.browser.conftest import running_dev_stack

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]
PASSWORD = "correct horse battery staple"
# The photograph at 240 px square, at (300, 60) of a 640x360 frame, shown from 2 s to 4 s.
LEFT, TOP, SIDE, WIDTH, HEIGHT = 300, 60, 240, 640, 360


@pytest.fixture(scope="module")
def face_stack(tmp_path_factory):
    from services.model.testing import TINY_SPEC

    spec = TINY_SPEC.model_copy(update={"face_detector": "haar", "frames_per_utterance": 4})
    with running_dev_stack(tmp_path_factory, spec) as stack:
        yield stack


def test_thumbnail_with_face_boxes(face_stack, browser, artifacts, tmp_path):
    from PIL import Image
    from skimage import data

    from shared.contract.features.demo_media import make_face_clip

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    clip = make_face_clip(
        tmp_path / "astronaut.mp4",
        tmp_path / "astronaut.png",
        duration=6.0,
        visible=(2.0, 4.0),
        box=(LEFT, TOP, SIDE),
        size=(WIDTH, HEIGHT),
    )
    context = browser.new_context(base_url=face_stack.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    thumbnails: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: (
            thumbnails.append((r.status, r.headers.get("content-type", "")))
            if r.url.endswith("/thumbnail")
            else None
        ),
    )

    page.goto("/dashboard/signup")
    page.fill("input[name=email]", f"faces-{uuid.uuid4().hex[:8]}@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/analyses")
    page.click("text=New analysis")
    page.fill("input[name=name]", "Faces")
    page.set_input_files("input[name=video_file]", str(clip))
    page.select_option("select[name=segmentation]", "windows")
    page.fill("input[name=window_seconds]", "2")
    page.click("button:has-text('Analyse')")
    page.wait_for_url(re.compile(r".*/dashboard/analyses/[0-9a-f-]{36}$"))
    page.wait_for_selector("[data-status=succeeded]", timeout=240_000)
    page.reload()
    page.wait_for_load_state("networkidle")

    cards = page.locator("[data-utterance]")
    assert cards.count() == 3, face_stack.log_tail("worker")
    shown = page.locator("[data-utterance][data-index='1']")
    image = shown.locator("[data-thumbnail] img")
    image.scroll_into_view_if_needed()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=30_000
    )
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [320, 180]
    assert thumbnails and all(status == 200 and kind == "image/jpeg" for status, kind in thumbnails), (
        thumbnails
    )

    # The box read for the visual modality, over the face: inside the photograph's square.
    box = shown.locator("rect[data-face-box][data-face-used]")
    assert box.count() == 1
    frame, drawn = image.bounding_box(), box.bounding_box()
    scale_x, scale_y = frame["width"] / WIDTH, frame["height"] / HEIGHT
    assert frame["x"] + LEFT * scale_x - 1 <= drawn["x"]
    assert drawn["x"] + drawn["width"] <= frame["x"] + (LEFT + SIDE) * scale_x + 1
    assert frame["y"] + TOP * scale_y - 1 <= drawn["y"]
    assert drawn["y"] + drawn["height"] <= frame["y"] + (TOP + SIDE) * scale_y + 1
    assert 0.15 * SIDE * scale_x < drawn["width"] < 0.6 * SIDE * scale_x
    # Faceless frames: the thumbnail without any box.
    first = page.locator("[data-utterance][data-index='0']")
    assert first.locator("[data-thumbnail] img").count() == 1
    assert first.locator("rect[data-face-box]").count() == 0
    page.screenshot(path=artifacts / "faces.png", full_page=True)
    assert console_errors == [], console_errors
    context.close()
