"""Faults on a private stack (its own redis-server on a free loopback port, no persistence): Redis
outages — the gateway answers fast 503s, the worker stays up and reconnects, and the reconciler
re-enqueues from the database what an empty Redis lost, each analysis finishing exactly once,
charged once — and the model service down, which analyses wait out for a bounded window."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import update

from shared.db.models import Analysis
from shared.db.types import utcnow
from tests.worker import api, stack
from tests.worker.helpers import events, ledger

pytestmark = pytest.mark.slow

RECOVERY = {
    "MOODREEL_RECONCILE_LEASE_SECONDS": "10",
    "MOODREEL_RECONCILE_INTERVAL_SECONDS": "5",
    "MOODREEL_WORKER_HEARTBEAT_SECONDS": "2",
}


@contextlib.contextmanager
def private_stack(base_env, worker_env, tmp_path, worker_extra: dict[str, str]) -> Iterator[tuple]:
    """(redis process, gateway process, worker process — not started, user of the gateway)."""
    store = stack.private_redis(tmp_path).start()
    prefix = f"recovery-{uuid.uuid4().hex[:8]}:"
    private = {"MOODREEL_REDIS_URL": store.url, "MOODREEL_REDIS_KEY_PREFIX": prefix}
    private["MOODREEL_QUEUE_NAME"] = prefix + "queue"
    gateway = stack.gateway(base_env | private | {"MOODREEL_ALLOW_PRIVATE_URLS": "true"}, tmp_path)
    worker = stack.worker(worker_env | private | worker_extra, tmp_path, name=f"worker-{prefix[:-1]}")
    try:
        gateway.start()
        yield store, gateway, worker, api.new_user(f"http://127.0.0.1:{gateway.port}"), prefix
    finally:
        worker.stop()
        gateway.stop()
        store.kill()


def test_redis_restarted_empty_strands_no_analysis(
    clips, model_server, base_env, worker_env, sessions, tmp_path
):
    with private_stack(base_env, worker_env, tmp_path, RECOVERY) as (store, _gateway, worker, user, prefix):
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
        assert redis.Redis.from_url(store.url).zcard(prefix + "queue") == 0

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


def test_model_service_down_is_waited_out_within_the_window(
    clips, model_server, base_env, worker_env, sessions, tmp_path
):
    """Two job tries would not outlast the outage; the waiting window does, and says so on the
    stream. Past the window the analysis fails ``model_unavailable``, refunded."""
    waiting = {
        "MOODREEL_WORKER_JOB_TRIES": "2",
        "MOODREEL_WORKER_RETRY_BASE_SECONDS": "0.5",
        "MOODREEL_MODEL_UNAVAILABLE_WINDOW_SECONDS": "90",
        "MOODREEL_MODEL_RETRY_BASE_SECONDS": "1",
        "MOODREEL_MODEL_RETRY_MAX_SECONDS": "2",
    }
    with private_stack(base_env, worker_env, tmp_path, waiting) as (store, _gateway, worker, user, prefix):
        worker.start()
        client = redis.Redis.from_url(store.url)

        def waits(analysis_id: str) -> list[dict]:
            return [
                e.data
                for e in events(client, analysis_id, prefix)
                if e.type == "status" and e.data.get("waiting_for")
            ]

        model_server.stop()
        try:
            created = user.submit(video_url=clips.url("short.mp4"))["id"]
            stack.wait_until(lambda: len(waits(created)) >= 3, 60, "three announced waits")
            assert user.get(created)["status"] == "processing"
        finally:
            model_server.start()
        analysis = user.wait(created, timeout=120)
        assert analysis["status"] == "succeeded", analysis["error"]
        announced = waits(created)
        assert all(w["waiting_for"] == "model" and w["status"] == "processing" for w in announced)
        assert [w["retry_in_seconds"] for w in announced[:3]] == [1, 2, 2]

    short = waiting | {"MOODREEL_MODEL_UNAVAILABLE_WINDOW_SECONDS": "4"}
    with private_stack(base_env, worker_env, tmp_path, short) as (_store, _gateway, worker, user, _prefix):
        worker.start()
        model_server.stop()
        try:
            created = user.submit(video_url=clips.url("short.mp4"))["id"]
            failed = user.wait(created, timeout=90)
        finally:
            model_server.start()
        assert failed["status"] == "failed" and failed["error"]["code"] == "model_unavailable"
        assert all(entry.refunded_at is not None for entry in ledger(sessions, created).values())


def test_health_check_fails_instead_of_waiting_when_redis_is_down(worker_env):
    import os
    import subprocess

    dead = f"redis://127.0.0.1:{stack.free_port()}/0"
    started = time.monotonic()
    done = subprocess.run(
        [str(stack.BIN / "arq"), "--check", "services.preprocess.worker.WorkerSettings"],
        cwd=stack.REPO_ROOT,
        env={**os.environ, **worker_env, "MOODREEL_REDIS_URL": dead},
        capture_output=True,
        timeout=90,
    )
    assert done.returncode != 0 and time.monotonic() - started < 60
