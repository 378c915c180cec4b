"""`make demo`'s client (scripts/demo.py) against the running dev stack: the spoken clip goes
through sign-up, key, upload, SSE and results, and the table shows every utterance."""

from __future__ import annotations

import re
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from shared.contract.features.demo_media import DEMO_LINES
from shared.contract.labels import EMOTIONS
from shared.settings import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_prints_the_results_table_and_the_dashboard(dev_stack):
    port = urlsplit(dev_stack.base_url).port
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--port", str(port), "--timeout", "300",
         "--state-dir", str(dev_stack.state_dir)],
        env=dev_stack.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "using the running dev stack" in out
    assert re.search(r"status succeeded", out)
    assert len(re.findall(r"utterance \d+\.\d–\d+\.\d s", out)) == len(DEMO_LINES), "SSE utterance events"
    rows = [line for line in out.splitlines() if re.match(r"\s*\d+\.\d–\s*\d+\.\d s", line)]
    assert len(rows) == len(DEMO_LINES)
    for row, (speaker, _) in zip(rows, DEMO_LINES, strict=True):
        assert speaker in row and any(emotion in row for emotion in EMOTIONS)
    assert f"dashboard: {dev_stack.base_url}/dashboard" in out
