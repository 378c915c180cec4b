"""Moodreel's Python client: submit videos, follow their progress, read and export the results.

>>> from moodreel import Moodreel
>>> with Moodreel("http://127.0.0.1:8000", api_key="mr_live_…") as client:
...     analysis = client.analyses.create(file="interview.mp4", transcript=Path("interview.srt"))
...     result = client.analyses.wait(analysis["id"])
"""

from moodreel import webhooks
from moodreel._base import RetryPolicy
from moodreel.async_client import AsyncMoodreel
from moodreel.client import Moodreel
from moodreel.errors import (
    AnalysisFailedError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionError,
    MoodreelError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnsupportedMediaError,
    ValidationError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from moodreel.types import TERMINAL_STATUSES, Event

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATUSES",
    "AnalysisFailedError",
    "ApiError",
    "AsyncMoodreel",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectionError",
    "Event",
    "Moodreel",
    "MoodreelError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "UnsupportedMediaError",
    "ValidationError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "webhooks",
]
