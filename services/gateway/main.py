"""The gateway application: ``uvicorn --factory services.gateway.main:create_app``."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis.asyncio as aioredis
import redis.exceptions
import sqlalchemy.exc
from arq.connections import ArqRedis
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from services.gateway.admission import AdmissionMiddleware
from services.gateway.api_docs import install_api_docs
from services.gateway.dashboard import router as dashboard_router
from services.gateway.limits import BodySizeLimitMiddleware
from services.gateway.openapi import install_problem_openapi
from services.gateway.ratelimit import RateLimitHeadersMiddleware
from services.gateway.scheduling import RequestScheduler
from services.gateway.security import DEFAULT_SECRET
from services.platform.analyses.endpoints import router as analyses_router
from services.platform.analyses.sse import EventHub, StreamSlots
from services.platform.api_keys.endpoints import router as api_keys_router
from services.platform.auth.endpoints import router as auth_router
from services.platform.uploads.endpoints import router as uploads_router
from services.platform.usage.endpoints import router as usage_router
from services.platform.webhooks.docs import document_webhooks
from services.platform.webhooks.endpoints import router as webhooks_router
from shared.db.session import create_db_engine, make_session_factory
from shared.logging import configure_logging, get_logger
from shared.net.urls import check_private_url_switches
from shared.problems import ServiceUnavailable, install_problem_handlers, problem_response
from shared.settings import Settings, get_settings

log = get_logger(__name__)

DESCRIPTION = """
Moodreel scores the emotion (MELD's seven) and sentiment of every utterance of a video.

Authenticate with a JWT access token (`POST /v1/auth/login`) or an API key (`POST /v1/api-keys`),
sent as `Authorization: Bearer …` or `X-API-Key: …` — one credential per request: an invalid one
is refused even beside a valid one, and two different ones are `401 ambiguous_credentials`.
Errors are RFC 9457 `application/problem+json` with a stable `code`. Responses carry
`RateLimit-Policy` and `RateLimit` headers; a 429 carries `Retry-After`.
"""

TAGS = [
    {"name": "auth", "description": "Accounts, sign-in, access and refresh tokens."},
    {"name": "api-keys", "description": "Scoped API keys for programs (manage them with a user token)."},
    {"name": "analyses", "description": "Submit videos, follow progress, read and export results."},
    {"name": "uploads", "description": "Upload media (presigned S3 PUT or the gateway's local storage)."},
    {"name": "usage", "description": "Monthly quota and request rate."},
    {
        "name": "webhooks",
        "description": "Webhook endpoints (Standard Webhooks signatures) and the delivery log.",
    },
    {"name": "health", "description": "Liveness and readiness probes."},
]


POOL_RESERVE = 5


def database_sessions(settings: Settings) -> int:
    """Request sessions open at once (the pool's size): half the threads, so that while every
    session holder runs database work, as many threads are left for everything else."""
    return max(1, settings.gateway_threads // 2)


def check_production_settings(settings: Settings) -> None:
    """Refuse to start a production gateway whose tokens anyone could forge."""
    if settings.environment != "production":
        return
    secret = settings.secret_key.get_secret_value()
    if secret == DEFAULT_SECRET or len(secret) < 32:
        raise RuntimeError(
            "MOODREEL_SECRET_KEY must be set to a random value of at least 32 characters in production "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)."
        )
    check_private_url_switches(settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_production_settings(settings)
    configure_logging(settings.log_level, settings.log_json, rich_tracebacks=settings.log_rich_tracebacks)
    sessions = database_sessions(settings)
    # One connection per request session, and a small reserve for work outside a request session
    # (readiness, after-commit hooks): no thread ever waits for a connection a request holds.
    engine = create_db_engine(settings=settings, pool_size=sessions, max_overflow=POOL_RESERVE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client for rate limits, events and the arq queue (ArqRedis is a redis.asyncio client):
        # bounded, with short timeouts, so a Redis outage is a fast 503 rather than a hung request.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=settings.redis_socket_timeout_seconds,
            socket_connect_timeout=settings.redis_connect_timeout_seconds,
            socket_timeout=settings.redis_socket_timeout_seconds,
            client_name=f"{settings.redis_key_prefix}gateway",
        )
        app.state.arq = ArqRedis(pool, default_queue_name=settings.queue_name)
        app.state.redis = app.state.arq
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.gateway_threads
        app.state.session_slots = anyio.Semaphore(sessions)
        app.state.commit_limiter = anyio.CapacityLimiter(sessions)
        # SSE: one connection blocks on XREAD for every open stream of this process.
        hub_block_ms = 1000
        app.state.event_hub = EventHub(
            aioredis.Redis.from_url(
                settings.redis_url,
                max_connections=1,
                socket_connect_timeout=settings.redis_connect_timeout_seconds,
                socket_timeout=settings.redis_socket_timeout_seconds + hub_block_ms / 1000,
                client_name=f"{settings.redis_key_prefix}gateway-events",
            ),
            block_ms=hub_block_ms,
        )
        app.state.stream_slots = StreamSlots(
            per_server=settings.sse_max_streams,
            per_key=settings.sse_max_streams_per_key,
            retry_after=settings.sse_retry_after_seconds,
        )
        # Everything alive once the app is up (modules, the app, its routes and schemas) lives as
        # long as the process: frozen, it is no longer walked by every full collection, which
        # otherwise pauses the event loop for tens of milliseconds when many connections are open.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await app.state.event_hub.close()
            await app.state.arq.aclose()
            await pool.aclose()
            engine.dispose()

    app = FastAPI(
        title="Moodreel API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
        # /docs and /redoc are served by install_api_docs from pinned local assets (no CDN).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)

    install_problem_handlers(app)

    async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis_unavailable", path=request.url.path, error=str(exc))
        retry_after = str(settings.redis_retry_after_seconds)
        problem = ServiceUnavailable(
            "The queue and rate-limit store is unavailable; retry shortly.",
            code="redis_unavailable",
            headers={"Retry-After": retry_after},
        )
        return problem_response(problem, request)

    app.add_exception_handler(redis.exceptions.ConnectionError, redis_unavailable)
    app.add_exception_handler(redis.exceptions.TimeoutError, redis_unavailable)
    app.add_exception_handler(sqlalchemy.exc.OperationalError, _database_unavailable)
    app.add_exception_handler(sqlalchemy.exc.TimeoutError, _database_unavailable)
    # Innermost: refused requests still get the security, CORS and proxy handling below.
    app.add_middleware(AdmissionMiddleware, settings=settings)
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_request_body_bytes,
        max_json_values=settings.max_request_json_values,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "RateLimit", "RateLimit-Policy", "Retry-After"],
        )
    # Outside everything but the proxy handling: a waiting request has cost nothing yet.
    app.add_middleware(RequestScheduler, settings=settings)
    if settings.trusted_proxies:
        # Outermost: every limit keyed by the client's address sees the forwarded one, and only
        # when the TCP peer is a trusted proxy (servers run with --no-proxy-headers).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)

    app.include_router(auth_router)
    app.include_router(api_keys_router)
    app.include_router(usage_router)
    app.include_router(uploads_router)
    app.include_router(analyses_router)
    app.include_router(webhooks_router)
    app.include_router(dashboard_router)
    # Other areas' routers plug in here (webhook endpoints API, dashboard).
    document_webhooks(app)
    install_problem_openapi(app)
    install_api_docs(app)
    _add_health_routes(app)
    return app


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A database that refuses connections (or a full pool) is an outage to retry, not a bug:
    503 with Retry-After, and one log line instead of a traceback per request."""
    log.warning("database_unavailable", path=request.url.path, error=str(exc).splitlines()[0][:300])
    problem = ServiceUnavailable(
        "The database is unavailable; retry shortly.",
        code="database_unavailable",
        headers={"Retry-After": "5"},
    )
    return problem_response(problem, request)


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the database and Redis answer")
    async def readyz(request: Request) -> dict[str, str]:
        def ping_database() -> None:
            with request.app.state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        try:
            await run_in_threadpool(ping_database)
            await request.app.state.redis.ping()
        except Exception as exc:
            log.warning("not_ready", error=str(exc))
            raise ServiceUnavailable("A dependency is unavailable.") from exc
        return {"status": "ready"}
