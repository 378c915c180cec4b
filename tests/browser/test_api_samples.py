"""The code samples on the dashboard's API page, run as shown (bash + curl + jq, and Python)
against the dev stack on a generated spoken clip: what users copy must work."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import uuid

import httpx
import pytest

from shared.contract.features.demo_media import make_spoken_clip

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def samples_and_key(dev_stack) -> tuple[dict[str, str], str]:
    """The samples as the API page renders them for a signed-in user, and an API key."""
    email = f"samples-{uuid.uuid4().hex[:8]}@example.com"
    with httpx.Client(base_url=dev_stack.base_url, timeout=30.0) as client:
        signup = client.get("/dashboard/signup")
        token = re.search(r'name="csrf_token" value="([^"]+)"', signup.text)[1]
        signed_up = client.post(
            "/dashboard/signup", data={"email": email, "password": PASSWORD, "csrf_token": token}
        )
        assert signed_up.status_code == 303
        page = client.get("/dashboard/api").text
        tokens = client.post("/v1/auth/login", data={"username": email, "password": PASSWORD}).json()
        key = client.post(
            "/v1/api-keys",
            json={"name": "samples"},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        ).json()["key"]
    samples = {
        name: html.unescape(body)
        for name, body in re.findall(r'<code data-sample="(\w+)">(.*?)</code>', page, flags=re.S)
    }
    assert set(samples) == {"curl", "python"}
    return samples, key


@pytest.fixture
def clip_dir(tmp_path):
    clip = make_spoken_clip(tmp_path / "gen", size=(160, 120))
    shutil.copy(clip.video, tmp_path / "clip.mp4")
    shutil.copy(clip.transcript, tmp_path / "clip.srt")
    return tmp_path, clip


def test_curl_sample_runs_as_shown(samples_and_key, clip_dir):
    if shutil.which("jq") is None or shutil.which("curl") is None:
        pytest.fail("curl and jq are required (make system-deps installs them)")
    samples, key = samples_and_key
    directory, clip = clip_dir
    script = samples["curl"].replace("export MOODREEL_API_KEY=mr_live_...", "")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=directory,
        env={**os.environ, "MOODREEL_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "event: status" in out and '"status":"succeeded"' in out
    assert len(re.findall(r"^event: utterance$", out, flags=re.M)) == len(clip.segments)
    rows = re.findall(r"^[\d.]+-[\d.]+s (\w+) (\w+) (.+)$", out, flags=re.M)
    assert [text for _, _, text in rows] == [s["text"] for s in clip.segments]
    assert out.count(" --> ") >= len(clip.segments), "the SRT export"


def test_python_sample_runs_as_shown(samples_and_key, clip_dir):
    samples, key = samples_and_key
    directory, clip = clip_dir
    done = subprocess.run(
        [sys.executable, "-c", samples["python"]],
        cwd=directory,
        env={**os.environ, "MOODREEL_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("succeeded ")
    assert len(lines) == 1 + len(clip.segments)
    assert all(segment["text"] in line for segment, line in zip(clip.segments, lines[1:], strict=True))
