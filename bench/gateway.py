"""Gateway benchmark: requests/s and latency of an API-key-authenticated ``GET /v1/usage`` (key
lookup, rate limit in Redis, quota read) against the unauthenticated ``GET /healthz`` on the same
uvicorn server, driven by a bounded httpx asyncio loop on loopback.

    .venv/bin/python bench/gateway.py [--requests 2000] [--concurrency 8] [--seconds 30]

The server runs in its own process (one uvicorn worker) so the load generator does not share its
GIL. It uses a fresh PostgreSQL database (created and dropped here) or, with ``--sqlite``, a
temporary SQLite file; Redis keys use a unique prefix and are deleted afterwards.
Results: bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.fixtures.db import create_postgres_database, drop_postgres_database, migrate  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "gateway.json"
REDIS_URL = os.environ.get("MOODREEL_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def drive(
    base_url: str, path: str, headers: dict, requests: int, concurrency: int, seconds: float
) -> dict:
    """One burst: ``requests`` GETs of ``path`` with ``concurrency`` connections (time-capped)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for _ in counter:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                response = await client.get(path)
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"path": path, "latencies": latencies, "statuses": statuses, "seconds": elapsed}


def summarise(bursts: list[dict]) -> dict:
    latencies = [value for burst in bursts for value in burst["latencies"]]
    elapsed = sum(burst["seconds"] for burst in bursts)
    statuses: dict[int, int] = {}
    for burst in bursts:
        for code, count in burst["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    return {
        "path": bursts[0]["path"],
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the gateway exited during start-up")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway did not become ready")


def start_gateway(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "services.gateway.main:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--no-proxy-headers",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    wait_ready(base_url, process)
    return process, base_url


def new_api_key(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        client.post(
            "/v1/auth/signup", json={"email": email, "password": "benchmark-password"}
        ).raise_for_status()
        login = client.post("/v1/auth/login", data={"username": email, "password": "benchmark-password"})
        token = login.raise_for_status().json()["access_token"]
        created = client.post(
            "/v1/api-keys", json={"name": "bench"}, headers={"Authorization": f"Bearer {token}"}
        )
        return created.raise_for_status().json()["key"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="per route (bounded)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap per route")
    parser.add_argument("--rounds", type=int, default=10, help="bursts per route, interleaved")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of a fresh PostgreSQL database")
    args = parser.parse_args()

    # Other jobs on a shared machine skew absolute numbers; the ratio is the comparable result, and
    # the routes run in interleaved bursts so that load changing during the run hits all alike.
    load_at_start = round(os.getloadavg()[0], 2)
    workdir = Path(tempfile.mkdtemp(prefix="moodreel-bench-"))
    database_url = f"sqlite:///{workdir / 'bench.db'}" if args.sqlite else create_postgres_database()
    prefix = f"moodreel-bench-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "MOODREEL_ENVIRONMENT": "test",
        "MOODREEL_DATABASE_URL": database_url,
        "MOODREEL_REDIS_URL": REDIS_URL,
        "MOODREEL_REDIS_KEY_PREFIX": prefix,
        "MOODREEL_QUEUE_NAME": f"{prefix}queue",
        "MOODREEL_DATA_DIR": str(workdir),
        "MOODREEL_LOG_LEVEL": "WARNING",
        "MOODREEL_SECRET_KEY": uuid.uuid4().hex * 2,
        # The rate limit is on the measured path but must not be what is measured.
        "MOODREEL_PLANS": json.dumps({"free": {"requests_per_minute": 1_000_000}}),
    }
    processes: list[subprocess.Popen] = []
    try:
        migrate(database_url)
        # The same gateway twice: as configured (verified keys cached for up to 1 s) and with the
        # key cache off (every request queries the key), to show what the cache buys.
        cached, cached_url = start_gateway(env)
        uncached, uncached_url = start_gateway(env | {"MOODREEL_API_KEY_CACHE_SECONDS": "0"})
        processes += [cached, uncached]
        key = new_api_key(cached_url)
        routes = {
            "health": (cached_url, "/healthz", {}),
            "authenticated_usage": (cached_url, "/v1/usage", {"X-API-Key": key}),
            "authenticated_usage_key_cache_off": (uncached_url, "/v1/usage", {"X-API-Key": key}),
        }
        warmup = max(50, args.requests // 20)
        for base_url, path, headers in routes.values():
            asyncio.run(drive(base_url, path, headers, warmup, args.concurrency, args.seconds))
        bursts: dict[str, list[dict]] = {name: [] for name in routes}
        per_burst = max(1, args.requests // args.rounds)
        for round_index in range(args.rounds):
            order = list(routes) if round_index % 2 == 0 else list(reversed(routes))
            for name in order:
                base_url, path, headers = routes[name]
                burst_seconds = args.seconds / args.rounds
                bursts[name].append(
                    asyncio.run(drive(base_url, path, headers, per_burst, args.concurrency, burst_seconds))
                )
        measured = {name: summarise(samples) for name, samples in bursts.items()}
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        if not args.sqlite:
            drop_postgres_database(database_url)

    health, usage, uncached_usage = (
        measured["health"],
        measured["authenticated_usage"],
        measured["authenticated_usage_key_cache_off"],
    )
    result = {
        "benchmark": "gateway: API-key GET /v1/usage vs unauthenticated GET /healthz, same uvicorn process",
        "database": "sqlite" if args.sqlite else "postgresql",
        "load": {
            "tool": "httpx asyncio loop",
            "concurrency": args.concurrency,
            "requests_per_route": args.requests,
            "interleaved_rounds": args.rounds,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": load_at_start,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "health": health,
        "authenticated_usage": usage,
        "authenticated_usage_key_cache_off": uncached_usage,
        "rps_ratio_usage_to_health": round(usage["rps"] / health["rps"], 3),
        "rps_ratio_usage_key_cache_off_to_health": round(uncached_usage["rps"] / health["rps"], 3),
        "p99_ratio_usage_to_health": round(usage["p99_ms"] / health["p99_ms"], 3),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
