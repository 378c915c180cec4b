"""Session fixtures for the end-to-end tests: one PostgreSQL database, a unique Redis prefix and
queue, generated media on a loopback HTTP server, and real subprocesses — the model server (tiny
checkpoint), the gateway and the arq worker — shared by every test in tests/worker.

The worker may fetch only from the media server and POST only to the webhook receivers
(``private_url_origins``); every other private address stays refused, which the SSRF tests rely
on. The gateway runs with ``allow_private_urls`` so that loopback URLs reach the worker, whose own
re-check at fetch time is what those tests exercise.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker

from shared.db.session import create_db_engine, make_session_factory
from shared.settings import models_dir
from tests.worker import stack
from tests.worker.loopback import RecordingServer, serve_file

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def checkpoint(e2e_dir) -> Path:
    from services.model.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(e2e_dir / "checkpoint")


@pytest.fixture(scope="session")
def media_server() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="session")
def receiver() -> Iterator[RecordingServer]:
    """The webhook receiver; tests install routes on it."""
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="session")
def namespace() -> str:
    return f"moodreel-e2e-{uuid.uuid4().hex[:10]}:"


@pytest.fixture(scope="session")
def model_port() -> int:
    return stack.free_port()


@pytest.fixture(scope="session")
def base_env(pg_url, e2e_dir, namespace, media_server, receiver, model_port) -> dict[str, str]:
    """The environment every process of the stack shares."""
    return {
        "MOODREEL_ENVIRONMENT": "test",
        "MOODREEL_LOG_LEVEL": "INFO",
        "MOODREEL_DATABASE_URL": pg_url,
        "MOODREEL_REDIS_URL": REDIS_URL,
        "MOODREEL_REDIS_KEY_PREFIX": namespace,
        "MOODREEL_QUEUE_NAME": f"{namespace}queue",
        "MOODREEL_DATA_DIR": str(e2e_dir / "data"),
        # the voice encoder `make models` installed (the test's data dir has none)
        "MOODREEL_MODELS_DIR": str(models_dir()),
        "MOODREEL_SECRET_KEY": "e2e-test-secret-key-e2e-test-secret-key",
        "MOODREEL_MODEL_URL": f"http://127.0.0.1:{model_port}",
        # Small limits so every media error case is cheap to produce.
        "MOODREEL_MAX_MEDIA_SECONDS": "20",
        "MOODREEL_MAX_MEDIA_BYTES": "3000000",
        "MOODREEL_MAX_VIDEO_LONG_SIDE": "640",
        "MOODREEL_MAX_VIDEO_SHORT_SIDE": "480",
        "MOODREEL_FFMPEG_THREADS": "1",
        "MOODREEL_PLANS": json.dumps(
            {
                "free": {
                    "analyses_per_month": 1000,
                    "video_seconds_per_month": 100_000,
                    "requests_per_minute": 100_000,
                },
                "tiny": {
                    "analyses_per_month": 1000,
                    "video_seconds_per_month": 2,
                    "requests_per_minute": 100_000,
                },
            }
        ),
    }


@pytest.fixture(scope="session")
def worker_env(base_env, e2e_dir, media_server, receiver) -> dict[str, str]:
    return base_env | {
        "MOODREEL_ALLOW_PRIVATE_URLS": "false",
        "MOODREEL_PRIVATE_URL_ORIGINS": json.dumps([media_server.origin, receiver.origin]),
        "MOODREEL_WORKER_TMP_DIR": str(e2e_dir / "worker-tmp"),
        "MOODREEL_WORKER_MAX_JOBS": "2",
        "MOODREEL_WORKER_JOB_TIMEOUT_SECONDS": "90",
        "MOODREEL_WORKER_RETRY_BASE_SECONDS": "1",
        # Tries 1 s, 2 s, 4 s, … apart: enough to outlast a model server restart.
        "MOODREEL_WORKER_JOB_TRIES": "8",
        "MOODREEL_WORKER_SHUTDOWN_GRACE_SECONDS": "30",
        "MOODREEL_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        "MOODREEL_WEBHOOK_MAX_ATTEMPTS": "4",
        "MOODREEL_WEBHOOK_TIMEOUT_SECONDS": "3",
        "MOODREEL_FETCH_READ_TIMEOUT_SECONDS": "5",
        "MOODREEL_MODEL_CLIENT_MAX_ATTEMPTS": "2",
        "MOODREEL_MODEL_CLIENT_BACKOFF_SECONDS": "0.2",
        "MOODREEL_MODEL_CLIENT_TIMEOUT_SECONDS": "10",
        # Several requests per video, so results arrive (and are stored) chunk by chunk.
        "MOODREEL_WORKER_SCORE_CHUNK_UTTERANCES": "2",
    }


@pytest.fixture(scope="session")
def model_server(checkpoint, base_env, e2e_dir, model_port) -> Iterator[stack.Process]:
    process = stack.model_server(checkpoint, base_env, e2e_dir, port=model_port).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def worker(worker_env, e2e_dir, model_server) -> Iterator[stack.Process]:
    process = stack.worker(worker_env, e2e_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def gateway(base_env, e2e_dir, redis_client) -> Iterator[stack.Process]:
    # Loopback video URLs must get past submission so the worker's own re-check is what decides.
    # Loopback is the proxy in front of it: each test user's X-Forwarded-For is its own address.
    gateway_env = base_env | {"MOODREEL_ALLOW_PRIVATE_URLS": "true", "MOODREEL_TRUSTED_PROXIES": "127.0.0.1"}
    process = stack.gateway(gateway_env, e2e_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api_url(gateway, worker) -> str:
    """The whole stack is up: gateway, worker, model server."""
    return f"http://127.0.0.1:{gateway.port}"


@dataclass(frozen=True)
class Clips:
    urls: dict[str, str]
    paths: dict[str, Path]
    spoken_srt: str
    spoken_duration: float

    def url(self, name: str) -> str:
        return self.urls[name]


@pytest.fixture(scope="session")
def clips(e2e_dir, media_server) -> Clips:
    """Generated media on the media server; ``url(name)`` gives its address."""
    from tests import mediagen

    directory = e2e_dir / "media"
    directory.mkdir(exist_ok=True)
    spoken = mediagen.spoken_clip(directory)
    files = {
        "spoken.mp4": spoken.video,
        "short.mp4": mediagen.h264_aac_mp4(directory, duration=3.0),
        "noise.mp4": mediagen.random_bytes(directory),
        "empty.mp4": mediagen.zero_bytes(directory),
        "cut-index.mp4": mediagen.truncated_mp4(directory, name="cut-index.mp4", faststart=False),
        "subtitles.mkv": mediagen.subtitles_only_mkv(directory),
        "long.mp4": mediagen.make_clip(directory / "long.mp4", duration=21.0, size=(64, 48), fps=5),
        "wide.mp4": mediagen.make_clip(directory / "wide.mp4", duration=1.0, size=(800, 64)),
    }
    urls = {}
    for name, path in files.items():
        media_server.routes[f"/media/{name}"] = serve_file(path.read_bytes())
        urls[name] = media_server.url(f"/media/{name}")
    # Over the worker's 3 MB byte limit (MOODREEL_MAX_MEDIA_BYTES above).
    media_server.routes["/media/huge.mp4"] = serve_file(b"\0" * 3_500_000)
    urls["huge.mp4"] = media_server.url("/media/huge.mp4")
    urls["missing.mp4"] = media_server.url("/media/missing.mp4")
    return Clips(urls, files, spoken.transcript.read_text(), spoken.duration)


@pytest.fixture(scope="session")
def sessions(pg_url) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(pg_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def redis_client(namespace) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    # Only this session's keys: other engineers share the server.
    for key in client.scan_iter(match=f"{namespace}*", count=500):
        client.delete(key)
    client.close()
