"""Fixtures for the model service: a tiny checkpoint, bundles shaped by its FeatureSpec, and real
uvicorn servers on free loopback ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.model.serving.inference import ServedModel, model_fn
from services.model.serving.server import create_app, serve_in_background
from services.model.testing import TINY_SPEC, build_tiny_checkpoint
from shared.contract.bundle import FeatureBundle, UtteranceMeta
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.text import tokenize_utterances
from shared.settings import Settings

LINES = [
    ("Monica", "I can't believe you did that!"),
    ("Joey", "How you doin'?"),
    ("Ross", "We were on a break."),
    ("Rachel", "Oh my God, that is wonderful news."),
    ("Chandler", "Could this be any more awkward?"),
    ("Phoebe", "Smelly cat, what are they feeding you?"),
]


def make_bundle(
    spec: FeatureSpec = TINY_SPEC,
    count: int = 4,
    *,
    seed: int = 0,
    modality_mask: list[list[bool]] | None = None,
) -> FeatureBundle:
    """Real token ids for MELD-like lines, seeded random frames and log-mel, per-row modalities."""
    rng = np.random.default_rng(seed)
    utterances = [
        UtteranceMeta(
            start=2.0 * i, end=2.0 * i + 1.5, text=LINES[i % len(LINES)][1], speaker=LINES[i % len(LINES)][0]
        )
        for i in range(count)
    ]
    tokens = {name: tensor.numpy() for name, tensor in tokenize_utterances(utterances, spec).items()}
    n, s, t = spec.frames_per_utterance, spec.frame_size, spec.max_audio_frames
    mask = modality_mask or [[True, True, True]] * count
    return FeatureBundle(
        utterances=utterances,
        frames=rng.integers(0, 256, (count, n, 3, s, s), dtype=np.uint8),
        frame_times=np.tile(np.linspace(0, 1, n, dtype=np.float32), (count, 1)),
        log_mel=rng.standard_normal((count, spec.n_mels, t)).astype(np.float16),
        audio_mask=np.ones((count, t), dtype=bool),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        token_type_ids=tokens["token_type_ids"],
        modality_mask=np.asarray(mask, dtype=bool).reshape(count, 3),
        spec_hash=spec.hash,
        media={"duration": 2.0 * count},
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("model-service") / "tiny")


@pytest.fixture(scope="session")
def served_model(tiny_checkpoint: Path) -> ServedModel:
    return model_fn(tiny_checkpoint)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


running = serve_in_background


def wait_until_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


SERVER_SETTINGS = Settings(model_max_payload_bytes=256 * 1024)


@pytest.fixture(scope="module")
def server_url(served_model: ServedModel, tiny_checkpoint: Path) -> Iterator[str]:
    """A loaded server (the session's model, so modules do not reload it)."""
    app = create_app(tiny_checkpoint, settings=SERVER_SETTINGS, load_model=lambda _: served_model)
    with running(app) as url:
        wait_until_ready(url)
        yield url
