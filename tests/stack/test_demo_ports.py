"""`make demo` (scripts/demo.py) takes its ports from the environment and refuses to use a
server on them that its own dev stack did not start."""

from __future__ import annotations

import subprocess
import sys

from shared.settings import REPO_ROOT
from tests.worker.loopback import RecordingServer, send_bytes


def test_demo_refuses_a_server_it_did_not_start(tmp_path):
    with RecordingServer({"/readyz": lambda handler: send_bytes(handler, b'{"status":"ready"}')}) as foreign:
        done = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--state-dir", str(tmp_path)],
            env={"PATH": "/usr/bin:/bin", "MOODREEL_DEV_GATEWAY_PORT": str(foreign.port)},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {foreign.port} is in use by something this demo did not start" in done.stderr
    assert "MOODREEL_DEV_GATEWAY_PORT" in done.stderr
    # It asked whether a stack was there, and sent nothing else (no sign-up, no upload).
    assert [(method, path) for method, path, _, _ in foreign.requests] == [("GET", "/readyz")]
