"""The invoke client: chunking under the payload limit, retries against a real server that is killed
and restarted mid-video, typed errors, and the SageMaker backend's exact InvokeEndpoint calls."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from moto import mock_aws

from services.model.serving.inference import ServedModel, transform
from services.model.testing import TINY_SPEC
from shared.contract.bundle import CONTENT_TYPE, FeatureBundle
from shared.contract.features.spec import FeatureSpec
from shared.contract.model_client import (
    HttpModelClient,
    ModelRequestRejected,
    ModelServiceError,
    ModelUnavailable,
    RetryPolicy,
    SageMakerModelClient,
)
from shared.contract.predictions import InvocationResponse

from .conftest import free_port, make_bundle, wait_until_ready

FAST_RETRY = RetryPolicy(max_attempts=4, backoff_seconds=0.01, max_backoff_seconds=0.05)
MOODREEL = Path(sys.executable).parent / "moodreel"


def invocation_count(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("moodreel_model_invocation_seconds_count")
    )


def assert_same_predictions(got: InvocationResponse, want: InvocationResponse) -> None:
    """Equal up to float noise: another batch composition may change the last digits."""
    assert got.model == want.model
    assert len(got.utterances) == len(want.utterances)
    for mine, theirs in zip(got.utterances, want.utterances, strict=True):
        assert (mine.start, mine.end, mine.text, mine.speaker) == (
            theirs.start,
            theirs.end,
            theirs.text,
            theirs.speaker,
        )
        assert mine.modalities_used == theirs.modalities_used
        assert mine.emotion.scores == pytest.approx(theirs.emotion.scores, abs=1e-5)
        assert mine.sentiment.scores == pytest.approx(theirs.sentiment.scores, abs=1e-5)


def test_chunks_stay_under_the_limit_and_cover_every_utterance_in_order():
    # The production spec: ~370 KB per utterance, so 40 utterances are ~15 MB.
    bundle = make_bundle(FeatureSpec(), count=40, seed=1)
    assert len(bundle.to_bytes()) > 12_000_000
    client = HttpModelClient("http://127.0.0.1:9", chunk_bytes=5_000_000, max_utterances_per_request=64)
    chunks = list(client.chunks(bundle))
    assert len(chunks) >= 3
    assert all(len(body) <= 5_000_000 for _, body in chunks)
    assert [i for rows, _ in chunks for i in range(rows.start, rows.stop)] == list(range(40))
    first_rows, first_body = chunks[0]
    assert FeatureBundle.from_bytes(first_body).utterances == bundle.utterances[first_rows]
    capped = HttpModelClient("http://127.0.0.1:9", max_utterances_per_request=7)
    assert max(rows.stop - rows.start for rows, _ in capped.chunks(bundle)) <= 7


def test_predict_chunks_through_the_server_and_matches_one_request(server_url: str):
    bundle = make_bundle(count=12, seed=2)
    one_request = InvocationResponse.model_validate_json(
        httpx.post(
            f"{server_url}/invocations", content=bundle.to_bytes(), headers={"Content-Type": CONTENT_TYPE}
        ).content
    )
    with HttpModelClient(server_url, chunk_bytes=50_000, retry=FAST_RETRY) as client:
        planned = len(list(client.chunks(bundle)))
        before = invocation_count(server_url)
        result = client.invoke(bundle)
        assert invocation_count(server_url) - before == planned > 2
        assert client.get_spec() == TINY_SPEC
    assert_same_predictions(result, one_request)


def test_an_utterance_larger_than_the_limit_is_refused_before_sending():
    client = HttpModelClient("http://127.0.0.1:9", chunk_bytes=5_000)
    with pytest.raises(ModelRequestRejected) as info:
        client.invoke(make_bundle(count=2))
    assert info.value.code == "utterance_too_large"


def test_client_errors_are_not_retried(server_url: str):
    sleeps: list[float] = []
    other = FeatureSpec(frames_per_utterance=2, frame_size=48, max_audio_frames=64, max_tokens=32)
    with HttpModelClient(server_url, retry=FAST_RETRY, sleep=sleeps.append) as client:
        before = invocation_count(server_url)
        with pytest.raises(ModelRequestRejected) as info:
            client.invoke(make_bundle(other, count=2))
        assert invocation_count(server_url) - before == 1
    assert (info.value.code, info.value.status) == ("spec_mismatch", 400)
    assert other.hash in info.value.message and sleeps == []


def test_a_server_that_never_answers_exhausts_the_retries():
    sleeps: list[float] = []
    client = HttpModelClient(
        f"http://127.0.0.1:{free_port()}", timeout=2, retry=FAST_RETRY, sleep=sleeps.append
    )
    with pytest.raises(ModelUnavailable) as info:
        client.get_spec()
    assert info.value.code == "model_unavailable" and "ConnectError" in info.value.message
    assert len(sleeps) == FAST_RETRY.max_attempts - 1
    assert all(0 <= delay <= FAST_RETRY.max_backoff_seconds for delay in sleeps)


def test_retry_after_is_honoured_up_to_the_backoff_cap():
    policy = RetryPolicy(max_attempts=3, backoff_seconds=0.01, max_backoff_seconds=2.0)
    assert policy.delay(1, retry_after=1.0) == 1.0
    assert policy.delay(1, retry_after=30.0) == 2.0
    assert 0 <= policy.delay(10) <= 2.0


def start_server(model_dir: Path, port: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(MOODREEL), "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "MOODREEL_LOG_JSON": "true", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.mark.slow
def test_the_client_survives_a_server_killed_and_restarted_mid_video(
    tiny_checkpoint: Path, served_model: ServedModel, servers: list[subprocess.Popen]
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    servers.append(start_server(tiny_checkpoint, port))
    wait_until_ready(url)
    bundle = make_bundle(count=9, seed=4)
    expected = InvocationResponse.model_validate_json(
        transform(bundle.to_bytes(), CONTENT_TYPE, None, served_model)[0]
    )
    sleeps: list[float] = []

    def restart_then_sleep(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) == 1:  # the first failure: the server is gone; bring a new one up
            servers.append(start_server(tiny_checkpoint, port))
            wait_until_ready(url)

    class KillAfterFirstChunk(HttpModelClient):
        def chunks(self, bundle: FeatureBundle):
            for index, chunk in enumerate(super().chunks(bundle)):
                if index == 1:  # the first chunk was answered: kill the server hard
                    servers[0].send_signal(signal.SIGKILL)
                    servers[0].wait(10)
                yield chunk

    retry = RetryPolicy(max_attempts=5, backoff_seconds=0.05, max_backoff_seconds=0.2)
    with KillAfterFirstChunk(url, chunk_bytes=50_000, retry=retry, sleep=restart_then_sleep) as client:
        result = client.invoke(bundle)
    assert len(sleeps) >= 1 and len(servers) == 2
    assert [u.start for u in result.utterances] == [u.start for u in bundle.utterances]
    assert_same_predictions(result, expected)


# --- SageMaker backend ------------------------------------------------------------------------------
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


def streaming(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def model_error(stubber: Stubber, status: int, message: str) -> None:
    stubber.add_client_error(
        "invoke_endpoint",
        service_error_code="ModelError",
        service_message="Received server error from primary with message",
        http_status_code=424,
        modeled_fields={"OriginalStatusCode": status, "OriginalMessage": message},
    )


def test_sagemaker_backend_sends_each_chunk_and_retries_5xx_and_throttling(
    aws_env, served_model: ServedModel
):
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    sleeps: list[float] = []
    client = SageMakerModelClient(
        "moodreel-prod",
        region="us-east-1",
        runtime_client=runtime,
        chunk_bytes=50_000,
        retry=FAST_RETRY,
        sleep=sleeps.append,
    )
    bundle = make_bundle(count=5, seed=6)
    # safetensors writes its header map in no fixed order, so bodies are checked after the fact.
    sent: list[bytes] = []
    runtime.meta.events.register(
        "before-parameter-build.*.*", lambda params, **_: sent.append(params["Body"])
    )
    answers = [transform(body, CONTENT_TYPE, None, served_model)[0] for _, body in client.chunks(bundle)]
    assert len(answers) == 2
    expected = {
        "EndpointName": "moodreel-prod",
        "ContentType": CONTENT_TYPE,
        "Accept": "application/json",
        "Body": ANY,
    }
    with Stubber(runtime) as stubber:
        model_error(stubber, 503, '{"code": "service_unavailable"}')
        stubber.add_response(
            "invoke_endpoint", {"Body": streaming(answers[0]), "ContentType": "application/json"}, expected
        )
        stubber.add_client_error("invoke_endpoint", "ThrottlingException", "Rate exceeded", 400)
        stubber.add_response(
            "invoke_endpoint", {"Body": streaming(answers[1]), "ContentType": "application/json"}, expected
        )
        result = client.invoke(bundle)
        stubber.assert_no_pending_responses()
    assert len(sleeps) == 2
    assert all(len(body) <= 50_000 for body in sent)
    # Each chunk was sent twice (failure, then retry), covering the video in order.
    sent_rows = [[u.text for u in FeatureBundle.from_bytes(body).utterances] for body in sent]
    assert sent_rows[0] == sent_rows[1] and sent_rows[2] == sent_rows[3]
    assert sent_rows[1] + sent_rows[3] == [u.text for u in bundle.utterances]
    assert [u.text for u in result.utterances] == [u.text for u in bundle.utterances]


def test_sagemaker_backend_does_not_retry_a_container_4xx(aws_env):
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1")
    sleeps: list[float] = []
    client = SageMakerModelClient("moodreel", region="us-east-1", runtime_client=runtime, sleep=sleeps.append)
    problem = {"type": "/problems/spec_mismatch", "status": 400, "code": "spec_mismatch", "detail": "a vs b"}
    with Stubber(runtime) as stubber:
        model_error(stubber, 400, json.dumps(problem))
        with pytest.raises(ModelRequestRejected) as info:
            client.invoke(make_bundle(count=1))
    assert (info.value.code, info.value.status, info.value.message) == ("spec_mismatch", 400, "a vs b")
    assert sleeps == []


def test_sagemaker_get_spec_reads_the_spec_beside_the_deployed_artifact(aws_env):
    sagemaker = boto3.client("sagemaker", region_name="us-east-1")
    now = datetime(2026, 11, 26, tzinfo=UTC)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        s3.put_object(
            Bucket="artifacts",
            Key="moodreel/models/moodreel-20261126-120000/feature-spec.json",
            Body=TINY_SPEC.model_dump_json().encode(),
        )
        client = SageMakerModelClient(
            "moodreel", region="us-east-1", sagemaker_client=sagemaker, s3_client=s3
        )
        with Stubber(sagemaker) as stubber:
            stubber.add_response(
                "describe_endpoint",
                {
                    "EndpointName": "moodreel",
                    "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/moodreel",
                    "EndpointConfigName": "moodreel-20261126-120000",
                    "EndpointStatus": "InService",
                    "CreationTime": now,
                    "LastModifiedTime": now,
                },
                {"EndpointName": "moodreel"},
            )
            stubber.add_response(
                "describe_endpoint_config",
                {
                    "EndpointConfigName": "moodreel-20261126-120000",
                    "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/x",
                    "ProductionVariants": [
                        {"VariantName": "AllTraffic", "ModelName": "moodreel-20261126-120000"}
                    ],
                    "CreationTime": now,
                },
                {"EndpointConfigName": "moodreel-20261126-120000"},
            )
            stubber.add_response(
                "describe_model",
                {
                    "ModelName": "moodreel-20261126-120000",
                    "ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/x",
                    "CreationTime": now,
                    "PrimaryContainer": {
                        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/moodreel:gpu",
                        "ModelDataUrl": "s3://artifacts/moodreel/models/moodreel-20261126-120000/model.tar.gz",
                    },
                },
                {"ModelName": "moodreel-20261126-120000"},
            )
            assert client.get_spec() == TINY_SPEC
            stubber.assert_no_pending_responses()


def test_a_model_swapped_between_chunks_rescores_the_video_from_the_start(
    server_url: str, served_model: ServedModel, tiny_checkpoint: Path
):
    import dataclasses

    from services.model.serving.server import create_app

    from .conftest import SERVER_SETTINGS, running

    loaded_v2 = dataclasses.replace(served_model.loaded, meta={**served_model.loaded.meta, "version": "v2"})
    v2 = dataclasses.replace(served_model, loaded=loaded_v2)

    class BlueGreen(HttpModelClient):
        """Sends the first ``old_requests`` requests to the old model, the rest to the new one."""

        def __init__(self, new_url: str, old_requests: int, **options):
            super().__init__(server_url, **options)
            self.new = HttpModelClient(new_url, **options)
            self.old_requests, self.sent = old_requests, 0

        def _send(self, body: bytes) -> bytes:
            self.sent += 1
            return super()._send(body) if self.sent <= self.old_requests else self.new._send(body)

    bundle = make_bundle(count=9, seed=12)
    app = create_app(tiny_checkpoint, settings=SERVER_SETTINGS, load_model=lambda _: v2)
    with running(app) as new_url:
        wait_until_ready(new_url)
        client = BlueGreen(new_url, old_requests=1, chunk_bytes=50_000)
        chunks = len(list(client.chunks(bundle)))
        result = client.invoke(bundle)
        assert result.model.version == "v2" and len(result.utterances) == 9
        assert client.sent == 2 + chunks  # two requests before the swap showed, then the whole video

        class Flapping(BlueGreen):
            def _send(self, body: bytes) -> bytes:  # old, new, old, new...
                self.sent += 1
                return HttpModelClient._send(self, body) if self.sent % 2 else self.new._send(body)

        with pytest.raises(ModelServiceError) as info:
            Flapping(new_url, old_requests=0, chunk_bytes=50_000).invoke(bundle)
        assert info.value.code == "model_changed"


@pytest.mark.slow
def test_the_invoke_command_scores_a_media_file_or_a_bundle(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from typer.testing import CliRunner

    from services.cli import app
    from shared.contract import model_client
    from tests.mediagen import spoken_clip

    chosen = []

    def local_twin(settings):  # the endpoint's stand-in: the real server, over HTTP
        chosen.append((settings.model_backend, settings.sagemaker_endpoint_name))
        return HttpModelClient(server_url, retry=FAST_RETRY)

    monkeypatch.setattr(model_client, "model_client_from_settings", local_twin)
    clip = spoken_clip(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["sagemaker", "invoke", str(clip.video), "--transcript", str(clip.transcript), "--endpoint", "prod"],
    )
    assert result.exit_code == 0, result.output
    scored = InvocationResponse.model_validate_json(result.stdout[result.stdout.index("{") :])
    assert [u.text for u in scored.utterances] == [s["text"] for s in clip.segments]
    assert chosen == [("sagemaker", "prod")]

    make_bundle(count=2).save(tmp_path / "bundle.safetensors")
    result = runner.invoke(app, ["sagemaker", "invoke", str(tmp_path / "bundle.safetensors")])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout[result.stdout.index("{") :])["utterances"]) == 2
