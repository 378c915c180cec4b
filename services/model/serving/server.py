"""The model server: SageMaker's bring-your-own-container contract, also the local model service.

``GET /ping`` answers 200 only once the model is loaded (it loads in a background thread at
start-up, so the port opens at once); ``POST /invocations`` runs ``services.model.serving.inference``'s
four functions; ``GET /spec`` gives the FeatureSpec the worker must build bundles with;
``GET /metrics`` is Prometheus text. Errors are RFC 9457 problem+json.

Forward passes run in a worker thread, at most ``model_max_concurrency`` at a time; each request
has a deadline below SageMaker's 60 s, checked between batches. uvicorn handles SIGTERM: it stops
accepting, lets in-flight requests finish (``model_graceful_shutdown_seconds``), then exits.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from shared.logging import configure_logging, get_logger
from shared.problems import PayloadTooLarge, Problem, ServiceUnavailable, install_problem_handlers
from shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from services.model.serving.inference import ServedModel

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
# SageMaker's InvokeEndpoint gives up at 60 s; a deadline configured above it is cut to this.
MAX_DEADLINE_SECONDS = 58.0
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
log = get_logger(__name__)


def request_deadline_seconds(settings: Settings) -> float:
    """``SAGEMAKER_MODEL_SERVER_TIMEOUT`` (set on the SageMaker Model) wins over the setting."""
    configured = os.environ.get("SAGEMAKER_MODEL_SERVER_TIMEOUT")
    seconds = float(configured) if configured else settings.model_request_timeout_seconds
    return min(seconds, MAX_DEADLINE_SECONDS)


def _problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Problem:
    problem = Problem(detail, headers=headers)
    problem.status, problem.code, problem.title = status, code, HTTPStatus(status).phrase
    return problem


class ModelHolder:
    """The model, loaded once in a background thread.

    /ping answers 503 until it is loaded. An invocation that arrives meanwhile waits for it
    (within its deadline): with several worker processes, a load balancer may send it to a
    worker that is still loading while another one already answered /ping.
    """

    def __init__(self, model_dir: Path, load: Callable[[Path], ServedModel]):
        self.model_dir = model_dir
        self._load = load
        self.model: ServedModel | None = None
        self.error: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.model = self._load(self.model_dir)
        except Exception as exc:  # reported by /ping; the log carries the traceback
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("model_load_failed", model_dir=str(self.model_dir))
        finally:
            self._done.set()

    async def ready(self, timeout: float) -> ServedModel:
        if not self._done.is_set():
            await asyncio.to_thread(self._done.wait, max(timeout, 0))
        return self.require()

    def watch(self, interval: float, stop: threading.Event) -> threading.Thread:
        """Reload when the model directory's resolved target changes (a publisher swaps a
        ``current`` symlink). The new model loads beside the old one and replaces it in one
        assignment: a request holds the model it started with, so nothing in flight is dropped.
        A target that fails to load is logged and skipped; the old model keeps serving."""
        thread = threading.Thread(target=self._watch, args=(interval, stop), name="model-watch", daemon=True)
        thread.start()
        return thread

    def _watch(self, interval: float, stop: threading.Event) -> None:
        self._done.wait()
        served_target = failed_target = os.path.realpath(self.model_dir)
        while not stop.wait(interval):
            target = os.path.realpath(self.model_dir)
            if target in (served_target, failed_target):
                continue
            try:
                model = self._load(Path(target))
            except Exception:  # the old model keeps serving
                failed_target = target
                log.exception("model_reload_failed", model_dir=str(self.model_dir), target=target)
                continue
            self.model, self.error, served_target = model, None, target
            log.info(
                "model_reloaded", model_dir=str(self.model_dir), target=target, **model.info.model_dump()
            )

    def require(self) -> ServedModel:
        if self.model is not None:
            return self.model
        if self.error is not None:
            raise _problem(503, "model_load_failed", f"the model could not be loaded: {self.error}")
        raise ServiceUnavailable("The model is still loading.", headers={"Retry-After": "1"})


class Metrics:
    def __init__(self) -> None:
        # One registry per app, so several servers in one process (tests) keep separate counts.
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "moodreel_model_invocation_seconds",
            "Time to answer POST /invocations, by status.",
            ["status"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60),
            registry=self.registry,
        )
        self.utterances = Counter(
            "moodreel_model_utterances_scored", "Utterances scored.", registry=self.registry
        )
        self.loaded = Gauge("moodreel_model_loaded", "1 once the model is loaded.", registry=self.registry)
        self.in_flight = Gauge(
            "moodreel_model_invocations_in_flight", "Invocations being answered now.", registry=self.registry
        )


def create_app(
    model_dir: Path,
    *,
    settings: Settings | None = None,
    load_model: Callable[[Path], ServedModel] | None = None,
) -> FastAPI:
    # torch loads here, not at import: `serve`'s multi-worker supervisor never needs it.
    from services.model.serving.inference import JSON_CONTENT_TYPE, InferenceError, model_fn, transform

    settings = settings or get_settings()
    holder = ModelHolder(Path(model_dir), load_model or model_fn)
    metrics = Metrics()
    max_payload = settings.model_max_payload_bytes
    deadline_seconds = request_deadline_seconds(settings)
    slots = asyncio.Semaphore(settings.model_max_concurrency)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("model_server_starting", model_dir=str(model_dir), deadline_seconds=deadline_seconds)
        holder.start()
        stop_watching = threading.Event()
        if settings.model_watch_seconds > 0:
            holder.watch(settings.model_watch_seconds, stop_watching)
        yield
        stop_watching.set()
        log.info("model_server_stopped")

    app = FastAPI(title="Moodreel model service", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.holder = holder
    app.state.metrics = metrics
    install_problem_handlers(app)

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        # A caller's id is kept only when it is short and plain, so it cannot forge log fields.
        offered = request.headers.get("x-request-id", "")
        request_id = offered if REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        elapsed = time.perf_counter() - started
        if request.url.path == "/invocations":
            metrics.latency.labels(str(response.status_code)).observe(elapsed)
        if request.url.path not in ("/ping", "/metrics"):
            log.info(
                "request",
                request_id=request_id,
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                ms=round(elapsed * 1000, 1),
            )
        response.headers["X-Request-Id"] = request_id
        return response

    @app.get("/ping")
    def ping() -> dict[str, Any]:
        served = holder.require()
        return {"status": "ok", "model": served.info.model_dump()}

    @app.get("/spec")
    def spec() -> Response:
        served = holder.require()
        return Response(
            served.spec.model_dump_json(),
            media_type=JSON_CONTENT_TYPE,
            headers={"X-Spec-Hash": served.spec.hash},
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.loaded.set(1 if holder.model is not None else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        with metrics.in_flight.track_inprogress():
            return await answer(request)

    async def answer(request: Request) -> Response:
        deadline = time.monotonic() + deadline_seconds
        served = await holder.ready(deadline_seconds)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_payload:
            raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_payload}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_payload:
                raise PayloadTooLarge(f"the body exceeds the {max_payload}-byte limit")
        try:
            async with asyncio.timeout(deadline - time.monotonic()), slots:
                payload, count = await run_in_threadpool(
                    transform,
                    bytes(body),
                    request.headers.get("content-type"),
                    request.headers.get("accept"),
                    served,
                    deadline,
                )
        except InferenceError as exc:
            raise _problem(exc.status_code, exc.code, exc.message) from exc
        except TimeoutError as exc:
            raise _problem(
                503, "deadline_exceeded", f"no answer within {deadline_seconds:.0f} s", {"Retry-After": "5"}
            ) from exc
        metrics.utterances.inc(count)
        return Response(payload, media_type=JSON_CONTENT_TYPE)

    return app


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` on a port the OS picks, in a thread; yield its URL (tests, bench, demos)."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))  # bound here and handed over: no window for another process to take it
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="model-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the model server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def app_from_environment() -> FastAPI:
    """uvicorn's factory when it runs several worker processes (each loads its own model)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    return create_app(settings.model_dir, settings=settings)


def resolve_model_dir(model_dir: Path | None, settings: Settings) -> Path:
    """The explicit directory, else SageMaker's /opt/ml/model when present, else the setting."""
    if model_dir is not None:
        return model_dir
    if SAGEMAKER_MODEL_DIR.is_dir():
        return SAGEMAKER_MODEL_DIR
    return settings.model_dir


def serve(
    model_dir: Path | None = None, host: str = "0.0.0.0", port: int | None = None, workers: int | None = None
) -> None:
    """Run the server until SIGTERM/SIGINT (``docker run IMAGE serve`` or ``moodreel serve``)."""
    import uvicorn

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    model_dir = resolve_model_dir(model_dir, settings)
    port = port or int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    workers = workers or int(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1"))
    log.info("model_server_config", model_dir=str(model_dir), host=host, port=port, workers=workers)
    common = {
        "host": host,
        "port": port,
        "log_config": None,  # keep shared.logging's handlers
        "access_log": False,  # the middleware logs requests with their id
        "timeout_graceful_shutdown": settings.model_graceful_shutdown_seconds,
        # Outlive callers' pooled idle connections, so a reused one is not closed mid-send.
        "timeout_keep_alive": 75,
    }
    if workers > 1:
        os.environ["MOODREEL_MODEL_DIR"] = str(model_dir)
        uvicorn.run(
            "services.model.serving.server:app_from_environment", factory=True, workers=workers, **common
        )
    else:
        uvicorn.run(create_app(model_dir, settings=settings), **common)
