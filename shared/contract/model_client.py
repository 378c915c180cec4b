"""The invoke client: one interface to the model service, over local HTTP or a SageMaker endpoint.

The worker builds a FeatureBundle with the deployed model's FeatureSpec (``get_spec()``), then
``invoke(bundle)`` splits the video's utterances into requests whose bodies stay under SageMaker's
6 MB real-time payload limit, retries each request with jittered exponential backoff on 5xx,
throttling and connection errors, and returns one typed response in utterance order.

Clients are synchronous (boto3 is); async callers use ``await asyncio.to_thread(client.invoke, b)``.
This module imports no torch: the preprocess worker image carries none.
"""

from __future__ import annotations

import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from shared.contract.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from shared.contract.bundle import FeatureBundle
from shared.contract.features.spec import FeatureSpec
from shared.contract.predictions import InvocationResponse, UtterancePrediction
from shared.errors import CodedError
from shared.logging import get_logger

if TYPE_CHECKING:
    from shared.settings import Settings

# Written by `moodreel sagemaker deploy` beside model.tar.gz; the SageMaker backend reads it.
SPEC_FILENAME = "feature-spec.json"
# SageMaker runtime error codes worth another try (everything else 4xx is the caller's fault).
_RETRYABLE_AWS_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalDependencyException",
    }
)

log = get_logger(__name__)


class ModelServiceError(CodedError):
    """The model service could not produce predictions; ``code`` is stable for job error codes."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(code, message)
        self.status = status


class ModelRequestRejected(ModelServiceError):
    """The service refused the request (4xx): retrying the same request cannot help."""


class ModelUnavailable(ModelServiceError):
    """Every attempt failed with a transient error (5xx, throttling, connection, timeout)."""

    transient = True


def _aws_configuration_errors() -> tuple[type[Exception], ...]:
    try:
        from botocore.exceptions import (
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ProfileNotFound,
        )
    except ImportError:  # botocore is only needed for the SageMaker backend
        return ()
    return (NoCredentialsError, PartialCredentialsError, NoRegionError, ProfileNotFound)


AWS_CONFIGURATION_ERRORS = _aws_configuration_errors()


def aws_configuration_hint(exc: Exception) -> str:
    """One line: what is missing for AWS calls, and how to set it."""
    from botocore.exceptions import NoRegionError, ProfileNotFound

    if isinstance(exc, NoRegionError):
        return "no AWS region: set MOODREEL_AWS_REGION (or AWS_REGION)"
    if isinstance(exc, ProfileNotFound):
        return f"{exc}: set AWS_PROFILE to a profile in ~/.aws/config, or unset it"
    return (
        f"{exc}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
        "or run where an IAM role provides them"
    )


class _TransientError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Full-jitter exponential backoff after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        delay = random.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff_seconds))
        return delay


def _rejection(status: int, body: bytes) -> ModelRequestRejected:
    """Build the error from an RFC 9457 problem body when the service sent one."""
    code, detail = f"http_{status}", body[:500].decode("utf-8", "replace")
    try:
        problem = json.loads(body)
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        code = str(problem.get("code") or code)
        detail = str(problem.get("detail") or problem.get("title") or detail)
    return ModelRequestRejected(code, detail, status)


class ModelClient(ABC):
    """Chunking, retries and response parsing; backends only send one request."""

    def __init__(
        self,
        *,
        chunk_bytes: int = 5_000_000,
        max_utterances_per_request: int = 64,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.chunk_bytes = chunk_bytes
        self.max_utterances_per_request = max_utterances_per_request
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    # --- backend ---------------------------------------------------------------------------------
    @abstractmethod
    def _send(self, body: bytes) -> bytes:
        """One POST of a bundle; raise _TransientError or ModelRequestRejected."""

    @abstractmethod
    def _fetch_spec(self) -> bytes:
        """The FeatureSpec JSON of the model being served; raise like ``_send``."""

    def close(self) -> None:  # noqa: B027 - backends without resources keep the default
        """Release connections."""

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- interface -------------------------------------------------------------------------------
    def get_spec(self) -> FeatureSpec:
        raw = self._with_retries(self._fetch_spec, what="spec")
        try:
            return FeatureSpec.model_validate_json(raw)
        except ValidationError as exc:
            raise ModelServiceError("bad_spec", f"the served FeatureSpec is invalid: {exc}") from exc

    def predict(self, bundle: FeatureBundle) -> list[UtterancePrediction]:
        return self.invoke(bundle).utterances

    def invoke(self, bundle: FeatureBundle) -> InvocationResponse:
        """Predictions for every utterance of ``bundle``, in order, from one model version.

        A blue/green endpoint update can switch models between two chunks of a video; the video
        is then scored again from the start once, so one result never mixes two models.
        """
        for attempt in (1, 2):
            response = self._invoke_chunks(bundle)
            if response is not None:
                return response
            log.warning("model_changed_during_video", attempt=attempt, utterances=len(bundle))
        raise ModelServiceError("model_changed", "the served model changed twice while scoring one video")

    def _invoke_chunks(self, bundle: FeatureBundle) -> InvocationResponse | None:
        merged: InvocationResponse | None = None
        for rows, body in self.chunks(bundle):
            raw = self._with_retries(lambda body=body: self._send(body), what="invocations")
            try:
                part = InvocationResponse.model_validate_json(raw)
            except ValidationError as exc:
                raise ModelServiceError("bad_response", f"unparseable model response: {exc}") from exc
            expected = rows.stop - rows.start
            if len(part.utterances) != expected:
                raise ModelServiceError(
                    "bad_response", f"model returned {len(part.utterances)} predictions for {expected}"
                )
            if merged is None:
                merged = part
            elif part.model != merged.model:
                return None
            else:
                merged.utterances.extend(part.utterances)
        assert merged is not None, "chunks() yields at least one request"
        return merged

    def chunks(self, bundle: FeatureBundle) -> Iterator[tuple[slice, bytes]]:
        """Consecutive utterance ranges and their serialised bundles, each at most chunk_bytes.

        The rows-per-request guess comes from the size of one and two utterances; every body is
        measured after serialising, and a range that came out too large is shrunk.
        """
        count = len(bundle)
        if count == 0:
            # Still asked, so the caller learns which model (and spec) would have scored it.
            yield slice(0, 0), bundle.to_bytes()
            return
        one = len(bundle.select(slice(0, 1)).to_bytes())
        row = len(bundle.select(slice(0, 2)).to_bytes()) - one if count > 1 else one
        start = 0
        while start < count:
            fits = max(1, (self.chunk_bytes - (one - row)) // max(row, 1))
            size = min(count - start, self.max_utterances_per_request, fits)
            while True:
                body = bundle.select(slice(start, start + size)).to_bytes()
                if len(body) <= self.chunk_bytes:
                    break
                if size == 1:
                    raise ModelRequestRejected(
                        "utterance_too_large",
                        f"utterance {start} alone serialises to {len(body)} bytes, over the "
                        f"{self.chunk_bytes}-byte request limit",
                    )
                size = max(1, min(size - 1, size * self.chunk_bytes // len(body)))
            yield slice(start, start + size), body
            start += size

    def _with_retries(self, call: Callable[[], bytes], *, what: str) -> bytes:
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return call()
            except _TransientError as exc:
                if attempt == self.retry.max_attempts:
                    raise ModelUnavailable(
                        "model_unavailable",
                        f"{what} failed after {attempt} attempts; last error: {exc}",
                    ) from exc
                delay = self.retry.delay(attempt, exc.retry_after)
                log.warning(
                    "model_request_retry", what=what, attempt=attempt, delay=round(delay, 3), error=str(exc)
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


class HttpModelClient(ModelClient):
    """The local twin (``moodreel serve``, docker compose) over HTTP."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, **options: Any):
        super().__init__(**options)
        self._http = httpx.Client(
            base_url=base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
        )

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise _TransientError(
                f"HTTP {response.status_code}: {response.text[:200]}", _retry_after(response.headers)
            )
        if response.status_code >= 400:
            raise _rejection(response.status_code, response.content)
        return response.content

    def _send(self, body: bytes) -> bytes:
        return self._request(
            "POST",
            "/invocations",
            content=body,
            headers={"Content-Type": BUNDLE_CONTENT_TYPE, "Accept": "application/json"},
        )

    def _fetch_spec(self) -> bytes:
        return self._request("GET", "/spec", headers={"Accept": "application/json"})


class SageMakerModelClient(ModelClient):
    """A SageMaker real-time endpoint through the runtime's InvokeEndpoint."""

    def __init__(
        self,
        endpoint_name: str,
        *,
        region: str,
        timeout: float = 60.0,
        spec_uri: str | None = None,
        runtime_client: Any = None,
        sagemaker_client: Any = None,
        s3_client: Any = None,
        **options: Any,
    ):
        super().__init__(**options)
        import boto3
        from botocore.config import Config

        # Retries are ours (uniform across backends), so botocore makes one attempt per call.
        config = Config(
            region_name=region,
            read_timeout=timeout,
            connect_timeout=min(timeout, 10.0),
            retries={"total_max_attempts": 1},
        )
        self.endpoint_name = endpoint_name
        self.spec_uri = spec_uri
        self._runtime = runtime_client or boto3.client("sagemaker-runtime", config=config)
        self._sagemaker = sagemaker_client or boto3.client("sagemaker", config=config)
        self._s3 = s3_client or boto3.client("s3", config=config)

    def _aws_call(self, call: Callable[[], Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except AWS_CONFIGURATION_ERRORS as exc:
            # Missing credentials or region: no retry can heal that.
            raise ModelRequestRejected("aws_not_configured", aws_configuration_hint(exc)) from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "ModelError":
                # The container answered with an error; its status decides, as for HTTP.
                original = int(exc.response.get("OriginalStatusCode") or 500)
                message = str(exc.response.get("OriginalMessage") or error.get("Message", ""))
                if original == 429 or original >= 500:
                    raise _TransientError(f"container HTTP {original}: {message[:200]}") from exc
                raise _rejection(original, message.encode()) from exc
            if code in _RETRYABLE_AWS_CODES or status == 429 or status >= 500:
                raise _TransientError(f"{code}: {error.get('Message', '')}") from exc
            raise ModelRequestRejected(
                f"aws_{code or status}", error.get("Message", str(exc)), status
            ) from exc
        except BotoCoreError as exc:
            # Connection refused/closed, read and connect timeouts.
            raise _TransientError(f"{type(exc).__name__}: {exc}") from exc

    def _send(self, body: bytes) -> bytes:
        response = self._aws_call(
            lambda: self._runtime.invoke_endpoint(
                EndpointName=self.endpoint_name,
                ContentType=BUNDLE_CONTENT_TYPE,
                Accept="application/json",
                Body=body,
            )
        )
        return response["Body"].read()

    def deployed_spec_uri(self) -> str:
        """The spec beside the artifact of the model the endpoint serves right now."""
        endpoint = self._aws_call(lambda: self._sagemaker.describe_endpoint(EndpointName=self.endpoint_name))
        config = self._aws_call(
            lambda: self._sagemaker.describe_endpoint_config(
                EndpointConfigName=endpoint["EndpointConfigName"]
            )
        )
        model_name = config["ProductionVariants"][0]["ModelName"]
        model = self._aws_call(lambda: self._sagemaker.describe_model(ModelName=model_name))
        artifact = model["PrimaryContainer"]["ModelDataUrl"]
        return artifact.rsplit("/", 1)[0] + "/" + SPEC_FILENAME

    def _fetch_spec(self) -> bytes:
        bucket, key = split_s3_uri(self.spec_uri or self.deployed_spec_uri())
        response = self._aws_call(lambda: self._s3.get_object(Bucket=bucket, Key=key))
        return response["Body"].read()


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key); anything else is a ValueError."""
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if scheme != "s3" or not bucket or not key:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def model_client_from_settings(settings: Settings | None = None) -> ModelClient:
    """The backend the settings choose (``MOODREEL_MODEL_BACKEND``: http or sagemaker)."""
    from shared.settings import get_settings

    settings = settings or get_settings()
    options: dict[str, Any] = {
        "timeout": settings.model_client_timeout_seconds,
        "chunk_bytes": settings.model_client_chunk_bytes,
        "max_utterances_per_request": settings.model_client_max_utterances_per_request,
        "retry": RetryPolicy(
            max_attempts=settings.model_client_max_attempts,
            backoff_seconds=settings.model_client_backoff_seconds,
        ),
    }
    if settings.model_backend == "sagemaker":
        return SageMakerModelClient(
            settings.sagemaker_endpoint_name,
            region=settings.aws_region,
            spec_uri=settings.sagemaker_spec_uri,
            **options,
        )
    return HttpModelClient(settings.model_url, **options)
