"""Signing in through the dashboard's forms, as a browser would (CSRF token from the page)."""

from __future__ import annotations

import uuid

import httpx

PASSWORD = "correct horse battery staple"


def csrf_from(page: httpx.Response) -> str:
    marker = 'name="csrf_token" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


def signed_in_client(base_url: str) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=base_url, timeout=30.0)
    token = csrf_from(client.get("/dashboard/signup"))
    email = f"dash-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post(
        "/dashboard/signup", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/analyses"
    return client, email
