"""One analysis, from its stored request to stored results: the ``analyse_video`` job's body.

fetch → probe → reserve quota seconds → utterances → features (the deployed model's FeatureSpec)
→ predictions in chunks, each chunk's rows upserted and announced as they arrive → summary →
``succeeded`` and webhook deliveries. Blocking work (DB, ffmpeg, tensors, the sync model client)
runs in threads so the event loop keeps serving other jobs and arq's heartbeats.

Errors are either permanent (``JobFailed`` and the typed errors of fetch, media, transcript, quota
and model: the analysis fails with their stable code, quota is refunded once) or transient
(connection resets, model 5xx after the client's own retries, database/Redis hiccups: the job is
re-queued with exponential backoff and fails with the last code once its tries are used up).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis.exceptions
import sqlalchemy.exc
from arq import Retry
from sqlalchemy.orm import Session

from services.platform.analyses import repository
from services.platform.analyses.events import apublish_event
from services.platform.analyses.schemas import utterance_public
from services.platform.analyses.summary import summarise
from services.platform.analyses.thumbnails import store_thumbnails
from services.platform.resources import Resources
from services.platform.uploads.download import fetch_upload
from services.platform.usage import quota
from services.platform.webhooks import repository as webhook_repository
from services.platform.webhooks.jobs import enqueue_delivery
from shared.contract.bundle import FeatureBundle
from shared.contract.features.installed import ModelMissing
from shared.contract.features.language import detect_language
from shared.contract.features.media import MediaError, probe
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.transcripts import TranscriptError
from shared.contract.labels import MODALITIES
from shared.contract.model_client import ModelServiceError, ModelUnavailable
from shared.contract.predictions import InvocationResponse, UtterancePrediction
from shared.db.models import Analysis, AnalysisStatus, UtteranceResult
from shared.db.session import session_scope
from shared.errors import CodedError
from shared.logging import get_logger
from shared.net.fetch import FetchError, download_url, job_workspace, redact_workspace_paths
from shared.storage import StorageError, get_storage

log = get_logger(__name__)
T = TypeVar("T")

EVENT_SUCCEEDED = "analysis.succeeded"
EVENT_FAILED = "analysis.failed"
# Model errors that a fresh try can fix: the endpoint switched models between spec and predict.
_TRANSIENT_MODEL_CODES = frozenset({"model_changed", "spec_mismatch"})


class JobFailed(CodedError):
    """A permanent failure: the analysis ends ``failed`` with this code and message."""


class TransientJobError(CodedError):
    """Worth another try later; ``code``/``message`` are what the analysis shows if none is left."""

    transient = True


class AnalysisCanceled(Exception):
    """The analysis was canceled or deleted while the job ran."""


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 4)


def classify(exc: BaseException) -> JobFailed | TransientJobError | None:
    """Map the typed errors of every stage to permanent/transient job errors (None: a bug)."""
    if isinstance(exc, JobFailed | TransientJobError):
        return exc
    if isinstance(exc, FetchError | MediaError | TranscriptError | quota.QuotaExceeded):
        return (TransientJobError if exc.transient else JobFailed)(exc.code, exc.message)
    if isinstance(exc, ModelMissing):
        # The detail names the worker's folders: the client gets the model's name, the worker's
        # log (analyse_video) the detail and the fix.
        return JobFailed(
            "models_missing",
            f"the worker lacks the model {exc.model!r} that the checkpoint needs; "
            "its operator finds the fix in the worker's log",
        )
    if isinstance(exc, ModelUnavailable):
        return TransientJobError("model_unavailable", exc.message)
    if isinstance(exc, ModelServiceError):
        if exc.code in _TRANSIENT_MODEL_CODES:
            return TransientJobError("model_unavailable", exc.message)
        return JobFailed("model_error", f"the model service refused the request: {exc.message}")
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return TransientJobError("internal_error", "the database was unavailable")
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return TransientJobError("internal_error", "the event store was unavailable")
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return TransientJobError("internal_error", f"a system error occurred: {exc.strerror or exc}")
    return None


async def analyse_video(ctx: dict[str, Any], analysis_id: str) -> dict[str, Any]:
    resources: Resources = ctx["resources"]
    settings = resources.settings
    run = AnalysisRun(resources, uuid.UUID(analysis_id))
    job_try: int = ctx.get("job_try", 1)
    if job_try > settings.worker_job_tries:
        # Only reachable when every try so far died with its worker (e.g. killed for memory):
        # end the analysis cleanly instead of letting arq drop the job and leave it "processing".
        await run.fail(
            "interrupted", "processing was interrupted too many times (the worker stopped mid-job)"
        )
        return {"outcome": "failed", "code": "interrupted"}
    try:
        return await run.run()
    except Exception as exc:
        error = classify(exc)
        if error is None:
            log.exception("analysis_crashed", analysis_id=analysis_id)
            await run.fail("internal_error", "an unexpected error occurred while processing the video")
            return {"outcome": "failed", "code": "internal_error"}
        if isinstance(exc, ModelMissing):
            log.error("model_missing", analysis_id=analysis_id, model=exc.model, error=str(exc))
        if isinstance(error, TransientJobError) and job_try < settings.worker_job_tries:
            delay = settings.worker_retry_base_seconds * 2 ** (job_try - 1)
            log.warning(
                "analysis_retry",
                analysis_id=analysis_id,
                code=error.code,
                error=error.message,
                try_=job_try,
                delay=delay,
            )
            raise Retry(defer=delay) from exc
        await run.fail(error.code, error.message)
        return {"outcome": "failed", "code": error.code}


class AnalysisRun:
    def __init__(self, resources: Resources, analysis_id: uuid.UUID):
        self.r = resources
        self.settings = resources.settings
        self.analysis_id = analysis_id
        self.timer = StageTimer()

    # --- helpers -------------------------------------------------------------------------------
    async def db(self, work: Callable[[Session], T]) -> T:
        def unit() -> T:
            with session_scope(self.r.sessions) as session:
                return work(session)

        return await asyncio.to_thread(unit)

    async def publish(self, event_type: str, data: dict[str, Any]) -> None:
        await apublish_event(self.r.redis, self.analysis_id, event_type, data, self.settings)

    async def ensure_active(self) -> None:
        analysis = await self.db(lambda s: repository.get_analysis(s, self.analysis_id))
        if analysis is None or analysis.status != AnalysisStatus.processing.value:
            raise AnalysisCanceled()

    # --- the job -------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Run the pipeline; returns the outcome (stored as the arq job result)."""
        analysis = await self.db(lambda s: repository.get_analysis(s, self.analysis_id))
        if analysis is None:
            return {"outcome": "missing"}
        if AnalysisStatus(analysis.status).is_terminal:
            # A re-run after the result was stored (killed before arq recorded it): only make sure
            # its webhooks were handed over.
            await self.enqueue_deliveries(
                await self.db(lambda s: webhook_repository.pending_deliveries(s, analysis.id))
            )
            return {"outcome": analysis.status}
        if not await self.db(lambda s: repository.mark_processing(s, self.analysis_id)):
            return {"outcome": "not_runnable"}
        heartbeat = asyncio.create_task(self.heartbeat(), name=f"heartbeat:{self.analysis_id}")
        try:
            await self.publish("status", {"status": AnalysisStatus.processing.value})
            async with asyncio.timeout(self.settings.worker_job_timeout_seconds):
                return await self.pipeline(analysis)
        except AnalysisCanceled:
            await self.db(lambda s: quota.refund(s, self.analysis_id, settings=self.settings))
            log.info("analysis_canceled", analysis_id=str(self.analysis_id))
            return {"outcome": "canceled"}
        except TimeoutError as exc:
            limit = self.settings.worker_job_timeout_seconds
            raise JobFailed("timeout", f"the analysis did not finish within {limit:g} s") from exc
        finally:
            heartbeat.cancel()

    async def heartbeat(self) -> None:
        """Renew the analysis' lease while this job runs, so the reconciler leaves it alone (even
        when Redis lost the job's own keys meanwhile)."""
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_seconds)
            try:
                await self.db(lambda s: repository.renew_lease(s, self.analysis_id))
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.warning("heartbeat_failed", analysis_id=str(self.analysis_id), error=str(exc))

    async def pipeline(self, analysis: Analysis) -> dict[str, Any]:
        async with job_workspace(self.settings) as workspace:
            with self.timer.stage("fetch"):
                media_path = await self.fetch(analysis, workspace)
            with self.timer.stage("probe"):
                info = await asyncio.to_thread(probe, media_path, self.settings)
            duration = float(info.duration)
            await self.reserve_seconds(analysis, duration)
            with self.timer.stage("spec"):
                spec = await self.call_model(self.r.model.get_spec)
            await self.ensure_active()
            with self.timer.stage("features"):
                bundle = await asyncio.to_thread(self.features, analysis, media_path, spec)
        if bundle.thumbnails is not None:
            with self.timer.stage("thumbnails"):
                await self.store_thumbnails(bundle.thumbnails)
        predictions, model = await self.score(bundle, analysis.transcript_kind)
        summary = summarise(
            predictions,
            duration,
            transcript=analysis.transcript_kind,
            segmentation=bundle.media.get("segmentation"),
            language=bundle.media.get("language"),
        )
        await self.succeed(analysis, predictions, summary, model, duration)
        log.info(
            "analysis_succeeded",
            analysis_id=str(self.analysis_id),
            utterances=len(predictions),
            duration=duration,
            stages=self.timer.seconds,
        )
        return {"outcome": "succeeded", "utterances": len(predictions), "stages": self.timer.seconds}

    async def fetch(self, analysis: Analysis, workspace: Path) -> Path:
        if analysis.upload_id is not None:
            return await fetch_upload(self.r.sessions, analysis.upload_id, workspace, self.settings)
        if not analysis.source_url:
            raise JobFailed("download_failed", "the analysis has neither a video URL nor an upload")
        download = await download_url(analysis.source_url, workspace / "media", settings=self.settings)
        return download.path

    async def store_thumbnails(self, thumbnails: list[bytes | None]) -> None:
        """The face thumbnails go to the media storage; a store that fails loses only them (the
        results do not depend on them), so it is logged and the analysis goes on."""
        try:
            stored = await asyncio.to_thread(
                store_thumbnails, get_storage(self.settings), self.analysis_id, thumbnails
            )
        except StorageError as exc:
            log.warning("thumbnails_not_stored", analysis_id=str(self.analysis_id), error=str(exc))
            return
        log.info("thumbnails_stored", analysis_id=str(self.analysis_id), thumbnails=stored)

    async def call_model(self, call: Callable[..., T], *args: Any) -> T:
        """One model-service call (with the client's own quick retries). While the service stays
        unavailable the job waits — backoff from ``model_retry_base_seconds`` doubling up to
        ``model_retry_max_seconds``, announced on the event stream — for at most
        ``model_unavailable_window_seconds`` before the analysis fails ``model_unavailable``."""
        window = self.settings.model_unavailable_window_seconds
        waiting_since: float | None = None
        delay = self.settings.model_retry_base_seconds
        while True:
            try:
                result = await asyncio.to_thread(call, *args)
            except ModelUnavailable as exc:
                now = time.monotonic()
                waiting_since = now if waiting_since is None else waiting_since
                waited = now - waiting_since
                if waited + delay > window:
                    raise JobFailed(
                        "model_unavailable",
                        f"the model service stayed unavailable for {waited:.0f} s: {exc.message}",
                    ) from exc
                log.warning(
                    "model_unavailable_waiting",
                    analysis_id=str(self.analysis_id),
                    waited=round(waited, 1),
                    retry_in=delay,
                    error=exc.message,
                )
                await self.publish(
                    "status",
                    {
                        "status": AnalysisStatus.processing.value,
                        "waiting_for": "model",
                        "waited_seconds": round(waited, 1),
                        "retry_in_seconds": delay,
                    },
                )
                await asyncio.sleep(delay)
                await self.ensure_active()
                delay = min(delay * 2, self.settings.model_retry_max_seconds)
                continue
            if waiting_since is not None:
                log.info("model_available_again", analysis_id=str(self.analysis_id))
                await self.publish("status", {"status": AnalysisStatus.processing.value})
            return result

    async def reserve_seconds(self, analysis: Analysis, duration: float) -> None:
        """Charge the probed duration (whole seconds, rounded up) once per analysis.

        The row lock orders this with a concurrent cancel; a canceled analysis is not charged.
        """
        seconds = float(max(1, math.ceil(duration)))

        def work(session: Session) -> None:
            current = repository.get_analysis(session, self.analysis_id, lock=True)
            if current is None or current.status != AnalysisStatus.processing.value:
                raise AnalysisCanceled()
            quota.reserve(
                session, current.user_id, self.analysis_id, quota.SECONDS, seconds, settings=self.settings
            )
            repository.set_media_facts(session, self.analysis_id, duration)

        await self.db(work)

    def features(self, analysis: Analysis, media_path: Path, spec: FeatureSpec) -> FeatureBundle:
        # SRT, WebVTT or JSON segments: the parser tells them apart by their first characters.
        transcript = analysis.transcript or None
        options = analysis.options or {}
        bundle = extract_features(
            media_path,
            spec,
            transcript,
            window_seconds=options.get("window_seconds") or self.settings.default_window_seconds,
            segmentation=options.get("segmentation"),
            speakers=options.get("speakers"),
            settings=self.settings,
        )
        # What the model must know to mask evidence with a reason (services.model.serving.inference): the
        # modalities the client asked for, and the transcript's language, read once per analysis.
        bundle.media["modalities_requested"] = list(options.get("modalities") or MODALITIES)
        if transcript is not None:
            bundle.media["language"] = detect_language([u.text for u in bundle.utterances]).to_dict()
        return bundle

    async def score(
        self, bundle: FeatureBundle, transcript: str
    ) -> tuple[list[UtterancePrediction], InvocationResponse | None]:
        """Predict chunk by chunk; each chunk's rows are stored and announced before the next."""
        predictions: list[UtterancePrediction] = []
        first: InvocationResponse | None = None
        step = self.settings.worker_score_chunk_utterances
        starts = range(0, len(bundle), step) if len(bundle) else []
        for start in starts:
            await self.ensure_active()
            chunk = bundle.select(slice(start, min(start + step, len(bundle))))
            with self.timer.stage("model"):
                response = await self.call_model(self.r.model.invoke, chunk)
            if first is not None and response.model != first.model:
                raise TransientJobError(
                    "model_unavailable", "the served model changed while scoring the video"
                )
            first = first or response
            rows = [
                repository.utterance_row(self.analysis_id, start + offset, prediction)
                for offset, prediction in enumerate(response.utterances)
            ]
            with self.timer.stage("persist"):
                await self.db(lambda s, rows=rows: repository.upsert_utterances(s, rows))
                for row in rows:
                    await self.publish("utterance", utterance_event(row, transcript))
            predictions.extend(response.utterances)
        return predictions, first

    async def succeed(
        self,
        analysis: Analysis,
        predictions: list[UtterancePrediction],
        summary: dict[str, Any],
        model: InvocationResponse | None,
        duration: float,
    ) -> None:
        version = f"{model.model.name}@{model.model.version}" if model else None

        def work(session: Session) -> list[uuid.UUID]:
            repository.delete_utterances_from(session, self.analysis_id, len(predictions))
            if not repository.finish(
                session,
                self.analysis_id,
                AnalysisStatus.succeeded,
                summary=summary,
                utterance_count=len(predictions),
                model_version=version,
            ):
                raise AnalysisCanceled()
            current = repository.get_analysis(session, self.analysis_id)
            return webhook_repository.create_deliveries(
                session, current, EVENT_SUCCEEDED, webhook_payload(current, EVENT_SUCCEEDED)
            )

        with self.timer.stage("persist"):
            deliveries = await self.db(work)
        await self.publish("summary", summary)
        await self.publish("status", {"status": AnalysisStatus.succeeded.value, "stages": self.timer.seconds})
        await self.enqueue_deliveries(deliveries)

    async def fail(self, code: str, message: str) -> bool:
        """failed + refund (each charge once) + analysis.failed deliveries, in one transaction."""
        message = redact_workspace_paths(message, self.settings)

        def work(session: Session) -> list[uuid.UUID] | None:
            if not repository.finish(
                session,
                self.analysis_id,
                AnalysisStatus.failed,
                utterance_count=0,
                error_code=code,
                error_message=message,
            ):
                return None
            # A refunded analysis keeps no results: the utterances scored before the failure go.
            repository.delete_utterances_from(session, self.analysis_id, 0)
            quota.refund(session, self.analysis_id, settings=self.settings)
            current = repository.get_analysis(session, self.analysis_id)
            return webhook_repository.create_deliveries(
                session, current, EVENT_FAILED, webhook_payload(current, EVENT_FAILED)
            )

        deliveries = await self.db(work)
        if deliveries is None:
            return False
        log.info("analysis_failed", analysis_id=str(self.analysis_id), code=code, message=message)
        await self.publish("status", {"status": "failed", "error_code": code, "error_message": message})
        await self.enqueue_deliveries(deliveries)
        return True

    async def enqueue_deliveries(self, delivery_ids: list[uuid.UUID]) -> None:
        for delivery_id in delivery_ids:
            await enqueue_delivery(self.r.redis, delivery_id, self.settings)


def utterance_event(row: dict[str, Any], transcript: str) -> dict[str, Any]:
    """A freshly stored utterance row as ``GET /v1/analyses/{id}`` returns it: a new row has no
    correction (a re-run keeps a stored one in the database, and the API shows that)."""
    return utterance_public(UtteranceResult(**row), transcript).model_dump(mode="json")


def webhook_payload(analysis: Analysis, event_type: str) -> dict[str, Any]:
    """The Standard Webhooks body: type, timestamp, and the analysis without its utterances."""
    data: dict[str, Any] = {
        "id": str(analysis.id),
        "name": analysis.name,
        "metadata": analysis.user_metadata or {},
        "status": analysis.status,
        "duration_seconds": analysis.duration_seconds,
        "utterance_count": analysis.utterance_count,
        "model_version": analysis.model_version,
        "summary": analysis.summary,
        "error": {"code": analysis.error_code, "message": analysis.error_message}
        if analysis.error_code
        else None,
        "created_at": analysis.created_at.isoformat() if analysis.created_at else None,
        "finished_at": analysis.finished_at.isoformat() if analysis.finished_at else None,
    }
    return {
        "type": event_type,
        "timestamp": (analysis.finished_at or analysis.updated_at).isoformat(),
        "data": data,
    }
