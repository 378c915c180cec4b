"""Load and fault benchmark, loopback only, bounded in count and time (it stops by itself).

    nice -n 10 .venv/bin/python bench/load.py [--streams 1000] [--burst 100] [--fault-analyses 6]

Everything runs on 127.0.0.1 as subprocesses: a private redis-server on a free port (never the
shared one; restarting it is a Redis that comes back empty), a fresh PostgreSQL database (created
and dropped here), the gateway (one uvicorn process), the arq worker, the model server with a tiny
random-weight checkpoint, and a loopback media server and webhook receiver. Three parts:

1. **Streams**: ``--streams`` concurrent ``GET /v1/analyses/{id}/events`` held open on the one
   gateway process (10 API keys, the default per-key cap of 100 applies), opened ``--burst`` at a
   time; meanwhile ``GET /v1/usage`` latency is measured, then one event is published and the
   streams that received it are counted.
2. **Quota boundary** (PostgreSQL): a plan of ``--quota`` analyses with 30 left, then ``--burst``
   concurrent ``POST /v1/analyses``: how many are accepted (must be exactly 30), how fast; again
   with 28 at once and 20 left (below the database pool's size).
3. **Faults**: ``--fault-analyses`` submissions with a callback; the worker is SIGKILLed mid-job
   and restarted, Redis is killed and restarted empty (submissions made meanwhile retry with
   their Idempotency-Key once it answers), and the model server is down for ``--model-down``
   seconds. Then: stranded (not terminal), duplicated (extra rows, utterances or webhook
   messages) and double-charged (ledger vs. counters) analyses.

Results: bench/results/load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import create_engine, func, select, update  # noqa: E402

from services.platform.analyses.events import publish_event, stream_key  # noqa: E402
from shared.db.models import Analysis, UsageEntry, UsagePeriod, User, UtteranceResult  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.fixtures.db import create_postgres_database, drop_postgres_database, migrate  # noqa: E402
from tests.worker import stack  # noqa: E402
from tests.worker.loopback import RecordingServer, send_bytes, serve_file  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "load.json"
TERMINAL = {"succeeded", "failed", "canceled"}
PASSWORD = "correct horse battery staple"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency_summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"count": 0}
    return {
        "count": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


def new_account(http: httpx.Client, keys: int = 1) -> tuple[str, list[str]]:
    email = f"load-{uuid.uuid4().hex[:12]}@example.com"
    signup = http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
    assert signup.status_code == 201, signup.text
    token = http.post("/v1/auth/login", data={"username": email, "password": PASSWORD}).json()["access_token"]
    created = []
    for index in range(keys):
        response = http.post(
            "/v1/api-keys", json={"name": f"load-{index}"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 201, response.text
        created.append(response.json()["key"])
    return signup.json()["id"], created


# --- part 1: streams ----------------------------------------------------------------------------
class HeldStream:
    """One raw HTTP/1.1 SSE request on its own socket; reads and counts event lines."""

    def __init__(self, port: int, path: str, key: str):
        self.port, self.path, self.key = port, path, key
        self.status: int | None = None
        self.events = 0
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None

    async def open(self) -> int:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {self.key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await self.writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 60)
        self.status = int(status_line.split()[1])
        self.task = asyncio.create_task(self._read(reader))
        return self.status

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            if line.startswith(b"data:"):
                self.events += 1

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


async def usage_latencies(base_url: str, key: str, seconds: float, concurrency: int = 4) -> tuple[list, dict]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": key}, timeout=30) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    response = await client.get("/v1/usage")
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                except httpx.HTTPError:
                    statuses[0] = statuses.get(0, 0) + 1
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return latencies, statuses


async def streams_part(base_url: str, port: int, keys: list[str], analysis_id: str, args, store_url, prefix):
    path = f"/v1/analyses/{analysis_id}/events"
    streams = [HeldStream(port, path, keys[index % len(keys)]) for index in range(args.streams)]
    statuses: dict[str, int] = {}
    started = time.monotonic()
    for offset in range(0, len(streams), args.stream_burst):
        batch = streams[offset : offset + args.stream_burst]
        results = await asyncio.gather(*(s.open() for s in batch), return_exceptions=True)
        for result in results:
            name = str(result) if isinstance(result, int) else type(result).__name__
            statuses[name] = statuses.get(name, 0) + 1
    open_seconds = time.monotonic() - started
    held = sum(s.status == 200 for s in streams)
    baseline_lat, baseline_status = await usage_latencies(base_url, keys[0], 2)  # warm, small
    lat, usage_status = await usage_latencies(base_url, keys[0], args.hold)
    before = [s.events for s in streams]
    settings = Settings(redis_key_prefix=prefix)
    published = time.monotonic()
    publish_event(redis.Redis.from_url(store_url), analysis_id, "status", {"status": "queued"}, settings)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        received = sum(s.events > b for s, b in zip(streams, before, strict=True))
        if received >= held:
            break
        await asyncio.sleep(0.1)
    fanout_seconds = time.monotonic() - published
    still_open = sum(1 for s in streams if s.task is not None and not s.task.done())
    for s in streams:
        s.close()
    return {
        "requested": args.streams,
        "opened_200": held,
        "open_statuses": statuses,
        "open_seconds": round(open_seconds, 2),
        "still_open_after_hold": still_open,
        "usage_during_streams": latency_summary(lat) | {"statuses": usage_status},
        "usage_5xx": sum(n for code, n in usage_status.items() if code >= 500 or code == 0),
        "event_fanout": {"received": received, "of": held, "seconds": round(fanout_seconds, 2)},
    }


# --- part 2: quota boundary ---------------------------------------------------------------------
def quota_part(base_url: str, engine, args, concurrency: int, remaining: int) -> dict:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        user_id, (key,) = new_account(http)
        with engine.begin() as connection:
            connection.execute(update(User).where(User.id == uuid.UUID(user_id)).values(plan="boundary"))
        body = {"video_url": "https://93.184.215.14/clip.mp4"}
        for _ in range(args.quota - remaining):
            assert http.post("/v1/analyses", json=body, headers={"X-API-Key": key}).status_code == 202

    async def burst() -> tuple[list[int], list[float], float]:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
            gate = asyncio.Event()

            async def one() -> tuple[int, float]:
                await gate.wait()
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/analyses", json=body, headers={"X-API-Key": key})
                    return response.status_code, time.perf_counter() - started
                except httpx.HTTPError:
                    return 0, time.perf_counter() - started

            tasks = [asyncio.create_task(one()) for _ in range(concurrency)]
            await asyncio.sleep(0.2)
            started = time.perf_counter()
            gate.set()
            done = await asyncio.gather(*tasks)
            return [s for s, _ in done], [t for _, t in done], time.perf_counter() - started

    statuses, latencies, elapsed = asyncio.run(burst())
    with engine.connect() as connection:
        rows = connection.execute(
            select(func.count()).select_from(Analysis).where(Analysis.user_id == uuid.UUID(user_id))
        ).scalar_one()
        used = connection.execute(
            select(UsagePeriod.analyses_used).where(UsagePeriod.user_id == uuid.UUID(user_id))
        ).scalar_one()
        # These analyses are not for the worker: take them out of the way of the fault run.
        connection.execute(
            update(Analysis)
            .where(Analysis.user_id == uuid.UUID(user_id))
            .values(status="canceled", finished_at=func.now())
        )
        connection.commit()
    return {
        "plan_limit": args.quota,
        "remaining_before": remaining,
        "concurrent_requests": concurrency,
        "accepted": statuses.count(202),
        "refused_429": statuses.count(429),
        "other": {str(s): statuses.count(s) for s in set(statuses) - {202, 429}},
        "seconds": round(elapsed, 3),
        "submissions_per_second": round(concurrency / elapsed, 1),
        "latency": latency_summary(latencies),
        "analyses_rows": rows,
        "analyses_used": used,
        "exact": statuses.count(202) == remaining and rows == used == args.quota,
    }


# --- part 3: faults -----------------------------------------------------------------------------
def fault_part(base_url, engine, store, worker, model, receiver, clip_url, store_url, prefix, args) -> dict:
    hits: list[str] = []
    lock = threading.Lock()

    def hook(handler) -> None:
        with lock:
            hits.append(handler.headers.get("webhook-id", ""))
        send_bytes(handler, b"ok")

    receiver.routes["/hook"] = hook
    timeline: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((round(time.monotonic() - t0, 1), what))

    http = httpx.Client(base_url=base_url, timeout=30)
    user_id, (key,) = new_account(http)
    headers = {"X-API-Key": key}
    body = {"video_url": clip_url, "callback_url": receiver.url("/hook"), "options": {"window_seconds": 1.0}}

    def submit(idempotency_key: str) -> tuple[int, str | None]:
        try:
            response = http.post(
                "/v1/analyses", json=body, headers=headers | {"Idempotency-Key": idempotency_key}
            )
        except httpx.HTTPError:
            return 0, None
        return response.status_code, response.json().get("id") if response.status_code == 202 else None

    submitted: dict[str, str] = {}
    for index in range(args.fault_analyses):
        idem = f"fault-{index}"
        status, analysis_id = submit(idem)
        assert status == 202, status
        submitted[idem] = analysis_id
    mark("submitted")

    def statuses() -> dict[str, str]:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Analysis.id, Analysis.status).where(Analysis.user_id == uuid.UUID(user_id))
            )
            return {str(i): s for i, s in rows}

    stack.wait_until(lambda: "processing" in statuses().values(), 120, "a running job", interval=0.1)
    worker.kill()
    mark("worker SIGKILL")
    worker.start()
    mark("worker restarted")

    store.kill()
    mark("redis killed")
    outage_answers: dict[str, int] = {}
    outage_latencies: list[float] = []
    pending: list[str] = []
    for index in range(2):  # submissions during the outage
        idem = f"outage-{index}"
        started = time.perf_counter()
        status, _ = submit(idem)
        outage_latencies.append(time.perf_counter() - started)
        outage_answers[str(status)] = outage_answers.get(str(status), 0) + 1
        pending.append(idem)
    time.sleep(5)
    store.start()
    mark("redis restarted empty")
    for idem in pending:  # the client retries with the same Idempotency-Key
        for _ in range(30):
            status, analysis_id = submit(idem)
            if status == 202:
                submitted[idem] = analysis_id
                break
            time.sleep(1)
    mark("outage submissions retried")

    model.stop()
    mark("model server stopped")
    time.sleep(args.model_down)
    model.start()
    mark("model server back")

    deadline = time.monotonic() + args.fault_timeout
    while time.monotonic() < deadline:
        current = statuses()
        if all(current.get(a) in TERMINAL for a in submitted.values()):
            break
        time.sleep(1)
    mark("all terminal" if all(statuses().get(a) in TERMINAL for a in submitted.values()) else "timed out")
    time.sleep(3)  # last webhooks
    final = statuses()
    with engine.connect() as connection:
        rows_per_analysis = dict(
            connection.execute(
                select(UtteranceResult.analysis_id, func.count()).group_by(UtteranceResult.analysis_id)
            ).all()
        )
        analyses = {
            str(a.id): a
            for a in connection.execute(select(Analysis).where(Analysis.user_id == uuid.UUID(user_id))).all()
        }
        entries = connection.execute(select(UsageEntry).where(UsageEntry.user_id == uuid.UUID(user_id))).all()
        period = connection.execute(
            select(UsagePeriod).where(UsagePeriod.user_id == uuid.UUID(user_id))
        ).one()
    charged: dict[str, dict[str, float]] = {}
    for entry in entries:
        if entry.refunded_at is None:
            charged.setdefault(str(entry.analysis_id), {})[entry.kind] = entry.amount
    double_charged = 0
    for analysis_id, analysis in analyses.items():
        kinds = charged.get(analysis_id, {})
        if analysis.status == "succeeded":
            expected = {"analysis": 1, "seconds": float(max(1, math.ceil(analysis.duration_seconds or 0)))}
            double_charged += kinds != expected
        elif kinds:
            double_charged += 1
    counters_match = period.analyses_used == sum(
        k.get("analysis", 0) for k in charged.values()
    ) and math.isclose(period.seconds_used, sum(k.get("seconds", 0) for k in charged.values()))
    duplicated_rows = sum(
        rows_per_analysis.get(uuid.UUID(a), 0) != (analyses[a].utterance_count or 0) for a in analyses
    )
    duplicate_webhooks = len(hits) - len(set(hits))
    return {
        "analyses_submitted": len(submitted),
        "analyses_rows": len(analyses),
        "final_statuses": {s: list(final.values()).count(s) for s in set(final.values())},
        "stranded": sum(final.get(a) not in TERMINAL for a in submitted.values()),
        "duplicated": (len(analyses) - len(submitted)) + duplicated_rows + duplicate_webhooks,
        "duplicate_webhook_messages": duplicate_webhooks,
        "webhooks_received": len(set(hits)),
        "double_charged": double_charged + (0 if counters_match else 1),
        "counters_match_ledger": counters_match,
        "during_redis_outage": {"answers": outage_answers, **latency_summary(outage_latencies)},
        "timeline_seconds": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=100, help="concurrent submissions at the quota boundary")
    parser.add_argument("--stream-burst", type=int, default=20, help="streams opened at a time")
    parser.add_argument(
        "--hold", type=float, default=20.0, help="seconds /v1/usage is measured with streams open"
    )
    parser.add_argument("--quota", type=int, default=130)
    parser.add_argument("--fault-analyses", type=int, default=6)
    parser.add_argument("--model-down", type=float, default=60.0)
    parser.add_argument("--fault-timeout", type=float, default=600.0)
    args = parser.parse_args()

    from services.model.testing import build_tiny_checkpoint
    from tests import mediagen

    work = Path(tempfile.mkdtemp(prefix="moodreel-load-"))
    database_url = create_postgres_database()
    migrate(database_url)
    engine = create_engine(database_url)
    store = stack.private_redis(work).start()
    prefix = f"moodreel-load-{uuid.uuid4().hex[:8]}:"
    clip = mediagen.h264_aac_mp4(work, duration=4.0)
    results: dict = {
        "benchmark": "load",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "loopback_only": True,
    }
    processes: list[stack.Process] = []
    try:
        with (
            RecordingServer({"/clip.mp4": serve_file(clip.read_bytes())}) as media,
            RecordingServer() as receiver,
        ):
            env = {
                "MOODREEL_ENVIRONMENT": "test",
                "MOODREEL_LOG_LEVEL": "WARNING",
                "MOODREEL_LOG_JSON": "true",
                "MOODREEL_DATABASE_URL": database_url,
                "MOODREEL_REDIS_URL": store.url,
                "MOODREEL_REDIS_KEY_PREFIX": prefix,
                "MOODREEL_QUEUE_NAME": f"{prefix}queue",
                "MOODREEL_DATA_DIR": str(work / "data"),
                "MOODREEL_SECRET_KEY": "load-bench-secret-key-load-bench-secret-key",
                "MOODREEL_PLANS": json.dumps(
                    {
                        "free": {
                            "analyses_per_month": 10_000,
                            "video_seconds_per_month": 1_000_000,
                            "requests_per_minute": 1_000_000,
                        },
                        "boundary": {
                            "analyses_per_month": args.quota,
                            "video_seconds_per_month": 1_000_000,
                            "requests_per_minute": 1_000_000,
                        },
                    }
                ),
                "MOODREEL_PRIVATE_URL_ORIGINS": json.dumps([media.origin, receiver.origin]),
                "MOODREEL_WORKER_JOB_TIMEOUT_SECONDS": "120",
                "MOODREEL_WORKER_RETRY_BASE_SECONDS": "1",
                "MOODREEL_RECONCILE_LEASE_SECONDS": "20",
                "MOODREEL_RECONCILE_INTERVAL_SECONDS": "10",
                "MOODREEL_WORKER_HEARTBEAT_SECONDS": "5",
                "MOODREEL_MODEL_RETRY_MAX_SECONDS": "10",
                "MOODREEL_WEBHOOK_RETRY_BASE_SECONDS": "1",
                "MOODREEL_FFMPEG_THREADS": "1",
                "MOODREEL_MODEL_TORCH_THREADS": "1",
            }
            checkpoint = build_tiny_checkpoint(work / "checkpoint")
            gateway = stack.gateway(env, work).start()
            processes.append(gateway)
            base_url = f"http://127.0.0.1:{gateway.port}"

            with httpx.Client(base_url=base_url, timeout=30) as http:
                _, keys = new_account(http, keys=10)
                for key in keys:  # each key's first use writes its last_used_at
                    http.get("/v1/usage", headers={"X-API-Key": key})
                analysis_id = http.post(
                    "/v1/analyses",
                    json={"video_url": "https://93.184.215.14/clip.mp4"},
                    headers={"X-API-Key": keys[0]},
                ).json()["id"]
            print(f"streams: opening {args.streams}", flush=True)
            results["streams"] = asyncio.run(
                streams_part(base_url, gateway.port, keys, analysis_id, args, store.url, prefix)
            )
            print(json.dumps(results["streams"]), flush=True)
            with engine.begin() as connection:
                connection.execute(
                    update(Analysis).where(Analysis.id == uuid.UUID(analysis_id)).values(status="canceled")
                )
            redis.Redis.from_url(store.url).delete(
                f"{prefix}queue", stream_key(analysis_id, Settings(redis_key_prefix=prefix))
            )

            print("quota boundary", flush=True)
            results["quota_boundary"] = quota_part(base_url, engine, args, args.burst, 30)
            print(json.dumps(results["quota_boundary"]), flush=True)
            # Below the database pool's 30 connections: the reservation path on its own.
            results["quota_boundary_below_pool"] = quota_part(base_url, engine, args, 28, 20)
            print(json.dumps(results["quota_boundary_below_pool"]), flush=True)
            redis.Redis.from_url(store.url).delete(f"{prefix}queue")

            model = stack.model_server(checkpoint, env, work).start()
            processes.append(model)
            worker_env = env | {"MOODREEL_MODEL_URL": f"http://127.0.0.1:{model.port}"}
            worker = stack.worker(worker_env, work).start()
            processes.append(worker)
            print("faults", flush=True)
            results["faults"] = fault_part(
                base_url,
                engine,
                store,
                worker,
                model,
                receiver,
                media.url("/clip.mp4"),
                store.url,
                prefix,
                args,
            )
            results["faults"]["model_down_seconds"] = args.model_down
            print(json.dumps(results["faults"]), flush=True)
    finally:
        for process in reversed(processes):
            process.stop()
        store.kill()
        engine.dispose()
        drop_postgres_database(database_url)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
