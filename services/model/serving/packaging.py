"""``model.tar.gz``: a checkpoint in SageMaker's model-archive layout, with the code that serves it."""

from __future__ import annotations

import tarfile
from pathlib import Path

from services.model.core.checkpoint import META_FILE, read_checkpoint_document
from shared.contract.features.spec import MODELS_PREFIX, resolve_pretrained
from shared.logging import get_logger
from shared.settings import REPO_ROOT

# The folder of a model.tar.gz holding the pretrained encoders its checkpoint rebuilds (a
# SageMaker framework container has no `make models`); inference's model_fn reads them there.
BUNDLED_MODELS_DIR = "models"
# The modules of ``shared`` the model side imports besides the ML contract (settings, logging,
# coded errors, HTTP problems); the model images copy the same ones (services/model/Dockerfile*).
MODEL_SHARED_MODULES = ("__init__.py", "errors.py", "logging.py", "problems.py", "settings.py")
# SageMaker's PyTorch serving toolkit imports the handler functions from code/inference.py.
INFERENCE_SCRIPT = REPO_ROOT / "services" / "model" / "serving" / "inference.py"
INFERENCE_REQUIREMENTS = REPO_ROOT / "services" / "model" / "requirements-inference.txt"
log = get_logger(__name__)


def package_model_tar(
    checkpoint_dir: Path,
    out_path: Path,
    *,
    inference_script: Path | None = None,
    requirements: Path | None = None,
) -> Path:
    """``model.tar.gz`` in SageMaker's layout: weights + JSON at the top, the pretrained encoders
    the checkpoint rebuilds under ``models/``, ``code/inference.py`` and ``code/requirements.txt``,
    plus the sources inference imports — the ML contract (``shared.contract``), the
    ``MODEL_SHARED_MODULES`` and ``services.model`` — and nothing of the platform (a framework
    container has only what the archive carries)."""
    checkpoint_dir = Path(checkpoint_dir)
    document = read_checkpoint_document(checkpoint_dir)
    inference_script = inference_script or INFERENCE_SCRIPT
    requirements = requirements or INFERENCE_REQUIREMENTS
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out_path, "w:gz") as archive:
        for name in (META_FILE, document["weights"]["file"]):
            archive.add(checkpoint_dir / name, arcname=name)
        for name in sorted(
            {name for name in document["weights"].get("base_rebuilt_from", {}).values() if name}
        ):
            if name.startswith(MODELS_PREFIX):
                arcname = f"{BUNDLED_MODELS_DIR}/{name.removeprefix(MODELS_PREFIX)}"
                archive.add(resolve_pretrained(name), arcname=arcname)
        for source, arcname in (
            (inference_script, "code/inference.py"),
            (requirements, "code/requirements.txt"),
        ):
            if source.is_file():
                archive.add(source, arcname=arcname)
            else:
                log.warning("model_tar_missing_file", path=str(source), arcname=arcname)
        sources = [REPO_ROOT / "services" / "__init__.py"]
        sources += [REPO_ROOT / "shared" / name for name in MODEL_SHARED_MODULES]
        for package in ("shared/contract", "services/model"):
            sources += sorted((REPO_ROOT / package).rglob("*.py"))
        for source in sources:
            relative = source.relative_to(REPO_ROOT)
            if "checkpoints" not in relative.parts:
                archive.add(source, arcname=f"code/{relative.as_posix()}")
    return out_path
