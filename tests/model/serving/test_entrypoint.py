"""The container's `serve` entry point as SageMaker runs it: model.tar.gz unpacked into an
/opt/ml/model-style directory, SageMaker's environment variables, SIGTERM at the end; and the
archive's code/inference.py used on its own, as SageMaker's PyTorch framework container would."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from services.model.serving.packaging import MODEL_SHARED_MODULES, package_model_tar
from services.model.testing import TINY_SPEC
from shared.contract.bundle import CONTENT_TYPE
from shared.contract.predictions import InvocationResponse
from shared.settings import REPO_ROOT, get_settings
from tests.stack.image_imports import image_tree

from .conftest import free_port, make_bundle, wait_until_ready

MOODREEL = Path(sys.executable).parent / "moodreel"


@pytest.fixture(scope="module")
def opt_ml_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sagemaker")
    archive = package_model_tar(tiny_checkpoint, root / "model.tar.gz")
    model_dir = root / "opt" / "ml" / "model"
    model_dir.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")
    return model_dir


def test_the_archive_has_sagemakers_layout(opt_ml_model: Path):
    assert (opt_ml_model / "checkpoint.json").is_file()
    assert (opt_ml_model / "code" / "inference.py").read_bytes() == (
        REPO_ROOT / "services" / "model" / "serving" / "inference.py"
    ).read_bytes()
    assert (opt_ml_model / "code" / "requirements.txt").read_text() == (
        REPO_ROOT / "services" / "model" / "requirements-inference.txt"
    ).read_text()
    requirements = (opt_ml_model / "code" / "requirements.txt").read_text().splitlines()
    pins = [line for line in requirements if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins), "code/requirements.txt must pin exact versions"
    # The code is the ML contract, the model-side modules of shared and the model service: no
    # platform code (database, network fetching, storage, the SaaS domains).
    code = opt_ml_model / "code"
    assert (code / "shared" / "contract" / "features" / "spec.py").is_file()
    assert sorted(p.name for p in (code / "shared").glob("*.py")) == sorted(MODEL_SHARED_MODULES)
    assert sorted(p.name for p in (code / "shared").iterdir() if p.is_dir()) == ["contract"]
    assert sorted(p.name for p in (code / "services").iterdir()) == ["__init__.py", "model"]


@pytest.mark.parametrize("dockerfile", ["services/model/Dockerfile", "services/model/Dockerfile.gpu"])
def test_the_model_images_copy_the_contract_and_the_archives_shared_modules(dockerfile: str):
    copies = re.findall(r"^COPY (?!--from)(.+)$", (REPO_ROOT / dockerfile).read_text(), flags=re.M)
    sources = [source for line in copies for source in line.split()[:-1] if source.startswith("shared/")]
    expected = ["shared/contract/", *(f"shared/{name}" for name in MODEL_SHARED_MODULES)]
    assert sorted(sources) == sorted(expected)


FIRST_PARTY = ("services", "shared")


def _module_file(module: str) -> Path | None:
    """The repository file of a first-party module (``a.b`` -> a/b.py or a/b/__init__.py)."""
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (REPO_ROOT / candidate).is_file():
            return candidate
    return None


def module_level_imports(path: Path) -> set[str]:
    """First-party modules a file imports when it is imported (its module body, not its functions)."""
    modules: set[str] = set()
    for node in ast.parse((REPO_ROOT / path).read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from package import name``: name is a submodule or an attribute of the package.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in FIRST_PARTY:
                # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
                modules |= {".".join(parts[: i + 1]) for i in range(len(parts))}
    return {module for module in modules if _module_file(module) is not None}


def cli_import_closure() -> set[Path]:
    """Every first-party file that ``import services.cli`` (the ``moodreel`` script) loads."""
    seen: set[Path] = set()
    pending = [Path("services/__init__.py"), Path("services/cli.py")]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending.extend(_module_file(module) for module in module_level_imports(path))
    return seen


def test_the_cli_import_closure_is_derived_from_the_code():
    closure = cli_import_closure()
    assert {Path("services/cli.py"), Path("services/admin_commands.py")} <= closure
    assert Path("services/model/__init__.py") not in closure  # the commands import it lazily


@pytest.mark.parametrize("dockerfile", ["services/model/Dockerfile", "services/model/Dockerfile.gpu"])
def test_the_model_images_copy_what_the_moodreel_entry_point_imports(dockerfile: str, tmp_path: Path):
    tree = image_tree(REPO_ROOT / dockerfile, REPO_ROOT, tmp_path / "image")
    missing = sorted(str(path) for path in cli_import_closure() if not (tree / path).is_file())
    assert not missing, f"{dockerfile} lacks what `moodreel` imports at start: {missing}"


def wait_for_in_flight(url: str, timeout: float = 30.0) -> None:
    """Until some worker reports an invocation in flight (each /metrics call reaches one worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "moodreel_model_invocations_in_flight 1.0" in httpx.get(f"{url}/metrics", timeout=5).text:
            return
        time.sleep(0.01)
    raise AssertionError("no invocation was ever in flight")


@pytest.mark.slow
def test_serve_runs_under_sagemakers_environment_and_stops_on_sigterm(opt_ml_model: Path):
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "45",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        # One utterance per forward pass and room for a long video: a request that takes a while.
        "MOODREEL_MODEL_BATCH_SIZE": "1",
        "MOODREEL_MODEL_MAX_PAYLOAD_BYTES": "16000000",
        "MOODREEL_MODEL_GRACEFUL_SHUTDOWN_SECONDS": "29",
        "MOODREEL_LOG_JSON": "true",
    }
    process = subprocess.Popen(
        [str(MOODREEL), "serve", "--model-dir", str(opt_ml_model), "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, timeout=120)
        bundle = make_bundle(count=3)
        response = httpx.post(
            f"{url}/invocations",
            content=bundle.to_bytes(),
            headers={"Content-Type": CONTENT_TYPE},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        result = InvocationResponse.model_validate_json(response.content)
        assert [u.text for u in result.utterances] == [u.text for u in bundle.utterances]
        assert result.model.spec_hash == TINY_SPEC.hash
        # SIGTERM while a long request is in flight: it is answered, then the server exits 0.
        long_video = make_bundle(count=40, seed=11).to_bytes()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                lambda: (
                    httpx.post(
                        f"{url}/invocations",
                        content=long_video,
                        headers={"Content-Type": CONTENT_TYPE},
                        timeout=60,
                    ),
                    time.monotonic(),
                )
            )
            wait_for_in_flight(url)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            late, answered = pending.result(60)
        assert late.status_code == 200, late.text
        assert len(late.json()["utterances"]) == 40
        assert answered > signalled
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    events = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    config = next(e for e in events if e["event"] == "model_server_config")
    assert (config["port"], config["workers"], config["model_dir"]) == (port, 2, str(opt_ml_model))
    starts = [e for e in events if e["event"] == "model_server_starting"]
    assert len(starts) == 2 and all(e["deadline_seconds"] == 45.0 for e in starts)
    assert sum(e["event"] == "model_server_stopped" for e in events) == 2


FRAMEWORK_SCRIPT = """
import sys
from pathlib import Path
code_dir, model_dir, bundle_path = map(Path, sys.argv[1:4])
import inference
assert Path(inference.__file__).parent == code_dir, inference.__file__
import services.model.core.network as network
assert Path(network.__file__).is_relative_to(code_dir), network.__file__
model = inference.model_fn(str(model_dir))
data = inference.input_fn(bundle_path.read_bytes(), "application/x-safetensors")
prediction = inference.predict_fn(data, model)
sys.stdout.buffer.write(inference.output_fn(prediction, "application/json"))
"""


@pytest.mark.slow
def test_the_archives_code_serves_on_its_own(opt_ml_model: Path, tmp_path: Path):
    bundle = make_bundle(count=2, seed=8)
    bundle.save(tmp_path / "bundle.safetensors")
    code_dir = opt_ml_model / "code"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            FRAMEWORK_SCRIPT,
            str(code_dir),
            str(opt_ml_model),
            str(tmp_path / "bundle.safetensors"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(code_dir)},
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = InvocationResponse.model_validate_json(done.stdout.splitlines()[-1])  # logs go first
    assert [u.speaker for u in result.utterances] == [u.speaker for u in bundle.utterances]


IMAGE_SCRIPT = """
import importlib
import importlib.util
import os
from pathlib import Path
import services, shared
assert services.__file__.startswith(os.environ["CHECK_TREE"]), services.__file__
# The ML contract imports whole without the platform, which the image does not carry.
contract = Path(shared.__file__).parent / "contract"
for path in sorted(contract.rglob("*.py")):
    parts = path.relative_to(contract.parent.parent).with_suffix("").parts
    importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
for platform in ("shared.db", "shared.net", "shared.storage", "services.platform", "services.gateway"):
    assert importlib.util.find_spec(platform) is None, platform
from services.model.serving.server import create_app
from services.model.serving.inference import model_fn, transform
served = model_fn(os.environ["CHECK_MODEL_DIR"])
create_app(Path("."), load_model=lambda _: served)
bundle = Path(os.environ["CHECK_BUNDLE"]).read_bytes()
body, count = transform(bundle, "application/x-safetensors", None, served)
assert count == 2, count
"""


@pytest.mark.slow
def test_the_images_packages_are_enough_to_load_and_score(tiny_checkpoint: Path, tmp_path: Path):
    # The images install torch, then requirements-inference.txt; nothing else may be needed.
    requirements = tmp_path / "image-requirements.txt"
    inference = (REPO_ROOT / "services" / "model" / "requirements-inference.txt").read_text()
    requirements.write_text("torch==2.13.0\n" + inference)
    make_bundle(count=2).save(tmp_path / "bundle.safetensors")
    # Only the files the image copies: the model image's Dockerfile builds the application folder.
    tree = image_tree(REPO_ROOT / "services/model/Dockerfile", REPO_ROOT, tmp_path / "image")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tests" / "stack" / "image_imports.py"),
            str(requirements),
            "--",
            IMAGE_SCRIPT,
        ],
        cwd=tree,
        env={
            **os.environ,
            "PYTHONPATH": str(tree),
            "MOODREEL_MODELS_DIR": str(get_settings().models_dir),
            "CHECK_TREE": str(tree),
            "CHECK_MODEL_DIR": str(tiny_checkpoint),
            "CHECK_BUNDLE": str(tmp_path / "bundle.safetensors"),
        },
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
