"""The optional arq worker that runs ``moodreel retrain`` on a schedule:
``arq services.retrain.jobs.WorkerSettings`` (one process; training runs in a thread, so the
event loop keeps answering arq's health checks). The debounce decides whether a pass trains."""

from __future__ import annotations

import asyncio
from typing import Any

from arq import cron
from arq.connections import RedisSettings

from shared.logging import configure_logging, get_logger
from shared.settings import get_settings

log = get_logger(__name__)


def retrain_once() -> dict[str, Any]:
    from services.model.training.cli import config_from_args
    from services.retrain.loop import retrain
    from shared.db.session import create_db_engine, make_session_factory

    settings = get_settings()
    if settings.retrain_publish_dir is None:
        raise ValueError("MOODREEL_RETRAIN_PUBLISH_DIR is not set")
    engine = create_db_engine(settings=settings)
    try:
        config = config_from_args(
            ["--preset", settings.retrain_hyperparameters.get("preset", "text-default")]
        )
        outcome = retrain(make_session_factory(engine), settings, config, settings.retrain_publish_dir)
    finally:
        engine.dispose()
    return outcome.to_dict()


async def retrain_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return await asyncio.to_thread(retrain_once)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


class WorkerSettings:
    functions = [retrain_job]
    # Hourly; unique so two workers never train at once. Training can take hours.
    cron_jobs = [cron(retrain_job, minute=7, unique=True, timeout=12 * 3600, run_at_startup=False)]
    on_startup = startup
    queue_name = f"{get_settings().queue_name}:retrain"
    redis_settings = RedisSettings.from_dsn(get_settings().redis_url)
    max_jobs = 1
    job_timeout = 12 * 3600
