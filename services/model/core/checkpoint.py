"""Checkpoints: ``model.safetensors`` + ``checkpoint.json`` in one directory.

``checkpoint.json`` carries the ModelConfig, the FeatureSpec, the label lists, and the meta (name,
version, trained_modalities, metrics, data hash, git sha). The weights file holds only what
training changed: frozen weights of a pretrained encoder are rebuilt from its package or local path
on load (never downloaded), so a checkpoint that fine-tuned two layers of MiniLM stays small.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from services.model.core import calibration
from services.model.core.config import ModelConfig, check_tokenizer
from services.model.core.network import MoodreelModel
from shared.contract.features.spec import FeatureSpec
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS
from shared.logging import get_logger
from shared.settings import REPO_ROOT

CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
log = get_logger(__name__)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (missing files, wrong format, wrong weights)."""


@dataclass
class LoadedModel:
    model: MoodreelModel
    config: ModelConfig
    spec: FeatureSpec
    meta: dict[str, Any]


def git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _labels() -> dict[str, list[str]]:
    return {"emotions": list(EMOTIONS), "sentiments": list(SENTIMENTS), "modalities": list(MODALITIES)}


# Checkpoint files are read by the model server's user, which is not the one that trained them.
PUBLISHED_FILE_MODE = 0o644


def save_checkpoint(
    directory: Path,
    model: MoodreelModel | torch.nn.Module,
    spec: FeatureSpec,
    meta: dict[str, Any],
    *,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write the checkpoint; ``weights_dtype`` (e.g. float16) shrinks the stored floating weights."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = model.base_state_names()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name in base:
            continue
        # clone: safetensors refuses tensors that share storage (tied weights).
        tensor = tensor.detach().to("cpu").clone().contiguous()
        if weights_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(weights_dtype)
        state[name] = tensor
    weights_path = directory / WEIGHTS_FILE
    save_file(state, weights_path, metadata={"format": "pt"})
    # safetensors creates the file 0600; the model container reads it as another user.
    weights_path.chmod(PUBLISHED_FILE_MODE)
    config: ModelConfig = model.config
    document = {
        "format_version": CHECKPOINT_FORMAT,
        "model_config": config.to_dict(),
        "feature_spec": spec.model_dump(mode="json"),
        "spec_hash": spec.hash,
        "labels": _labels(),
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
            "tensors": len(state),
            "dtype": str(weights_dtype or "as trained").removeprefix("torch."),
            "base_rebuilt_from": {
                "text": config.text_encoder if config.text_is_pretrained else None,
                "audio": config.audio_encoder if config.audio_is_pretrained else None,
                "visual": config.visual_encoder if config.visual_is_pretrained else None,
            },
        },
        "meta": {
            "name": "moodreel",
            "version": "0",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_sha": git_sha(),
            **meta,
            "trained_modalities": list(config.trained_modalities),
        },
    }
    (directory / META_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint_document(directory: Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {META_FILE}")
    document = json.loads(path.read_text())
    if document.get("format_version") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint format {document.get('format_version')!r} is not the supported {CHECKPOINT_FORMAT}"
        )
    if document.get("labels") != _labels():
        raise CheckpointError("checkpoint label order differs from shared.contract.labels")
    return document


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the network from its config, pretrained bases from local files only, then the
    stored weights on top. The model comes back in eval mode."""
    directory = Path(directory)
    document = read_checkpoint_document(directory)
    config = ModelConfig.from_dict(document["model_config"])
    spec = FeatureSpec.model_validate(document["feature_spec"])
    try:
        check_tokenizer(config, spec)
    except ValueError as exc:
        raise CheckpointError(f"{directory}: {exc}") from exc
    weights_path = directory / document["weights"]["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{directory} has no {weights_path.name}")
    model = MoodreelModel(config)
    stored = load_file(weights_path)
    expected = set(model.state_dict()) - model.base_state_names()
    missing, unexpected = sorted(expected - set(stored)), sorted(set(stored) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(stored, strict=False)  # copy_ casts stored float16 back to float32
    calibration.apply(model, document["meta"].get("calibration"))
    model.to(device).eval()
    return LoadedModel(model=model, config=config, spec=spec, meta=document["meta"])
