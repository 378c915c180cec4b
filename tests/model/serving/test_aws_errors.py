"""SageMaker commands and the SageMaker model client without AWS credentials: one line that says
what to set, and no retries of what cannot heal. Nothing leaves the machine (the instance
metadata service is disabled; credentials and config files point nowhere)."""

from __future__ import annotations

import logging

import boto3
import pytest
from typer.testing import CliRunner

from services.cli import app
from shared.contract.model_client import ModelRequestRejected, RetryPolicy, SageMakerModelClient

from .conftest import make_bundle


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Should credentials be found after all, no request may leave loopback.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    # boto3's default session caches credentials other tests' clients resolved.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    # Earlier commands in this process configured logging onto their own (now closed) captured
    # stderr; botocore's INFO records must not reach a stream the command does not own.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)


def test_invoke_without_credentials_fails_once_without_retrying(no_aws_credentials):
    sleeps: list[float] = []
    client = SageMakerModelClient(
        "prod", region="us-east-1", retry=RetryPolicy(max_attempts=5), sleep=sleeps.append
    )
    with pytest.raises(ModelRequestRejected) as info:
        client.invoke(make_bundle(count=1))
    assert info.value.code == "aws_not_configured"
    assert "AWS_ACCESS_KEY_ID" in info.value.message
    assert sleeps == []  # not retried


@pytest.mark.parametrize(
    "args",
    [["sagemaker", "invoke", "BUNDLE"], ["sagemaker", "delete", "--endpoint", "prod", "--yes"]],
)
def test_sagemaker_commands_without_credentials_print_one_line(no_aws_credentials, tmp_path, args):
    bundle = tmp_path / "bundle.safetensors"
    make_bundle(count=1).save(bundle)
    result = CliRunner().invoke(app, [str(bundle) if arg == "BUNDLE" else arg for arg in args])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moodreel: "), result.stderr
    assert "AWS_ACCESS_KEY_ID" in lines[0] and "Traceback" not in result.output
