"""`moodreel sagemaker deploy|delete`: the exact SageMaker and Application Auto Scaling requests
(botocore Stubber) and the artifact + FeatureSpec side by side in S3 (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from services.model.serving.deploy import DeployConfig, DeployError, SageMakerDeployer, version_name
from services.model.testing import TINY_SPEC
from shared.contract.features.spec import FeatureSpec

NOW = datetime(2026, 11, 26, 12, 30, 5, tzinfo=UTC)
VERSION = "moodreel-20261126-123005"
OLD = "moodreel-20261101-090000"
ROLE = "arn:aws:iam::123456789012:role/moodreel-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/moodreel:0.1.0-gpu"
CONFIG = DeployConfig(endpoint_name="moodreel", role_arn=ROLE, image_uri=IMAGE, bucket="moodreel-artifacts")
ARTIFACT_URI = f"s3://moodreel-artifacts/moodreel/models/{VERSION}/model.tar.gz"
TAGS = [{"Key": "app", "Value": "moodreel"}]
RESOURCE_ID = "endpoint/moodreel/variant/AllTraffic"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"


class Clients:
    def __init__(self) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket="moodreel-artifacts")
        self.sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        self.autoscaling = boto3.client("application-autoscaling", region_name="us-east-1")
        self.sm = Stubber(self.sagemaker)
        self.scaling = Stubber(self.autoscaling)
        self.deployer = SageMakerDeployer(
            self.sagemaker, self.s3, self.autoscaling, clock=lambda: NOW, waiter_delay_seconds=1
        )

    def keys(self) -> list[str]:
        return [
            item["Key"] for item in self.s3.list_objects_v2(Bucket="moodreel-artifacts").get("Contents", [])
        ]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clients]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        clients = Clients()
        with clients.sm, clients.scaling:
            yield clients
            clients.sm.assert_no_pending_responses()
            clients.scaling.assert_no_pending_responses()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "model.tar.gz"
    path.write_bytes(b"\x1f\x8b pretend tarball")
    return path


def endpoint(status: str, config_name: str = OLD) -> dict:
    return {
        "EndpointName": "moodreel",
        "EndpointArn": f"{ARN}:endpoint/moodreel",
        "EndpointConfigName": config_name,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }


def endpoint_missing(clients: Clients) -> None:
    clients.sm.add_client_error(
        "describe_endpoint",
        "ValidationException",
        'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/moodreel".',
        400,
        expected_params={"EndpointName": "moodreel"},
    )


def expect_model_and_config(clients: Clients, instance_type: str = "ml.g5.xlarge") -> None:
    clients.sm.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/{VERSION}"},
        {
            "ModelName": VERSION,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {
                "Image": IMAGE,
                "ModelDataUrl": ARTIFACT_URI,
                "Environment": {
                    "SAGEMAKER_PROGRAM": "inference.py",
                    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "55",
                    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                    "MOODREEL_ENVIRONMENT": "production",
                    "MOODREEL_LOG_JSON": "true",
                },
            },
            "Tags": TAGS,
        },
    )
    clients.sm.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/{VERSION}"},
        {
            "EndpointConfigName": VERSION,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": VERSION,
                    "InstanceType": instance_type,
                    "InitialInstanceCount": 1,
                    "ContainerStartupHealthCheckTimeoutInSeconds": 600,
                    "ModelDataDownloadTimeoutInSeconds": 600,
                }
            ],
            "Tags": TAGS,
        },
    )


def expect_in_service_and_scaling(clients: Clients) -> None:
    for _ in ("waiter", "which config serves"):
        clients.sm.add_response(
            "describe_endpoint", endpoint("InService", VERSION), {"EndpointName": "moodreel"}
        )
    clients.scaling.add_response(
        "register_scalable_target",
        {},
        {
            "ServiceNamespace": "sagemaker",
            "ResourceId": RESOURCE_ID,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": 1,
            "MaxCapacity": 4,
        },
    )
    clients.scaling.add_response(
        "put_scaling_policy",
        {"PolicyARN": "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:x"},
        {
            "PolicyName": "moodreel-invocations-per-instance",
            "ServiceNamespace": "sagemaker",
            "ResourceId": RESOURCE_ID,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": 100.0,
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "ScaleInCooldown": 300,
                "ScaleOutCooldown": 60,
            },
        },
    )


def previous_config(clients: Clients, instance_type: str) -> None:
    clients.sm.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": OLD,
            "EndpointConfigArn": f"{ARN}:endpoint-config/{OLD}",
            "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": OLD, "InstanceType": instance_type}
            ],
            "CreationTime": NOW,
        },
        {"EndpointConfigName": OLD},
    )


def expect_update(clients: Clients, retain: bool) -> None:
    clients.sm.add_response(
        "update_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/moodreel"},
        {
            "EndpointName": "moodreel",
            "EndpointConfigName": VERSION,
            "RetainAllVariantProperties": retain,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 120,
                }
            },
        },
    )


def expect_endpoint_created(clients: Clients) -> None:
    clients.sm.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/moodreel"},
        {"EndpointName": "moodreel", "EndpointConfigName": VERSION, "Tags": TAGS},
    )


def expect_old_version_removed(clients: Clients) -> None:
    clients.sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": OLD})
    clients.sm.add_response("delete_model", {}, {"ModelName": OLD})


def test_first_deploy_creates_the_endpoint_and_stores_artifact_and_spec(aws: Clients, artifact: Path):
    endpoint_missing(aws)
    expect_model_and_config(aws)
    expect_endpoint_created(aws)
    expect_in_service_and_scaling(aws)

    result = aws.deployer.deploy(artifact, TINY_SPEC, CONFIG)

    assert (result.action, result.model_name, result.endpoint_config_name) == ("created", VERSION, VERSION)
    assert result.artifact_uri == ARTIFACT_URI
    assert result.spec_uri == f"s3://moodreel-artifacts/moodreel/models/{VERSION}/feature-spec.json"
    assert sorted(aws.keys()) == [
        f"moodreel/models/{VERSION}/feature-spec.json",
        f"moodreel/models/{VERSION}/model.tar.gz",
    ]
    stored = aws.s3.get_object(Bucket="moodreel-artifacts", Key=f"moodreel/models/{VERSION}/model.tar.gz")
    assert stored["Body"].read() == artifact.read_bytes()
    spec = aws.s3.get_object(Bucket="moodreel-artifacts", Key=f"moodreel/models/{VERSION}/feature-spec.json")
    assert FeatureSpec.model_validate(json.loads(spec["Body"].read())) == TINY_SPEC


def test_redeploy_updates_blue_green_keeping_the_scaled_instance_count(aws: Clients, artifact: Path):
    aws.sm.add_response("describe_endpoint", endpoint("InService"), {"EndpointName": "moodreel"})
    expect_model_and_config(aws)
    previous_config(aws, "ml.g5.xlarge")
    expect_update(aws, retain=True)
    expect_in_service_and_scaling(aws)
    expect_old_version_removed(aws)

    result = aws.deployer.deploy(artifact, TINY_SPEC, CONFIG)

    assert result.action == "updated"
    assert result.removed == [OLD, OLD]


def test_changing_the_instance_type_deregisters_autoscaling_before_the_update(aws: Clients, artifact: Path):
    aws.sm.add_response("describe_endpoint", endpoint("InService"), {"EndpointName": "moodreel"})
    expect_model_and_config(aws, instance_type="ml.g6.xlarge")
    previous_config(aws, "ml.g5.xlarge")
    aws.scaling.add_response(
        "deregister_scalable_target",
        {},
        {
            "ServiceNamespace": "sagemaker",
            "ResourceId": RESOURCE_ID,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        },
    )
    expect_update(aws, retain=False)
    expect_in_service_and_scaling(aws)
    expect_old_version_removed(aws)

    config = DeployConfig(**{**CONFIG.__dict__, "instance_type": "ml.g6.xlarge"})
    assert aws.deployer.deploy(artifact, TINY_SPEC, config).action == "updated"


def test_a_rolled_back_update_keeps_the_old_version_and_registers_nothing(aws: Clients, artifact: Path):
    aws.sm.add_response("describe_endpoint", endpoint("InService"), {"EndpointName": "moodreel"})
    expect_model_and_config(aws)
    previous_config(aws, "ml.g5.xlarge")
    expect_update(aws, retain=True)
    rolled_back = {**endpoint("InService", OLD), "FailureReason": "health check failed on /ping"}
    aws.sm.add_response("describe_endpoint", rolled_back, {"EndpointName": "moodreel"})
    aws.sm.add_response("describe_endpoint", rolled_back, {"EndpointName": "moodreel"})
    with pytest.raises(DeployError) as info:
        aws.deployer.deploy(artifact, TINY_SPEC, CONFIG)
    assert "rolled back" in str(info.value) and "/ping" in str(info.value)
    # No autoscaling change and no deletion: the stubbers hold no further responses.


def test_an_endpoint_that_fails_to_create_is_reported(aws: Clients, artifact: Path):
    endpoint_missing(aws)
    expect_model_and_config(aws)
    expect_endpoint_created(aws)
    failed = {**endpoint("Failed", VERSION), "FailureReason": "CannotStartContainerError"}
    aws.sm.add_response("describe_endpoint", failed, {"EndpointName": "moodreel"})
    with pytest.raises(DeployError, match="CannotStartContainerError"):
        aws.deployer.deploy(artifact, TINY_SPEC, CONFIG)


@pytest.mark.parametrize("status", ["Updating", "Creating", "Failed"])
def test_a_busy_or_failed_endpoint_is_left_alone(aws: Clients, artifact: Path, status: str):
    aws.sm.add_response("describe_endpoint", endpoint(status), {"EndpointName": "moodreel"})
    with pytest.raises(DeployError) as info:
        aws.deployer.deploy(artifact, TINY_SPEC, CONFIG)
    assert status in str(info.value)
    assert aws.keys() == []  # nothing uploaded, nothing created


def test_delete_removes_scaling_endpoint_config_and_model(aws: Clients):
    aws.sm.add_response("describe_endpoint", endpoint("InService", VERSION), {"EndpointName": "moodreel"})
    aws.sm.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": VERSION,
            "EndpointConfigArn": f"{ARN}:endpoint-config/{VERSION}",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": VERSION}],
            "CreationTime": NOW,
        },
        {"EndpointConfigName": VERSION},
    )
    # Never registered (e.g. a deploy interrupted before autoscaling): that is not an error.
    aws.scaling.add_client_error(
        "deregister_scalable_target", "ObjectNotFoundException", "No scalable target", 400
    )
    aws.sm.add_response("delete_endpoint", {}, {"EndpointName": "moodreel"})
    aws.sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": VERSION})
    aws.sm.add_response("delete_model", {}, {"ModelName": VERSION})
    assert aws.deployer.delete("moodreel") == ["moodreel", VERSION, VERSION]


def test_deleting_a_missing_endpoint_says_so(aws: Clients):
    endpoint_missing(aws)
    with pytest.raises(DeployError, match="does not exist"):
        aws.deployer.delete("moodreel")


def test_version_names_fit_sagemaker_limits():
    name = version_name("x" * 80, NOW)
    assert len(name) == 63 and name.endswith("-20261126-123005")
    assert version_name("moodreel", NOW) == VERSION


def test_the_deploy_command_packs_the_checkpoint_and_deploys_it(
    aws: Clients, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    import tarfile

    from typer.testing import CliRunner

    from services.cli import app

    monkeypatch.setattr(SageMakerDeployer, "from_region", classmethod(lambda cls, region: aws.deployer))
    endpoint_missing(aws)
    expect_model_and_config(aws)
    expect_endpoint_created(aws)
    expect_in_service_and_scaling(aws)
    arguments = ["sagemaker", "deploy", str(tiny_checkpoint), "--endpoint", "moodreel", "--role", ROLE]
    result = CliRunner().invoke(app, [*arguments, "--image", IMAGE, "--bucket", "moodreel-artifacts"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["artifact_uri"] == ARTIFACT_URI
    stored = aws.s3.get_object(Bucket="moodreel-artifacts", Key=f"moodreel/models/{VERSION}/model.tar.gz")
    local = tiny_checkpoint.parent / "downloaded.tar.gz"
    local.write_bytes(stored["Body"].read())
    with tarfile.open(local) as archive:
        names = set(archive.getnames())
    assert {"checkpoint.json", "model.safetensors", "code/inference.py", "code/requirements.txt"} <= names
    spec = aws.s3.get_object(Bucket="moodreel-artifacts", Key=f"moodreel/models/{VERSION}/feature-spec.json")
    assert FeatureSpec.model_validate_json(spec["Body"].read()) == TINY_SPEC


def test_the_deploy_command_names_missing_settings(tiny_checkpoint: Path):
    from typer.testing import CliRunner

    from services.cli import app

    result = CliRunner().invoke(app, ["sagemaker", "deploy", str(tiny_checkpoint), "--bucket", "b"])
    assert result.exit_code == 2
    assert "--role" in result.output and "--image" in result.output
