"""The reconciler: the database is the source of truth, Redis only carries jobs.

An arq cron job (every ``reconcile_interval_seconds``, and once at worker start) looks for work the
queue has lost — Redis restarted empty, flushed, or failed over — and queues it again:

- analyses ``queued`` or ``processing`` whose lease (``updated_at``, renewed by the running job's
  heartbeat every ``worker_heartbeat_seconds``) is older than ``reconcile_lease_seconds``;
- webhook deliveries ``pending`` whose next attempt is overdue by that lease.

Each is re-enqueued only when arq holds no job for it (no job key, no in-progress key), under the
same job id as the first time (the analysis id, ``webhook:<delivery id>``), so running the
reconciler twice, on several workers, or beside a live job queues nothing twice; the jobs
themselves are idempotent.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from services.platform.analyses.repository import NON_TERMINAL
from services.platform.resources import Resources
from services.platform.webhooks.jobs import enqueue_delivery
from shared.db.models import Analysis, WebhookDelivery
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.logging import get_logger

log = get_logger(__name__)

# Rows looked at per run; a bigger backlog is worked off over the next runs.
BATCH = 500


def stale_work(session: Session, lease_seconds: float) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    analyses = session.scalars(
        select(Analysis.id)
        .where(Analysis.status.in_(NON_TERMINAL), Analysis.updated_at < cutoff)
        .order_by(Analysis.updated_at)
        .limit(BATCH)
    ).all()
    deliveries = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == "pending",
            or_(
                WebhookDelivery.next_attempt_at < cutoff,
                and_(WebhookDelivery.next_attempt_at.is_(None), WebhookDelivery.created_at < cutoff),
            ),
        )
        .order_by(WebhookDelivery.created_at)
        .limit(BATCH)
    ).all()
    return list(analyses), list(deliveries)


async def _job_known(redis_pool: Any, job_id: str) -> bool:
    return bool(await redis_pool.exists(job_key_prefix + job_id, in_progress_key_prefix + job_id))


async def reconcile(resources: Resources, redis_pool: Any) -> dict[str, int]:
    settings = resources.settings

    def load() -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        with session_scope(resources.sessions) as session:
            return stale_work(session, settings.reconcile_lease_seconds)

    analyses, deliveries = await asyncio.to_thread(load)
    requeued_analyses = requeued_deliveries = 0
    for analysis_id in analyses:
        job_id = str(analysis_id)
        if await _job_known(redis_pool, job_id):
            continue
        # A result kept from an earlier run would make arq refuse the job id; the row says the
        # work is not done, so that result is stale.
        await redis_pool.delete(result_key_prefix + job_id)
        job = await redis_pool.enqueue_job(
            "analyse_video", job_id, _job_id=job_id, _queue_name=settings.queue_name
        )
        if job is not None:
            requeued_analyses += 1
            log.warning("analysis_requeued", analysis_id=job_id)
    for delivery_id in deliveries:
        job_id = f"webhook:{delivery_id}"
        if await _job_known(redis_pool, job_id):
            continue
        await redis_pool.delete(result_key_prefix + job_id)
        await enqueue_delivery(redis_pool, delivery_id, settings)
        requeued_deliveries += 1
        log.warning("webhook_delivery_requeued", delivery_id=str(delivery_id))
    return {"analyses": requeued_analyses, "deliveries": requeued_deliveries}


async def reconcile_queue(ctx: dict[str, Any]) -> dict[str, int]:
    return await reconcile(ctx["resources"], ctx["redis"])
