"""SageMaker's four inference functions; ``services/model/serving/server.py`` serves the same ones.

``model.tar.gz`` carries this file as ``code/inference.py``, so the SageMaker PyTorch serving
toolkit can call it too; our own image (``moodreel serve``) wraps it in the FastAPI server.

Nothing here touches the network except reading a bundle the caller named in S3: the checkpoint
loads from local files (pretrained bases from their packages or local paths), on GPU when there
is one. Errors carry an HTTP status (``status_code``) and a stable ``code``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.model.core.checkpoint import LoadedModel, load_checkpoint
from services.model.core.forward import forward_batches
from services.model.core.network import ModelInputs, inputs_from_bundle
from services.model.serving.packaging import BUNDLED_MODELS_DIR
from shared.contract.bundle import CONTENT_TYPE as BUNDLE_CONTENT_TYPE
from shared.contract.bundle import BundleError, FeatureBundle, UtteranceMeta
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.contract.predictions import (
    LANGUAGE_UNSUPPORTED,
    NO_EVIDENCE,
    NOT_REQUESTED,
    FrameFaces,
    InvocationResponse,
    LabelScores,
    ModalityScores,
    ModelInfo,
    UtterancePrediction,
)
from shared.logging import get_logger
from shared.settings import get_settings

JSON_CONTENT_TYPE = "application/json"
log = get_logger(__name__)


class InferenceError(Exception):
    """A request the model cannot serve; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, status_code: int, code: str, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


@dataclass
class ServedModel:
    loaded: LoadedModel
    device: torch.device
    batch_size: int
    vocab_size: int  # token ids at or above it are refused, not looked up out of range
    # Intra-op threads for forward passes. torch keeps this per calling thread once a thread has
    # run an op, so predict_fn sets it in whichever worker thread serves the request.
    torch_threads: int | None = None

    @property
    def spec(self) -> FeatureSpec:
        return self.loaded.spec

    @property
    def info(self) -> ModelInfo:
        meta = self.loaded.meta
        return ModelInfo(
            name=str(meta.get("name", "moodreel")),
            version=str(meta.get("version", "0")),
            spec_hash=self.loaded.spec.hash,
        )


@dataclass
class Prediction:
    """Probabilities per utterance (float32 on CPU), aligned with ``utterances``."""

    utterances: list[UtteranceMeta]
    emotion: torch.Tensor  # [U, 7]
    sentiment: torch.Tensor  # [U, 3]
    modality_emotion: torch.Tensor  # [U, 3, 7]
    modality_sentiment: torch.Tensor  # [U, 3, 3]
    modalities_used: torch.Tensor  # [U, 3] bool
    model: ModelInfo
    # Per utterance, why each modality it did not use was masked ({"audio": "no_speech"}).
    masked: list[dict[str, str]] = dataclasses.field(default_factory=list)


# --- model_fn -------------------------------------------------------------------------------------
def model_fn(model_dir: str | Path) -> ServedModel:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    bundled = Path(model_dir) / BUNDLED_MODELS_DIR
    if bundled.is_dir():
        # A model.tar.gz carries the exact encoders it was packaged with: those, not a local install.
        os.environ["MOODREEL_MODELS_DIR"] = str(bundled)
        get_settings.cache_clear()
    loaded = load_checkpoint(Path(model_dir), device=device)
    vocab_size = loaded.model.text.backbone.get_input_embeddings().num_embeddings
    settings = get_settings()
    served = ServedModel(
        loaded=loaded,
        device=device,
        batch_size=settings.model_batch_size,
        vocab_size=vocab_size,
        torch_threads=settings.model_torch_threads,
    )
    log.info(
        "model_loaded",
        model_dir=str(model_dir),
        device=str(device),
        torch_threads=served.torch_threads or torch.get_num_threads(),
        name=served.info.name,
        version=served.info.version,
        spec_hash=served.info.spec_hash,
        trained_modalities=loaded.meta.get("trained_modalities"),
        seconds=round(time.perf_counter() - started, 3),
    )
    return served


# --- input_fn -------------------------------------------------------------------------------------
def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def input_fn(
    body: bytes | bytearray | str, content_type: str | None, expected_spec_hash: str | None = None
) -> FeatureBundle:
    """A FeatureBundle from the request body.

    ``expected_spec_hash`` (the server passes the loaded model's) refuses a bundle built with
    another FeatureSpec before any tensor is decoded; ``predict_fn`` checks again for callers
    that cannot pass it (SageMaker's toolkit calls ``input_fn(body, content_type)``).
    """
    media_type = _media_type(content_type)
    if isinstance(body, str):
        body = body.encode()
    if media_type == BUNDLE_CONTENT_TYPE:
        data = bytes(body)
    elif media_type == JSON_CONTENT_TYPE:
        data = _fetch_bundle(_bundle_uri(body))
    else:
        raise InferenceError(
            415,
            "unsupported_media_type",
            f"content type {content_type!r} is not supported; send {BUNDLE_CONTENT_TYPE} "
            f'or {JSON_CONTENT_TYPE} with {{"bundle_uri": "s3://..."}}',
        )
    try:
        return FeatureBundle.from_bytes(data, expected_spec_hash=expected_spec_hash)
    except BundleError as exc:
        raise InferenceError(400, exc.code, str(exc)) from exc


def _bundle_uri(body: bytes | bytearray) -> str:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InferenceError(400, "invalid_json", f"request body is not JSON: {exc}") from exc
    uri = document.get("bundle_uri") if isinstance(document, dict) else None
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InferenceError(400, "invalid_bundle_uri", 'expected {"bundle_uri": "s3://bucket/key"}')
    return uri


def _fetch_bundle(uri: str) -> bytes:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.contract.model_client import split_s3_uri

    settings = get_settings()
    prefixes = settings.model_bundle_uri_prefixes
    if prefixes and not any(uri.startswith(prefix) for prefix in prefixes):
        raise InferenceError(403, "bundle_uri_not_allowed", f"{uri} is outside the allowed bundle locations")
    try:
        bucket, key = split_s3_uri(uri)
    except ValueError as exc:
        raise InferenceError(400, "invalid_bundle_uri", str(exc)) from exc
    limit = settings.model_max_bundle_bytes
    s3 = boto3.client("s3", region_name=settings.aws_region, endpoint_url=settings.s3_endpoint_url)
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        if response["ContentLength"] > limit:
            response["Body"].close()
            raise InferenceError(
                413, "bundle_too_large", f"{uri} is {response['ContentLength']} bytes, over {limit}"
            )
        return response["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise InferenceError(400, "bundle_uri_unreadable", f"cannot read {uri}: {code}") from exc
    except BotoCoreError as exc:
        raise InferenceError(503, "bundle_store_unavailable", f"cannot reach S3 for {uri}: {exc}") from exc


# --- predict_fn -----------------------------------------------------------------------------------
def evidence_mask(
    data: FeatureBundle, text_languages: tuple[str, ...]
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """The modalities each utterance may use, and why each one it may not was masked.

    The bundle's media carries the client's choice (``modalities_requested``: a modality left out
    is ``not_requested``) and the transcript's detected language (``language.code``: text in a
    language the text encoder does not read is ``language_unsupported``; an undetermined language
    keeps the text). The speech gate's verdict comes with each utterance (``audio_reason``).
    """
    requested = data.media.get("modalities_requested")
    requested = set(MODALITIES if requested is None else requested)
    language = (data.media.get("language") or {}).get("code")
    text_unreadable = bool(language and text_languages and language not in text_languages)
    mask = np.array(data.modality_mask, dtype=bool, copy=True)
    masked: list[dict[str, str]] = []
    for row, meta in enumerate(data.utterances):
        reasons = {
            name: reason
            for name, reason in (("audio", meta.audio_reason), ("visual", meta.visual_reason))
            if reason
        }
        if text_unreadable and mask[row, MODALITIES.index("text")]:
            reasons["text"] = LANGUAGE_UNSUPPORTED
            mask[row, MODALITIES.index("text")] = False
        for index, name in enumerate(MODALITIES):
            if name not in requested:
                reasons[name] = NOT_REQUESTED
                mask[row, index] = False
        masked.append(reasons)
    return mask, masked


def _check_shapes(bundle: FeatureBundle, spec: FeatureSpec) -> None:
    """Rows must have the spec's shapes: the hash says which spec, this says the bytes agree."""
    count = len(bundle)
    expected = {
        "frames": (count, spec.frames_per_utterance, 3, spec.frame_size, spec.frame_size),
        "frame_times": (count, spec.frames_per_utterance),
        "log_mel": (count, spec.n_mels, spec.max_audio_frames),
        "audio_mask": (count, spec.max_audio_frames),
        "input_ids": (count, spec.max_tokens),
        "attention_mask": (count, spec.max_tokens),
        "token_type_ids": (count, spec.max_tokens),
        "modality_mask": (count, len(MODALITIES)),
    }
    for name, shape in expected.items():
        actual = tuple(getattr(bundle, name).shape)
        if actual != shape:
            raise InferenceError(
                400, "malformed_bundle", f"{name} has shape {actual}, the spec needs {shape}"
            )


def predict_fn(data: FeatureBundle, model: ServedModel, deadline: float | None = None) -> Prediction:
    """Score every utterance, ``model.batch_size`` at a time, through the forward path evaluation
    uses (``services.model.core.forward``: the same batching and precision).

    ``deadline`` (a ``time.monotonic()`` value) is checked between batches, so a request whose
    caller has given up stops using the device.
    """
    if data.spec_hash != model.spec.hash:
        raise InferenceError(
            400,
            "spec_mismatch",
            f"bundle was built with feature spec {data.spec_hash} but the model expects {model.spec.hash}",
        )
    _check_shapes(data, model.spec)
    count = len(data)
    if count and not 0 <= int(data.input_ids.min()) <= int(data.input_ids.max()) < model.vocab_size:
        raise InferenceError(
            400, "malformed_bundle", f"input_ids outside the vocabulary [0, {model.vocab_size})"
        )
    if count and not np.isin(data.token_type_ids, (0, 1)).all():
        raise InferenceError(400, "malformed_bundle", "token_type_ids must be 0 or 1")
    if model.torch_threads and torch.get_num_threads() != model.torch_threads:
        torch.set_num_threads(model.torch_threads)
    mask, masked = evidence_mask(data, model.loaded.config.text_languages)
    data = dataclasses.replace(data, modality_mask=mask)
    parts: list[dict[str, torch.Tensor]] = []

    def check_deadline(start: int) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise InferenceError(
                503, "deadline_exceeded", f"request deadline passed after {start} of {count} utterances"
            )

    def inputs_for(rows: slice) -> ModelInputs:
        return inputs_from_bundle(data.select(rows), model.device)

    for _, output in forward_batches(
        model.loaded.model, count, model.batch_size, inputs_for, model.device, check_deadline
    ):
        parts.append(
            {
                "emotion": output.emotion_logits.float().softmax(-1).cpu(),
                "sentiment": output.sentiment_logits.float().softmax(-1).cpu(),
                "modality_emotion": output.modality_emotion_logits.float().softmax(-1).cpu(),
                "modality_sentiment": output.modality_sentiment_logits.float().softmax(-1).cpu(),
                "modalities_used": output.modalities_used.bool().cpu(),
            }
        )
    empty = {
        "emotion": torch.zeros(0, len(EMOTIONS)),
        "sentiment": torch.zeros(0, len(SENTIMENTS)),
        "modality_emotion": torch.zeros(0, len(MODALITIES), len(EMOTIONS)),
        "modality_sentiment": torch.zeros(0, len(MODALITIES), len(SENTIMENTS)),
        "modalities_used": torch.zeros(0, len(MODALITIES), dtype=torch.bool),
    }
    merged = {name: torch.cat([part[name] for part in parts]) if parts else empty[name] for name in empty}
    return Prediction(utterances=list(data.utterances), model=model.info, masked=masked, **merged)


# --- output_fn ------------------------------------------------------------------------------------
def accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits application/json (absent means anything)."""
    if not accept or not accept.strip():
        return True
    for media_range in accept.split(","):
        media_type, *params = (part.strip().lower() for part in media_range.split(";"))
        quality = next((p.partition("=")[2] for p in params if p.startswith("q=")), "1")
        try:
            refused = float(quality) == 0
        except ValueError:
            refused = False
        if not refused and media_type in ("*/*", "application/*", JSON_CONTENT_TYPE):
            return True
    return False


def _scores(labels: tuple[str, ...], probabilities: torch.Tensor) -> LabelScores:
    return LabelScores.from_probabilities(labels, [round(float(p), 6) for p in probabilities])


def build_response(prediction: Prediction) -> InvocationResponse:
    utterances = []
    for row, meta in enumerate(prediction.utterances):
        used = [name for index, name in enumerate(MODALITIES) if prediction.modalities_used[row, index]]
        # No evidence, no label: the fused head's output for a row of "absent" embeddings is a prior,
        # not a reading of this utterance.
        masked = prediction.masked[row] if prediction.masked else {}
        utterances.append(
            UtterancePrediction(
                start=meta.start,
                end=meta.end,
                text=meta.text,
                speaker=meta.speaker,
                emotion=_scores(EMOTIONS, prediction.emotion[row]) if used else None,
                sentiment=_scores(SENTIMENTS, prediction.sentiment[row]) if used else None,
                reason=None if used else NO_EVIDENCE,
                modalities_used=used,
                modalities={
                    name: ModalityScores(
                        emotion=_scores(EMOTIONS, prediction.modality_emotion[row, MODALITIES.index(name)]),
                        sentiment=_scores(
                            SENTIMENTS, prediction.modality_sentiment[row, MODALITIES.index(name)]
                        ),
                    )
                    for name in used
                },
                modalities_masked=masked,
                faces=[FrameFaces.from_meta(frame) for frame in meta.faces],
            )
        )
    return InvocationResponse(model=prediction.model, utterances=utterances)


def output_fn(prediction: Prediction, accept: str | None) -> bytes:
    if not accepts_json(accept):
        raise InferenceError(406, "not_acceptable", f"cannot answer {accept!r}; only {JSON_CONTENT_TYPE}")
    return build_response(prediction).model_dump_json().encode()


def transform(
    body: bytes,
    content_type: str | None,
    accept: str | None,
    model: ServedModel,
    deadline: float | None = None,
) -> tuple[bytes, int]:
    """The four functions in the toolkit's order: one request in, (JSON body, utterances) out."""
    if not accepts_json(accept):  # refuse before spending compute on an answer nobody can read
        raise InferenceError(406, "not_acceptable", f"cannot answer {accept!r}; only {JSON_CONTENT_TYPE}")
    bundle = input_fn(body, content_type, expected_spec_hash=model.spec.hash)
    return output_fn(predict_fn(bundle, model, deadline), accept), len(bundle)
