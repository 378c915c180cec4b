"""The one settings class every service reads.

Values come from the environment (prefix ``MOODREEL_``) or a ``.env`` file; every field has an
embedded default so ``make demo`` works on a fresh machine with SQLite and local storage.
Services add their fields here, grouped by section, so the whole configuration stays in one
place (the README's configuration reference and ``.env.example`` list the same names).
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class PlanLimits(BaseModel):
    analyses_per_month: int = Field(100, ge=0)
    video_seconds_per_month: int = Field(3600, ge=0)
    requests_per_minute: int = Field(120, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOODREEL_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- general -----------------------------------------------------------------------------
    # "production" turns on the refusals of development defaults (e.g. the example secret key).
    environment: Literal["development", "test", "production"] = "development"
    # Standard logging level of every service.
    log_level: str = "INFO"
    # One JSON object per log line (for log shippers) instead of the console renderer.
    log_json: bool = False
    # Development only: rich tracebacks with local variables (slow and unbounded: seconds per
    # exception on the event loop). Otherwise tracebacks are plain and bounded (20,000 characters).
    log_rich_tracebacks: bool = False
    # Where local state lives: the SQLite database, local uploads, caches, training runs.
    data_dir: Path = REPO_ROOT / "var"
    # Pretrained encoders installed by `make models` (checkpoints name them "models:<name>");
    # empty: <data_dir>/models.
    models_dir: Path | None = None

    # --- media limits (checked before any heavy work) -----------------------------------------
    # Longest media accepted (seconds), checked by probing before any decoding.
    max_media_seconds: float = 3600.0
    # Largest media file accepted (bytes), checked before probing and while downloading.
    max_media_bytes: int = 2_000_000_000
    # Long and short side limits, so a portrait 2160x3840 video passes like a landscape one.
    max_video_long_side: int = 3840
    max_video_short_side: int = 2160
    # Most utterances (transcript cues or windows) per video.
    max_utterances: int = 2000
    # Fixed windows (segmentation "windows", or media without speech) last this many seconds.
    default_window_seconds: float = 4.0
    # Without a transcript: "speech" finds utterances with the speech gate's voice detector and
    # tells speakers apart by voice; "windows" cuts fixed windows (default_window_seconds).
    # An analysis may choose with options.segmentation.
    default_segmentation: Literal["speech", "windows"] = "speech"
    # Speech regions closer than this (seconds) are one region: the gaps between words.
    segment_join_pause_seconds: float = Field(0.15, ge=0.0, le=5.0)
    # Speech regions grow at both edges, up to this many seconds each way, while WebRTC's detector
    # in the more lenient mode segment_edge_vad_mode (0-3, below the speech gate's) still hears
    # speech above the noise floor: the gate's strict mode clips quiet onsets and trailing
    # syllables. 0: no growing.
    segment_edge_max_seconds: float = Field(1.0, ge=0.0, le=5.0)
    segment_edge_vad_mode: int = Field(1, ge=0, le=3)
    # A pause at least this long (seconds) ends an utterance even when the same voice goes on.
    segment_split_pause_seconds: float = Field(0.5, ge=0.0, le=30.0)
    # Utterances found in speech shorter than this are dropped (clicks, breaths) ...
    segment_min_seconds: float = Field(0.4, ge=0.0, le=10.0)
    # ... and longer ones are cut at their quietest frames (the audio branch hears 5.12 s of each).
    segment_max_seconds: float = Field(8.0, ge=1.0, le=60.0)
    # One voice throughout when all voice clusters are within this cosine distance ...
    single_speaker_distance_threshold: float = Field(0.45, gt=0.0, lt=2.0)
    # ... otherwise, after centring on the recording's mean voice, clusters closer than this are
    # one speaker (estimating the count; bench/diarization.py chose both on dev mixes).
    speaker_distance_threshold: float = Field(1.1, gt=0.0, lt=2.0)
    # Speech regions shorter than this (seconds) join the nearest speaker instead of founding one.
    speaker_min_embed_seconds: float = Field(1.0, ge=0.0, le=10.0)
    # Voices are compared without this many of their directions of largest within-speaker variation
    # (acted emotion; shared/contract/features/voice_nuisance.json, fitted and chosen on the dev
    # speakers by bench/diarization.py); 0: compared as the encoder gives them.
    speaker_nuisance_dims: int = Field(2, ge=0, le=16)
    # Most speakers an analysis estimates or may ask for (options.speakers).
    max_speakers: int = Field(10, ge=1, le=50)
    # Transcript times this far past the media's end are clamped (and reported), not refused.
    transcript_time_tolerance_seconds: float = 0.5
    # Wall-clock limit of one ffmpeg decode.
    ffmpeg_timeout_seconds: float = 600.0
    # Decoder threads per ffmpeg process.
    ffmpeg_threads: int = 2
    # Wall-clock limit of one ffprobe.
    ffprobe_timeout_seconds: float = 30.0
    # Largest transcript accepted (bytes).
    max_transcript_bytes: int = 5_000_000

    # --- data sets (read-only, never copied into the repo) ------------------------------------
    # MELD's label CSVs (train/dev/test_sent_emo.csv) and, when present, MELD.Raw's clip folders.
    meld_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "meld",
        validation_alias=AliasChoices("MELD_DIR", "MOODREEL_MELD_DIR"),
    )
    # RAVDESS (ravdess/) and EmoDB (emodb/) speech for the audio branch.
    emotion_speech_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "emotion-speech",
        validation_alias=AliasChoices("EMOTION_SPEECH_DIR", "MOODREEL_EMOTION_SPEECH_DIR"),
    )
    # FER2013 faces (fer2013/), for the visual branch (services/model/training/data/faces.py).
    face_expression_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "face-expression",
        validation_alias=AliasChoices("FACE_EXPRESSION_DIR", "MOODREEL_FACE_EXPRESSION_DIR"),
    )

    # --- database / redis ---------------------------------------------------------------------
    # SQLAlchemy URL: postgresql+psycopg://... in production, SQLite as the embedded default.
    database_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'moodreel.db'}"
    # arq queue, rate limits, login throttling and the analyses' event streams.
    redis_url: str = "redis://127.0.0.1:6379/0"

    # --- security -----------------------------------------------------------------------------
    # Development default only; production refuses to start with it (see gateway start-up).
    secret_key: SecretStr = SecretStr("dev-insecure-change-me")
    # Dev-only switch shared by gateway and worker: lets http://127.0.0.1/... videos through.
    allow_private_urls: bool = False
    # Production refuses to start with allow_private_urls or private_url_origins unless this is set.
    allow_private_urls_in_production: bool = False
    # Peers (addresses or CIDR networks, comma-separated or JSON) whose X-Forwarded-For/-Proto
    # the gateway believes; empty: the TCP peer is the client. Set it to your TLS proxy's address.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- model --------------------------------------------------------------------------------
    # Checkpoint the local model server loads (SageMaker uses /opt/ml/model).
    model_dir: Path = REPO_ROOT / "services" / "model" / "checkpoints" / "default"
    # How the worker reaches the model: the local/compose HTTP server or a SageMaker endpoint.
    model_backend: Literal["http", "sagemaker"] = "http"
    # Base URL of the model server (model_backend "http").
    model_url: str = "http://127.0.0.1:8080"
    # Endpoint invoked with model_backend "sagemaker".
    sagemaker_endpoint_name: str = "moodreel"
    # AWS region of S3, SageMaker and ECR.
    aws_region: str = "us-east-1"

    # --- model service: server, invoke client, deployment ---------------------------
    # Utterances per forward pass inside one request.
    model_batch_size: int = Field(16, ge=1, le=512)
    # Forward passes run one at a time per server process: on CPU parallel passes only contend.
    model_max_concurrency: int = Field(1, ge=1, le=64)
    # torch intra-op threads per forward pass (unset: torch's default, one per core). Lower it when
    # several server workers or other services share the CPU, so their threads do not oversubscribe it.
    model_torch_threads: int | None = Field(None, ge=1, le=256)
    # Inline bundle cap (413 above it); SageMaker real-time endpoints cap requests at 6 MB anyway.
    model_max_payload_bytes: int = Field(6 * 1024 * 1024, ge=1024)
    # Cap on a bundle fetched from `{"bundle_uri": "s3://..."}`.
    model_max_bundle_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    # s3:// prefixes a bundle_uri may point into; empty allows any the container's role can read.
    model_bundle_uri_prefixes: list[str] = Field(default_factory=list)
    # Answer within SageMaker's 60 s InvokeEndpoint limit (SAGEMAKER_MODEL_SERVER_TIMEOUT overrides).
    model_request_timeout_seconds: float = Field(50.0, gt=0, lt=60)
    # Seconds uvicorn waits for in-flight requests after SIGTERM (SageMaker sends SIGKILL at 30 s).
    model_graceful_shutdown_seconds: float = Field(20.0, ge=0, lt=30)
    model_client_timeout_seconds: float = Field(60.0, gt=0)
    model_client_max_attempts: int = Field(5, ge=1, le=20)
    model_client_backoff_seconds: float = Field(0.5, ge=0)
    # Each request's body stays under this (SageMaker real-time: 6 MB); keeps room for headers.
    model_client_chunk_bytes: int = Field(5_000_000, ge=64_000, le=6_000_000)
    model_client_max_utterances_per_request: int = Field(64, ge=1)
    # Where the SageMaker backend reads the FeatureSpec; unset: beside the deployed artifact.
    sagemaker_spec_uri: str | None = None
    # `moodreel sagemaker deploy` defaults (each is also a command option).
    sagemaker_role_arn: str | None = None
    sagemaker_image_uri: str | None = None
    sagemaker_bucket: str | None = None
    sagemaker_prefix: str = "moodreel/models"
    sagemaker_instance_type: str = "ml.g5.xlarge"

    # --- gateway: accounts, keys, quotas, uploads -----------------------------------
    # Every Redis key (rate limits, login throttling, event streams) starts with this prefix.
    redis_key_prefix: str = "moodreel:"
    # The arq queue the gateway enqueues `analyse_video` on and the worker consumes.
    queue_name: str = "moodreel:queue"
    jwt_issuer: str = "moodreel"
    jwt_audience: str = "moodreel-api"
    access_token_minutes: int = Field(15, ge=1, le=1440)
    refresh_token_days: int = Field(30, ge=1, le=365)
    login_max_failures: int = Field(5, ge=1)
    login_window_seconds: int = Field(300, ge=1)
    # Plan limits per calendar month (UTC) and per-key request rate; JSON in the environment.
    plans: dict[str, PlanLimits] = Field(
        default_factory=lambda: {
            "free": PlanLimits(),
            "pro": PlanLimits(
                analyses_per_month=2000, video_seconds_per_month=360_000, requests_per_minute=600
            ),
        }
    )
    default_plan: str = "free"
    # Uploads: "local" keeps files under data_dir/uploads (PUT to the gateway), "s3" presigns PUTs.
    storage_backend: Literal["local", "s3"] = "local"
    s3_bucket: str = "moodreel-media"
    s3_endpoint_url: str | None = None
    # Endpoint written into presigned upload URLs when clients reach S3 by another address than
    # the services do (docker compose: services use http://minio:9000, the host 127.0.0.1:9000).
    s3_public_endpoint_url: str | None = None
    upload_url_ttl_seconds: int = Field(900, ge=60, le=86_400)
    idempotency_ttl_hours: int = Field(24, ge=1)
    event_stream_ttl_seconds: int = Field(86_400, ge=60)
    cors_origins: list[str] = Field(default_factory=list)
    # Worker threads for the gateway's blocking work (database, password hashing). Half of them is
    # the number of database sessions open at once, and the pool's size: a request waits for a
    # session on the event loop, never in a thread, and a session holder always finds a thread.
    gateway_threads: int = Field(40, ge=2, le=1000)
    # JSON/form request bodies (uploads stream separately, bounded by their declared size).
    max_request_body_bytes: int = Field(10_000_000, ge=1024)
    # JSON bodies are also bounded in values (counted as commas and brackets while they stream,
    # strings included): parsing costs per value, and 10 MB of `[],` is three million of them,
    # seconds on the event loop. A 5,000-segment transcript needs about 25,000 plus its text's commas.
    max_request_json_values: int = Field(200_000, ge=1000)
    # Parsing and validating a large JSON or form body holds the event loop for milliseconds, so
    # one client (a JWT's account, a verified key, else an address) may have only this many large
    # bodies in flight per gateway process; more are refused with 429 before a byte is read ...
    max_concurrent_large_bodies: int = Field(2, ge=1)
    # ... and the whole process only this many, whoever sends them.
    max_concurrent_large_bodies_total: int = Field(8, ge=1)
    # A JSON or form body over this many bytes (or of unknown length) is a large body.
    large_body_bytes: int = Field(65_536, ge=1024)
    # A large body must have arrived this long after its request's head (408 otherwise), so that
    # stalled connections do not hold the slots above.
    large_body_read_seconds: float = Field(30.0, gt=0)
    # Requests one gateway process runs at once (until their responses start); more wait, and a
    # freed slot goes to the next client in turn (a JWT's account, a verified key, else an
    # address), so a burst from one client delays that client, not the probes or anyone else.
    max_active_requests: int = Field(32, ge=1)
    # Requests one client may have waiting for a slot (429 beyond) ...
    max_waiting_requests_per_client: int = Field(256, ge=1)
    # ... and the whole process (503 beyond).
    max_waiting_requests: int = Field(4096, ge=1)
    # Verified API keys are remembered this long per process (0: always query); at most 1 s so
    # that a revoked key stops working within a second everywhere.
    api_key_cache_seconds: float = Field(1.0, ge=0, le=1)
    # Usage reads are served from memory while the user's usage stamp in Redis is unchanged (no
    # charge or refund committed since); an entry lives at most this long (0: always query), which
    # bounds how stale a read can be were Redis unreachable when a change committed.
    usage_cache_seconds: float = Field(10.0, ge=0, le=3600)

    # --- preprocess worker: fetching, jobs, webhooks ---------------------------------
    worker_max_jobs: int = Field(2, ge=1)
    # A killed job is picked up again only after this (+10 s) has passed since it started.
    worker_job_timeout_seconds: float = Field(1800.0, gt=0)
    worker_job_tries: int = Field(4, ge=1)
    # Utterances scored (and then stored and announced) per step, so results arrive progressively.
    worker_score_chunk_utterances: int = Field(16, ge=1)
    # Base of the exponential backoff between tries of a transiently failed job.
    worker_retry_base_seconds: float = Field(5.0, ge=0)
    # SIGTERM lets running jobs finish for this long before they are cancelled (and re-queued).
    worker_shutdown_grace_seconds: int = Field(60, ge=0)
    worker_tmp_dir: Path | None = None
    # The most one job may write to its temporary directory (the downloaded media).
    worker_temp_max_bytes: int = Field(4_000_000_000, ge=1)
    fetch_connect_timeout_seconds: float = Field(10.0, gt=0)
    fetch_read_timeout_seconds: float = Field(30.0, gt=0)
    fetch_total_timeout_seconds: float = Field(900.0, gt=0)
    fetch_max_redirects: int = Field(5, ge=0, le=20)
    # Development/test only: "host:port" origins exempt from the private-address rule (one local
    # video server) while every other private address stays refused.
    private_url_origins: list[str] = Field(default_factory=list)
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_max_attempts: int = Field(8, ge=1)
    # Attempt n waits base * 2**(n-1) seconds (capped) after a failed attempt.
    webhook_retry_base_seconds: float = Field(30.0, ge=0)
    webhook_retry_max_seconds: float = Field(3600.0, ge=0)
    webhook_response_log_bytes: int = Field(2048, ge=0)

    # --- retraining from users' corrections ---------------------------------------------------
    # The guard: a candidate is deployed only when no headline metric (emotion and sentiment
    # weighted F1 on MELD dev and on the corrections' held-out slice) is lower than the deployed
    # model's by more than this.
    retrain_margin: float = Field(0.005, ge=0, le=1)
    # A held-out corrections slice with fewer utterances is recorded but not judged (too noisy).
    retrain_min_slice_utterances: int = Field(30, ge=1)
    # Debounce: a retraining starts only with this many new corrected utterances, and no sooner
    # than this after the previous start.
    retrain_min_new_items: int = Field(200, ge=1)
    retrain_min_interval_seconds: int = Field(86_400, ge=0)
    # AWS: exports land under s3://<retrain_bucket>/<retrain_corrections_prefix>; the trigger's
    # state and every decision record live under <retrain_state_prefix>.
    retrain_bucket: str | None = None
    retrain_corrections_prefix: str = "moodreel/corrections/"
    retrain_state_prefix: str = "moodreel/retrain/"
    # S3 prefix holding MELD's train/ dev/ test/ channels (as for `moodreel sagemaker train`).
    retrain_meld_data_uri: str | None = None
    retrain_training_prefix: str = "moodreel/training"
    retrain_instance_type: str = "ml.g5.xlarge"
    # Training image; unset: SageMaker's PyTorch training image (as `moodreel sagemaker train`).
    retrain_training_image_uri: str | None = None
    retrain_hyperparameters: dict[str, str] = Field(default_factory=lambda: {"preset": "text-default"})
    retrain_max_run_seconds: int = Field(4 * 3600, ge=60)
    # Self-hosted: where `moodreel retrain` publishes models for the model server (versions/,
    # current -> versions/<name>, decisions/); serve with MOODREEL_MODEL_DIR=<this>/current.
    retrain_publish_dir: Path | None = None
    # The model server reloads when its model directory's target changes (checked this often;
    # 0: never), answering every request in flight with the model it started on.
    model_watch_seconds: float = Field(0.0, ge=0)
    # --- reliability: Redis outages, event streams, recovery -----------------------------------
    # Gateway side of Redis: connect and per-command socket timeouts, so an outage answers a 503
    # problem within seconds instead of hanging the request.
    redis_connect_timeout_seconds: float = Field(1.0, gt=0)
    redis_socket_timeout_seconds: float = Field(2.0, gt=0)
    # Connections of the gateway's command pool per process (a request waits up to the socket
    # timeout for a free one).
    redis_max_connections: int = Field(64, ge=2)
    # Retry-After of the 503 problem answered while Redis is unavailable.
    redis_retry_after_seconds: int = Field(5, ge=1)
    # Open SSE streams per gateway process, and per API key (or signed-in user); a 429 problem past either.
    sse_max_streams: int = Field(4000, ge=1)
    sse_max_streams_per_key: int = Field(100, ge=1)
    sse_retry_after_seconds: int = Field(10, ge=1)
    # A comment line is sent on an idle stream this often (proxies close silent connections).
    sse_keepalive_seconds: float = Field(15.0, gt=0)
    # An idle stream re-reads the analysis' status from the database this often.
    sse_status_check_seconds: float = Field(30.0, gt=0)
    # The worker's reconciler (an arq cron job) re-enqueues analyses queued or processing whose
    # lease (last heartbeat) is older than this and that no arq job holds, and pending webhook
    # deliveries overdue by this much.
    reconcile_lease_seconds: float = Field(120.0, ge=10)
    # How often the reconciler runs (a divisor of 60 below a minute, else whole minutes).
    reconcile_interval_seconds: int = Field(60, ge=5, le=3600)
    # A running analysis renews its lease (analyses.updated_at) this often; well under the lease.
    worker_heartbeat_seconds: float = Field(20.0, gt=0)
    # The model service down: the running job waits, retrying with backoff, for this long before
    # the analysis fails `model_unavailable` (keep it below worker_job_timeout_seconds).
    model_unavailable_window_seconds: float = Field(900.0, ge=0)
    # Backoff between model-service retries: base, doubling, capped.
    model_retry_base_seconds: float = Field(5.0, gt=0)
    model_retry_max_seconds: float = Field(120.0, gt=0)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        if isinstance(value, list):
            # Strict parsing: a typo must not silently trust nobody (or everybody).
            return [
                str(ipaddress.ip_network(str(item).strip(), strict=False))
                for item in value
                if str(item).strip()
            ]
        return value


def models_dir(settings: Settings | None = None) -> Path:
    """Where `make models` installs pretrained encoders."""
    settings = settings or get_settings()
    return settings.models_dir or settings.data_dir / "models"


@lru_cache
def get_settings() -> Settings:
    return Settings()
