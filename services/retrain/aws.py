"""The retraining loop on AWS: two Lambda handlers (``services/retrain/template.yaml`` wires them).

``trigger_handler`` runs on S3 ``ObjectCreated`` of an export's ``manifest.json`` under
``retrain_corrections_prefix`` (an export uploads its manifest last) and on an hourly schedule.
It counts the new exports' utterances and starts a SageMaker training job, built by
``services.model.training.sagemaker`` exactly as ``moodreel sagemaker train`` builds it, on MELD plus
every export, with the deployed model's artifact as the "baseline" channel, once there are at
least ``retrain_min_new_items`` new utterances and ``retrain_min_interval_seconds`` have passed
since the last start, and no retraining job is running. Its state is one JSON object in S3
(``<retrain_state_prefix>state.json``); the function runs with a reserved concurrency of one, so
invocations never interleave.

``state_change_handler`` runs on EventBridge's "SageMaker Training Job State Change" for
retraining jobs. A completed job's checkpoint meta (read from its model.tar.gz) goes through
``services.retrain.guard``; a candidate that passes is copied into a new model version and the
endpoint is switched to it (blue/green, not waited for); a failed or stopped job deploys nothing
and its exports count again. Every outcome is written to
``<retrain_state_prefix>decisions/<job>.json``.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from services.model.serving.deploy import DeployConfig, DeployError, SageMakerDeployer, _is_missing
from services.model.training.sagemaker import TrainingJobConfig, job_name, launch
from services.retrain.guard import Decision, decide, refuse, start_check
from shared.contract.features.spec import FeatureSpec
from shared.logging import get_logger
from shared.settings import Settings, get_settings

log = get_logger(__name__)

JOB_PREFIX = "moodreel-retrain"
MANIFEST = "manifest.json"
# The checkpoint document's name inside model.tar.gz (services.model.core.checkpoint.META_FILE; not
# imported, so the function's image needs no torch).
CHECKPOINT_DOCUMENT = "checkpoint.json"
BASELINE_DIR = "/opt/ml/input/data/baseline"
TERMINAL = ("Completed", "Failed", "Stopped")


@dataclass
class AwsClients:
    s3: Any
    sagemaker: Any
    autoscaling: Any

    @classmethod
    def from_region(cls, region: str) -> AwsClients:
        import boto3

        session = boto3.session.Session(region_name=region)
        return cls(
            session.client("s3"), session.client("sagemaker"), session.client("application-autoscaling")
        )


# --- state ----------------------------------------------------------------------------------------
def _state_key(settings: Settings) -> str:
    return f"{settings.retrain_state_prefix.strip('/')}/state.json"


def decision_key(settings: Settings, job: str) -> str:
    return f"{settings.retrain_state_prefix.strip('/')}/decisions/{job}.json"


def _bucket(settings: Settings) -> str:
    if not settings.retrain_bucket:
        raise ValueError("MOODREEL_RETRAIN_BUCKET is not set")
    return settings.retrain_bucket


class StateConflict(RuntimeError):
    """Another invocation wrote the state since it was read."""


EMPTY_STATE: dict[str, Any] = {"pending": [], "seen": [], "running_job": None, "last_started_at": None}
STATE_ATTEMPTS = 5


def read_state(s3, settings: Settings) -> tuple[dict[str, Any], str | None]:
    """The state and its ETag (None: no state yet)."""
    try:
        response = s3.get_object(Bucket=_bucket(settings), Key=_state_key(settings))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return json.loads(json.dumps(EMPTY_STATE)), None
        raise
    return json.loads(response["Body"].read()), response["ETag"]


def load_state(s3, settings: Settings) -> dict[str, Any]:
    return read_state(s3, settings)[0]


def write_state(s3, settings: Settings, state: dict[str, Any], etag: str | None) -> None:
    """A conditional write: only over the version read (or only if there is none yet)."""
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        s3.put_object(
            Bucket=_bucket(settings),
            Key=_state_key(settings),
            Body=json.dumps(state, indent=2, sort_keys=True).encode(),
            ContentType="application/json",
            **condition,
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise StateConflict("the retraining state changed meanwhile") from exc
        raise


def update_state(s3, settings: Settings, mutate: Callable[[dict[str, Any]], Any]) -> Any:
    """Read, ``mutate`` (which changes the state in place and returns a result), write
    conditionally; on a concurrent write, again from the fresh state."""
    for attempt in range(STATE_ATTEMPTS):
        state, etag = read_state(s3, settings)
        result = mutate(state)
        try:
            write_state(s3, settings, state, etag)
        except StateConflict:
            log.warning("retrain_state_conflict", attempt=attempt + 1)
            continue
        return result
    raise StateConflict(f"the retraining state kept changing ({STATE_ATTEMPTS} attempts)")


def _put_json(s3, bucket: str, key: str, document: dict) -> None:
    s3.put_object(
        Bucket=bucket, Key=key, Body=json.dumps(document, indent=2).encode(), ContentType="application/json"
    )


# --- the trigger ------------------------------------------------------------------------------------
def manifest_keys(event: dict[str, Any], settings: Settings) -> list[str]:
    """Export manifests named by an S3 notification (keys arrive URL-encoded); none for a
    scheduled check."""
    prefix = settings.retrain_corrections_prefix.lstrip("/")
    keys = []
    for record in event.get("Records", []):
        if record.get("eventSource") != "aws:s3" or not record.get("eventName", "").startswith(
            "ObjectCreated"
        ):
            continue
        if record["s3"]["bucket"]["name"] != settings.retrain_bucket:
            continue
        key = unquote_plus(record["s3"]["object"]["key"])
        if key.startswith(prefix) and key.endswith(f"/{MANIFEST}"):
            keys.append(key)
    return keys


def deployed_artifact(sagemaker, endpoint_name: str) -> str | None:
    """The S3 URI of the model.tar.gz the endpoint serves; None when there is no endpoint."""
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return model["PrimaryContainer"]["ModelDataUrl"]


def retraining_job_config(settings: Settings, baseline_uri: str, name: str) -> TrainingJobConfig:
    """`moodreel sagemaker train`'s job, on MELD plus every export, scoring the baseline too."""
    if not settings.sagemaker_role_arn or not settings.sagemaker_bucket:
        raise ValueError("MOODREEL_SAGEMAKER_ROLE_ARN and MOODREEL_SAGEMAKER_BUCKET must be set")
    corrections = f"s3://{_bucket(settings)}/{settings.retrain_corrections_prefix.strip('/')}/"
    return TrainingJobConfig(
        role_arn=settings.sagemaker_role_arn,
        bucket=settings.sagemaker_bucket,
        prefix=settings.retrain_training_prefix,
        region=settings.aws_region,
        image_uri=settings.retrain_training_image_uri,
        instance_type=settings.retrain_instance_type,
        max_run_seconds=settings.retrain_max_run_seconds,
        data_uri=settings.retrain_meld_data_uri,
        hyperparameters={
            **settings.retrain_hyperparameters,
            "sources": "meld,corrections",
            "compare-with": BASELINE_DIR,
        },
        job_name=name,
        extra_channels={"corrections": corrections, "baseline": baseline_uri},
    )


def on_new_data(
    event: dict[str, Any], settings: Settings, clients: AwsClients, now: datetime | None = None
) -> dict:
    now = now or datetime.now(UTC)
    arrived = {
        key: int(
            json.loads(clients.s3.get_object(Bucket=_bucket(settings), Key=key)["Body"].read())["utterances"]
        )
        for key in manifest_keys(event, settings)
    }
    name = job_name(JOB_PREFIX, now)
    baseline: list[str | None] = []  # looked up once, only when a start is due

    def claim(state: dict[str, Any]) -> dict[str, Any]:
        """Count the new exports; when a start is due, claim it in the state (written before the
        job is created, so two invocations can never both start one)."""
        for key, utterances in arrived.items():
            if key not in state["seen"]:  # S3 may deliver a notification twice
                state["pending"].append({"key": key, "utterances": utterances})
                state["seen"].append(key)
        new_items = sum(item["utterances"] for item in state["pending"])
        held = start_check(
            new_items,
            datetime.fromisoformat(state["last_started_at"]) if state["last_started_at"] else None,
            now,
            min_new_items=settings.retrain_min_new_items,
            min_interval_seconds=settings.retrain_min_interval_seconds,
            running=(state["running_job"] or {}).get("name"),
        )
        if held is None:
            if not baseline:
                baseline.append(deployed_artifact(clients.sagemaker, settings.sagemaker_endpoint_name))
            if baseline[0] is None:
                held = f"endpoint {settings.sagemaker_endpoint_name} does not exist"
        if held is not None:
            return {"started": False, "new_items": new_items, "reason": held}
        state["running_job"] = {
            "name": name,
            "started_at": now.isoformat(),
            "manifests": state["pending"],
            "previous_started_at": state["last_started_at"],
        }
        state["last_started_at"] = now.isoformat()
        state["pending"] = []
        return {"started": True, "new_items": new_items, "job": name, "reason": "enough new corrections"}

    outcome = update_state(clients.s3, settings, claim)
    if outcome["started"]:
        try:
            launch(retraining_job_config(settings, baseline[0], name), clients.sagemaker, clients.s3)
        except Exception:
            update_state(clients.s3, settings, lambda state: _release(state, name))
            raise
    log.info("retrain_trigger", **outcome)
    return outcome


def _release(state: dict[str, Any], name: str) -> None:
    """Undo a claim whose job could not be created: its exports count again."""
    running = state["running_job"]
    if running and running["name"] == name:
        state["pending"] = running["manifests"] + state["pending"]
        state["last_started_at"] = running.get("previous_started_at")
        state["running_job"] = None


def trigger_handler(event: dict[str, Any], context: Any) -> dict:
    settings = get_settings()
    return on_new_data(event, settings, AwsClients.from_region(settings.aws_region))


# --- the guard after training -------------------------------------------------------------------------
def read_checkpoint_document(s3, artifact_uri: str) -> dict[str, Any]:
    """checkpoint.json from a model.tar.gz in S3, read as a stream (the weights are not held)."""
    bucket, _, key = artifact_uri.removeprefix("s3://").partition("/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            if member.isfile() and member.name.removeprefix("./") == CHECKPOINT_DOCUMENT:
                handle = archive.extractfile(member)
                if handle is not None:
                    return json.loads(handle.read())
    raise ValueError(f"{artifact_uri} holds no {CHECKPOINT_DOCUMENT}")


def deploy_config(settings: Settings) -> DeployConfig:
    if not settings.sagemaker_image_uri or not settings.sagemaker_role_arn or not settings.sagemaker_bucket:
        raise ValueError("MOODREEL_SAGEMAKER_IMAGE_URI, _ROLE_ARN and _BUCKET must be set to deploy")
    return DeployConfig(
        endpoint_name=settings.sagemaker_endpoint_name,
        role_arn=settings.sagemaker_role_arn,
        image_uri=settings.sagemaker_image_uri,
        bucket=settings.sagemaker_bucket,
        prefix=settings.sagemaker_prefix,
        instance_type=settings.sagemaker_instance_type,
    )


def _already_decided(s3, settings: Settings, job: str) -> bool:
    try:
        s3.head_object(Bucket=_bucket(settings), Key=decision_key(settings, job))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def on_training_state_change(
    event: dict[str, Any], settings: Settings, clients: AwsClients, clock=lambda: datetime.now(UTC)
) -> dict:
    detail = event.get("detail", {})
    name, status = detail.get("TrainingJobName", ""), detail.get("TrainingJobStatus")
    if status not in TERMINAL or not name.startswith(f"{JOB_PREFIX}-"):
        return {"ignored": True, "job": name, "status": status}
    if _already_decided(clients.s3, settings, name):  # EventBridge delivers at least once
        return {"ignored": True, "job": name, "status": status, "reason": "already decided"}
    job = {"name": name, "status": status}
    margin = settings.retrain_margin
    decision: Decision
    if status != "Completed":
        reason = detail.get("FailureReason") or "no reason given"
        decision = refuse(f"training job {status}: {reason}", margin=margin, **job)
    else:
        artifact = detail["ModelArtifacts"]["S3ModelArtifacts"]
        job["artifact"] = artifact
        document = read_checkpoint_document(clients.s3, artifact)
        decision = decide(
            document["meta"], margin=margin, min_slice_utterances=settings.retrain_min_slice_utterances
        )
        decision.job = job
        if decision.deploy:
            spec = FeatureSpec.model_validate(document["feature_spec"])
            deployer = SageMakerDeployer(clients.sagemaker, clients.s3, clients.autoscaling, clock=clock)
            try:
                result = deployer.deploy_from_s3(artifact, spec, deploy_config(settings), wait=False)
            except DeployError as exc:  # endpoint gone, busy or failed: nothing changed
                decision.deploy, decision.reason = False, f"passed the guard, not deployed: {exc}"
            else:
                decision.published = asdict(result)
    record = decision.to_dict()
    _put_json(clients.s3, _bucket(settings), decision_key(settings, name), record)

    def finish(state: dict[str, Any]) -> None:
        running = state["running_job"]
        if running and running["name"] == name:
            if status != "Completed":
                state["pending"] = running["manifests"] + state["pending"]  # they count again
            state["running_job"] = None

    update_state(clients.s3, settings, finish)
    log.info("retrain_decision", job=name, status=status, deploy=decision.deploy, reason=decision.reason)
    return record


def state_change_handler(event: dict[str, Any], context: Any) -> dict:
    settings = get_settings()
    return on_training_state_change(event, settings, AwsClients.from_region(settings.aws_region))
