"""The ``moodreel`` command line. Each area registers its commands here; heavy imports stay
inside the commands so ``moodreel --help`` is instant."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import typer

from services import admin_commands, client_commands

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Moodreel: emotion and sentiment in video."
)
sagemaker_app = typer.Typer(no_args_is_help=True, help="Train and deploy on AWS SageMaker.")
app.add_typer(sagemaker_app, name="sagemaker")
dataset_app = typer.Typer(no_args_is_help=True, help="Training data from users' corrections.")
app.add_typer(dataset_app, name="dataset")


def aws_errors_in_one_line(command: Callable[..., None]) -> Callable[..., None]:
    """AWS errors a user can fix (no credentials, no region, access denied, an endpoint that
    refuses) end the command with one line saying what is wrong, and exit status 1."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        try:
            command(*args, **kwargs)
        except Exception as exc:
            message = _aws_error_line(exc)
            if message is None:
                raise
            typer.echo(f"moodreel: {message}", err=True)
            raise typer.Exit(1) from None

    return run


def _aws_error_line(exc: BaseException) -> str | None:
    from shared.contract.model_client import (
        AWS_CONFIGURATION_ERRORS,
        ModelServiceError,
        aws_configuration_hint,
    )

    if AWS_CONFIGURATION_ERRORS and isinstance(exc, AWS_CONFIGURATION_ERRORS):
        return aws_configuration_hint(exc)
    if isinstance(exc, ModelServiceError):
        return f"{exc.code}: {exc.message}"
    try:
        from botocore.exceptions import ClientError, EndpointConnectionError
    except ImportError:
        return None
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"AWS {error.get('Code', 'error')}: {error.get('Message', str(exc))}"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS: {exc}"
    return None


# Client commands: a server's public API through the Python SDK (clients/python).
app.command("analyse")(client_commands.analyse)
app.add_typer(client_commands.analyses_app, name="analyses")
app.add_typer(admin_commands.users_app, name="users")


# --- model service -----------------------------------------------------------------------------
@app.command()
def serve(
    model_dir: Path | None = typer.Option(
        None,
        "--model-dir",
        help="checkpoint directory [default: /opt/ml/model if present, else MOODREEL_MODEL_DIR]",
    ),
    host: str = typer.Option("0.0.0.0", help="bind address (SageMaker needs 0.0.0.0)"),
    port: int | None = typer.Option(None, help="[default: SAGEMAKER_BIND_TO_PORT or 8080]"),
    workers: int | None = typer.Option(None, help="[default: SAGEMAKER_MODEL_SERVER_WORKERS or 1]"),
) -> None:
    """Run the model server: GET /ping, POST /invocations, GET /spec, GET /metrics."""
    from services.model.serving.server import serve as run_server

    run_server(model_dir, host=host, port=port, workers=workers)


@sagemaker_app.command("deploy")
@aws_errors_in_one_line
def sagemaker_deploy(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint directory"),
    endpoint: str | None = typer.Option(None, help="[default: MOODREEL_SAGEMAKER_ENDPOINT_NAME]"),
    role: str | None = typer.Option(None, help="execution role ARN [default: MOODREEL_SAGEMAKER_ROLE_ARN]"),
    image: str | None = typer.Option(None, help="ECR image URI [default: MOODREEL_SAGEMAKER_IMAGE_URI]"),
    bucket: str | None = typer.Option(None, help="artifact bucket [default: MOODREEL_SAGEMAKER_BUCKET]"),
    prefix: str | None = typer.Option(None, help="artifact key prefix [default: MOODREEL_SAGEMAKER_PREFIX]"),
    instance_type: str | None = typer.Option(None, help="[default: MOODREEL_SAGEMAKER_INSTANCE_TYPE]"),
    instance_count: int = typer.Option(1, min=1),
    min_instances: int = typer.Option(1, min=1),
    max_instances: int = typer.Option(4, min=1),
    invocations_per_instance: float = typer.Option(100.0, help="autoscaling target, per instance per minute"),
) -> None:
    """Upload the model, create or update (blue/green) the endpoint, and register autoscaling."""
    import json
    import tempfile
    from dataclasses import asdict

    from services.model.core.checkpoint import read_checkpoint_document
    from services.model.serving.deploy import DeployConfig, SageMakerDeployer
    from services.model.serving.packaging import package_model_tar
    from shared.contract.features.spec import FeatureSpec
    from shared.settings import get_settings

    settings = get_settings()
    missing = [
        option
        for option, value in (
            ("--role", role or settings.sagemaker_role_arn),
            ("--image", image or settings.sagemaker_image_uri),
            ("--bucket", bucket or settings.sagemaker_bucket),
        )
        if not value
    ]
    if missing:
        raise typer.BadParameter(f"set {', '.join(missing)} (or their MOODREEL_SAGEMAKER_* settings)")
    if min_instances > max_instances:
        raise typer.BadParameter("--min-instances exceeds --max-instances")
    config = DeployConfig(
        endpoint_name=endpoint or settings.sagemaker_endpoint_name,
        role_arn=role or settings.sagemaker_role_arn,
        image_uri=image or settings.sagemaker_image_uri,
        bucket=bucket or settings.sagemaker_bucket,
        prefix=prefix if prefix is not None else settings.sagemaker_prefix,
        instance_type=instance_type or settings.sagemaker_instance_type,
        initial_instance_count=instance_count,
        min_instances=min_instances,
        max_instances=max_instances,
        invocations_per_instance=invocations_per_instance,
    )
    spec = FeatureSpec.model_validate(read_checkpoint_document(checkpoint)["feature_spec"])
    with tempfile.TemporaryDirectory(prefix="moodreel-deploy-") as scratch:
        artifact = package_model_tar(checkpoint, Path(scratch) / "model.tar.gz")
        result = SageMakerDeployer.from_region(settings.aws_region).deploy(artifact, spec, config)
    print(json.dumps(asdict(result), indent=2))


@sagemaker_app.command("invoke")
@aws_errors_in_one_line
def sagemaker_invoke(
    source: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="a feature bundle (.safetensors) or a video/audio file"
    ),
    transcript: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="SRT, WebVTT or JSON transcript of a media file"
    ),
    endpoint: str | None = typer.Option(None, help="[default: MOODREEL_SAGEMAKER_ENDPOINT_NAME]"),
) -> None:
    """Score a bundle, or a media file featurised with the endpoint's own FeatureSpec, and print the
    JSON (requests chunked under 6 MB and retried)."""
    from shared.contract import model_client
    from shared.contract.bundle import FeatureBundle
    from shared.settings import get_settings

    settings = get_settings().model_copy(update={"model_backend": "sagemaker"})
    if endpoint:
        settings = settings.model_copy(update={"sagemaker_endpoint_name": endpoint})
    with model_client.model_client_from_settings(settings) as client:
        if source.suffix == ".safetensors":
            bundle = FeatureBundle.load(source)
        else:
            from shared.contract.features.pipeline import extract_features

            bundle = extract_features(source, client.get_spec(), transcript, settings=settings)
        print(client.invoke(bundle).model_dump_json(indent=2))


@sagemaker_app.command("delete")
@aws_errors_in_one_line
def sagemaker_delete(
    endpoint: str | None = typer.Option(None, help="[default: MOODREEL_SAGEMAKER_ENDPOINT_NAME]"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
) -> None:
    """Delete the endpoint, its config, model and autoscaling target (S3 artifacts stay)."""
    from services.model.serving.deploy import SageMakerDeployer
    from shared.settings import get_settings

    settings = get_settings()
    name = endpoint or settings.sagemaker_endpoint_name
    if not yes:
        typer.confirm(f"Delete SageMaker endpoint {name}?", abort=True)
    for removed in SageMakerDeployer.from_region(settings.aws_region).delete(name):
        print(f"deleted {removed}")


# --- feature pipeline -----------------------------------------------------------------
@app.command()
def purge() -> None:
    """Delete expired idempotency records and never-completed uploads (run it periodically)."""
    from services.gateway.maintenance import purge_expired
    from shared.db.session import create_db_engine, make_session_factory, session_scope
    from shared.settings import get_settings

    settings = get_settings()
    engine = create_db_engine(settings=settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            report = purge_expired(session, settings)
    finally:
        engine.dispose()
    print(f"purged {report.idempotency_records} idempotency records and {report.uploads} stale uploads")


def _load_spec(spec_path: Path | None):
    from shared.contract.features.spec import FeatureSpec
    from shared.logging import configure_logging
    from shared.settings import get_settings

    configure_logging(get_settings().log_level)  # logs to stderr, the summary to stdout
    return FeatureSpec.load(spec_path) if spec_path else FeatureSpec()


class Segmentation(StrEnum):
    """How media without a transcript is cut (shared.contract.features.pipeline.SEGMENTATIONS)."""

    speech = "speech"
    windows = "windows"


@app.command()
def features(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="video or audio file"),
    transcript: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="SRT, WebVTT or JSON segments [default: utterances and speakers from the speech]",
    ),
    out: Path | None = typer.Option(None, help="write the tensor bundle here (.safetensors)"),
    segmentation: Segmentation | None = typer.Option(
        None, help="without a transcript [default: MOODREEL_DEFAULT_SEGMENTATION]"
    ),
    speakers: int | None = typer.Option(None, min=1, help="how many people speak [default: estimated]"),
    window: float | None = typer.Option(
        None, min=0.5, help="fixed window length [default: MOODREEL_DEFAULT_WINDOW_SECONDS]"
    ),
    spec_path: Path | None = typer.Option(
        None, "--spec", exists=True, dir_okay=False, help="FeatureSpec JSON (e.g. a checkpoint's spec.json)"
    ),
) -> None:
    """Run the feature pipeline on one file and print a summary of its utterances."""
    from shared.contract.features.media import MediaError
    from shared.contract.features.pipeline import extract_features, summary_table
    from shared.contract.features.transcripts import TranscriptError

    try:
        bundle = extract_features(
            video,
            _load_spec(spec_path),
            transcript,
            window_seconds=window,
            segmentation=segmentation.value if segmentation else None,
            speakers=speakers,
        )
    except (MediaError, TranscriptError) as exc:
        typer.echo(f"error [{exc.code}]: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(summary_table(bundle))
    if out:
        bundle.save(out)
        typer.echo(f"bundle written to {out} ({out.stat().st_size} bytes)")


@app.command()
def demo(
    workdir: Path | None = typer.Option(None, help="where the generated clip goes [default: DATA_DIR/demo]"),
) -> None:
    """Generate a short spoken clip with its transcript (espeak-ng + ffmpeg) and run the pipeline."""
    from shared.contract.features.demo_media import ToolMissing, make_spoken_clip
    from shared.contract.features.pipeline import extract_features, summary_table
    from shared.settings import get_settings

    spec = _load_spec(None)
    directory = workdir or get_settings().data_dir / "demo"
    try:
        clip = make_spoken_clip(directory)
    except ToolMissing as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"generated {clip.video} ({clip.duration:.1f} s) and {clip.transcript}")
    bundle = extract_features(clip.video, spec, clip.segments)  # JSON segments carry the speakers
    typer.echo(summary_table(bundle))


# --- model training and evaluation ----------------------------------------------------
@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def train(ctx: typer.Context) -> None:
    """Train a checkpoint (`moodreel train --help` lists every option; `--preset text-default`)."""
    from services.model.training.cli import main

    typer.echo(f"checkpoint: {main(list(ctx.args))}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint directory"),
    split: str = typer.Option("test", help="MELD split: train, dev or test"),
    out: Path | None = typer.Option(None, help="JSON report; PNGs and the model card go beside it"),
    acted_speech: bool = typer.Option(True, help="also score an audio-trained checkpoint on acted speech"),
) -> None:
    """Score a checkpoint on MELD: accuracy, weighted/macro F1, per class, confusion, calibration."""
    import json

    from services.model.training.evaluation import evaluate_checkpoint
    from shared.logging import configure_logging

    configure_logging()
    report = evaluate_checkpoint(checkpoint, split, out, acted_speech=acted_speech)
    for head in ("emotion", "sentiment"):
        scores = {key: report[head][key] for key in ("accuracy", "weighted_f1", "macro_f1", "ece")}
        typer.echo(f"{head}: " + json.dumps({k: round(v, 4) for k, v in scores.items()}))
    if out:
        typer.echo(f"report: {out}")


@app.command()
def fuse(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint directory"),
    output_dir: Path = typer.Option(..., help="where the checkpoint with the trained fusion goes"),
    epochs: int = typer.Option(30),
    seed: int = typer.Option(0),
) -> None:
    """Train the fusion layers and fused heads on joint rows (MELD spoken by espeak-ng voices,
    beds, RAVDESS with its sentence) over the checkpoint's frozen branches; then calibrate."""
    import json

    from services.model.training.fusion_stage import train_fusion
    from shared.logging import configure_logging

    configure_logging()
    report = train_fusion(checkpoint, output_dir, epochs=epochs, seed=seed)
    typer.echo(
        json.dumps({k: report[k] for k in ("best_epoch", "dev_before", "dev_after", "seconds")}, indent=1)
    )


@app.command()
def gate(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint directory"),
    output_dir: Path = typer.Option(..., help="where the checkpoint with the fitted fusion gate goes"),
    seed: int = typer.Option(0, help="which dev rows and voices are drawn"),
) -> None:
    """Fit the fusion gate (reliability-weighted pooling of each modality's reading, for rows with
    two or more modalities) on dev rows over the checkpoint's frozen network; every other weight
    and every single-modality output stay as they are."""
    import json

    from services.model.training.fusion_gate import fit_checkpoint_gate
    from shared.logging import configure_logging

    configure_logging()
    report = fit_checkpoint_gate(checkpoint, output_dir, seed=seed)
    typer.echo(json.dumps({k: report[k] for k in ("design", "fitted_on_all_dev", "seconds")}, indent=1))


@app.command()
def calibrate(
    checkpoint: Path = typer.Argument(..., exists=True, file_okay=False, help="checkpoint directory"),
    seed: int = typer.Option(0, help="which dev rows and voices are drawn"),
) -> None:
    """Fit the checkpoint's temperatures on dev (text, spoken, beds, acted speech, faces) and store
    those that lower their own rows' ECE in its checkpoint.json; serving applies them."""
    import json

    from services.model.training.calibration import calibrate_checkpoint
    from shared.logging import configure_logging

    configure_logging()
    fitted = calibrate_checkpoint(checkpoint, seed=seed)
    typer.echo(json.dumps({key: fitted[key] for key in ("fused", "modality", "fits", "seconds")}, indent=1))
    for name, report in fitted["dev_sets"].items():
        typer.echo(f"{name}: {json.dumps(report)}")


@sagemaker_app.command("train")
@aws_errors_in_one_line
def sagemaker_train(
    role: str | None = typer.Option(None, help="execution role ARN [default: MOODREEL_SAGEMAKER_ROLE_ARN]"),
    bucket: str | None = typer.Option(None, help="S3 bucket [default: MOODREEL_SAGEMAKER_BUCKET]"),
    prefix: str = typer.Option("moodreel/training", help="S3 key prefix for source, data, outputs"),
    data_uri: str | None = typer.Option(
        None, help="S3 prefix with train/ dev/ test/ [default: <prefix>/data]"
    ),
    image: str | None = typer.Option(
        None, help="our ECR image [default: SageMaker's PyTorch training image]"
    ),
    instance_type: str = typer.Option("ml.g5.xlarge"),
    instance_count: int = typer.Option(1, min=1),
    spot: bool = typer.Option(False, help="managed spot training (checkpoints sync to S3)"),
    max_run: int = typer.Option(4 * 3600, help="seconds"),
    distributed: bool = typer.Option(False, help="torchrun across the instance's GPUs"),
    hyperparameter: list[str] = typer.Option(
        [], "--hp", help="trainer option as name=value (e.g. --hp epochs=8); repeatable"
    ),
) -> None:
    """Launch `services/model/training/cli.py` as a SageMaker training job (prints the job name and ARN)."""
    import boto3

    from services.model.training.sagemaker import TrainingJobConfig, launch
    from shared.settings import get_settings

    settings = get_settings()
    role_arn, bucket_name = role or settings.sagemaker_role_arn, bucket or settings.sagemaker_bucket
    if not role_arn or not bucket_name:
        raise typer.BadParameter("set --role and --bucket (or MOODREEL_SAGEMAKER_ROLE_ARN / _BUCKET)")
    hyperparameters = {"preset": "text-default"}
    for item in hyperparameter:
        name, separator, value = item.partition("=")
        if not separator:
            raise typer.BadParameter(f"--hp {item!r}: expected name=value")
        hyperparameters[name] = value
    config = TrainingJobConfig(
        role_arn=role_arn,
        bucket=bucket_name,
        prefix=prefix,
        region=settings.aws_region,
        image_uri=image,
        instance_type=instance_type,
        instance_count=instance_count,
        spot=spot,
        max_run_seconds=max_run,
        data_uri=data_uri,
        hyperparameters=hyperparameters,
        distributed=distributed,
    )
    session = boto3.Session(region_name=settings.aws_region)
    job = launch(config, session.client("sagemaker"), session.client("s3"))
    typer.echo(f"{job['name']}\n{job['arn']}")


@app.command("audio-baseline")
def audio_baseline(
    out: Path | None = typer.Option(None, help="write the JSON report here as well"),
) -> None:
    """The plain audio baseline on RAVDESS (held-out actors 21-24) and EmoDB: log-mel mean+std ->
    logistic regression (docs/audio.md)."""
    import json

    from services.model.training.audio_baseline import run_baseline
    from shared.logging import configure_logging

    configure_logging()
    report = run_baseline()
    text = json.dumps(report, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    typer.echo(text)


# --- retraining from corrections ----------------------------------------------------------------
def _utc_datetime(value: str | None, option: str):
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{option}: expected an ISO date or date-time, got {value!r}") from exc
    return parsed.replace(tzinfo=parsed.tzinfo or UTC)


@dataset_app.command("export")
def dataset_export(
    out: str = typer.Option(..., "--out", help="an empty directory, or s3://bucket/prefix/"),
    since: str | None = typer.Option(None, help="corrections made at or after this (ISO date/time, UTC)"),
    until: str | None = typer.Option(None, help="... and before this [default: now]"),
) -> None:
    """Write consented corrections in MELD's layout (CSVs + clips) with a manifest."""
    import json

    from services.retrain.dataset import ExportError, export
    from shared.db.session import create_db_engine, make_session_factory, session_scope
    from shared.logging import configure_logging
    from shared.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    engine = create_db_engine(settings=settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            manifest = export(
                session,
                settings,
                out,
                since=_utc_datetime(since, "--since"),
                until=_utc_datetime(until, "--until"),
            )
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    summary = {key: manifest[key] for key in ("utterances", "analyses", "splits", "clips", "sha256")}
    typer.echo(json.dumps(summary, indent=2))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def retrain(
    ctx: typer.Context,
    publish_dir: Path | None = typer.Option(
        None, help="versions, current, decisions, exports [default: MOODREEL_RETRAIN_PUBLISH_DIR]"
    ),
    preset: str = typer.Option("text-default", help="the trainer's preset; more trainer options may follow"),
    force: bool = typer.Option(False, "--force", help="train now, whatever the debounce says"),
) -> None:
    """Export new corrections, retrain on MELD plus every export, compare with the deployed model,
    and publish the new model only when it is not worse (prints the decision)."""
    import json

    from services.model.training.cli import config_from_args
    from services.retrain.loop import retrain as run_retrain
    from shared.db.session import create_db_engine, make_session_factory
    from shared.logging import configure_logging
    from shared.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    root = publish_dir or settings.retrain_publish_dir
    if root is None:
        raise typer.BadParameter("set --publish-dir (or MOODREEL_RETRAIN_PUBLISH_DIR)")
    config = config_from_args(["--preset", preset, *ctx.args])
    engine = create_db_engine(settings=settings)
    try:
        outcome = run_retrain(make_session_factory(engine), settings, config, root, force=force)
    finally:
        engine.dispose()
    typer.echo(json.dumps(outcome.to_dict(), indent=2, default=str))
