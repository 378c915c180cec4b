"""Real processes for end-to-end tests: the model server, the gateway and the arq worker, each a
subprocess on a free loopback port with its own environment and log file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout:g} s")


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


class Process:
    """One subprocess with its log in a file; start/stop/kill as many times as a test needs."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_dir: Path,
        ready: Callable[[], bool],
        before_start: Callable[[], None] | None = None,
    ):
        self.name, self.argv, self.env, self.ready, self.before_start = name, argv, env, ready, before_start
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> Process:
        if self.before_start is not None:
            self.before_start()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_until(lambda: self._alive() and self.ready(), timeout, self.name)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; log tail:\n{self.log_tail()}") from None
        return self

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; log tail:\n{self.log_tail()}")
        return True

    def stop(self, timeout: float = 45.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def model_server(checkpoint: Path, env: dict[str, str], log_dir: Path, port: int | None = None) -> Process:
    port = port or free_port()
    argv = [
        str(BIN / "uvicorn"),
        "--factory",
        "services.model.serving.server:app_from_environment",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    process = Process(
        "model-server",
        argv,
        {**env, "MOODREEL_MODEL_DIR": str(checkpoint)},
        log_dir,
        http_ok(f"http://127.0.0.1:{port}/ping"),
    )
    process.port = port  # type: ignore[attr-defined]
    return process


def worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> Process:
    """The arq worker; ready once it has written its health-check key (what `arq --check` reads)."""
    import redis

    argv = [str(BIN / "arq"), "services.preprocess.worker.WorkerSettings"]
    client = redis.Redis.from_url(env["MOODREEL_REDIS_URL"])
    health_key = env["MOODREEL_QUEUE_NAME"] + ":health-check"

    def forget_stale_health() -> None:
        # A killed predecessor's key lingers until it expires; this queue is the test's own.
        client.delete(health_key)

    return Process(
        name, argv, env, log_dir, lambda: client.exists(health_key) == 1, before_start=forget_stale_health
    )


def gateway(env: dict[str, str], log_dir: Path, port: int | None = None) -> Process:
    port = port or free_port()
    argv = [
        str(BIN / "uvicorn"),
        "--factory",
        "services.gateway.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--no-proxy-headers",
    ]
    process = Process("gateway", argv, env, log_dir, http_ok(f"http://127.0.0.1:{port}/readyz"))
    process.port = port  # type: ignore[attr-defined]
    return process


def private_redis(log_dir: Path, port: int | None = None) -> Process:
    """A throwaway redis-server on its own free loopback port, without persistence: restarting it
    is a Redis that comes back empty. Never the shared server on 6379."""
    import redis

    port = port or free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(log_dir),
    ]

    def ready() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
        except redis.exceptions.ConnectionError:
            return False

    process = Process(f"redis-{port}", argv, {}, log_dir, ready)
    process.port = port  # type: ignore[attr-defined]
    process.url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    return process
