"""scripts/ecr_push.sh against stand-ins for the aws and docker CLIs (AWS is the one thing tests
simulate): the login pipe, one repository per service, tags with the git sha, and refusals."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from shared.settings import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "ecr_push.sh"

FAKE_AWS = """#!/usr/bin/env bash
echo "aws $*" >> "$CALLS"
case "$1 $2" in
  "ecr get-login-password") echo "ecr-token-123" ;;
  "sts get-caller-identity") echo "123456789012" ;;
  "ecr describe-repositories") [[ " $* " == *" moodreel-model "* ]] ;;
  "configure get") echo "eu-west-1" ;;
esac
"""

FAKE_DOCKER = """#!/usr/bin/env bash
if [ "$1" = login ]; then echo "docker $* stdin=$(cat)" >> "$CALLS"; else echo "docker $*" >> "$CALLS"; fi
"""


def run_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("aws", FAKE_AWS), ("docker", FAKE_DOCKER)):
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    full_env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "HOME": str(tmp_path),
        **env,
    }
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=30)
    return done, calls.read_text().splitlines()


def test_pushes_three_images_tagged_with_the_sha(tmp_path):
    done, calls = run_script(tmp_path, IMAGE_TAG="0123abcd4567", AWS_REGION="us-east-2")
    assert done.returncode == 0, done.stderr
    registry = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
    assert calls[0] == "aws sts get-caller-identity --query Account --output text"
    assert calls[1] == "aws ecr get-login-password --region us-east-2"
    assert calls[2] == f"docker login --username AWS --password-stdin {registry} stdin=ecr-token-123"
    for service in ("gateway", "preprocess", "model"):
        remote = f"{registry}/moodreel-{service}:0123abcd4567"
        assert f"docker tag moodreel-{service}:0123abcd4567 {remote}" in calls
        assert f"docker push {remote}" in calls
    created = [c for c in calls if c.startswith("aws ecr create-repository")]
    # The fake registry already has moodreel-model; the other two are created, immutable and scanned.
    assert len(created) == 2 and all("IMMUTABLE" in c and "scanOnPush=true" in c for c in created)
    assert not any("moodreel-model" in c for c in created)


def test_account_id_from_the_environment_skips_sts(tmp_path):
    done, calls = run_script(tmp_path, IMAGE_TAG="abc", AWS_REGION="us-east-1", AWS_ACCOUNT_ID="999999999999")
    assert done.returncode == 0, done.stderr
    assert not any(c.startswith("aws sts") for c in calls)
    assert "docker push 999999999999.dkr.ecr.us-east-1.amazonaws.com/moodreel-gateway:abc" in calls


def test_refuses_a_dirty_tree_and_a_missing_tag(tmp_path):
    done, calls = run_script(tmp_path, IMAGE_TAG="abc-dirty", AWS_REGION="us-east-1", AWS_ACCOUNT_ID="1")
    assert done.returncode != 0 and "commit your changes" in done.stderr
    assert not any(c.startswith("docker") for c in calls)
    done, calls = run_script(tmp_path, AWS_REGION="us-east-1")
    assert done.returncode != 0 and "IMAGE_TAG" in done.stderr
    assert calls == []
