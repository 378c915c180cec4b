"""The OpenAPI document is complete: tags, security schemes, problem responses, webhooks, examples."""

from __future__ import annotations

import pytest

from services.gateway.main import create_app
from tests.gateway.conftest import make_settings

PUBLIC_OPERATIONS = {
    ("post", "/v1/auth/signup"),
    ("post", "/v1/auth/login"),
    ("post", "/v1/auth/refresh"),
    ("post", "/v1/auth/logout"),
    ("post", "/v1/auth/password-reset"),
    ("put", "/v1/uploads/{upload_id}/content"),
}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    settings = make_settings(
        "sqlite:///" + str(tmp_path_factory.mktemp("o") / "o.db"), tmp_path_factory.mktemp("d")
    )
    return create_app(settings).openapi()


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path.startswith("/v1/"):
                yield method, path, operation


def test_security_schemes(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": schemes["BearerAuth"]["description"],
    }
    assert schemes["ApiKeyAuth"]["in"] == "header" and schemes["ApiKeyAuth"]["name"] == "X-API-Key"


def test_every_operation_is_tagged_summarised_and_secured(spec):
    seen = 0
    for method, path, operation in operations(spec):
        seen += 1
        assert operation.get("tags"), (method, path)
        assert operation.get("summary"), (method, path)
        if (method, path) in PUBLIC_OPERATIONS or path.startswith("/v1/webhook"):
            continue
        schemes = {name for requirement in operation.get("security", []) for name in requirement}
        assert {"BearerAuth", "ApiKeyAuth"} <= schemes, (method, path)
    assert seen >= 15


def test_errors_are_documented_as_problem_json(spec):
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert "application/problem+json" in response["content"], (method, path, status)


def test_webhook_payloads_documented(spec):
    assert set(spec["webhooks"]) >= {"analysis.succeeded", "analysis.failed"}
    operation = spec["webhooks"]["analysis.succeeded"]["post"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert "WebhookEvent" in spec["components"]["schemas"]


def test_submission_has_examples_and_202(spec):
    operation = spec["paths"]["/v1/analyses"]["post"]
    assert "202" in operation["responses"]
    schema = spec["components"]["schemas"]["AnalysisCreate"]
    assert schema["examples"][0]["video_url"].startswith("https://")
    header_names = {p["name"] for p in operation["parameters"]}
    assert "Idempotency-Key" in header_names
    assert {tag["name"] for tag in spec["tags"]} >= {"auth", "api-keys", "analyses", "uploads", "usage"}
