"""Exceptions. Every error answer of the API is an RFC 9457 problem; it is raised as an
:class:`ApiError` subclass chosen by its status, carrying the problem's ``code``, ``status`` and
every other member in ``fields``."""

from __future__ import annotations

from typing import Any

import httpx


class MoodreelError(Exception):
    """Base class of everything this package raises."""


class ConnectionError(MoodreelError):  # noqa: A001 - the package's own, distinct from the builtin
    """No answer from the server (refused, reset, timed out), after the retries."""


class ApiError(MoodreelError):
    """The server answered with an error status.

    ``code`` is the problem's stable code (``quota_exceeded``, ``transcript_invalid``, …);
    ``fields`` holds every member of the problem body besides the standard ones (for example
    ``field``, ``line``, ``limit``, ``errors``)."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None,
        *,
        type: str | None = None,  # noqa: A002 - the RFC's member name
        instance: str | None = None,
        fields: dict[str, Any] | None = None,
        headers: httpx.Headers | None = None,
    ):
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.type = type
        self.instance = instance
        self.fields = fields or {}
        self.headers = headers or httpx.Headers()
        super().__init__(f"{status} {code}: {detail or title}")

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (``Retry-After``), when it said."""
        return parse_retry_after(self.headers.get("retry-after"))

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        body: dict[str, Any] = {}
        try:
            parsed = response.json()
            if isinstance(parsed, dict):
                body = parsed
        except ValueError:
            pass
        status = int(body.get("status", response.status_code))
        code = str(body.get("code") or _code_from_type(body.get("type")) or f"http_{response.status_code}")
        title = str(body.get("title") or response.reason_phrase or "Error")
        detail = body.get("detail")
        if detail is None and not body:
            detail = response.text[:500] or None
        fields = {
            k: v
            for k, v in body.items()
            if k not in {"type", "title", "status", "detail", "instance", "code"}
        }
        error_class = _ERROR_CLASSES.get(response.status_code) or (
            ServerError if response.status_code >= 500 else ApiError
        )
        return error_class(
            status,
            code,
            title,
            detail,
            type=body.get("type"),
            instance=body.get("instance"),
            fields=fields,
            headers=response.headers,
        )


class BadRequestError(ApiError):
    """400: the request is wrong (for example ``url_not_allowed``)."""


class AuthenticationError(ApiError):
    """401: no, a malformed, an unknown, a revoked or an expired credential."""


class PermissionDeniedError(ApiError):
    """403: the credential lacks a scope, or API keys cannot do this."""


class NotFoundError(ApiError):
    """404."""


class ConflictError(ApiError):
    """409 (for example ``idempotency_key_reused``, ``analysis_not_finished``)."""


class PayloadTooLargeError(ApiError):
    """413."""


class UnsupportedMediaError(ApiError):
    """415."""


class ValidationError(ApiError):
    """422: the payload does not validate (``errors`` in ``fields``), or the transcript does not parse."""


class RateLimitError(ApiError):
    """429: the request rate (``rate_limited``) or the monthly quota (``quota_exceeded``)."""


class ServerError(ApiError):
    """5xx."""


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaError,
    422: ValidationError,
    429: RateLimitError,
}


class AnalysisFailedError(MoodreelError):
    """:meth:`wait` ended on a failed or canceled analysis; ``code`` is its error code
    (``download_failed``, ``not_media``, ``too_long``, …, or ``canceled``)."""

    def __init__(self, analysis: dict[str, Any]):
        self.analysis = analysis
        error = analysis.get("error") or {}
        self.code: str = error.get("code") or analysis.get("status", "failed")
        self.message: str = error.get("message") or f"the analysis is {analysis.get('status')}"
        super().__init__(
            f"analysis {analysis.get('id')} {analysis.get('status')}: {self.code}: {self.message}"
        )


class WaitTimeoutError(MoodreelError, TimeoutError):
    """:meth:`wait` gave up before the analysis finished."""


class WebhookVerificationError(MoodreelError, ValueError):
    """A webhook request is not a fresh message signed with the secret."""


def _code_from_type(problem_type: Any) -> str | None:
    if isinstance(problem_type, str) and "/problems/" in problem_type:
        return problem_type.rsplit("/problems/", 1)[1] or None
    return None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
