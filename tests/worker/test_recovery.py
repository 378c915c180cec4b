"""Redis outages on a private redis-server (its own loopback port, no persistence): the gateway
answers fast 503s while it is away, the worker stays up and reconnects, and the reconciler
re-enqueues from the database what an empty Redis lost — each analysis finishes exactly once,
charged once."""

from __future__ import annotations

import math
import time
import uuid

import pytest
import redis
from sqlalchemy import update

from shared.db.models import Analysis
from shared.db.types import utcnow
from tests.worker import api, stack
from tests.worker.helpers import ledger

pytestmark = pytest.mark.slow

RECOVERY = {
    "MOODREEL_RECONCILE_LEASE_SECONDS": "10",
    "MOODREEL_RECONCILE_INTERVAL_SECONDS": "5",
    "MOODREEL_WORKER_HEARTBEAT_SECONDS": "2",
}


def test_redis_restarted_empty_strands_no_analysis(
    clips, model_server, base_env, worker_env, sessions, tmp_path
):
    store = stack.private_redis(tmp_path).start()
    private = {
        "MOODREEL_REDIS_URL": store.url,
        "MOODREEL_REDIS_KEY_PREFIX": f"recovery-{uuid.uuid4().hex[:8]}:",
    }
    private["MOODREEL_QUEUE_NAME"] = private["MOODREEL_REDIS_KEY_PREFIX"] + "queue"
    gateway = stack.gateway(base_env | private | {"MOODREEL_ALLOW_PRIVATE_URLS": "true"}, tmp_path)
    worker = stack.worker(worker_env | private | RECOVERY, tmp_path, name="worker-recovery")
    try:
        gateway.start()
        user = api.new_user(f"http://127.0.0.1:{gateway.port}")
        # Submitted while no worker runs; one of them as if a worker had died mid-job long ago.
        queued = [user.submit(video_url=clips.url("short.mp4"))["id"] for _ in range(3)]
        with sessions() as session, session.begin():
            session.execute(
                update(Analysis)
                .where(Analysis.id == uuid.UUID(queued[0]))
                .values(status="processing", started_at=utcnow(), updated_at=utcnow())
            )

        store.kill()  # Redis is gone: the gateway fails fast
        started = time.monotonic()
        outage = user.http.get("/v1/usage")
        assert outage.status_code == 503 and outage.json()["code"] == "redis_unavailable"
        assert int(outage.headers["retry-after"]) >= 1 and time.monotonic() - started < 5
        store.start()  # ... and comes back empty: the three jobs are lost
        assert redis.Redis.from_url(store.url).zcard(private["MOODREEL_QUEUE_NAME"]) == 0

        worker.start()
        store.kill()  # Redis dies under a running worker, which must not exit
        time.sleep(4)
        assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
        store.start()

        # The reconciler finds them in the database once their lease is over.
        finished = [user.wait(analysis_id, timeout=150) for analysis_id in queued]
        assert [a["status"] for a in finished] == ["succeeded"] * 3, [a["error"] for a in finished]
        for analysis_id in queued:
            entries = ledger(sessions, analysis_id)
            assert entries["analysis"].amount == 1 and entries["analysis"].refunded_at is None
            assert entries["seconds"].amount == math.ceil(finished[0]["duration_seconds"])
        assert user.usage()["analyses"]["used"] == 3
        # A new submission after the outage is picked up as usual.
        fresh = user.submit(video_url=clips.url("short.mp4"))["id"]
        assert user.wait(fresh, timeout=90)["status"] == "succeeded"
        assert "analysis_requeued" in worker.log_path.read_text()
    finally:
        worker.stop()
        gateway.stop()
        store.kill()
