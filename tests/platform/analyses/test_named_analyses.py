"""Named analyses: ``name`` (default from the upload's filename or the URL) and ``metadata`` on
create, returned by the API and the JSON export, searchable with ``?q=``, size-limited."""

from __future__ import annotations

import json

from tests.platform.analyses.test_analyses import submit
from tests.platform.auth.test_auth import assert_problem
from tests.platform.uploads.test_uploads import MEDIA, start_upload


def test_name_and_metadata_round_trip_and_default_names(client, api_key):
    named = submit(
        client,
        api_key,
        {
            "video_url": "https://93.184.215.14/a/b.mp4",
            "name": "Board call Q3",
            "metadata": {"team": "sales", "n": 3},
        },
    )
    assert named.status_code == 202, named.text
    assert named.json()["name"] == "Board call Q3" and named.json()["metadata"] == {"team": "sales", "n": 3}

    from_url = submit(client, api_key, {"video_url": "https://93.184.215.14/media/Interview%20one.mp4?x=1"})
    assert from_url.json()["name"] == "Interview one.mp4" and from_url.json()["metadata"] == {}

    target = start_upload(client, api_key, filename="team standup.mp4").json()
    assert client.put(target["url"], content=MEDIA, headers=target["headers"]).status_code == 200
    from_upload = submit(client, api_key, {"upload_id": target["upload_id"]})
    assert from_upload.status_code == 202 and from_upload.json()["name"] == "team standup.mp4"

    detail = client.get(f"/v1/analyses/{named.json()['id']}", headers={"X-API-Key": api_key}).json()
    assert detail["name"] == "Board call Q3" and detail["metadata"]["team"] == "sales"


def test_search_by_name_is_case_insensitive_and_literal(client, api_key):
    for name in ("Weekly SALES review", "Support call", "100% done_now"):
        assert (
            submit(client, api_key, {"video_url": "https://93.184.215.14/v.mp4", "name": name}).status_code
            == 202
        )
    headers = {"X-API-Key": api_key}

    def names(q: str) -> list[str]:
        response = client.get("/v1/analyses", params={"q": q}, headers=headers)
        assert response.status_code == 200, response.text
        return sorted(item["name"] for item in response.json()["items"])

    assert names("sales") == ["Weekly SALES review"]
    assert names("CALL") == ["Support call"]
    assert names("%") == ["100% done_now"]  # wildcards are literal
    assert names("_") == ["100% done_now"]
    assert names("nothing") == []
    assert len(client.get("/v1/analyses", headers=headers).json()["items"]) == 3
    # A NUL cannot be in a stored name (PostgreSQL text refuses it): a search for one is refused.
    refused = client.get("/v1/analyses", params={"q": "a\x00b"}, headers=headers)
    assert_problem(refused, 422, "validation_error")


def test_metadata_must_be_a_small_object(client, api_key):
    url = "https://93.184.215.14/v.mp4"
    too_big = submit(client, api_key, {"video_url": url, "metadata": {"blob": "x" * 5000}})
    body = assert_problem(too_big, 422, "validation_error")
    assert "4096" in json.dumps(body)
    assert_problem(
        submit(client, api_key, {"video_url": url, "metadata": ["not", "an", "object"]}),
        422,
        "validation_error",
    )
    assert_problem(submit(client, api_key, {"video_url": url, "name": "x" * 201}), 422, "validation_error")


def test_exports_carry_the_name_neutralised(client, api_key, database_url):
    """CSV rows name their analysis (spreadsheet formulas neutralised like every cell); every
    export's file name is the analysis' name, without path or header tricks."""
    import csv
    import io
    from urllib.parse import unquote

    from tests.platform.analyses.test_analyses import store_results

    hostile = '=HYPERLINK("http://x")/../"q"\r\n'
    created = submit(client, api_key, {"video_url": "https://93.184.215.14/v.mp4", "name": hostile.strip()})
    assert created.status_code == 202, created.text
    analysis_id = created.json()["id"]
    store_results(database_url, analysis_id, count=2)
    headers = {"X-API-Key": api_key}
    as_csv = client.get(f"/v1/analyses/{analysis_id}/export?format=csv", headers=headers)
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [row["analysis_name"] for row in rows] == ["'" + hostile.strip()] * 2
    disposition = as_csv.headers["content-disposition"]
    assert disposition.startswith(f"attachment; filename=\"moodreel-{analysis_id}.csv\"; filename*=UTF-8''")
    assert unquote(disposition.split("''", 1)[1]) == "=HYPERLINK(_http___x_)_..__q_.csv"
    srt = client.get(f"/v1/analyses/{analysis_id}/export?format=srt", headers=headers)
    assert unquote(srt.headers["content-disposition"].split("''", 1)[1]).endswith("_q_.srt")

    plain = submit(client, api_key, {"video_url": "https://93.184.215.14/Board%20call.mp4"}).json()
    store_results(database_url, plain["id"], count=1)
    as_json = client.get(f"/v1/analyses/{plain['id']}/export?format=json", headers=headers)
    assert json.loads(as_json.text)["name"] == "Board call.mp4"
    assert as_json.headers["content-disposition"].endswith("filename*=UTF-8''Board%20call.mp4.json")
