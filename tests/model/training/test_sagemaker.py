import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from services.model.training.cli import PRESETS_DIR
from services.model.training.sagemaker import (
    TrainingJobConfig,
    launch,
    metric_definitions,
    source_archive,
)
from shared.settings import REPO_ROOT, Settings

ROLE = "arn:aws:iam::123456789012:role/moodreel-training"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/moodreel-test-job"


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="moodreel-ml")
        yield s3


def create_job(aws, **changes):
    """Run ``launch`` against a stubbed SageMaker client; returns the captured request."""
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    captured = {}
    sagemaker.meta.events.register(
        "provide-client-params.sagemaker.CreateTrainingJob", lambda params, **_: captured.update(params)
    )
    config = TrainingJobConfig(role_arn=ROLE, bucket="moodreel-ml", job_name="moodreel-test-job", **changes)
    with Stubber(sagemaker) as stubber:
        # The Stubber validates the request against SageMaker's API model before answering.
        stubber.add_response("create_training_job", {"TrainingJobArn": ARN})
        job = launch(config, sagemaker, aws)
        stubber.assert_no_pending_responses()
    assert job["arn"] == ARN
    return captured


def test_create_training_job_request(aws):
    request = create_job(aws, hyperparameters={"preset": "text-default", "epochs": "8"})
    assert request["TrainingJobName"] == "moodreel-test-job"
    assert request["RoleArn"] == ROLE
    algorithm = request["AlgorithmSpecification"]
    assert (
        algorithm["TrainingImage"]
        == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311"
    )
    assert algorithm["MetricDefinitions"] == metric_definitions()
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 50,
    }
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]
    }
    assert channels == {
        split: f"s3://moodreel-ml/moodreel/training/data/{split}/" for split in ("train", "dev", "test")
    }
    hyperparameters = request["HyperParameters"]
    assert hyperparameters["preset"] == "text-default" and hyperparameters["epochs"] == "8"
    assert hyperparameters["tensorboard-dir"] == request["TensorBoardOutputConfig"]["LocalPath"]
    assert hyperparameters["output-dir"] == request["CheckpointConfig"]["LocalPath"]
    assert hyperparameters["sagemaker_program"] == "services/model/training/cli.py"
    assert request["TensorBoardOutputConfig"]["S3OutputPath"] == (
        "s3://moodreel-ml/moodreel/training/moodreel-test-job/tensorboard/"
    )
    assert request["CheckpointConfig"]["S3Uri"].startswith(
        "s3://moodreel-ml/moodreel/training/moodreel-test-job/"
    )
    assert request["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    assert all(isinstance(value, str) for value in hyperparameters.values())

    # The source archive the job runs is in S3 where the request says.
    submit = hyperparameters["sagemaker_submit_directory"].removeprefix("s3://moodreel-ml/")
    body = aws.get_object(Bucket="moodreel-ml", Key=submit)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        names = set(archive.getnames())
        requirements = archive.extractfile("requirements.txt").read().decode()
    assert {
        "services/model/training/cli.py",
        "services/model/core/network.py",
        "shared/contract/features/spec.py",
    } <= names
    assert not any("checkpoints/" in name for name in names)
    assert "transformers==5.24.0" in requirements
    assert "torch" not in requirements.split("\n")  # the framework image brings its own torch


def test_spot_own_image_and_distributed(aws):
    request = create_job(
        aws,
        spot=True,
        max_run_seconds=3600,
        image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/moodreel-train:abc",
        instance_type="ml.g5.12xlarge",
        distributed=True,
        data_uri="s3://other-bucket/meld",
    )
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 3600}
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith("/moodreel-train:abc")
    assert request["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert (
        request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        == "s3://other-bucket/meld/train/"
    )


def test_sagemaker_train_command_passes_options_and_hyperparameters(monkeypatch):
    from typer.testing import CliRunner

    from services import cli
    from services.model.training import sagemaker as sagemaker_train

    launched = {}

    def fake_launch(config, sagemaker_client, s3_client):
        launched["config"] = config
        return {"name": "moodreel-train-x", "arn": ARN, "request": {}}

    monkeypatch.setattr(sagemaker_train, "launch", fake_launch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = CliRunner().invoke(
        cli.app,
        [
            "sagemaker",
            "train",
            "--role",
            ROLE,
            "--bucket",
            "b",
            "--spot",
            "--hp",
            "epochs=8",
            "--hp",
            "seed=3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert ARN in result.output
    config = launched["config"]
    assert config.spot and config.instance_type == "ml.g5.xlarge"
    assert config.hyperparameters == {"preset": "text-default", "epochs": "8", "seed": "3"}
    bad = CliRunner().invoke(
        cli.app, ["sagemaker", "train", "--role", ROLE, "--bucket", "b", "--hp", "epochs"]
    )
    assert bad.exit_code != 0


ARCHIVE_CLI_SCRIPT = """
import sys
from pathlib import Path
import services.model.training.cli as cli
assert Path(cli.__file__).is_relative_to(Path.cwd()), cli.__file__
config = cli.config_from_args(sys.argv[1:])
print(config.checkpoint_name)
"""


def test_the_source_archive_carries_the_presets_and_its_cli_accepts_the_default_preset(tmp_path: Path):
    with tarfile.open(fileobj=io.BytesIO(source_archive())) as archive:
        names = set(archive.getnames())
        archive.extractall(tmp_path, filter="data")
    presets = sorted(PRESETS_DIR.glob("*.toml"))
    assert presets
    assert {path.relative_to(REPO_ROOT).as_posix() for path in presets} <= names
    # The job's hyperparameters, as `moodreel sagemaker train` and the retraining Lambda send them.
    defaults = [TrainingJobConfig(role_arn=ROLE, bucket="b").hyperparameters]
    defaults.append(Settings().retrain_hyperparameters)
    for hyperparameters in defaults:
        argv = [item for key, value in hyperparameters.items() for item in (f"--{key}", value)]
        done = subprocess.run(
            [sys.executable, "-c", ARCHIVE_CLI_SCRIPT, *argv],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[-1] == "moodreel-text-minilm"  # the preset's values applied
