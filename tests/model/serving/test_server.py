"""The model server over real HTTP: readiness, scoring, the error contract, concurrency, metrics."""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
import torch
from moto import mock_aws

from services.model.core.network import inputs_from_bundle
from services.model.serving.inference import ServedModel, input_fn, model_fn, predict_fn
from services.model.serving.server import create_app, resolve_model_dir
from services.model.testing import TINY_SPEC
from shared.contract.bundle import CONTENT_TYPE, FeatureBundle
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.contract.predictions import InvocationResponse
from shared.settings import Settings

from .conftest import SERVER_SETTINGS, make_bundle, running, wait_until_ready

BUNDLE_HEADERS = {"Content-Type": CONTENT_TYPE, "Accept": "application/json"}


def invoke(url: str, bundle: FeatureBundle, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/invocations", content=bundle.to_bytes(), headers={**BUNDLE_HEADERS, **headers}, timeout=30
    )


def expected_probabilities(served: ServedModel, bundle: FeatureBundle) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        output = served.loaded.model(inputs_from_bundle(bundle))
    return output.emotion_logits.softmax(-1).numpy(), output.sentiment_logits.softmax(-1).numpy()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    return body


def test_ping_answers_200_only_once_the_model_is_loaded(tiny_checkpoint: Path):
    release = threading.Event()

    def slow_load(model_dir: Path) -> ServedModel:
        assert release.wait(30), "the test never released the load"
        return model_fn(model_dir)

    with running(create_app(tiny_checkpoint, settings=SERVER_SETTINGS, load_model=slow_load)) as url:
        ping = httpx.get(f"{url}/ping")
        assert_problem(ping, 503, "service_unavailable")
        assert ping.headers["retry-after"] == "1"
        assert httpx.get(f"{url}/spec").status_code == 503
        assert "moodreel_model_loaded 0.0" in httpx.get(f"{url}/metrics").text
        # An invocation that arrives while the model loads waits for it (within its deadline).
        with ThreadPoolExecutor(1) as pool:
            early = pool.submit(invoke, url, make_bundle(count=2))
            threading.Event().wait(0.5)
            assert not early.done()
            release.set()
            assert early.result(30).status_code == 200
        wait_until_ready(url, timeout=30)
        body = httpx.get(f"{url}/ping").json()
        assert body["model"] == {"name": "moodreel-tiny-test", "version": "test", "spec_hash": TINY_SPEC.hash}
        assert "moodreel_model_loaded 1.0" in httpx.get(f"{url}/metrics").text


def test_a_model_that_fails_to_load_keeps_ping_unhealthy(tmp_path: Path):
    with running(create_app(tmp_path / "absent", settings=SERVER_SETTINGS)) as url:
        for _ in range(100):
            response = httpx.get(f"{url}/ping")
            if response.json()["code"] == "model_load_failed":
                break
            threading.Event().wait(0.05)
        body = assert_problem(response, 503, "model_load_failed")
        assert "checkpoint.json" in body["detail"]
        assert_problem(invoke(url, make_bundle(count=1)), 503, "model_load_failed")


def test_an_invocation_gives_up_waiting_for_the_model_at_its_deadline(tiny_checkpoint: Path):
    never = threading.Event()
    hurried = Settings(model_request_timeout_seconds=0.3)
    app = create_app(tiny_checkpoint, settings=hurried, load_model=lambda _: never.wait(60) or None)
    with running(app) as url:
        response = invoke(url, make_bundle(count=1))
        assert_problem(response, 503, "service_unavailable")
        assert response.headers["retry-after"] == "1"
        never.set()


def test_invocations_score_every_utterance_like_the_bare_model(server_url: str, served_model: ServedModel):
    masks = [
        [True, True, True],
        [True, False, False],
        [False, True, False],
        [False, False, True],
        [True, False, True],
    ]
    bundle = make_bundle(count=5, modality_mask=masks, seed=3)
    response = invoke(server_url, bundle)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result = InvocationResponse.model_validate_json(response.content)
    assert result.model.spec_hash == TINY_SPEC.hash and result.model.name == "moodreel-tiny-test"
    emotion, sentiment = expected_probabilities(served_model, bundle)
    assert len(result.utterances) == 5
    for row, (prediction, meta, mask) in enumerate(
        zip(result.utterances, bundle.utterances, masks, strict=True)
    ):
        assert (prediction.start, prediction.end, prediction.text, prediction.speaker) == (
            meta.start,
            meta.end,
            meta.text,
            meta.speaker,
        )
        assert list(prediction.emotion.scores) == list(EMOTIONS)
        assert list(prediction.sentiment.scores) == list(SENTIMENTS)
        np.testing.assert_allclose(list(prediction.emotion.scores.values()), emotion[row], atol=1e-5)
        np.testing.assert_allclose(list(prediction.sentiment.scores.values()), sentiment[row], atol=1e-5)
        assert prediction.emotion.label == EMOTIONS[int(emotion[row].argmax())]
        assert prediction.emotion.confidence == max(prediction.emotion.scores.values())
        assert prediction.sentiment.label == SENTIMENTS[int(sentiment[row].argmax())]
        used = [name for name, present in zip(MODALITIES, mask, strict=True) if present]
        assert prediction.modalities_used == used  # the tiny checkpoint trained every modality
        assert list(prediction.modalities) == used
        for scores in prediction.modalities.values():
            assert sum(scores.emotion.scores.values()) == pytest.approx(1, abs=1e-4)
            assert sum(scores.sentiment.scores.values()) == pytest.approx(1, abs=1e-4)


def test_batching_inside_a_request_does_not_change_results(served_model: ServedModel):
    bundle = make_bundle(count=7, seed=5)
    whole = predict_fn(bundle, dataclasses.replace(served_model, batch_size=16))
    batched = predict_fn(bundle, dataclasses.replace(served_model, batch_size=2))
    torch.testing.assert_close(whole.emotion, batched.emotion, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.modality_sentiment, batched.modality_sentiment, atol=1e-5, rtol=0)
    assert torch.equal(whole.modalities_used, batched.modalities_used)


def test_an_empty_bundle_is_answered_with_no_utterances(server_url: str):
    response = invoke(server_url, make_bundle(count=0))
    assert response.status_code == 200
    assert response.json()["utterances"] == []


def test_request_ids_are_echoed_only_when_plain(server_url: str):
    assert httpx.get(f"{server_url}/spec", headers={"X-Request-Id": "job-42.chunk-3"}).headers[
        "x-request-id"
    ] == ("job-42.chunk-3")
    forged = httpx.get(f"{server_url}/spec", headers={"X-Request-Id": 'x" level=error'}).headers[
        "x-request-id"
    ]
    assert forged != 'x" level=error' and len(forged) == 32


def test_spec_is_the_models_feature_spec(server_url: str):
    response = httpx.get(f"{server_url}/spec")
    assert FeatureSpec.model_validate_json(response.content) == TINY_SPEC
    assert response.headers["x-spec-hash"] == TINY_SPEC.hash


def test_other_content_types_are_415(server_url: str):
    response = httpx.post(
        f"{server_url}/invocations", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    body = assert_problem(response, 415, "unsupported_media_type")
    assert CONTENT_TYPE in body["detail"]
    assert_problem(httpx.post(f"{server_url}/invocations", content=b"x"), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "accept", ["text/html", "application/xml, text/csv", "application/json;q=0, text/html"]
)
def test_unacceptable_accept_is_406(server_url: str, accept: str):
    assert_problem(invoke(server_url, make_bundle(count=1), Accept=accept), 406, "not_acceptable")


@pytest.mark.parametrize("accept", ["*/*", "application/*", "text/html, application/json;q=0.5"])
def test_acceptable_accept_values(server_url: str, accept: str):
    assert invoke(server_url, make_bundle(count=1), Accept=accept).status_code == 200


def test_bodies_over_the_limit_are_413_with_or_without_content_length(server_url: str):
    limit = SERVER_SETTINGS.model_max_payload_bytes
    assert_problem(
        httpx.post(f"{server_url}/invocations", content=b"\0" * (limit + 1), headers=BUNDLE_HEADERS),
        413,
        "payload_too_large",
    )

    def chunked():  # no Content-Length: the server counts while reading
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    assert_problem(
        httpx.post(f"{server_url}/invocations", content=chunked(), headers=BUNDLE_HEADERS),
        413,
        "payload_too_large",
    )


def test_a_bundle_of_another_spec_is_400_naming_both_hashes(server_url: str):
    other = FeatureSpec(frames_per_utterance=2, frame_size=48, max_audio_frames=64, max_tokens=32)
    body = assert_problem(invoke(server_url, make_bundle(other, count=2)), 400, "spec_mismatch")
    assert other.hash in body["detail"] and TINY_SPEC.hash in body["detail"]


def test_malformed_bundles_are_400(server_url: str):
    garbage = httpx.post(f"{server_url}/invocations", content=b"\x10" * 64, headers=BUNDLE_HEADERS)
    assert_problem(garbage, 400, "malformed_bundle")
    # The right hash with tensors of the wrong shape: refused, not fed to the network.
    bundle = make_bundle(count=2)
    lying = dataclasses.replace(bundle, log_mel=bundle.log_mel[:, :, :10].copy())
    body = assert_problem(invoke(server_url, lying), 400, "malformed_bundle")
    assert "log_mel" in body["detail"]
    # Token ids the embedding table does not have: refused, not an index error in the network.
    out_of_vocabulary = dataclasses.replace(bundle, input_ids=bundle.input_ids + 10_000_000)
    body = assert_problem(invoke(server_url, out_of_vocabulary), 400, "malformed_bundle")
    assert "vocabulary" in body["detail"]
    token_types = dataclasses.replace(bundle, token_type_ids=bundle.token_type_ids + 5)
    assert_problem(invoke(server_url, token_types), 400, "malformed_bundle")


def test_twenty_concurrent_requests_each_get_their_own_answer(server_url: str, served_model: ServedModel):
    bundles = [make_bundle(count=1 + i % 4, seed=100 + i) for i in range(20)]
    before = httpx.get(f"{server_url}/metrics").text
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda b: invoke(server_url, b), bundles))
    for bundle, response in zip(bundles, responses, strict=True):
        assert response.status_code == 200, response.text
        emotion, _ = expected_probabilities(served_model, bundle)
        got = [
            list(u.emotion.scores.values())
            for u in InvocationResponse.model_validate_json(response.content).utterances
        ]
        np.testing.assert_allclose(got, emotion, atol=1e-5)
    after = httpx.get(f"{server_url}/metrics").text

    def scored(text: str) -> float:
        line = next(
            line for line in text.splitlines() if line.startswith("moodreel_model_utterances_scored_total")
        )
        return float(line.split()[-1])

    assert scored(after) - scored(before) == sum(len(b) for b in bundles)
    assert 'moodreel_model_invocation_seconds_bucket{le="+Inf",status="200"}' in after
    assert "moodreel_model_invocations_in_flight 0.0" in after


def test_bundle_uri_reads_the_bundle_from_s3(server_url: str, monkeypatch: pytest.MonkeyPatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bundle = make_bundle(count=3, seed=9)
    with mock_aws():  # the server runs in this process, so its boto3 calls land in moto too
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="moodreel-bundles")
        s3.put_object(Bucket="moodreel-bundles", Key="jobs/42/bundle.safetensors", Body=bundle.to_bytes())
        by_reference = httpx.post(
            f"{server_url}/invocations",
            json={"bundle_uri": "s3://moodreel-bundles/jobs/42/bundle.safetensors"},
            timeout=30,
        )
        assert by_reference.status_code == 200, by_reference.text
        assert by_reference.json()["utterances"] == invoke(server_url, bundle).json()["utterances"]
        missing = httpx.post(f"{server_url}/invocations", json={"bundle_uri": "s3://moodreel-bundles/nope"})
        assert_problem(missing, 400, "bundle_uri_unreadable")
    assert_problem(
        httpx.post(f"{server_url}/invocations", json={"bundle_uri": "https://x/y"}), 400, "invalid_bundle_uri"
    )
    assert_problem(
        httpx.post(
            f"{server_url}/invocations", content=b"{nope", headers={"Content-Type": "application/json"}
        ),
        400,
        "invalid_json",
    )


def test_bundle_uri_outside_the_allowed_prefixes_is_refused(monkeypatch: pytest.MonkeyPatch):
    from services.model.serving import inference

    monkeypatch.setattr(
        inference, "get_settings", lambda: Settings(model_bundle_uri_prefixes=["s3://moodreel-bundles/"])
    )
    with pytest.raises(inference.InferenceError) as info:
        input_fn(json.dumps({"bundle_uri": "s3://someone-elses/secret"}), "application/json")
    assert (info.value.status_code, info.value.code) == (403, "bundle_uri_not_allowed")


def test_model_dir_resolution_prefers_explicit_then_sagemaker_then_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from services.model.serving import server

    settings = Settings(model_dir=tmp_path / "configured")
    sagemaker_dir = tmp_path / "opt" / "ml" / "model"
    monkeypatch.setattr(server, "SAGEMAKER_MODEL_DIR", sagemaker_dir)
    assert resolve_model_dir(None, settings) == tmp_path / "configured"
    sagemaker_dir.mkdir(parents=True)
    assert resolve_model_dir(None, settings) == sagemaker_dir
    assert resolve_model_dir(tmp_path / "explicit", settings) == tmp_path / "explicit"


def test_a_bundle_extracted_from_generated_media_is_scored(
    server_url: str, tmp_path: Path, served_model: ServedModel
):
    from shared.contract.features.pipeline import extract_features
    from tests.mediagen import no_audio_mp4, spoken_clip

    clip = spoken_clip(tmp_path)
    bundle = extract_features(clip.video, TINY_SPEC, clip.transcript)
    result = InvocationResponse.model_validate_json(invoke(server_url, bundle).content)
    assert [u.text for u in result.utterances] == [s["text"] for s in clip.segments]
    assert all(u.modalities_used == ["text", "audio", "visual"] for u in result.utterances)
    emotion, _ = expected_probabilities(served_model, bundle)
    np.testing.assert_allclose(
        [list(u.emotion.scores.values()) for u in result.utterances], emotion, atol=1e-5
    )

    # No audio track and no transcript: windows scored from the picture alone, and said so.
    silent = extract_features(no_audio_mp4(tmp_path), TINY_SPEC, window_seconds=1.0)
    result = InvocationResponse.model_validate_json(invoke(server_url, silent).content)
    assert result.utterances and all(u.modalities_used == ["visual"] for u in result.utterances)
    assert all(list(u.modalities) == ["visual"] for u in result.utterances)


def test_the_deadline_stops_a_request_between_batches(served_model: ServedModel, tiny_checkpoint: Path):
    import time

    from services.model.serving.inference import InferenceError

    with pytest.raises(InferenceError) as info:
        predict_fn(
            make_bundle(count=4), dataclasses.replace(served_model, batch_size=1), time.monotonic() - 1
        )
    assert (info.value.status_code, info.value.code) == (503, "deadline_exceeded")

    hurried = Settings(model_request_timeout_seconds=0.001)
    with running(create_app(tiny_checkpoint, settings=hurried, load_model=lambda _: served_model)) as url:
        wait_until_ready(url)
        response = invoke(url, make_bundle(count=30))
        body = assert_problem(response, 503, "deadline_exceeded")
        assert response.headers["retry-after"] == "5" and "within" in body["detail"]


def test_model_torch_threads_applies_in_the_thread_that_serves(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
):
    from services.model.serving import inference

    monkeypatch.setattr(inference, "get_settings", lambda: Settings(model_torch_threads=1))
    served = inference.model_fn(tiny_checkpoint)
    assert served.torch_threads == 1

    def serve_once() -> int:  # a fresh worker thread, like the server's thread pool
        torch.set_num_threads(2)
        torch.ones(4).sum()  # this thread has now run an op with 2 threads
        predict_fn(make_bundle(count=1), served)
        return torch.get_num_threads()

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(serve_once).result() == 1


def test_audio_without_speech_is_reported_masked_with_its_reason(tmp_path: Path):
    import subprocess

    from services.model.serving.inference import build_response, model_fn, predict_fn
    from services.model.testing import build_tiny_checkpoint
    from shared.contract.features.pipeline import extract_features

    gated = TINY_SPEC.model_copy(update={"speech_gate": True})
    served = model_fn(build_tiny_checkpoint(tmp_path / "checkpoint", spec=gated))
    media = tmp_path / "tone.m4a"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=3", str(media)],
        check=True,
        timeout=60,
    )
    segments = [{"start": 0.2, "end": 2.8, "text": "That's great news!"}]
    bundle = extract_features(media, gated, segments)
    [utterance] = build_response(predict_fn(bundle, served)).utterances
    assert utterance.modalities_used == ["text"]
    assert utterance.modalities_masked == {"audio": "no_speech"}
