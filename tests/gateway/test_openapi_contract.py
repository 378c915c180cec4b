"""The OpenAPI document and the gateway agree: every problem an operation can answer is declared,
inputs the document allows are accepted (and those it forbids are refused), 405s list every
method of the path, and links chain each resource's create -> read -> update/delete."""

from __future__ import annotations

import re

import pytest
from jsonschema import Draft202012Validator

from tests.gateway.conftest import new_api_key
from tests.platform.auth.test_auth import assert_problem

PUBLIC_IP_URL = "https://93.184.215.14/video.mp4"


@pytest.fixture
def spec(client) -> dict:
    return client.get("/openapi.json").json()


def schema_accepts(spec: dict, name: str, instance) -> bool:
    validator = Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    )
    return validator.is_valid(instance)


def operation(spec: dict, method: str, path: str) -> dict:
    return spec["paths"][path][method]


def test_every_operation_declares_the_framework_problems(spec):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            declared = set(op["responses"])
            if "requestBody" in op:
                assert {"400", "413", "422"} <= declared, (method, path)
            if op.get("security"):
                assert {"401", "429"} <= declared, (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert "application/problem+json" in response["content"], (method, path, status)


def test_a_body_that_does_not_parse_is_a_declared_400(client, spec, account):
    for path in ("/v1/api-keys", "/v1/auth/signup", "/v1/auth/refresh", "/v1/auth/logout"):
        response = client.post(
            path, content=b"\x8d{not json", headers={**account.headers, "Content-Type": "application/json"}
        )
        assert_problem(response, 400, "bad_request")
        assert "400" in operation(spec, "post", path)["responses"]


@pytest.mark.parametrize(
    "path, allow",
    [
        ("/v1/analyses/e3e70682-c209-1cac-a29f-6fbed82c07cd", "GET, DELETE"),
        ("/v1/api-keys", "GET, POST"),
        ("/v1/webhooks/endpoints/e3e70682-c209-1cac-a29f-6fbed82c07cd", "GET, PATCH, DELETE"),
        ("/v1/analyses", "GET, POST"),
    ],
)
def test_405_allow_lists_every_method_of_the_path(client, spec, path, allow):
    response = client.options(path)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allow
    template = next(p for p in spec["paths"] if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", p), path))
    assert {m.upper() for m in spec["paths"][template]} == set(allow.split(", "))


def test_submission_document_states_exactly_one_source(spec):
    upload = "e3e70682-c209-1cac-a29f-6fbed82c07cd"
    assert not schema_accepts(spec, "AnalysisCreate", {})
    assert not schema_accepts(spec, "AnalysisCreate", {"video_url": PUBLIC_IP_URL, "upload_id": upload})
    assert schema_accepts(spec, "AnalysisCreate", {"video_url": PUBLIC_IP_URL})
    assert schema_accepts(spec, "AnalysisCreate", {"video_url": PUBLIC_IP_URL, "upload_id": None})
    assert schema_accepts(spec, "AnalysisCreate", {"upload_id": upload, "video_url": None})


@pytest.mark.parametrize("path", ["/v1/analyses", "/v1/webhooks/deliveries"])
def test_every_cursor_of_the_documented_pattern_is_accepted(client, spec, api_key, path):
    parameter = next(p for p in operation(spec, "get", path)["parameters"] if p["name"] == "cursor")
    pattern = parameter["schema"]["pattern"]
    headers = {"X-API-Key": api_key}
    for cursor in ("0_" + "0" * 32, "9999999999999999_" + "f" * 32, "1764547200000000_" + "0a" * 16):
        assert re.fullmatch(pattern, cursor)
        assert client.get(path, params={"cursor": cursor}, headers=headers).status_code == 200
    for cursor in ("", "0" * 200, "12_XYZ"):
        assert not re.fullmatch(pattern, cursor)
        assert_problem(client.get(path, params={"cursor": cursor}, headers=headers), 400, "invalid_cursor")


def test_cursor_pages_round_trip(client, api_key):
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    for n in range(3):
        body = {"video_url": f"https://93.184.215.14/v{n}.mp4"}
        assert client.post("/v1/analyses", json=body, headers=headers).status_code == 202
    first = client.get("/v1/analyses", params={"limit": 2}, headers=headers).json()
    second = client.get("/v1/analyses", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers)
    ids = [item["id"] for item in first["items"] + second.json()["items"]]
    assert len(ids) == len(set(ids)) == 3 and second.json()["next_cursor"] is None


def test_login_document_requires_non_empty_fields(client, spec):
    form = operation(spec, "post", "/v1/auth/login")["requestBody"]["content"]
    schema = form["application/x-www-form-urlencoded"]["schema"]
    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
    assert schema["properties"]["username"]["minLength"] == 1
    assert schema["properties"]["password"]["minLength"] == 1


def test_upload_document_states_the_accepted_types_and_size(client, spec, settings, api_key):
    size = settings.max_media_bytes
    assert spec["components"]["schemas"]["UploadCreate"]["properties"]["size_bytes"]["maximum"] == size
    cases = [
        ({"filename": "clip.M4V", "size_bytes": 10}, 201),
        ({"filename": "clip.bin", "content_type": "video/webm", "size_bytes": 10}, 201),
        ({"filename": "clip.mp4", "content_type": "application/octet-stream", "size_bytes": 10}, 201),
        ({"filename": "a.MP4", "content_type": "Video/MP4; codecs=avc1", "size_bytes": 10}, 201),
        ({"filename": "a.m4a", "content_type": " \t", "size_bytes": 10}, 201),
        ({"filename": "a.m4A", "content_type": "\u001f", "size_bytes": 10}, 415),
        ({"filename": "a.mkv", "content_type": "video/x-matro\u212aa", "size_bytes": 10}, 415),
        ({"filename": "a.m\u212av", "size_bytes": 10}, 415),
        ({"filename": "a.mp4/", "size_bytes": 10}, 415),
        ({"filename": ".m4V", "size_bytes": 10}, 415),
        ({"filename": "dir/.mp4", "size_bytes": 10}, 415),
        ({"filename": "clip.mp4", "content_type": "000", "size_bytes": 10}, 415),
        ({"filename": "clip.mp4", "content_type": "video/mp4", "size_bytes": size + 1}, 413),
    ]
    for body, status in cases:
        assert schema_accepts(spec, "UploadCreate", body) == (status == 201), body
        response = client.post("/v1/uploads", json=body, headers={"X-API-Key": api_key})
        assert response.status_code == status, (body, response.text)


def test_nul_in_stored_text_is_a_validation_problem(client, account, api_key):
    response = client.post("/v1/api-keys", json={"name": "a\x00b"}, headers=account.headers)
    assert_problem(response, 422, "validation_error")
    response = client.post("/v1/auth/signup", json={"email": "a\x00@example.com", "password": "x" * 12})
    assert_problem(response, 422, "validation_error")
    body = {"video_url": PUBLIC_IP_URL, "transcript": "1\n00:00:00,000 --> 00:00:01,000\nhi\x00\n"}
    response = client.post("/v1/analyses", json=body, headers={"X-API-Key": api_key})
    assert_problem(response, 422, "validation_error")


def resolve(expression: str, body: dict):
    assert expression.startswith("$response.body#/")
    value = body
    for part in expression.removeprefix("$response.body#/").split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def follow(client, spec, source: dict, link_name: str, body: dict, headers: dict, json_body=None):
    """Send the request a link describes, from the response body of its source operation (with
    ``json_body`` as the request body where the link supplies none)."""
    success = next(status for status in source["responses"] if status.startswith("2"))
    link = source["responses"][success]["links"][link_name]
    by_id = {
        op["operationId"]: (method, path)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    method, path = by_id[link["operationId"]]
    for name, expression in link.get("parameters", {}).items():
        path = path.replace("{" + name + "}", str(resolve(expression, body)))
    if "requestBody" in link:
        json_body = {key: resolve(value, body) for key, value in link["requestBody"].items()}
    return client.request(method.upper(), path, json=json_body, headers=headers)


def test_links_chain_the_lifecycles(client, spec, account):
    key = new_api_key(client, account)
    key_headers = {"X-API-Key": key["key"]}

    created = client.post("/v1/analyses", json={"video_url": PUBLIC_IP_URL}, headers=key_headers)
    source = operation(spec, "post", "/v1/analyses")
    assert follow(client, spec, source, "GetAnalysis", created.json(), key_headers).status_code == 200
    export = follow(client, spec, source, "ExportAnalysis", created.json(), key_headers)
    assert_problem(export, 409, "analysis_not_finished")
    assert follow(client, spec, source, "DeleteAnalysis", created.json(), key_headers).status_code == 204

    upload = client.post("/v1/uploads", json={"filename": "a.mp4", "size_bytes": 10}, headers=key_headers)
    source = operation(spec, "post", "/v1/uploads")
    assert follow(client, spec, source, "GetUpload", upload.json(), key_headers).status_code == 200
    analyse = follow(client, spec, source, "AnalyseUpload", upload.json(), key_headers)
    assert_problem(analyse, 409, "upload_incomplete")

    hook = client.post(
        "/v1/webhooks/endpoints", json={"url": "https://93.184.215.14/hook"}, headers=key_headers
    )
    assert hook.status_code == 201, hook.text
    source = operation(spec, "post", "/v1/webhooks/endpoints")
    assert follow(client, spec, source, "GetWebhookEndpoint", hook.json(), key_headers).status_code == 200
    update = follow(
        client, spec, source, "UpdateWebhookEndpoint", hook.json(), key_headers, {"description": "x"}
    )
    assert update.status_code == 200 and update.json()["description"] == "x"
    assert follow(client, spec, source, "DeleteWebhookEndpoint", hook.json(), key_headers).status_code == 204

    other = new_api_key(client, account)
    source = operation(spec, "post", "/v1/api-keys")
    assert follow(client, spec, source, "RevokeApiKey", other, account.headers).status_code == 204
    assert_problem(client.get("/v1/usage", headers={"X-API-Key": other["key"]}), 401, "unauthorized")
