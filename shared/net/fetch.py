"""SSRF-safe HTTP for user-supplied URLs: media downloads and webhook deliveries.

Every hop (the first request and each redirect) is checked with the one URL policy
(``shared.net.urls.UrlPolicy``); the request then goes to an address that policy checked, with
the original ``Host`` header and TLS server name (certificates are still verified for the host
name), so a DNS answer that changes between check and connect (rebinding) cannot steer the
connection elsewhere. Proxies from the environment are ignored for the same reason.

Downloads stream to a file with the byte limit enforced while streaming (and ``Content-Length``
refused up front), connect/read timeouts per operation and one total deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.errors import CodedError
from shared.logging import get_logger
from shared.net.urls import UrlNotAllowed, UrlPolicy, system_resolver
from shared.settings import Settings, get_settings

log = get_logger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 1 << 16


class FetchError(CodedError):
    """A fetch that failed; ``code`` is the analysis error code, ``transient`` says retry may help."""


@dataclass(frozen=True)
class Download:
    path: Path
    size_bytes: int
    content_type: str | None
    final_url: str


@dataclass(frozen=True)
class PinnedResponse:
    status_code: int
    headers: httpx.Headers
    body: bytes = field(repr=False)


async def resolve_checked(url: httpx.URL, settings: Settings) -> str:
    """Check ``url`` with the URL policy and return the one address to connect to: one of the
    answers that were checked, from the same single lookup."""
    policy = UrlPolicy.from_settings(settings)
    try:
        checked = await asyncio.to_thread(policy.check, str(url), resolver=system_resolver)
    except UrlNotAllowed as exc:
        raise FetchError("url_not_allowed", exc.reason) from exc
    return checked.connect_address


def _pinned(client: httpx.AsyncClient, method: str, url: httpx.URL, address: str, **kwargs) -> httpx.Request:
    headers = httpx.Headers(kwargs.pop("headers", None))
    headers["host"] = url.netloc.decode("ascii")
    # The ASCII (IDNA) form: what the certificate names and what SNI carries.
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    return client.build_request(
        method, url.copy_with(host=address), headers=headers, extensions=extensions, **kwargs
    )


def _client(timeout: httpx.Timeout) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


def _transport_error(exc: httpx.TransportError) -> FetchError:
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(
            "download_failed", f"the server did not answer in time ({type(exc).__name__})", transient=True
        )
    return FetchError("download_failed", f"could not reach the server ({type(exc).__name__})", transient=True)


async def pinned_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    timeout: httpx.Timeout,
    total_timeout: float,
    max_response_bytes: int,
    settings: Settings | None = None,
) -> PinnedResponse:
    """One request to a checked address, redirects not followed, the response body truncated."""
    settings = settings or get_settings()
    target = httpx.URL(url)
    try:
        async with asyncio.timeout(total_timeout):
            address = await resolve_checked(target, settings)
            async with _client(timeout) as client:
                request = _pinned(client, method, target, address, headers=headers, content=content)
                response = await client.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body.extend(chunk[: max_response_bytes - len(body)])
                        if len(body) >= max_response_bytes:
                            break
                finally:
                    await response.aclose()
    except TimeoutError as exc:
        raise FetchError(
            "download_failed", f"the server did not answer within {total_timeout:g} s", transient=True
        ) from exc
    except httpx.TransportError as exc:
        raise _transport_error(exc) from exc
    return PinnedResponse(response.status_code, response.headers, bytes(body))


async def download_url(
    url: str, destination: Path, *, settings: Settings | None = None, max_bytes: int | None = None
) -> Download:
    """Stream ``url`` into ``destination``, following at most ``fetch_max_redirects`` redirects.

    Raises FetchError with code ``url_not_allowed`` (any hop breaks the SSRF rules),
    ``too_large`` (over the byte limit) or ``download_failed``; the partial file is removed.
    """
    settings = settings or get_settings()
    limit = max_bytes or min(settings.max_media_bytes, settings.worker_temp_max_bytes)
    timeout = httpx.Timeout(
        settings.fetch_read_timeout_seconds, connect=settings.fetch_connect_timeout_seconds
    )
    try:
        async with asyncio.timeout(settings.fetch_total_timeout_seconds), _client(timeout) as client:
            return await _follow(client, httpx.URL(url), destination, limit, settings)
    except TimeoutError as exc:
        destination.unlink(missing_ok=True)
        raise FetchError(
            "download_failed",
            f"the download did not finish within {settings.fetch_total_timeout_seconds:g} s",
        ) from exc
    except httpx.TransportError as exc:
        destination.unlink(missing_ok=True)
        raise _transport_error(exc) from exc
    except BaseException:
        destination.unlink(missing_ok=True)
        raise


async def _follow(
    client: httpx.AsyncClient, url: httpx.URL, destination: Path, limit: int, settings: Settings
) -> Download:
    for _hop in range(settings.fetch_max_redirects + 1):
        address = await resolve_checked(url, settings)
        # identity: the byte limit then counts what the server sends, not a decompressed bomb.
        request = _pinned(client, "GET", url, address, headers={"accept-encoding": "identity"})
        response = await client.send(request, stream=True)
        try:
            if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
                try:
                    url = url.join(response.headers["location"])
                except httpx.InvalidURL as exc:
                    raise FetchError("download_failed", "the server redirected to a malformed URL") from exc
                continue
            if response.status_code >= 400:
                transient = response.status_code >= 500 or response.status_code in (408, 429)
                raise FetchError(
                    "download_failed", f"the server answered HTTP {response.status_code}", transient=transient
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise FetchError("too_large", f"the media is {int(declared)} bytes; the limit is {limit}")
            size = await _stream_to_file(response, destination, limit)
            return Download(destination, size, response.headers.get("content-type"), str(url))
        finally:
            await response.aclose()
    raise FetchError("download_failed", f"more than {settings.fetch_max_redirects} redirects")


async def _stream_to_file(response: httpx.Response, destination: Path, limit: int) -> int:
    size = 0
    with destination.open("wb") as out:
        async for chunk in response.aiter_raw(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise FetchError("too_large", f"the media is larger than the limit of {limit} bytes")
            out.write(chunk)
    return size


WORKSPACE_PREFIX = "moodreel-job-"


def workspace_root(settings: Settings) -> Path:
    return settings.worker_tmp_dir or Path(tempfile.gettempdir())


@asynccontextmanager
async def job_workspace(settings: Settings | None = None) -> AsyncIterator[Path]:
    """A private temporary directory for one job, removed whatever happens inside. Its name
    carries the worker's pid, so a worker killed mid-job leaves a directory the next start-up
    recognises as abandoned (:func:`remove_abandoned_workspaces`)."""
    settings = settings or get_settings()
    root = workspace_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned_workspaces(settings: Settings) -> list[Path]:
    """Delete job directories whose worker no longer runs (killed mid-job: SIGKILL, OOM, power),
    and any of this pid's (a previous process that had the same pid). Returns what went."""
    removed = []
    root = workspace_root(settings)
    if not root.is_dir():
        return removed
    for directory in root.glob(f"{WORKSPACE_PREFIX}*"):
        owner = directory.name[len(WORKSPACE_PREFIX) :].split("-", 1)[0]
        pid = int(owner) if owner.isdigit() else None
        if pid is not None and pid != os.getpid() and _process_alive(pid):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def redact_workspace_paths(text: str, settings: Settings) -> str:
    """``text`` with every job-workspace path replaced by "the media file": messages that clients
    read (ffmpeg's and the OS's errors quote file names) must not reveal the worker's file system."""
    root = re.escape(str(workspace_root(settings)).rstrip("/"))
    return re.sub(rf"{root}/{WORKSPACE_PREFIX}[^\s'\":,)]*", "the media file", text)
