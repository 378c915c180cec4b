"""/docs and /redoc load only local, pinned assets; problem types resolve to explanations."""

from __future__ import annotations

import re

from tests.platform.auth.test_auth import assert_problem


def asset_urls(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: '([^']+)'", page)


def test_swagger_ui_and_redoc_use_no_cdn(client):
    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "://" not in " ".join(asset_urls(page.text)), asset_urls(page.text)
        assert "cdn.jsdelivr.net" not in page.text and "fonts.googleapis.com" not in page.text
        urls = [url for url in asset_urls(page.text) if asset in url]
        assert urls and urls[0].startswith("/dashboard/static/vendor/")
        script = client.get(urls[0])
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert len(script.content) > 500_000
    css = client.get("/dashboard/static/vendor/swagger-ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert client.get("/openapi.json").status_code == 200


def test_problem_types_resolve_to_a_page_explaining_the_code(client, api_key):
    body = assert_problem(client.get("/v1/analyses/not-a-uuid/nothing"), 404, "not_found")
    page = client.get(body["type"])
    assert page.status_code == 200 and "Not found" in page.text and "HTTP 404" in page.text

    refused = client.post(
        "/v1/analyses", json={"video_url": "http://127.0.0.1/x.mp4"}, headers={"X-API-Key": api_key}
    )
    problem = assert_problem(refused, 400, "url_not_allowed")
    as_json = client.get(problem["type"], headers={"Accept": "application/json"}).json()
    assert as_json["code"] == "url_not_allowed" and as_json["status"] == 400 and as_json["title"]

    quota = client.get("/problems/quota_exceeded")
    assert quota.status_code == 200 and "Monthly quota exhausted" in quota.text and "HTTP 429" in quota.text
    index = client.get("/problems").text
    for code in ("quota_exceeded", "transcript_invalid", "idempotency_key_reused", "invalid_event_id"):
        assert f'href="/problems/{code}"' in index
    unknown = client.get("/problems/<script>")
    assert unknown.status_code == 404 and "<script>" not in unknown.text
