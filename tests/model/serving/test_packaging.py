"""model.tar.gz: SageMaker's layout, the code it carries and nothing of the platform."""

import tarfile

from services.model.core.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint
from services.model.serving.packaging import package_model_tar
from services.model.testing import build_tiny_checkpoint


def test_model_tar_has_sagemaker_layout(tmp_path):
    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt")
    script = tmp_path / "inference.py"
    script.write_text("def model_fn(model_dir):\n    return model_dir\n")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("safetensors==0.8.0\n")
    archive_path = package_model_tar(
        checkpoint, tmp_path / "out" / "model.tar.gz", inference_script=script, requirements=requirements
    )
    with tarfile.open(archive_path) as archive:
        names = set(archive.getnames())
        assert archive.extractfile("code/inference.py").read() == script.read_bytes()
        assert archive.extractfile("code/requirements.txt").read() == requirements.read_bytes()
    assert {META_FILE, WEIGHTS_FILE} <= names
    assert {
        "code/services/__init__.py",
        "code/services/model/core/network.py",
        "code/services/model/core/checkpoint.py",
        "code/shared/contract/bundle.py",
        "code/shared/contract/features/spec.py",
    } <= names
    assert not any("checkpoints/" in name for name in names)
    # The ML contract without the platform: no database, network fetching, storage or domains.
    platform = ("code/shared/db/", "code/shared/net/", "code/shared/storage.py", "code/services/platform/")
    assert not any(name.startswith(platform) for name in names)
    # The archive's code directory alone rebuilds the model (as a framework container would).
    extracted = tmp_path / "extracted"
    with tarfile.open(archive_path) as archive:
        archive.extractall(extracted, filter="data")
    assert load_checkpoint(extracted).meta["name"] == "moodreel-tiny-test"


def test_model_tar_defaults_carry_the_model_service_code(tmp_path):
    from shared.settings import REPO_ROOT

    checkpoint = build_tiny_checkpoint(tmp_path / "ckpt")
    archive_path = package_model_tar(checkpoint, tmp_path / "model.tar.gz")
    with tarfile.open(archive_path) as archive:
        inference = archive.extractfile("code/inference.py").read()
        requirements = archive.extractfile("code/requirements.txt").read()
    assert inference == (REPO_ROOT / "services/model/serving/inference.py").read_bytes()
    assert requirements == (REPO_ROOT / "services/model/requirements-inference.txt").read_bytes()


def test_serving_loads_no_training_code(tmp_path):
    """Serving imports the model's core only: the training side (its data sources, sklearn and
    scipy) never loads in the model server."""
    import subprocess
    import sys

    from shared.settings import REPO_ROOT

    script = (
        "import sys\n"
        "import services.model.serving.inference, services.model.serving.server\n"
        "from services.model.core.checkpoint import load_checkpoint\n"
        "load_checkpoint(sys.argv[1])\n"
        "print(sorted(m for m in sys.modules if m.startswith('services.model.training')))\n"
    )
    checkpoint = build_tiny_checkpoint(tmp_path / "checkpoint")
    done = subprocess.run(
        [sys.executable, "-c", script, str(checkpoint)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
