"""The AWS handlers with real event shapes: S3 (moto) for exports, state and decisions; botocore
Stubber asserting the exact CreateTrainingJob and UpdateEndpoint requests."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from services.model.serving.deploy import version_name
from services.model.testing import TINY_SPEC
from services.model.training.sagemaker import build_request, job_name
from services.retrain.aws import (
    AwsClients,
    decision_key,
    load_state,
    on_new_data,
    on_training_state_change,
    retraining_job_config,
)
from shared.settings import Settings

EVENTS = Path(__file__).parent / "events"
NOW = datetime(2026, 12, 1, 20, 0, 0, tzinfo=UTC)
DATA, ARTIFACTS = "moodreel-training-data", "moodreel-artifacts"
ROLE = "arn:aws:iam::123456789012:role/moodreel-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/moodreel:0.1.0-gpu"
TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
SERVING = "moodreel-20261101-090000"
SERVING_ARTIFACT = f"s3://{ARTIFACTS}/moodreel/models/{SERVING}/model.tar.gz"


def settings(**changes) -> Settings:
    values = dict(
        environment="test",
        retrain_bucket=DATA,
        sagemaker_bucket=ARTIFACTS,
        sagemaker_role_arn=ROLE,
        sagemaker_image_uri=IMAGE,
        retrain_training_image_uri=TRAINING_IMAGE,
        retrain_meld_data_uri=f"s3://{DATA}/meld",
        retrain_min_new_items=10,
        retrain_min_interval_seconds=86_400,
        retrain_margin=0.01,
        retrain_min_slice_utterances=20,
    )
    return Settings(**(values | changes))


class Aws:
    def __init__(self) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in (DATA, ARTIFACTS):
            self.s3.create_bucket(Bucket=bucket)
        self.clients = AwsClients(
            self.s3,
            boto3.client("sagemaker", region_name="us-east-1"),
            boto3.client("application-autoscaling", region_name="us-east-1"),
        )
        self.sm = Stubber(self.clients.sagemaker)

    def put_export(self, name: str, utterances: int) -> dict:
        key = f"moodreel/corrections/{name}/manifest.json"
        self.s3.put_object(Bucket=DATA, Key=key, Body=json.dumps({"utterances": utterances}).encode())
        event = json.loads((EVENTS / "s3_put.json").read_text().replace("KEY_PLACEHOLDER", name))
        return event

    def json(self, bucket: str, key: str) -> dict:
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture
def aws(monkeypatch) -> Aws:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        clients = Aws()
        with clients.sm:
            yield clients
            clients.sm.assert_no_pending_responses()


def expect_deployed_model(aws: Aws) -> None:
    aws.sm.add_response(
        "describe_endpoint",
        {
            "EndpointName": "moodreel",
            "EndpointArn": f"{ARN}:endpoint/moodreel",
            "EndpointConfigName": SERVING,
            "EndpointStatus": "InService",
            "CreationTime": NOW,
            "LastModifiedTime": NOW,
        },
        {"EndpointName": "moodreel"},
    )
    aws.sm.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": SERVING,
            "EndpointConfigArn": f"{ARN}:endpoint-config/{SERVING}",
            "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": SERVING, "InstanceType": "ml.g5.xlarge"}
            ],
            "CreationTime": NOW,
        },
        {"EndpointConfigName": SERVING},
    )


def expect_training_job(aws: Aws, config: Settings, now: datetime) -> str:
    expect_deployed_model(aws)
    aws.sm.add_response(
        "describe_model",
        {
            "ModelName": SERVING,
            "ModelArn": f"{ARN}:model/{SERVING}",
            "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": SERVING_ARTIFACT},
            "CreationTime": NOW,
        },
        {"ModelName": SERVING},
    )
    name = job_name("moodreel-retrain", now)
    source = f"s3://{ARTIFACTS}/moodreel/training/{name}/source/sourcedir.tar.gz"
    request = build_request(retraining_job_config(config, SERVING_ARTIFACT, name), name, source)
    aws.sm.add_response("create_training_job", {"TrainingJobArn": f"{ARN}:training-job/{name}"}, request)
    return name


def test_the_request_is_sagemaker_trains_with_corrections_and_the_baseline():
    name = "moodreel-retrain-20261201-200000"
    request = build_request(
        retraining_job_config(settings(), SERVING_ARTIFACT, name), name, "s3://x/src.tar.gz"
    )
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]
    }
    assert channels == {
        "train": f"s3://{DATA}/meld/train/",
        "dev": f"s3://{DATA}/meld/dev/",
        "test": f"s3://{DATA}/meld/test/",
        "corrections": f"s3://{DATA}/moodreel/corrections/",
        "baseline": SERVING_ARTIFACT,
    }
    hyperparameters = request["HyperParameters"]
    assert hyperparameters["preset"] == "text-default" and hyperparameters["sources"] == "meld,corrections"
    assert hyperparameters["compare-with"] == "/opt/ml/input/data/baseline"
    assert hyperparameters["sagemaker_program"] == "services/model/training/cli.py"
    assert request["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE


def test_debounce_by_new_items_then_one_job_at_a_time(aws):
    config = settings()
    first = on_new_data(aws.put_export("2026-12-01T18", 6), config, aws.clients, NOW)
    assert first == {"started": False, "new_items": 6, "reason": "6 new utterances, fewer than 10"}
    again = on_new_data(aws.put_export("2026-12-01T18", 6), config, aws.clients, NOW)  # redelivered
    assert again["new_items"] == 6

    name = expect_training_job(aws, config, NOW)
    started = on_new_data(aws.put_export("2026-12-01T19", 5), config, aws.clients, NOW)
    assert started == {"started": True, "new_items": 11, "job": name, "reason": "enough new corrections"}
    state = load_state(aws.s3, config)
    assert state["running_job"]["name"] == name and state["pending"] == []
    assert [m["utterances"] for m in state["running_job"]["manifests"]] == [6, 5]
    assert aws.s3.head_object(Bucket=ARTIFACTS, Key=f"moodreel/training/{name}/source/sourcedir.tar.gz")

    later = NOW + timedelta(days=2)
    busy = on_new_data(aws.put_export("2026-12-02T10", 50), config, aws.clients, later)
    assert busy["started"] is False and busy["reason"] == f"retraining job {name} is running"


def test_debounce_by_minimum_interval_and_the_scheduled_check(aws):
    config = settings()
    aws.s3.put_object(
        Bucket=DATA,
        Key="moodreel/retrain/state.json",
        Body=json.dumps(
            {"pending": [], "seen": [], "running_job": None, "last_started_at": NOW.isoformat()}
        ).encode(),
    )
    soon = NOW + timedelta(hours=3)
    held = on_new_data(aws.put_export("2026-12-01T23", 40), config, aws.clients, soon)
    assert held["started"] is False and "within the minimum interval" in held["reason"]
    scheduled = json.loads((EVENTS / "scheduled.json").read_text())
    tomorrow = NOW + timedelta(days=1, minutes=1)
    name = expect_training_job(aws, config, tomorrow)
    assert on_new_data(scheduled, config, aws.clients, tomorrow)["job"] == name


def checkpoint_archive(emotion_dev: float, sentiment_dev: float, corrections_dev: float) -> bytes:
    def report(emotion: float, sentiment: float, count: int) -> dict:
        return {
            "emotion": {"weighted_f1": emotion, "accuracy": emotion, "count": count},
            "sentiment": {"weighted_f1": sentiment, "accuracy": sentiment, "count": count},
        }

    document = {
        "format_version": 1,
        "feature_spec": TINY_SPEC.model_dump(mode="json"),
        "meta": {
            "name": "moodreel-text-minilm",
            "version": "20261201",
            "metrics": {
                "dev": report(emotion_dev, sentiment_dev, 1108),
                "corrections_dev": report(corrections_dev, 0.7, 40),
                "test": report(0.5, 0.5, 2610),
            },
            "baseline": {
                "name": "moodreel-text-minilm",
                "version": "20261101",
                "spec_hash": TINY_SPEC.hash,
                "metrics": {"dev": report(0.60, 0.69, 1108), "corrections_dev": report(0.50, 0.7, 40)},
            },
        },
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (
            ("model.safetensors", b"\0" * 64),
            ("checkpoint.json", json.dumps(document).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def state_change(aws: Aws, name: str, status: str, archive: bytes | None = None) -> dict:
    event = json.loads((EVENTS / "training_state_change.json").read_text().replace("JOB_PLACEHOLDER", name))
    event["detail"]["TrainingJobStatus"] = event["detail"]["SecondaryStatus"] = status
    if status == "Failed":
        event["detail"]["FailureReason"] = "AlgorithmError: CUDA out of memory"
        del event["detail"]["ModelArtifacts"]
    if archive is not None:
        key = f"moodreel/training/output/{name}/output/model.tar.gz"
        aws.s3.put_object(Bucket=ARTIFACTS, Key=key, Body=archive)
    return event


def running(aws: Aws, config: Settings, name: str) -> None:
    manifests = [{"key": "moodreel/corrections/a/manifest.json", "utterances": 300}]
    state = {
        "pending": [],
        "seen": [manifests[0]["key"]],
        "running_job": {"name": name, "started_at": NOW.isoformat(), "manifests": manifests},
        "last_started_at": NOW.isoformat(),
    }
    aws.s3.put_object(Bucket=DATA, Key="moodreel/retrain/state.json", Body=json.dumps(state).encode())


def test_a_model_not_worse_updates_the_endpoint_and_the_decision_is_recorded(aws):
    config, name = settings(), "moodreel-retrain-20261201-200000"
    running(aws, config, name)
    # Within the margin (0.01) on MELD dev, better on the corrections slice.
    event = state_change(aws, name, "Completed", checkpoint_archive(0.595, 0.69, 0.58))
    deployed_at = datetime(2026, 12, 1, 23, 10, 5, tzinfo=UTC)
    version = version_name("moodreel", deployed_at)
    aws.sm.add_response(
        "describe_endpoint",
        {
            "EndpointName": "moodreel",
            "EndpointArn": f"{ARN}:endpoint/moodreel",
            "EndpointConfigName": SERVING,
            "EndpointStatus": "InService",
            "CreationTime": NOW,
            "LastModifiedTime": NOW,
        },
        {"EndpointName": "moodreel"},
    )
    new_artifact = f"s3://{ARTIFACTS}/moodreel/models/{version}/model.tar.gz"
    aws.sm.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/{version}"},
        {
            "ModelName": version,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": new_artifact, "Environment": ANY},
            "Tags": ANY,
        },
    )
    aws.sm.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/{version}"},
        {"EndpointConfigName": version, "ProductionVariants": ANY, "Tags": ANY},
    )
    aws.sm.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": SERVING,
            "EndpointConfigArn": f"{ARN}:endpoint-config/{SERVING}",
            "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": SERVING, "InstanceType": "ml.g5.xlarge"}
            ],
            "CreationTime": NOW,
        },
        {"EndpointConfigName": SERVING},
    )
    aws.sm.add_response(
        "update_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/moodreel"},
        {
            "EndpointName": "moodreel",
            "EndpointConfigName": version,
            "RetainAllVariantProperties": True,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 120,
                }
            },
        },
    )
    record = on_training_state_change(event, config, aws.clients, clock=lambda: deployed_at)
    assert record["deploy"] is True and record["published"]["model_name"] == version
    assert {(c["slice"], c["head"]) for c in record["comparisons"]} == {
        ("dev", "emotion"),
        ("dev", "sentiment"),
        ("corrections_dev", "emotion"),
        ("corrections_dev", "sentiment"),
    }
    assert aws.json(DATA, decision_key(config, name)) == record
    # The training output was copied into the versioned layout, the FeatureSpec beside it.
    assert aws.s3.head_object(Bucket=ARTIFACTS, Key=f"moodreel/models/{version}/model.tar.gz")
    spec = aws.json(ARTIFACTS, f"moodreel/models/{version}/feature-spec.json")
    assert spec == TINY_SPEC.model_dump(mode="json")
    assert load_state(aws.s3, config)["running_job"] is None
    # EventBridge delivers at least once: a second delivery changes nothing.
    assert on_training_state_change(event, config, aws.clients)["ignored"] is True


@pytest.mark.parametrize(
    "scores, worse",
    [((0.585, 0.69, 0.55), "dev emotion"), ((0.60, 0.69, 0.45), "corrections_dev emotion")],
)
def test_a_worse_model_is_not_deployed(aws, scores, worse):
    config, name = settings(), "moodreel-retrain-20261201-200000"
    running(aws, config, name)
    event = state_change(aws, name, "Completed", checkpoint_archive(*scores))
    record = on_training_state_change(event, config, aws.clients)  # no SageMaker call is stubbed
    assert record["deploy"] is False and record["reason"].startswith("worse than the deployed model")
    assert worse in record["reason"] and record["published"] is None
    assert aws.json(DATA, decision_key(config, name))["deploy"] is False


def test_a_failed_job_deploys_nothing_and_its_exports_count_again(aws):
    config, name = settings(), "moodreel-retrain-20261201-200000"
    running(aws, config, name)
    record = on_training_state_change(state_change(aws, name, "Failed"), config, aws.clients)
    assert record["deploy"] is False
    assert record["reason"] == "training job Failed: AlgorithmError: CUDA out of memory"
    state = load_state(aws.s3, config)
    assert state["running_job"] is None and [m["utterances"] for m in state["pending"]] == [300]


def test_other_states_and_jobs_are_ignored(aws):
    config = settings()
    in_progress = state_change(aws, "moodreel-retrain-20261201-200000", "InProgress")
    assert on_training_state_change(in_progress, config, aws.clients)["ignored"] is True
    other = state_change(aws, "someone-elses-job", "Completed")
    assert on_training_state_change(copy.deepcopy(other), config, aws.clients)["ignored"] is True


def test_state_writes_are_conditional_and_retried_on_a_concurrent_write(aws):
    from services.retrain.aws import update_state

    config = settings()
    calls = []

    def mutate(state):
        calls.append(copy.deepcopy(state))
        if len(calls) == 1:  # another invocation writes between our read and our write
            aws.s3.put_object(
                Bucket=DATA,
                Key="moodreel/retrain/state.json",
                Body=b'{"pending": [], "seen": ["x"], "running_job": null, "last_started_at": null}',
            )
        state["seen"].append("mine")

    update_state(aws.s3, config, mutate)
    assert len(calls) == 2 and calls[1]["seen"] == ["x"]
    assert load_state(aws.s3, config)["seen"] == ["x", "mine"]


def test_a_job_that_cannot_be_created_releases_its_claim(aws):
    config = settings()
    event = aws.put_export("2026-12-01T18", 12)
    expect_deployed_model(aws)
    aws.sm.add_response(
        "describe_model",
        {"ModelName": SERVING, "ModelArn": f"{ARN}:model/{SERVING}",
         "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": SERVING_ARTIFACT}, "CreationTime": NOW},
        {"ModelName": SERVING},
    )  # fmt: skip
    aws.sm.add_client_error("create_training_job", "ResourceLimitExceeded", "quota", 400)
    with pytest.raises(Exception, match="ResourceLimitExceeded"):
        on_new_data(event, config, aws.clients, NOW)
    state = load_state(aws.s3, config)
    assert state["running_job"] is None and [m["utterances"] for m in state["pending"]] == [12]
    assert state["last_started_at"] is None
