"""The analyses list shows names, searches them (``q``) and filters canceled analyses."""

from __future__ import annotations

import httpx

from tests.dashboard.helpers import PASSWORD, signed_in_client
from tests.dashboard.test_dashboard_http import gateway  # noqa: F401 - the module's gateway fixture


def test_list_shows_names_searches_them_and_filters_canceled(gateway):  # noqa: F811
    client, email = signed_in_client(gateway)
    with httpx.Client(base_url=gateway, timeout=30.0) as api:
        token = api.post("/v1/auth/login", data={"username": email, "password": PASSWORD}).json()[
            "access_token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        ids = {}
        for name in ("Quarterly <b>review</b>", "Support call"):
            created = api.post(
                "/v1/analyses",
                json={"video_url": "https://93.184.215.14/v.mp4", "name": name},
                headers=headers,
            )
            assert created.status_code == 202, created.text
            ids[name] = created.json()["id"]
        assert api.delete(f"/v1/analyses/{ids['Support call']}", headers=headers).status_code == 204

    listing = client.get("/dashboard/analyses")
    assert "Quarterly &lt;b&gt;review&lt;/b&gt;" in listing.text and "Support call" in listing.text
    searched = client.get("/dashboard/analyses", params={"q": "REVIEW"})
    assert "Quarterly &lt;b&gt;review" in searched.text and "Support call" not in searched.text
    assert 'value="REVIEW"' in searched.text  # the search box keeps its value
    nothing = client.get("/dashboard/analyses", params={"q": "no such name"})
    assert "No analyses match." in nothing.text
    canceled = client.get("/dashboard/analyses", params={"status": "canceled"})
    assert "Support call" in canceled.text and "Quarterly" not in canceled.text
    assert ">Canceled</a>" in canceled.text
    client.close()


def test_unknown_pages_and_analyses_get_a_human_404(gateway):  # noqa: F811
    anonymous = httpx.get(f"{gateway}/dashboard/no-such-page", timeout=30)
    assert anonymous.status_code == 404 and anonymous.headers["content-type"].startswith("text/html")
    assert "Page not found" in anonymous.text and "/dashboard/no-such-page" in anonymous.text
    client, _ = signed_in_client(gateway)
    missing = client.get("/dashboard/analyses/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and "Page not found" in missing.text
    assert "Back to analyses" in missing.text
    client.close()


def test_the_form_keeps_its_values_after_an_error(gateway):  # noqa: F811
    from tests.dashboard.helpers import csrf_from

    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/analyses/new"))
    refused = client.post(
        "/dashboard/analyses",
        data={
            "csrf_token": token,
            "video_url": "http://127.0.0.1:9/private.mp4",
            "window_seconds": "3",
            "name": 'Call "A" <script>',
        },
        files={"video_file": ("", b"", "application/octet-stream")},
    )
    assert refused.status_code in (400, 422)
    assert 'value="http://127.0.0.1:9/private.mp4"' in refused.text and 'value="3"' in refused.text
    assert 'value="Call &#34;A&#34; &lt;script&gt;"' in refused.text  # kept, and escaped
    client.close()


def test_the_form_submits_the_name(gateway):  # noqa: F811
    from tests.dashboard.helpers import csrf_from

    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/analyses/new"))
    assert 'name="name"' in client.get("/dashboard/analyses/new").text
    submitted = client.post(
        "/dashboard/analyses",
        data={"csrf_token": token, "video_url": "https://93.184.215.14/v.mp4", "name": "  Board <call>  "},
        files={"video_file": ("", b"", "application/octet-stream")},
    )
    assert submitted.status_code == 303, submitted.text[-2000:]
    page = client.get(submitted.headers["location"])
    assert "Board &lt;call&gt;" in page.text
    # A URL source: no player, and the page says why.
    assert "data-player" not in page.text and "data-media-not-stored" in page.text
    assert "submitted by URL" in page.text
    client.close()


def test_the_key_form_keeps_its_name_after_an_error(gateway):  # noqa: F811
    from tests.dashboard.helpers import csrf_from

    client, _ = signed_in_client(gateway)
    token = csrf_from(client.get("/dashboard/keys"))
    refused = client.post("/dashboard/keys", data={"csrf_token": token, "name": '<"x">' + "y" * 120})
    assert refused.status_code == 422
    assert 'value="&lt;&#34;x&#34;&gt;' in refused.text
    client.close()
