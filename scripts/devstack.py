"""The docker-compose stack as local background processes: `make dev` / `make dev-stop`.

    python scripts/devstack.py start [--gateway-port 8000] [--model-port 8080] [--state-dir var]
    python scripts/devstack.py stop  [--state-dir var]
    python scripts/devstack.py status [--state-dir var]

Starts the model server (the default checkpoint, or a tiny random-weight one when none has been
trained yet), the arq worker and the gateway (after `alembic upgrade head`) with this machine's
Redis and the database of ``MOODREEL_DATABASE_URL`` (SQLite under var/ by default) and local
upload storage. Each runs in its own session with its log in <state-dir>/log/ and its pid in
<state-dir>/run/; `start` returns once every service answers its health check, `stop` sends
SIGTERM (SIGKILL after a grace period) to exactly the processes it recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import redis

from shared.settings import REPO_ROOT, get_settings

BIN = Path(sys.executable).parent
STOP_GRACE_SECONDS = 20.0


@dataclass
class ServiceRecord:
    name: str
    pid: int
    started: int  # the process' start time (/proc/<pid>/stat), so a recycled pid is not ours
    argv: list[str]
    log: str


def log_dir(state_dir: Path) -> Path:
    return state_dir / "log"


def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def stack_file(state_dir: Path) -> Path:
    return run_dir(state_dir) / "devstack.json"


def _process_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may itself contain spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def is_running(record: ServiceRecord) -> bool:
    """Alive AND still the process we started: a recycled pid has another start time."""
    stat = _process_stat(record.pid)
    return stat is not None and stat[0] != "Z" and stat[1] == record.started


def start_process(name: str, argv: list[str], env: dict[str, str], state_dir: Path) -> ServiceRecord:
    log_path = log_dir(state_dir) / f"{name}.log"
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the launcher; stopped by its process group
        )
    stat = _process_stat(process.pid)
    record = ServiceRecord(name, process.pid, stat[1] if stat else -1, argv, str(log_path))
    (run_dir(state_dir) / f"{name}.pid").write_text(f"{process.pid}\n")
    return record


def wait_for(check, what: str, record: ServiceRecord, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(record):
            tail = Path(record.log).read_text(errors="replace")[-3000:]
            raise SystemExit(f"{what} exited during start-up; log {record.log}:\n{tail}")
        try:
            if check():
                return
        except Exception:  # not up yet: connection refused, key missing, ...
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} not healthy within {timeout:g} s; see {record.log}")


def http_ok(url: str):
    return lambda: httpx.get(url, timeout=2.0).status_code == 200


def default_checkpoint(state_dir: Path) -> Path:
    """The trained default checkpoint, or a tiny random one (clearly labelled) until it exists."""
    settings = get_settings()
    if (settings.model_dir / "checkpoint.json").exists():
        return settings.model_dir
    tiny = state_dir / "checkpoints" / "tiny"
    if not tiny.exists():
        from services.model.testing import build_tiny_checkpoint

        print(f"no trained checkpoint in {settings.model_dir}; using a tiny random-weight one ({tiny})")
        build_tiny_checkpoint(tiny)
    return tiny


def start(args: argparse.Namespace) -> None:
    state_dir: Path = args.state_dir
    log_dir(state_dir).mkdir(parents=True, exist_ok=True)
    run_dir(state_dir).mkdir(parents=True, exist_ok=True)
    if stack_file(state_dir).exists():
        running = [r for r in load_records(state_dir) if is_running(r)]
        if running:
            raise SystemExit(
                f"dev stack already running ({', '.join(r.name for r in running)}); `make dev-stop`"
            )

    settings = get_settings()
    env = {
        **os.environ,
        "MOODREEL_MODEL_BACKEND": "http",
        "MOODREEL_MODEL_URL": f"http://127.0.0.1:{args.model_port}",
        "MOODREEL_STORAGE_BACKEND": os.environ.get("MOODREEL_STORAGE_BACKEND", "local"),
        "PYTHONUNBUFFERED": "1",
    }
    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        raise SystemExit(
            f"Redis at {settings.redis_url} is not reachable ({exc}); start it or set MOODREEL_REDIS_URL"
        ) from None

    migrated = subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    if migrated.returncode != 0:
        raise SystemExit(f"alembic upgrade head failed:\n{migrated.stderr[-3000:]}")

    checkpoint = args.model_dir or default_checkpoint(state_dir)
    records: list[ServiceRecord] = []
    try:
        model = start_process(
            "model",
            [
                str(BIN / "moodreel"),
                "serve",
                "--model-dir",
                str(checkpoint),
                "--host",
                "127.0.0.1",
                "--port",
                str(args.model_port),
            ],
            env,
            state_dir,
        )
        records.append(model)
        worker = start_process(
            "worker", [str(BIN / "arq"), "services.preprocess.worker.WorkerSettings"], env, state_dir
        )
        records.append(worker)
        gateway = start_process(
            "gateway",
            [
                str(BIN / "uvicorn"),
                "services.gateway.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.gateway_port),
                "--no-server-header",
                # Forwarded headers are the gateway's call (MOODREEL_TRUSTED_PROXIES), not uvicorn's.
                "--no-proxy-headers",
            ],
            env,
            state_dir,
        )
        records.append(gateway)
        save_records(state_dir, records)

        wait_for(http_ok(f"http://127.0.0.1:{args.model_port}/ping"), "model server", model, args.timeout)
        health_key = f"{settings.queue_name}:health-check"
        client = redis.Redis.from_url(settings.redis_url)
        wait_for(lambda: client.exists(health_key) == 1, "worker", worker, args.timeout)
        wait_for(http_ok(f"http://127.0.0.1:{args.gateway_port}/readyz"), "gateway", gateway, args.timeout)
    except BaseException:
        stop_records(records)
        stack_file(state_dir).unlink(missing_ok=True)
        raise
    print(
        f"dev stack up: dashboard http://127.0.0.1:{args.gateway_port}/dashboard  "
        f"API docs http://127.0.0.1:{args.gateway_port}/docs  logs {log_dir(state_dir)}/"
    )


def save_records(state_dir: Path, records: list[ServiceRecord]) -> None:
    stack_file(state_dir).write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")


def load_records(state_dir: Path) -> list[ServiceRecord]:
    path = stack_file(state_dir)
    if not path.exists():
        return []
    return [ServiceRecord(**item) for item in json.loads(path.read_text())]


def stop_records(records: list[ServiceRecord]) -> None:
    """SIGTERM each recorded process group (gateway first, model last), then SIGKILL stragglers."""
    live = [r for r in reversed(records) if is_running(r)]
    for record in live:
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and any(is_running(r) for r in live):
        _reap(live)
        time.sleep(0.2)
    for record in live:
        if is_running(record):
            os.killpg(record.pid, signal.SIGKILL)
    _reap(live)


def _reap(records: list[ServiceRecord]) -> None:
    """Collect exit statuses of our own children (when stop runs in the starting process)."""
    for record in records:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, os.WNOHANG)


def stop(args: argparse.Namespace) -> None:
    records = load_records(args.state_dir)
    if not records:
        print("dev stack not running")
        return
    stop_records(records)
    for record in records:
        (run_dir(args.state_dir) / f"{record.name}.pid").unlink(missing_ok=True)
    stack_file(args.state_dir).unlink(missing_ok=True)
    print("dev stack stopped")


def status(args: argparse.Namespace) -> None:
    records = load_records(args.state_dir)
    if not records:
        print("dev stack not running")
        return
    for record in records:
        print(
            f"{record.name:8} pid {record.pid:7} "
            f"{'running' if is_running(record) else 'stopped'}  log {record.log}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument(
        "--state-dir", type=Path, default=REPO_ROOT / "var", help="logs in log/, pids in run/"
    )
    parser.add_argument(
        "--gateway-port", type=int, default=int(os.environ.get("MOODREEL_DEV_GATEWAY_PORT", 8000))
    )
    parser.add_argument(
        "--model-port", type=int, default=int(os.environ.get("MOODREEL_DEV_MODEL_PORT", 8080))
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="checkpoint [default: the trained default]"
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each service")
    args = parser.parse_args(argv)
    {"start": start, "stop": stop, "status": status}[args.command](args)


if __name__ == "__main__":
    main()
