"""The arq worker: ``arq services.preprocess.worker.WorkerSettings`` (``--check`` for health).

Jobs on ``settings.queue_name``:

- ``analyse_video(analysis_id)``: enqueued by the gateway with ``_job_id=str(analysis_id)``, so
  one analysis is one job. Transient failures re-queue it with exponential backoff
  (``worker_retry_base_seconds``); its last try fails the analysis with the last error code.
- ``deliver_webhook(delivery_id)``: one signed POST; a failed attempt re-queues itself after
  ``webhook_retry_base_seconds * 2**(n-1)`` until ``webhook_max_attempts``.
- ``reconcile`` (cron, every ``reconcile_interval_seconds`` and at start): re-enqueues from the
  database the analyses and webhook deliveries that Redis lost (``services/platform/reconcile.py``).

SIGTERM stops taking jobs and gives running ones ``worker_shutdown_grace_seconds`` to finish;
jobs cancelled after that go back to the queue and resume idempotently on the next worker.
"""

from __future__ import annotations

import logging
from typing import Any

from arq import cron, func
from arq.connections import RedisSettings
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.platform.analyses.jobs import analyse_video
from services.platform.reconcile import reconcile_queue
from services.platform.resources import Resources
from services.platform.webhooks.jobs import deliver_webhook
from shared.contract.model_client import model_client_from_settings
from shared.db.session import create_db_engine, make_session_factory
from shared.logging import configure_logging, get_logger
from shared.net.fetch import remove_abandoned_workspaces
from shared.net.urls import check_private_url_switches
from shared.settings import get_settings

log = get_logger(__name__)
settings = get_settings()

# arq's own timeout is the backstop; the pipeline fails itself cleanly a little before it.
ANALYSE_TIMEOUT_MARGIN_SECONDS = 30


async def startup(ctx: dict[str, Any]) -> None:
    configure_logging(settings.log_level, settings.log_json, rich_tracebacks=settings.log_rich_tracebacks)
    # arq's CLI installs its own handler; route its records through ours only (no duplicates), and
    # keep httpx's per-request lines out (the worker logs what it fetched and scored itself).
    logging.getLogger("arq").handlers.clear()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    check_private_url_switches(settings)
    for directory in remove_abandoned_workspaces(settings):
        log.warning("abandoned_workspace_removed", path=str(directory))
    outlive_redis_outages(ctx["redis"])
    engine = create_db_engine(settings=settings, pool_size=settings.worker_max_jobs + 2)
    ctx["engine"] = engine
    ctx["resources"] = Resources(
        settings=settings,
        sessions=make_session_factory(engine),
        redis=ctx["redis"],
        model=model_client_from_settings(settings),
    )
    log.info("worker_started", queue=settings.queue_name, max_jobs=settings.worker_max_jobs)


async def shutdown(ctx: dict[str, Any]) -> None:
    resources: Resources | None = ctx.get("resources")
    if resources is not None:
        resources.model.close()
    if "engine" in ctx:
        ctx["engine"].dispose()
    log.info("worker_stopped")


def outlive_redis_outages(client: Any) -> None:
    """From now on every command of the worker's Redis client retries with backoff (capped at 5 s)
    for as long as Redis is away, instead of the error ending the worker process. Applied at
    start-up only, so ``arq --check`` still fails fast when Redis is down."""
    errors = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
    retry = RedisRetry(ExponentialBackoff(cap=5, base=0.2), retries=-1, supported_errors=errors)
    pool = client.connection_pool
    pool.connection_kwargs.update(retry=retry, retry_on_error=list(errors))  # connections made later
    pool.set_retry(retry)  # connections already made
    for connection in (*pool._available_connections, *pool._in_use_connections):
        connection.retry_on_error = list(errors)


def redis_settings() -> RedisSettings:
    """Start-up (and ``arq --check``) tries Redis for about 20 s before giving up; a worker that
    could not start is restarted by its supervisor (compose: ``restart: unless-stopped``)."""
    base = RedisSettings.from_dsn(settings.redis_url)
    base.conn_retries = 10
    base.conn_retry_delay = 1
    return base


def reconcile_seconds() -> set[int] | None:
    interval = settings.reconcile_interval_seconds
    return set(range(0, 60, interval)) if interval < 60 else None


def reconcile_minutes() -> set[int] | None:
    minutes = settings.reconcile_interval_seconds // 60
    return set(range(0, 60, minutes)) if minutes > 1 else None


class WorkerSettings:
    functions = [
        func(
            analyse_video,
            timeout=settings.worker_job_timeout_seconds + ANALYSE_TIMEOUT_MARGIN_SECONDS,
            # One try more than worker_job_tries, kept for failing cleanly (see analyse_video).
            max_tries=settings.worker_job_tries + 1,
        ),
        # One attempt per try; the delivery row counts attempts, arq's tries only bound the loop.
        func(
            deliver_webhook,
            timeout=settings.webhook_timeout_seconds * 3,
            max_tries=settings.webhook_max_attempts + 1,
        ),
    ]
    # The reconciler: every reconcile_interval_seconds and at start; one run per slot across workers.
    cron_jobs = [
        cron(
            reconcile_queue,
            name="reconcile",
            second=reconcile_seconds() or 0,
            minute=reconcile_minutes(),
            run_at_startup=True,
            unique=True,
            timeout=120,
            max_tries=1,
        )
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = redis_settings()
    queue_name = settings.queue_name
    max_jobs = settings.worker_max_jobs
    job_completion_wait = settings.worker_shutdown_grace_seconds
    # `arq --check` reads this key; refreshed well within its expiry while the worker lives.
    health_check_interval = 15
    keep_result = 3600
