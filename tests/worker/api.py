"""A small client of the real gateway for end-to-end tests: accounts, analyses, SSE, webhooks."""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class SseEvent:
    id: str | None
    type: str
    data: dict[str, Any]
    received_at: float  # time.monotonic() when it arrived


class ApiUser:
    def __init__(self, base_url: str, api_key: str, user_id: str):
        self.user_id = user_id
        self.http = httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=30.0)

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/v1/analyses", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def get(self, analysis_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/analyses/{analysis_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, analysis_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            analysis = self.get(analysis_id)
            if analysis["status"] in TERMINAL:
                return analysis
            if time.monotonic() > deadline:
                raise TimeoutError(f"analysis {analysis_id} still {analysis['status']} after {timeout:g} s")
            time.sleep(0.25)

    def events(self, analysis_id: str, timeout: float = 120.0) -> list[SseEvent]:
        """Read the SSE stream until its terminal status event."""
        collected: list[SseEvent] = []
        with self.http.stream("GET", f"/v1/analyses/{analysis_id}/events", timeout=timeout) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            event: dict[str, Any] = {}
            for line in response.iter_lines():
                if line.startswith("id:"):
                    event["id"] = line[3:].strip()
                elif line.startswith("event:"):
                    event["type"] = line[6:].strip()
                elif line.startswith("data:"):
                    event["data"] = json.loads(line[5:].strip())
                elif line == "" and "data" in event:
                    collected.append(
                        SseEvent(
                            event.get("id"), event.get("type", "message"), event["data"], time.monotonic()
                        )
                    )
                    if collected[-1].type == "status" and collected[-1].data.get("status") in TERMINAL:
                        return collected
                    event = {}
        return collected

    def usage(self) -> dict[str, Any]:
        return self.http.get("/v1/usage").json()


def new_user(base_url: str) -> ApiUser:
    """Sign up, sign in, and mint an API key with both scopes: the path a real integration takes."""
    email = f"e2e-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    # Each user signs up from an address of its own (the stack's gateway trusts loopback as its
    # proxy), so the per-address sign-up limit holds for a client while the suite signs up many.
    client_address = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"
    headers = {"X-Forwarded-For": client_address}
    with httpx.Client(base_url=base_url, timeout=30.0, headers=headers) as http:
        signup = http.post("/v1/auth/signup", json={"email": email, "password": password})
        assert signup.status_code == 201, signup.text
        login = http.post("/v1/auth/login", data={"username": email, "password": password})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        key = http.post("/v1/api-keys", json={"name": "e2e"}, headers={"Authorization": f"Bearer {token}"})
        assert key.status_code == 201, key.text
    return ApiUser(base_url, key.json()["key"], signup.json()["id"])
