"""Worker hygiene: job directories never outlive their worker, error messages never name them,
and production refuses the private-address switches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.net.fetch import (
    WORKSPACE_PREFIX,
    job_workspace,
    redact_workspace_paths,
    remove_abandoned_workspaces,
)
from shared.net.urls import check_private_url_switches
from shared.settings import Settings

# A worker stand-in: opens a job workspace, writes "media" into it, says where, and waits to die.
KILLED_MID_JOB = """
import asyncio, sys
from pathlib import Path
from shared.net.fetch import job_workspace
from shared.settings import Settings

async def main():
    async with job_workspace(Settings(worker_tmp_dir=Path(sys.argv[1]))) as workspace:
        (workspace / "media").write_bytes(b"x" * 1_000_000)
        print(workspace, flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_worker_killed_mid_job_leaves_a_directory_the_next_start_removes(tmp_path):
    settings = Settings(worker_tmp_dir=tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_JOB, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        workspace = Path(process.stdout.readline().strip())
        assert (workspace / "media").exists()
        # While its worker lives, the directory is not abandoned.
        assert remove_abandoned_workspaces(settings) == []
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert workspace.exists()  # SIGKILL: no cleanup ran
    assert remove_abandoned_workspaces(settings) == [workspace]
    assert not workspace.exists()


def test_start_up_removes_dead_and_unnamed_workspaces_but_not_live_ones(tmp_path):
    settings = Settings(worker_tmp_dir=tmp_path)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(finished.stdout)
    dead = tmp_path / f"{WORKSPACE_PREFIX}{dead_pid}-abc"
    unnamed = tmp_path / f"{WORKSPACE_PREFIX}k2j4h5"  # an older worker's naming
    live = tmp_path / f"{WORKSPACE_PREFIX}{os.getppid()}-def"
    other = tmp_path / "someone-else"
    for directory in (dead, unnamed, live, other):
        directory.mkdir()
        (directory / "media").write_bytes(b"x")
    assert sorted(remove_abandoned_workspaces(settings)) == sorted([dead, unnamed])
    assert live.exists() and other.exists()


async def test_each_job_workspace_is_removed_when_the_job_ends(tmp_path):
    settings = Settings(worker_tmp_dir=tmp_path)
    with pytest.raises(RuntimeError):
        async with job_workspace(settings) as workspace:
            assert workspace.name.startswith(f"{WORKSPACE_PREFIX}{os.getpid()}-")
            (workspace / "media").write_bytes(b"x")
            raise RuntimeError("the job failed")
    assert list(tmp_path.iterdir()) == []


async def test_error_messages_do_not_name_workspace_paths(tmp_path):
    settings = Settings(worker_tmp_dir=tmp_path)
    async with job_workspace(settings) as workspace:
        media = workspace / "media"
        messages = [
            f"the file looks like media but cannot be read: {media}: Invalid data found",
            f"a system error occurred: [Errno 28] No space left on device: '{media}'",
            f"the audio stream cannot be decoded: Error opening input file {media}.",
        ]
    for message in messages:
        redacted = redact_workspace_paths(message, settings)
        assert str(tmp_path) not in redacted and WORKSPACE_PREFIX not in redacted
        assert "the media file" in redacted
    assert redact_workspace_paths("the file is empty", settings) == "the file is empty"


def test_production_refuses_private_url_switches_without_the_second_one():
    for switches in ({"allow_private_urls": True}, {"private_url_origins": ["127.0.0.1:9000"]}):
        with pytest.raises(RuntimeError, match="MOODREEL_ALLOW_PRIVATE_URLS_IN_PRODUCTION"):
            check_private_url_switches(Settings(environment="production", **switches))
        check_private_url_switches(
            Settings(environment="production", allow_private_urls_in_production=True, **switches)
        )
        check_private_url_switches(Settings(environment="development", **switches))
    check_private_url_switches(Settings(environment="production"))


def test_the_worker_refuses_to_start_in_production_with_private_urls(tmp_path):
    env = {
        **os.environ,
        "MOODREEL_ENVIRONMENT": "production",
        "MOODREEL_ALLOW_PRIVATE_URLS": "true",
        "MOODREEL_WORKER_TMP_DIR": str(tmp_path),
    }
    script = "import asyncio; from services.preprocess.worker import startup; asyncio.run(startup({}))"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "MOODREEL_ALLOW_PRIVATE_URLS_IN_PRODUCTION" in done.stderr
