"""TrainConfig: every choice of a training run (``moodreel train --help`` lists them as flags)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from services.model.core.config import ModelConfig
from shared.contract.features.spec import FeatureSpec


@dataclass
class TrainConfig:
    output_dir: Path = Path("var/train/run")
    checkpoint_name: str = "moodreel"
    sources: tuple[str, ...] = ("meld",)
    # Modalities to train; a modality no source provides is dropped from this list.
    modalities: tuple[str, ...] = ("text",)
    epochs: int = 8
    batch_size: int = 32
    eval_batch_size: int = 128
    lr_text_encoder: float = 1e-4
    lr_audio: float = 1e-3
    lr_visual: float = 3e-4
    lr_fusion: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    label_smoothing: float = 0.1
    loss: str = "ce"  # "ce" or "focal"
    focal_gamma: float = 2.0
    class_weighting: str = "none"  # "none", "sqrt" (inverse sqrt frequency) or "inverse"
    sentiment_loss_weight: float = 1.0
    modality_loss_weight: float = 0.5
    grad_clip: float = 1.0
    patience: int = 2
    seed: int = 0
    max_minutes: float = 0.0  # the epochs' time budget (caches built before them excluded); 0: none
    threads: int = 0  # 0: torch's default
    cache_text_hidden: bool = True
    # A frozen speech encoder pooled per layer (audio_pooling "layer_stats") is constant: its
    # statistics are computed once per clip set and cached on disk (the log-mel augmentations then
    # do not apply); rows per encoder batch while caching.
    cache_audio_states: bool = True
    audio_cache_batch_size: int = 16
    evaluate_test: bool = True  # report only; selection is on dev
    weights_dtype: str = "float32"
    cache_dir: Path | None = None
    tensorboard_dir: Path | None = None
    meld_dir: Path | None = None
    progress: bool = True
    limit_per_split: int = 0  # >0: first N rows per split (smoke runs, tests)
    sample_per_split: int = 0  # >0: N rows per source and split drawn at random (seeded), in order
    # Copy the finished checkpoint (+ MODEL_CARD.md) here if its weights fit in publish_max_mb.
    publish_dir: Path | None = None
    publish_max_mb: float = 15.0
    # Acted speech (sources "ravdess"/"emodb", services/model/training/data/speech.py): weight of the
    # 8-class speech-head loss, log-mel augmentations, and whether rows carry their spoken statement.
    speech_loss_weight: float = 1.0
    speech_augment: bool = True
    speech_text: bool = False
    # SpeechAugment's vocal-tract (mel-axis) and tempo (time-axis) stretch, as fractions; 0: off.
    speech_frequency_warp: float = 0.0
    speech_tempo: float = 0.0
    # Face-frame augmentations (services/model/training/data/faces.py FaceAugment) on visual rows.
    face_augment: bool = True
    # Start from trained weights: entries "DIR" (every matching weight) or "PART+PART=DIR" (only
    # those groups of parts, services.model.core.parts.GROUPS); the first entry's ModelConfig and
    # FeatureSpec are used. E.g. the text branch of the text checkpoint and the audio branch of a
    # RAVDESS run.
    init_from: tuple[str, ...] = ()
    # Groups of parts kept as they are (services.model.core.parts.GROUPS): e.g. "text" keeps
    # MELD's text scores unchanged.
    freeze: tuple[str, ...] = ()
    # A composition scoring only its new branch's source keeps the first init_from checkpoint's
    # figures (carried_metrics).
    carry_metrics: bool = False
    # Users' corrections (`moodreel dataset export`) for the "corrections" source; on SageMaker
    # the "corrections" channel.
    corrections_dir: Path | None = None
    # A checkpoint (directory, or a directory holding model.tar.gz) scored on the same dev sets
    # after training, stored as meta "baseline": what the retraining guard compares against.
    compare_with: Path | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    spec: FeatureSpec = field(default_factory=FeatureSpec)


# Where this machine keeps things, not how the model was trained: kept out of the checkpoint.
_LOCAL_FIELDS = (
    "model",
    "spec",
    "cache_dir",
    "tensorboard_dir",
    "meld_dir",
    "output_dir",
    "publish_dir",
    "progress",
    "corrections_dir",
    "compare_with",
)


def hyperparameters(config: TrainConfig) -> dict:
    values = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in _LOCAL_FIELDS
    }
    values |= {f"model.{k}": v for k, v in config.model.to_dict().items()}
    values |= {f"spec.{k}": v for k, v in config.spec.model_dump(mode="json").items()}
    return json.loads(json.dumps(values, default=str))
