"""The dev stack (scripts/devstack.py: gateway, worker, model server with a tiny checkpoint) on
free loopback ports with its own PostgreSQL database and Redis keys, and Debian's Chromium driven
by Playwright (no downloaded browsers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.settings import REPO_ROOT
from tests.fixtures.db import create_postgres_database, drop_postgres_database
from tests.worker.stack import free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass(frozen=True)
class DevStack:
    base_url: str
    state_dir: Path
    env: dict[str, str]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.state_dir / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory) -> Iterator[DevStack]:
    with running_dev_stack(tmp_path_factory) as stack:
        yield stack


@contextmanager
def running_dev_stack(tmp_path_factory, spec=None) -> Iterator[DevStack]:
    """The dev stack serving a tiny checkpoint built with ``spec`` (the tiny default without)."""
    from services.model.testing import build_tiny_checkpoint

    state_dir = tmp_path_factory.mktemp("devstack")
    checkpoint = build_tiny_checkpoint(state_dir / "tiny-checkpoint", spec)
    database_url = create_postgres_database()
    tag = uuid.uuid4().hex[:10]
    gateway_port, model_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MOODREEL_")},
        "MOODREEL_DATABASE_URL": database_url,
        "MOODREEL_DATA_DIR": str(state_dir / "data"),
        "MOODREEL_REDIS_KEY_PREFIX": f"moodreel-browser-{tag}:",
        "MOODREEL_QUEUE_NAME": f"moodreel-browser-{tag}:queue",
        "MOODREEL_LOG_LEVEL": "INFO",
    }
    launcher = [sys.executable, str(REPO_ROOT / "scripts" / "devstack.py")]
    common = ["--state-dir", str(state_dir)]
    started = subprocess.run(
        [*launcher, "start", *common, "--gateway-port", str(gateway_port), "--model-port", str(model_port),
         "--model-dir", str(checkpoint), "--timeout", "150"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield DevStack(f"http://127.0.0.1:{gateway_port}", state_dir, env)
    finally:
        subprocess.run([*launcher, "stop", *common], env=env, cwd=REPO_ROOT, timeout=120, check=False)
        drop_postgres_database(database_url)


# Module scope: Playwright's sync API runs its event loop in this thread while it is open, and
# later tests elsewhere call asyncio.run(), which refuses to start inside a running loop.
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is required for browser tests (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def artifacts(request) -> Path:
    directory = ARTIFACTS / request.node.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory
