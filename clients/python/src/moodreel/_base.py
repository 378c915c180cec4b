"""What the sync and async clients share: configuration, request bodies, and the retry policy."""

from __future__ import annotations

import json
import mimetypes
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx

from moodreel.errors import parse_retry_after

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Statuses worth another try: the rate limit, and a gateway or upstream that may heal.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Problems that cannot heal by waiting a few seconds (the month's quota resets at month end).
NO_RETRY_CODES = frozenset({"quota_exceeded"})
UPLOAD_CHUNK_BYTES = 1 << 20

FileInput = str | os.PathLike[str] | bytes | IO[bytes]
TranscriptInput = str | os.PathLike[str] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``max_retries`` more tries on 429/5xx and connection errors, waiting ``Retry-After``
    when the server says (up to ``max_wait`` seconds; longer waits are not waited out), otherwise
    ``backoff * 2**attempt`` with full jitter, capped at ``max_backoff``."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_wait: float = 60.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before try ``attempt + 1``, or None to give up."""
        if attempt >= self.max_retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES or _problem_code(response) in NO_RETRY_CODES:
                return None
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if retry_after is not None:
                return retry_after if retry_after <= self.max_wait else None
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))


def _problem_code(response: httpx.Response) -> str | None:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def resolve_config(base_url: str | None, api_key: str | None, access_token: str | None) -> tuple[str, dict]:
    base = (base_url or os.environ.get("MOODREEL_URL") or DEFAULT_BASE_URL).rstrip("/")
    headers = {"User-Agent": "moodreel-python/0.1.0", "Accept": "application/json"}
    key = api_key if api_key is not None else (None if access_token else os.environ.get("MOODREEL_API_KEY"))
    if key:
        headers["X-API-Key"] = key
    elif access_token:
        headers["Authorization"] = f"Bearer {access_token}"
    return base, headers


def idempotency_key() -> str:
    return f"moodreel-py-{uuid.uuid4().hex}"


def url_name(url: str) -> str | None:
    """The URL's last path segment (the default name of an analysis of that URL)."""
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return segment or None


@dataclass
class PreparedFile:
    filename: str
    content_type: str
    size: int
    path: Path | None = None
    data: bytes | None = None
    stream: IO[bytes] | None = None

    @property
    def repeatable(self) -> bool:
        """A path or bytes can be sent again; a caller's file object only once."""
        return self.stream is None

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        handle = self.path.open("rb") if self.path is not None else self.stream
        try:
            while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                yield chunk
        finally:
            if self.path is not None:
                handle.close()

    async def achunks(self) -> AsyncIterator[bytes]:
        # Local file reads are short; they run on the event loop between network writes.
        for chunk in self.chunks():
            yield chunk


def prepare_file(file: FileInput, filename: str | None, content_type: str | None) -> PreparedFile:
    if isinstance(file, bytes | bytearray):
        name = filename or "upload"
        prepared = PreparedFile(name, "", len(file), data=bytes(file))
    elif isinstance(file, str | os.PathLike):
        path = Path(file)
        prepared = PreparedFile(filename or path.name, "", path.stat().st_size, path=path)
    else:
        # A binary file object: its size is what is left from the current position.
        position = file.tell()
        size = file.seek(0, os.SEEK_END) - position
        file.seek(position)
        name = filename or Path(getattr(file, "name", "upload")).name
        prepared = PreparedFile(name, "", size, stream=file)
    # An empty type is resolved from the extension by the server; send ours when we know it.
    prepared.content_type = content_type or mimetypes.guess_type(prepared.filename)[0] or ""
    return prepared


def transcript_body(transcript: TranscriptInput | None) -> str | list[dict[str, Any]] | None:
    """SRT/WebVTT text as given, a path's contents, or JSON segments."""
    if transcript is None:
        return None
    if isinstance(transcript, os.PathLike):
        text = Path(transcript).read_text(encoding="utf-8-sig")
        if Path(transcript).suffix.lower() == ".json":
            return json.loads(text)
        return text
    if isinstance(transcript, str):
        return transcript
    return [dict(segment) for segment in transcript]


def analysis_body(
    *,
    video_url: str | None,
    upload_id: str | None,
    transcript: TranscriptInput | None,
    options: Mapping[str, Any] | None,
    name: str | None,
    metadata: Mapping[str, Any] | None,
    callback_url: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"video_url": video_url} if video_url is not None else {"upload_id": upload_id}
    for key, value in (
        ("transcript", transcript_body(transcript)),
        ("options", dict(options) if options else None),
        ("name", name),
        ("metadata", dict(metadata) if metadata is not None else None),
        ("callback_url", callback_url),
    ):
        if value is not None:
            body[key] = value
    return body


def drop_none(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}
