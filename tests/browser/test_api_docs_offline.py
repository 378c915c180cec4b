"""/docs (Swagger UI) and /redoc render in Chromium with every request outside the gateway
blocked: their assets are the pinned local copies."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.fixtures.db import migrate
from tests.worker import stack


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("docs-gateway")
    tag = uuid.uuid4().hex[:10]
    env = {
        "MOODREEL_DATABASE_URL": f"sqlite:///{directory / 'moodreel.db'}",
        "MOODREEL_DATA_DIR": str(directory / "data"),
        "MOODREEL_REDIS_KEY_PREFIX": f"moodreel-docs-{tag}:",
        "MOODREEL_QUEUE_NAME": f"moodreel-docs-{tag}:queue",
        # Small, so the upload form's own size check is cheap to exercise.
        "MOODREEL_MAX_MEDIA_BYTES": "100000",
    }
    migrate(env["MOODREEL_DATABASE_URL"])
    process = stack.gateway(env, directory)
    process.start(timeout=90)
    try:
        yield f"http://127.0.0.1:{process.port}"
    finally:
        process.stop()


@pytest.mark.parametrize(
    "path, selector", [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")], ids=["swagger", "redoc"]
)
def test_api_docs_render_without_internet(browser, docs_gateway, artifacts, path, selector):
    context = browser.new_context()
    blocked: list[str] = []

    def only_the_gateway(route) -> None:
        if urlsplit(route.request.url).netloc == urlsplit(docs_gateway).netloc:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_gateway)
    page = context.new_page()
    try:
        page.goto(docs_gateway + path)
        page.wait_for_selector(f"{selector}:has-text('Moodreel API')", timeout=60_000)
        if path == "/docs":
            page.wait_for_selector("text=Submit a video for analysis", timeout=30_000)
        # Redoc's "API docs by Redocly" footer links its logo from its CDN (cosmetic; it has no
        # option to drop it); nothing else may leave the machine.
        assert [url for url in blocked if url != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == []
    finally:
        page.screenshot(path=str(artifacts / "page.png"))
        context.close()
