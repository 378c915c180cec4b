"""Deploy the model to a SageMaker real-time endpoint, update it without downtime, delete it.

One deployment is one version name, ``<endpoint>-<UTC timestamp>``, used for the Model and its
EndpointConfig; its artifact and FeatureSpec live side by side in S3::

    s3://<bucket>/<prefix>/<version>/model.tar.gz
    s3://<bucket>/<prefix>/<version>/feature-spec.json   (read by the worker's invoke client)

A new endpoint is created; an existing one is switched to the new config with UpdateEndpoint's
blue/green deployment (the old fleet serves until the new one passes health checks). The variant
is then registered with Application Auto Scaling and tracks invocations per instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from shared.contract.features.spec import FeatureSpec
from shared.contract.model_client import SPEC_FILENAME
from shared.logging import get_logger

VARIANT_NAME = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
ARTIFACT_FILENAME = "model.tar.gz"
# SageMaker resource names: at most 63 characters of [a-zA-Z0-9-].
_NAME_LIMIT = 63
_BUSY_STATES = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"})

log = get_logger(__name__)


class DeployError(RuntimeError):
    """The deployment cannot proceed (endpoint busy or failed, bad arguments)."""


@dataclass(frozen=True)
class DeployConfig:
    endpoint_name: str
    role_arn: str
    image_uri: str
    bucket: str
    prefix: str = "moodreel/models"
    instance_type: str = "ml.g5.xlarge"
    initial_instance_count: int = 1
    min_instances: int = 1
    max_instances: int = 4
    # Target of SageMakerVariantInvocationsPerInstance: invocations per instance per minute.
    invocations_per_instance: float = 100.0
    scale_in_cooldown_seconds: int = 300
    scale_out_cooldown_seconds: int = 60
    # Passed to the container: the request deadline (< 60 s) and uvicorn worker processes.
    model_server_timeout_seconds: int = 55
    model_server_workers: int = 1
    # Blue/green: how long the old fleet stays after traffic moved (instant rollback window).
    termination_wait_seconds: int = 120
    tags: dict[str, str] = field(default_factory=lambda: {"app": "moodreel"})


@dataclass(frozen=True)
class DeployResult:
    action: str  # "created" or "updated"
    endpoint_name: str
    model_name: str
    endpoint_config_name: str
    artifact_uri: str
    spec_uri: str
    removed: list[str] = field(default_factory=list)


def version_name(endpoint_name: str, now: datetime) -> str:
    suffix = now.astimezone(UTC).strftime("-%Y%m%d-%H%M%S")
    return endpoint_name[: _NAME_LIMIT - len(suffix)] + suffix


def _is_missing(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    return error.get("Code") in {"ValidationException", "ObjectNotFoundException"} and (
        "Could not find" in error.get("Message", "") or error.get("Code") == "ObjectNotFoundException"
    )


class SageMakerDeployer:
    def __init__(
        self,
        sagemaker: Any,
        s3: Any,
        autoscaling: Any,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        waiter_delay_seconds: int = 30,
    ):
        self.sagemaker = sagemaker
        self.s3 = s3
        self.autoscaling = autoscaling
        self.clock = clock
        self.waiter_delay_seconds = waiter_delay_seconds

    @classmethod
    def from_region(cls, region: str) -> SageMakerDeployer:
        import boto3

        session = boto3.session.Session(region_name=region)
        return cls(
            session.client("sagemaker"), session.client("s3"), session.client("application-autoscaling")
        )

    # --- deploy ----------------------------------------------------------------------------------
    def deploy(self, artifact: Path, spec: FeatureSpec, config: DeployConfig) -> DeployResult:
        """Upload a local model.tar.gz as a new version and switch the endpoint to it (waits)."""
        current = self._deployable_endpoint(config)
        name, base = self._version(config)
        log.info("uploading_artifact", artifact=str(artifact), base=base)
        self.s3.upload_file(str(artifact), config.bucket, f"{base}/{ARTIFACT_FILENAME}")
        return self._switch(current, name, base, spec, config, wait=True)

    def deploy_from_s3(
        self, source_uri: str, spec: FeatureSpec, config: DeployConfig, *, wait: bool
    ) -> DeployResult:
        """Copy a model.tar.gz already in S3 (a training job's output) into a new version and
        switch the endpoint to it. ``wait=False`` (a Lambda function) returns once UpdateEndpoint
        is accepted: the blue/green deployment rolls back by itself if the new fleet fails, and
        the previous version's config and model stay as the rollback point."""
        current = self._deployable_endpoint(config)
        if current is None and not wait:
            raise DeployError(
                f"endpoint {config.endpoint_name} does not exist; create it with a waiting deploy"
            )
        bucket, _, key = source_uri.removeprefix("s3://").partition("/")
        name, base = self._version(config)
        self.s3.copy_object(
            Bucket=config.bucket,
            Key=f"{base}/{ARTIFACT_FILENAME}",
            CopySource={"Bucket": bucket, "Key": key},
        )
        return self._switch(current, name, base, spec, config, wait=wait)

    def _deployable_endpoint(self, config: DeployConfig) -> dict[str, Any] | None:
        current = self._describe_endpoint(config.endpoint_name)
        if current is not None and current["EndpointStatus"] in _BUSY_STATES:
            raise DeployError(
                f"endpoint {config.endpoint_name} is {current['EndpointStatus']}; "
                "deploy again when it is InService"
            )
        if current is not None and current["EndpointStatus"] == "Failed":
            raise DeployError(
                f"endpoint {config.endpoint_name} is Failed "
                f"({current.get('FailureReason', 'no reason given')}); "
                "delete it first: moodreel sagemaker delete"
            )
        return current

    def _version(self, config: DeployConfig) -> tuple[str, str]:
        name = version_name(config.endpoint_name, self.clock())
        return name, f"{config.prefix.strip('/')}/{name}" if config.prefix.strip("/") else name

    def _switch(
        self,
        current: dict[str, Any] | None,
        name: str,
        base: str,
        spec: FeatureSpec,
        config: DeployConfig,
        *,
        wait: bool,
    ) -> DeployResult:
        """With the artifact at ``base``: the FeatureSpec beside it, the Model, the EndpointConfig,
        then create or update the endpoint."""
        artifact_uri = f"s3://{config.bucket}/{base}/{ARTIFACT_FILENAME}"
        spec_uri = f"s3://{config.bucket}/{base}/{SPEC_FILENAME}"
        self.s3.put_object(
            Bucket=config.bucket,
            Key=f"{base}/{SPEC_FILENAME}",
            Body=spec.model_dump_json(indent=2).encode(),
            ContentType="application/json",
        )

        tags = [{"Key": key, "Value": value} for key, value in sorted(config.tags.items())]
        self.sagemaker.create_model(
            ModelName=name,
            ExecutionRoleArn=config.role_arn,
            PrimaryContainer={
                "Image": config.image_uri,
                "ModelDataUrl": artifact_uri,
                "Environment": {
                    "SAGEMAKER_PROGRAM": "inference.py",
                    "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(config.model_server_timeout_seconds),
                    "SAGEMAKER_MODEL_SERVER_WORKERS": str(config.model_server_workers),
                    "MOODREEL_ENVIRONMENT": "production",
                    "MOODREEL_LOG_JSON": "true",
                },
            },
            Tags=tags,
        )
        self.sagemaker.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": VARIANT_NAME,
                    "ModelName": name,
                    "InstanceType": config.instance_type,
                    "InitialInstanceCount": config.initial_instance_count,
                    "ContainerStartupHealthCheckTimeoutInSeconds": 600,
                    "ModelDataDownloadTimeoutInSeconds": 600,
                }
            ],
            Tags=tags,
        )

        removed: list[str] = []
        previous_models: list[str] = []
        if current is None:
            self.sagemaker.create_endpoint(
                EndpointName=config.endpoint_name, EndpointConfigName=name, Tags=tags
            )
            action = "created"
        else:
            previous_config = self.sagemaker.describe_endpoint_config(
                EndpointConfigName=current["EndpointConfigName"]
            )
            previous_type = previous_config["ProductionVariants"][0].get("InstanceType")
            same_type = previous_type == config.instance_type
            if not same_type:
                # Application Auto Scaling refuses an update that changes a scaled variant's instance type.
                self._deregister_scaling(config.endpoint_name)
            self.sagemaker.update_endpoint(
                EndpointName=config.endpoint_name,
                EndpointConfigName=name,
                # Keep the autoscaled instance count unless the instance type changes.
                RetainAllVariantProperties=same_type,
                DeploymentConfig={
                    "BlueGreenUpdatePolicy": {
                        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                        "TerminationWaitInSeconds": config.termination_wait_seconds,
                    }
                },
            )
            action = "updated"
            previous_models = [variant["ModelName"] for variant in previous_config["ProductionVariants"]]
        if not wait:
            log.info("endpoint_update_started", endpoint=config.endpoint_name, version=name)
            return DeployResult(action, config.endpoint_name, name, name, artifact_uri, spec_uri, [])

        log.info("waiting_for_endpoint", endpoint=config.endpoint_name, action=action)
        try:
            self.sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName=config.endpoint_name,
                WaiterConfig={"Delay": self.waiter_delay_seconds, "MaxAttempts": 120},
            )
        except WaiterError as exc:
            reason = (exc.last_response or {}).get("FailureReason", str(exc))
            raise DeployError(
                f"endpoint {config.endpoint_name} did not come up with {name}: {reason}"
            ) from exc
        # A failed blue/green update rolls back: InService again, but on the old config. Then the
        # old version must stay (it is what serves) and nothing else may change.
        serving = self.sagemaker.describe_endpoint(EndpointName=config.endpoint_name)
        if serving["EndpointConfigName"] != name:
            raise DeployError(
                f"the update to {name} was rolled back; {config.endpoint_name} still serves "
                f"{serving['EndpointConfigName']} ({serving.get('FailureReason', 'no reason given')})"
            )
        self._register_scaling(config)
        if current is not None:
            # The previous version's config and models no longer serve traffic.
            removed = [current["EndpointConfigName"], *previous_models]
            self._ignore_missing(
                lambda: self.sagemaker.delete_endpoint_config(
                    EndpointConfigName=current["EndpointConfigName"]
                )
            )
            for model in previous_models:
                self._ignore_missing(lambda model=model: self.sagemaker.delete_model(ModelName=model))
        return DeployResult(action, config.endpoint_name, name, name, artifact_uri, spec_uri, removed)

    def _register_scaling(self, config: DeployConfig) -> None:
        resource_id = f"endpoint/{config.endpoint_name}/variant/{VARIANT_NAME}"
        self.autoscaling.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource_id,
            ScalableDimension=SCALABLE_DIMENSION,
            MinCapacity=config.min_instances,
            MaxCapacity=config.max_instances,
        )
        self.autoscaling.put_scaling_policy(
            PolicyName=f"{config.endpoint_name}-invocations-per-instance",
            ServiceNamespace="sagemaker",
            ResourceId=resource_id,
            ScalableDimension=SCALABLE_DIMENSION,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": config.invocations_per_instance,
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "ScaleInCooldown": config.scale_in_cooldown_seconds,
                "ScaleOutCooldown": config.scale_out_cooldown_seconds,
            },
        )

    # --- delete ----------------------------------------------------------------------------------
    def delete(self, endpoint_name: str) -> list[str]:
        """Remove the endpoint, its config and model; S3 artifacts stay (they are the history)."""
        current = self._describe_endpoint(endpoint_name)
        if current is None:
            raise DeployError(f"endpoint {endpoint_name} does not exist")
        config = self.sagemaker.describe_endpoint_config(EndpointConfigName=current["EndpointConfigName"])
        self._deregister_scaling(endpoint_name)
        self.sagemaker.delete_endpoint(EndpointName=endpoint_name)
        self.sagemaker.delete_endpoint_config(EndpointConfigName=current["EndpointConfigName"])
        models = [variant["ModelName"] for variant in config["ProductionVariants"]]
        for model in models:
            self._ignore_missing(lambda model=model: self.sagemaker.delete_model(ModelName=model))
        return [endpoint_name, current["EndpointConfigName"], *models]

    # --- helpers ---------------------------------------------------------------------------------
    def _describe_endpoint(self, endpoint_name: str) -> dict[str, Any] | None:
        try:
            return self.sagemaker.describe_endpoint(EndpointName=endpoint_name)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise

    def _deregister_scaling(self, endpoint_name: str) -> None:
        # Deregistering a scalable target also deletes its scaling policies.
        self._ignore_missing(
            lambda: self.autoscaling.deregister_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=f"endpoint/{endpoint_name}/variant/{VARIANT_NAME}",
                ScalableDimension=SCALABLE_DIMENSION,
            )
        )

    @staticmethod
    def _ignore_missing(call: Callable[[], Any]) -> None:
        try:
            call()
        except ClientError as exc:
            if not _is_missing(exc):
                raise
