"""The asynchronous client: the same resources as :class:`moodreel.Moodreel`, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import httpx

from moodreel import _base
from moodreel._base import FileInput, RetryPolicy, TranscriptInput
from moodreel.errors import AnalysisFailedError, ApiError, ConnectionError, WaitTimeoutError
from moodreel.sse import EventParser
from moodreel.types import (
    TERMINAL_STATUSES,
    Analysis,
    AnalysisDetail,
    AnalysisPage,
    ApiKey,
    ApiKeyCreated,
    Event,
    ExportFormat,
    Tokens,
    UploadTarget,
    Usage,
)

SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class AsyncMoodreel:
    """The asynchronous client; configured like :class:`moodreel.Moodreel`. Use it as an async
    context manager, or await :meth:`close`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        access_token: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url, headers = _base.resolve_config(base_url, api_key, access_token)
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._storage_http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, write=None), transport=transport
        )
        self.analyses = Analyses(self)
        self.uploads = Uploads(self)
        self.usage = UsageResource(self)
        self.api_keys = ApiKeys(self)
        self.auth = Auth(self)
        self.webhooks = Webhooks(self)

    async def close(self) -> None:
        await self._http.aclose()
        await self._storage_http.aclose()

    async def __aenter__(self) -> AsyncMoodreel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        url: str,
        *,
        http: httpx.AsyncClient | None = None,
        repeatable: bool | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One call with retries; an error status raises :class:`ApiError`. A POST is repeated
        only when it carries an ``Idempotency-Key``; a body is re-sent when ``kwargs['content']``
        is a callable giving it anew."""
        if repeatable is None:
            repeatable = method in SAFE_METHODS or "Idempotency-Key" in (kwargs.get("headers") or {})
        content_factory = kwargs.pop("content", None) if callable(kwargs.get("content")) else None
        http = http or self._http
        attempt = 0
        while True:
            if content_factory is not None:
                kwargs["content"] = content_factory()
            try:
                response = await http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                delay = self.retry.delay(attempt, None) if repeatable else None
                if delay is None:
                    raise ConnectionError(f"{method} {url}: {exc!r}") from exc
            else:
                if response.status_code < 400:
                    return response
                delay = self.retry.delay(attempt, response) if repeatable else None
                if delay is None:
                    raise ApiError.from_response(response)
            await asyncio.sleep(delay)
            attempt += 1


class Auth:
    def __init__(self, client: AsyncMoodreel):
        self._client = client

    async def signup(self, email: str, password: str) -> dict[str, Any]:
        return (
            await self._client.request("POST", "/v1/auth/signup", json={"email": email, "password": password})
        ).json()

    async def login(self, email: str, password: str) -> Tokens:
        """Tokens for an account; pass ``access_token`` to a new client to manage API keys."""
        response = await self._client.request(
            "POST", "/v1/auth/login", data={"username": email, "password": password}
        )
        return cast(Tokens, response.json())

    async def change_password(self, current_password: str, new_password: str) -> Tokens:
        """Change the signed-in account's password (a user access token, not an API key). Every
        other session ends; this client goes on with the returned tokens."""
        response = await self._client.request(
            "POST",
            "/v1/auth/password",
            json={"current_password": current_password, "new_password": new_password},
        )
        tokens = cast(Tokens, response.json())
        self._client._http.headers["Authorization"] = f"Bearer {tokens['access_token']}"
        return tokens

    async def reset_password(self, token: str, new_password: str) -> None:
        """Set a new password with a reset token from the operator (``moodreel users
        reset-password EMAIL``); needs no credentials. The token works once."""
        await self._client.request(
            "POST", "/v1/auth/password-reset", json={"token": token, "new_password": new_password}
        )

    async def me(self) -> dict[str, Any]:
        return (await self._client.request("GET", "/v1/auth/me")).json()


class Uploads:
    def __init__(self, client: AsyncMoodreel):
        self._client = client

    async def upload(
        self, file: FileInput, *, filename: str | None = None, content_type: str | None = None
    ) -> str:
        """Ask for an upload target, PUT the bytes there, and return the ``upload_id``."""
        prepared = _base.prepare_file(file, filename, content_type)
        target = cast(
            UploadTarget,
            (
                await self._client.request(
                    "POST",
                    "/v1/uploads",
                    json={
                        "filename": prepared.filename,
                        "content_type": prepared.content_type,
                        "size_bytes": prepared.size,
                    },
                )
            ).json(),
        )
        headers = {**target["headers"], "Content-Length": str(prepared.size)}
        # A presigned storage URL or the gateway's signed one: either way no API credentials go with it.
        await self._client.request(
            target["method"],
            target["url"],
            http=self._client._storage_http,
            repeatable=prepared.repeatable,
            headers=headers,
            content=prepared.achunks,
        )
        return target["upload_id"]


class Analyses:
    def __init__(self, client: AsyncMoodreel):
        self._client = client

    async def create(
        self,
        *,
        file: FileInput | None = None,
        url: str | None = None,
        upload_id: str | None = None,
        transcript: TranscriptInput | None = None,
        options: Mapping[str, Any] | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Analysis:
        """Submit a video: a local ``file`` (path, bytes or binary file object; uploaded first),
        a ``url`` the server fetches, or an ``upload_id`` already uploaded.

        ``transcript`` is SRT/WebVTT text, a path to such a file (``.json``: segments), or a list
        of ``{start, end, text, speaker?}``. Without ``idempotency_key`` one is generated, so the
        client's own retries never create a second analysis."""
        if sum(source is not None for source in (file, url, upload_id)) != 1:
            raise ValueError("give exactly one of file=, url= and upload_id=")
        if file is not None:
            upload_id = await self._client.uploads.upload(file, filename=filename, content_type=content_type)
        body = _base.analysis_body(
            video_url=url,
            upload_id=upload_id,
            transcript=transcript,
            options=options,
            name=name,
            metadata=metadata,
            callback_url=callback_url,
        )
        headers = {"Idempotency-Key": idempotency_key or _base.idempotency_key()}
        return cast(
            Analysis, (await self._client.request("POST", "/v1/analyses", json=body, headers=headers)).json()
        )

    async def get(self, analysis_id: str) -> AnalysisDetail:
        return cast(AnalysisDetail, (await self._client.request("GET", f"/v1/analyses/{analysis_id}")).json())

    async def list(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> AnalysisPage:
        """One page, newest first; pass ``next_cursor`` as ``cursor`` for the next."""
        params = _base.drop_none({"status": status, "q": q, "limit": limit, "cursor": cursor})
        return cast(AnalysisPage, (await self._client.request("GET", "/v1/analyses", params=params)).json())

    async def iterate(
        self, *, status: str | None = None, q: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Analysis]:
        """Every analysis, newest first, following the cursors."""
        cursor = None
        while True:
            page = await self.list(status=status, q=q, limit=page_size, cursor=cursor)
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if not cursor:
                return

    async def cancel(self, analysis_id: str) -> None:
        """Cancel a queued or processing analysis (quota refunded), or delete a finished one."""
        await self._client.request("DELETE", f"/v1/analyses/{analysis_id}")

    delete = cancel

    async def export(self, analysis_id: str, format: ExportFormat = "json") -> str:  # noqa: A002
        """The results as JSON, CSV or SRT text."""
        return (
            await self._client.request("GET", f"/v1/analyses/{analysis_id}/export", params={"format": format})
        ).text

    async def stream(
        self, analysis_id: str, *, last_event_id: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """Live events until the terminal ``status``; a dropped connection is resumed after the
        last event seen (``Last-Event-ID``), waiting the server's ``retry`` interval."""
        parser = EventParser(last_event_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if parser.last_event_id:
                headers["Last-Event-ID"] = parser.last_event_id
            try:
                async with self._client._http.stream(
                    "GET",
                    f"/v1/analyses/{analysis_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        delay = self._client.retry.delay(failures, response)
                        if delay is None:
                            raise ApiError.from_response(response)
                    else:
                        failures = 0
                        async for line in response.aiter_lines():
                            event = parser.feed(line)
                            if event is None:
                                continue
                            yield event
                            if event.is_terminal:
                                return
                        delay = parser.retry_seconds or 1.0
            except httpx.TransportError as exc:
                delay = self._client.retry.delay(failures, None)
                if delay is None:
                    raise ConnectionError(f"event stream of {analysis_id}: {exc!r}") from exc
            failures += 1
            if deadline is not None and time.monotonic() + delay > deadline:
                raise WaitTimeoutError(f"analysis {analysis_id}: no terminal event within {timeout:g} s")
            await asyncio.sleep(delay)

    async def wait(
        self,
        analysis_id: str,
        *,
        timeout: float = 600.0,
        poll_interval: float = 1.0,
        raise_on_failure: bool = True,
    ) -> AnalysisDetail:
        """Poll until the analysis is finished and return it with its results.

        A failed or canceled analysis raises :class:`AnalysisFailedError` (its ``code`` is the
        job's error code) unless ``raise_on_failure=False``."""
        deadline = time.monotonic() + timeout
        while True:
            analysis = await self.get(analysis_id)
            if analysis["status"] in TERMINAL_STATUSES:
                if raise_on_failure and analysis["status"] != "succeeded":
                    raise AnalysisFailedError(dict(analysis))
                return analysis
            if time.monotonic() + poll_interval > deadline:
                raise WaitTimeoutError(
                    f"analysis {analysis_id} still {analysis['status']} after {timeout:g} s"
                )
            await asyncio.sleep(poll_interval)


class UsageResource:
    def __init__(self, client: AsyncMoodreel):
        self._client = client

    async def get(self) -> Usage:
        """This month's meters and the request rate."""
        return cast(Usage, (await self._client.request("GET", "/v1/usage")).json())

    __call__ = get


class ApiKeys:
    """Managing keys needs a user access token (``AsyncMoodreel(access_token=…)``), not a key."""

    def __init__(self, client: AsyncMoodreel):
        self._client = client

    async def create(
        self, name: str, *, scopes: list[str] | None = None, expires_in_days: int | None = None
    ) -> ApiKeyCreated:
        """A new key; ``key`` is in this answer only."""
        body = _base.drop_none({"name": name, "scopes": scopes, "expires_in_days": expires_in_days})
        return cast(ApiKeyCreated, (await self._client.request("POST", "/v1/api-keys", json=body)).json())

    async def list(self) -> list[ApiKey]:
        return cast(list[ApiKey], (await self._client.request("GET", "/v1/api-keys")).json()["items"])

    async def revoke(self, key_id: str) -> None:
        await self._client.request("DELETE", f"/v1/api-keys/{key_id}")


class Webhooks:
    """Webhook endpoints and their delivery log. Verify deliveries with :func:`moodreel.webhooks.verify`."""

    def __init__(self, client: AsyncMoodreel):
        self._client = client

    async def create_endpoint(
        self, url: str, *, description: str = "", event_types: list[str] | None = None
    ) -> dict:
        """A new endpoint; its signing ``secret`` is in this answer only."""
        body = {"url": url, "description": description, "event_types": event_types or []}
        return (await self._client.request("POST", "/v1/webhooks/endpoints", json=body)).json()

    async def list_endpoints(self) -> list[dict]:
        return (await self._client.request("GET", "/v1/webhooks/endpoints")).json()["items"]

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await self._client.request("DELETE", f"/v1/webhooks/endpoints/{endpoint_id}")

    async def set_endpoint_active(self, endpoint_id: str, active: bool) -> dict:
        """Disable (``False``) or enable an endpoint: a disabled one receives nothing."""
        return (
            await self._client.request(
                "PATCH", f"/v1/webhooks/endpoints/{endpoint_id}", json={"is_active": active}
            )
        ).json()

    async def send_test(self, endpoint_id: str) -> dict:
        """Queue a signed ``webhook.test`` event to the endpoint; returns its delivery."""
        return (await self._client.request("POST", f"/v1/webhooks/endpoints/{endpoint_id}/test")).json()

    async def resend(self, delivery_id: str) -> dict:
        """Send a finished delivery once more (same body and ``webhook-id``)."""
        return (await self._client.request("POST", f"/v1/webhooks/deliveries/{delivery_id}/resend")).json()

    async def deliveries(self, **params: Any) -> dict:
        return (
            await self._client.request("GET", "/v1/webhooks/deliveries", params=_base.drop_none(params))
        ).json()

    async def callback_secret(self) -> str:
        """The secret that signs deliveries to your analyses' ``callback_url``."""
        return (await self._client.request("GET", "/v1/webhooks/callback-secret")).json()["secret"]
