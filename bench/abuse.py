"""Abuse benchmark: 1,000 concurrent malformed or unauthenticated requests against one gateway
while a legitimate client polls its analysis and a probe polls ``/healthz``; then the login
throttle under 100 concurrent wrong passwords.

    nice -n 10 .venv/bin/python bench/abuse.py [--requests 1000] [--seconds 120] [--sqlite]

The gateway runs as its own uvicorn process, started as ``scripts/devstack.py`` starts it
(production environment, default console logging, ``--no-proxy-headers``), on a free 127.0.0.1
port with a fresh PostgreSQL database (or a temporary SQLite file) and a unique Redis prefix,
all removed afterwards. Every request goes to loopback; the attack is bounded in count
(``--requests``) and time (``--seconds``), and the script stops by itself.

Measured: the number of 5xx answers (attack and legitimate traffic), ``/healthz`` and the
legitimate client's latency percentiles while the attack runs, whether the process is alive and
serving afterwards, and how many of 100 concurrent wrong passwords reached the password check
(the 401s: every admitted attempt is checked; the rest must be 429). The pollers run in their
own process so the attack's client does not share their GIL.

The machine is shared, so latencies depend on what else runs: the result records the load
average before, during and after the attack, the CPU time the gateway process spent while the
attack ran (per hostile request, the pollers' requests included: what the attack costs the
server, whatever the load), and each
poller's p99 during the attack as a ratio to its p99 in the unattacked phase before it, measured
in the same run.
Results: bench/results/abuse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
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

from bench.gateway import free_port, percentile, wait_ready  # noqa: E402
from services.gateway.security import generate_api_key  # noqa: E402
from tests.fixtures.db import create_postgres_database, drop_postgres_database, migrate  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "abuse.json"
REDIS_URL = os.environ.get("MOODREEL_REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "benchmark-password"
PUBLIC_URL = "https://93.184.215.14/clip.mp4"
LOGIN_MAX_FAILURES = 5
MAX_BODY_BYTES = 1_000_000
TARGETS = {"server_errors": 0, "healthz_p99_ms": 200, "legitimate_p99_ms": 1000}
BASELINE_SECONDS = 5.0  # the pollers alone, before the attack: the same run's unattacked phase


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ratio(attacked: float | None, baseline: float | None) -> float | None:
    return round(attacked / baseline, 1) if attacked and baseline else None


def attack_requests(count: int, key: str) -> list[tuple[str, str, dict, bytes | None]]:
    """``count`` hostile requests, cycling through the kinds a scanner or an attacker sends."""
    future = int(time.time()) + 600
    garbage_jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    non_ascii_bearer = "Bearer \u00d6\u00d6\u00d6".encode("latin-1")
    oversized = b'{"video_url": "' + b"a" * (MAX_BODY_BYTES + 1000) + b'"}'
    bad_segments = json.dumps(
        {"video_url": PUBLIC_URL, "transcript": [{"start": -1, "end": 0}] * 5001}
    ).encode()
    kinds = [
        # Signed-upload URLs with malformed signatures or expiry (no credentials needed).
        lambda: ("PUT", f"/v1/uploads/{uuid.uuid4()}/content?expires={future}&signature=%C3%96", {}, b"x"),
        lambda: ("PUT", f"/v1/uploads/{uuid.uuid4()}/content?expires=x&signature={'A' * 43}", {}, b"x"),
        lambda: ("PUT", f"/v1/uploads/not-a-uuid/content?expires={future}&signature={'A' * 400}", {}, b""),
        # Bad credentials: alg none, garbage, a well-formed API key that does not exist.
        lambda: ("GET", "/v1/usage", {"Authorization": f"Bearer {garbage_jwt}"}, None),
        lambda: ("GET", "/v1/analyses", {"Authorization": non_ascii_bearer}, None),
        lambda: ("GET", "/v1/usage", {"X-API-Key": generate_api_key()}, None),
        lambda: ("POST", "/v1/analyses", {"Content-Type": "application/json"}, b'{"video_url": 1}'),
        # Oversized and expensive bodies.
        lambda: ("POST", "/v1/analyses", {"X-API-Key": key, "Content-Type": "application/json"}, oversized),
        lambda: (
            "POST",
            "/v1/analyses",
            {"X-API-Key": key, "Content-Type": "application/json"},
            bad_segments,
        ),
        lambda: ("POST", "/v1/auth/signup", {"Content-Type": "application/json"}, b"{" * 5000),
        lambda: ("POST", "/v1/auth/login", {"X-Forwarded-For": "203.0.113.9"}, b"username="),
    ]
    return [kinds[index % len(kinds)]() for index in range(count)]


async def attack(base_url: str, requests: list[tuple], seconds: float) -> dict:
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=seconds) as client:

        async def one(method: str, path: str, headers: dict, body: bytes | None) -> None:
            try:
                response = await client.request(method, path, headers=headers, content=body)
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(*request) for request in requests)), seconds)
        elapsed = time.perf_counter() - started
    return {
        "requests": len(requests),
        "seconds": round(elapsed, 2),
        "statuses": dict(sorted(statuses.items())),
        "client_errors": errors,
    }


def summarise(samples: list[tuple[float, float, str]]) -> dict:
    latencies = [latency for _, latency, status in samples if status != "error"]
    statuses: dict[str, int] = {}
    for _, _, status in samples:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "requests": len(samples),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "statuses": dict(sorted(statuses.items())),
    }


def poll(base_url: str, path: str, headers: dict, interval: float, stop, deadline: float) -> list:
    """(wall-clock start, latency, status or "error") of each request until ``stop`` is set."""
    samples = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            at, started = time.time(), time.perf_counter()
            try:
                status = str(client.get(path).status_code)
            except httpx.HTTPError:
                status = "error"
            samples.append((at, time.perf_counter() - started, status))
            time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    return samples


def pollers(base_url: str, analysis_path: str, key: str, stop, seconds: float, results) -> None:
    """Child process: the /healthz probe (20/s) and the legitimate client (4/s) until ``stop``."""
    import threading

    deadline = time.monotonic() + seconds
    out: dict[str, list] = {}
    threads = [
        threading.Thread(
            target=lambda: out.update(healthz=poll(base_url, "/healthz", {}, 0.05, stop, deadline))
        ),
        threading.Thread(
            target=lambda: out.update(
                legitimate=poll(base_url, analysis_path, {"X-API-Key": key}, 0.25, stop, deadline)
            )
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(out)


async def login_storm(base_url: str, email: str, attempts: int) -> dict:
    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=attempts, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:

        async def one() -> None:
            response = await client.post("/v1/auth/login", data={"username": email, "password": "wrong!"})
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

        await asyncio.gather(*(one() for _ in range(attempts)))
    return dict(sorted(statuses.items()))


def account(client: httpx.Client) -> tuple[str, str]:
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD}).raise_for_status()
    login = client.post("/v1/auth/login", data={"username": email, "password": PASSWORD})
    token = login.raise_for_status().json()["access_token"]
    created = client.post(
        "/v1/api-keys", json={"name": "bench"}, headers={"Authorization": f"Bearer {token}"}
    )
    return email, created.raise_for_status().json()["key"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="concurrent hostile requests (≤ 2000)")
    parser.add_argument("--seconds", type=float, default=120.0, help="time cap of the attack")
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of a fresh PostgreSQL database")
    args = parser.parse_args()
    args.requests = min(args.requests, 2000)

    load_at_start = round(os.getloadavg()[0], 2)
    workdir = Path(tempfile.mkdtemp(prefix="moodreel-abuse-"))
    database_url = f"sqlite:///{workdir / 'bench.db'}" if args.sqlite else create_postgres_database()
    prefix = f"moodreel-abuse-{uuid.uuid4().hex[:8]}:"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MOODREEL_ENVIRONMENT": "production",
        "MOODREEL_SECRET_KEY": secrets.token_urlsafe(48),
        "MOODREEL_DATABASE_URL": database_url,
        "MOODREEL_REDIS_URL": REDIS_URL,
        "MOODREEL_REDIS_KEY_PREFIX": prefix,
        "MOODREEL_QUEUE_NAME": f"{prefix}queue",
        "MOODREEL_DATA_DIR": str(workdir),
        "MOODREEL_MAX_REQUEST_BODY_BYTES": str(MAX_BODY_BYTES),
        "MOODREEL_LOGIN_MAX_FAILURES": str(LOGIN_MAX_FAILURES),
        # The legitimate client polls 4/s; the hostile key's requests are what the limit is for.
        "MOODREEL_PLANS": json.dumps({"free": {"requests_per_minute": 600}}),
    }
    for name in ("MOODREEL_LOG_JSON", "MOODREEL_LOG_RICH_TRACEBACKS", "MOODREEL_TRUSTED_PROXIES"):
        env.pop(name, None)  # production defaults: console logs, plain tracebacks, no proxy
    log_path = workdir / "gateway.log"
    process = None
    child = None
    analysis_id = None
    try:
        migrate(database_url)
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
            "--no-server-header",
            "--no-proxy-headers",
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(base_url, process)
        with httpx.Client(base_url=base_url, timeout=30) as client:
            _, legit_key = account(client)
            _, hostile_key = account(client)
            victim_email, _ = account(client)
            submitted = client.post(
                "/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": legit_key}
            )
            analysis_id = submitted.raise_for_status().json()["id"]
        requests = attack_requests(args.requests, hostile_key)

        results: multiprocessing.Queue = multiprocessing.Queue()
        stop = multiprocessing.Event()
        poll_seconds = 10.0 + args.seconds
        child = multiprocessing.Process(
            target=pollers,
            args=(base_url, f"/v1/analyses/{analysis_id}", legit_key, stop, poll_seconds, results),
        )
        child.start()
        time.sleep(BASELINE_SECONDS)
        load_before_attack = round(os.getloadavg()[0], 2)
        cpu_before_attack = process_cpu_seconds(process.pid)
        attack_started = time.time()
        try:
            attacked = asyncio.run(attack(base_url, requests, args.seconds))
        except TimeoutError:
            attacked = {"requests": len(requests), "timed_out_after_s": args.seconds}
        attack_ended = time.time()
        gateway_cpu_seconds = process_cpu_seconds(process.pid) - cpu_before_attack
        load_after_attack = round(os.getloadavg()[0], 2)
        time.sleep(1.0)
        stop.set()
        samples = results.get(timeout=poll_seconds + 60)
        child.join(timeout=30)
        polled = {
            name: {
                "before_attack": summarise([s for s in rows if s[0] < attack_started]),
                "during_attack": summarise([s for s in rows if attack_started <= s[0] <= attack_ended]),
                "after_attack": summarise([s for s in rows if s[0] > attack_ended]),
            }
            for name, rows in samples.items()
        }

        storm = asyncio.run(login_storm(base_url, victim_email, 100))
        with httpx.Client(base_url=base_url, timeout=10) as client:
            alive = process.poll() is None and all(
                client.get(path).status_code == 200 for path in ("/healthz", "/readyz")
            )
    finally:
        if child is not None and child.is_alive():
            child.terminate()
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if analysis_id is not None:
            keys.append(f"arq:job:{analysis_id}")
        if keys:
            client.delete(*keys)
        if not args.sqlite:
            drop_postgres_database(database_url)

    log_bytes = log_path.stat().st_size
    answered = [attacked.get("statuses", {})] + [
        window["statuses"] for poller in polled.values() for window in poller.values()
    ]
    server_errors = sum(
        count for statuses in answered for status, count in statuses.items() if status.startswith("5")
    )
    measured = {
        "server_errors": server_errors,
        "healthz_p99_ms": polled["healthz"]["during_attack"]["p99_ms"],
        "legitimate_p99_ms": polled["legitimate"]["during_attack"]["p99_ms"],
        "alive_and_serving_after": alive,
        "login_password_checks_of_100": storm.get("401", 0),
        "login_limit": LOGIN_MAX_FAILURES,
        "gateway_cpu_ms_per_hostile_request": round(gateway_cpu_seconds * 1000 / len(requests), 2),
    }
    same_run_ratios = {
        f"{name}_p99_attacked_over_unattacked": ratio(
            polled[name]["during_attack"]["p99_ms"], polled[name]["before_attack"]["p99_ms"]
        )
        for name in ("healthz", "legitimate")
    }
    met = {
        "server_errors": server_errors == TARGETS["server_errors"],
        "healthz_p99": (measured["healthz_p99_ms"] or 1e9) < TARGETS["healthz_p99_ms"],
        "legitimate_p99": (measured["legitimate_p99_ms"] or 1e9) < TARGETS["legitimate_p99_ms"],
        "alive": alive,
        "login_exactly_at_limit": storm.get("401", 0) == LOGIN_MAX_FAILURES
        and storm.get("429", 0) == 100 - LOGIN_MAX_FAILURES,
    }
    result = {
        "benchmark": "abuse: concurrent malformed/unauthenticated requests while a legitimate client polls",
        "database": "sqlite" if args.sqlite else "postgresql",
        "targets": TARGETS,
        "measured": measured,
        "targets_met": met,
        "same_run_ratios": same_run_ratios,
        "gateway_cpu_seconds_during_attack": round(gateway_cpu_seconds, 2),
        "attack": attacked,
        "healthz": polled["healthz"],
        "legitimate_client": polled["legitimate"],
        "login_storm_100_concurrent_wrong_passwords": storm,
        "gateway_log_bytes": log_bytes,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": load_at_start,
            "load_average_1m_before_attack": load_before_attack,
            "load_average_1m_after_attack": load_after_attack,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
