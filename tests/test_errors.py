"""One base for coded errors (shared/errors.py): every error that carries a stable code is a
CodedError with the same ``code`` / ``message`` / ``transient``, and the worker turns them into
job failures by those alone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.platform.analyses.jobs import JobFailed, TransientJobError, classify
from services.platform.analyses.service import UrlRejected
from services.platform.usage.quota import QuotaExceeded
from shared.contract.bundle import BundleError
from shared.contract.features.media import MediaError
from shared.contract.features.mtcnn import MTCNNMissing
from shared.contract.features.silero import SpeechDetectorMissing
from shared.contract.features.transcripts import TranscriptError
from shared.contract.model_client import ModelRequestRejected, ModelServiceError, ModelUnavailable
from shared.errors import CodedError
from shared.net.fetch import FetchError
from shared.net.urls import UrlNotAllowed
from shared.problems import BadRequest, Problem, TooManyRequests


@pytest.mark.parametrize(
    ("error", "code", "message", "transient"),
    [
        (FetchError("download_failed", "no answer", transient=True), "download_failed", "no answer", True),
        (FetchError("too_large", "big"), "too_large", "big", False),
        (JobFailed("media_invalid", "not a video"), "media_invalid", "not a video", False),
        (TransientJobError("internal_error", "db down"), "internal_error", "db down", True),
        (MediaError("no_streams", "empty"), "no_streams", "empty", False),
        (TranscriptError("backwards", line=2), "transcript_invalid", "line 2: backwards", False),
        (BundleError("malformed_bundle", "bad dtype"), "malformed_bundle", "bad dtype", False),
        (UrlNotAllowed("the URL is empty"), "url_not_allowed", "the URL is empty", False),
        (ModelRequestRejected("spec_mismatch", "other spec", 409), "spec_mismatch", "other spec", False),
        (ModelUnavailable("model_unavailable", "5xx", 503), "model_unavailable", "5xx", True),
        (UrlRejected("video_url: empty", field="video_url"), "url_not_allowed", "video_url: empty", False),
        (BadRequest(code="invalid_cursor"), "invalid_cursor", "Bad request", False),
    ],
)
def test_every_coded_error_shares_one_base(error, code, message, transient):
    assert isinstance(error, CodedError)
    assert (error.code, error.message, error.transient, str(error)) == (code, message, transient, message)


def test_the_class_code_stays_when_an_instance_names_none():
    assert UrlRejected().code == "url_not_allowed" and Problem().code == "internal_error"
    assert BadRequest(code="invalid_cursor").code == "invalid_cursor" and BadRequest().code == "bad_request"
    assert TooManyRequests(retry_after=3).headers["Retry-After"] == "3"
    # Still ValueErrors, for the callers that catch them as such.
    assert isinstance(TranscriptError("x"), ValueError) and isinstance(UrlNotAllowed("x"), ValueError)
    assert isinstance(BundleError("malformed_bundle", "x"), ValueError)
    assert ModelServiceError("model_error", "x", 500).status == 500


@pytest.mark.parametrize(
    ("error", "job_error", "code", "message"),
    [
        (
            FetchError("download_failed", "HTTP 503", transient=True),
            TransientJobError,
            "download_failed",
            "HTTP 503",
        ),
        (FetchError("url_not_allowed", "private"), JobFailed, "url_not_allowed", "private"),
        (MediaError("no_streams", "empty"), JobFailed, "no_streams", "empty"),
        (TranscriptError("backwards", line=4), JobFailed, "transcript_invalid", "line 4: backwards"),
        (
            QuotaExceeded("seconds", 600, 600, datetime(2026, 1, 1, tzinfo=UTC)),
            JobFailed,
            "quota_exceeded",
            "monthly seconds quota of 600 is used up (600 used)",
        ),
        (ModelUnavailable("timeout", "no answer"), TransientJobError, "model_unavailable", "no answer"),
        (
            ModelRequestRejected("bad_bundle", "nope", 400),
            JobFailed,
            "model_error",
            "the model service refused the request: nope",
        ),
        (
            SpeechDetectorMissing("silero-vad", "/srv/models/silero-vad/silero_vad.onnx is missing"),
            JobFailed,
            "models_missing",
            "the worker lacks the model 'silero-vad' that the checkpoint needs; "
            "its operator finds the fix in the worker's log",
        ),
        (
            MTCNNMissing("mtcnn", "the MTCNN face detector is not installed at /srv/models/mtcnn"),
            JobFailed,
            "models_missing",
            "the worker lacks the model 'mtcnn' that the checkpoint needs; "
            "its operator finds the fix in the worker's log",
        ),
    ],
)
def test_the_worker_classifies_coded_errors_by_code_and_transient(error, job_error, code, message):
    classified = classify(error)
    assert type(classified) is job_error
    assert (classified.code, classified.message) == (code, message)


def test_a_missing_model_survives_pickling_with_its_name():
    import copy
    import pickle

    missing = MTCNNMissing("mtcnn", "the MTCNN face detector is not installed at /srv/models/mtcnn")
    for again in (pickle.loads(pickle.dumps(missing)), copy.copy(missing)):
        assert type(again) is MTCNNMissing
        assert (again.model, str(again)) == (missing.model, str(missing))
