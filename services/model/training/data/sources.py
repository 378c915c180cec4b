"""Training sources by name ("meld", "corrections", "fer2013", the speech corpora): one split of
each as an ExampleSet, and the hash that identifies the data a checkpoint was trained on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from services.model.training.config import TrainConfig
from services.model.training.data.examples import ExampleSet
from services.model.training.data.speech import SPEECH_CORPORA, speech_examples
from shared.logging import get_logger

log = get_logger(__name__)
# The facial-expression source (data/faces.py): visual rows only.
FER2013 = "fer2013"


def split_dirs(config: TrainConfig) -> dict[str, Path]:
    """Where each MELD split lives: a SageMaker channel if set, else the configured MELD dir."""
    from shared.settings import get_settings

    base = Path(config.meld_dir or get_settings().meld_dir)
    return {
        split: Path(os.environ.get(f"SM_CHANNEL_{split.upper()}", base)) for split in ("train", "dev", "test")
    }


def load_source(name: str, split: str, config: TrainConfig) -> ExampleSet | None:
    """One source's rows of a split; None when the source has no such split."""
    if name == "meld":
        from services.model.training.data.meld import clip_examples, clips_available, load_text_examples

        directory = split_dirs(config)[split]
        if clips_available(directory) and {"audio", "visual"} & set(config.modalities):
            examples, report = clip_examples(
                directory, split, config.spec, config.cache_dir, progress=config.progress
            )
            log.info("meld_clips", split=split, **report)
        else:
            examples = load_text_examples(directory, split, config.spec, config.cache_dir)
    elif name == "corrections":
        from services.model.training.data.corrections import corrections_examples

        directory = os.environ.get("SM_CHANNEL_CORRECTIONS", config.corrections_dir)
        if directory is None:
            raise ValueError('the "corrections" source needs --corrections-dir')
        examples = corrections_examples(
            Path(directory),
            split,
            config.spec,
            config.cache_dir,
            with_clips=bool({"audio", "visual"} & set(config.modalities)),
        )
        if examples is None:
            return None
    elif name == FER2013:
        from services.model.training.data.faces import face_examples

        examples = face_examples(split, config.spec)
    elif name in SPEECH_CORPORA:
        examples = speech_examples(name, split, config.spec, with_text=config.speech_text)
        if examples is None:
            return None
    else:
        raise ValueError(f"unknown training source {name!r}")
    if config.limit_per_split:
        examples = subset(examples, torch.arange(min(config.limit_per_split, len(examples))))
    if 0 < config.sample_per_split < len(examples):
        generator = torch.Generator().manual_seed(config.seed)
        rows = torch.randperm(len(examples), generator=generator)[: config.sample_per_split]
        examples = subset(examples, rows.sort().values)
    return examples


def subset(examples: ExampleSet, indices: torch.Tensor) -> ExampleSet:
    return ExampleSet(
        tensors={k: v[indices] for k, v in examples.tensors.items()},
        modality_mask=examples.modality_mask[indices],
        emotion=examples.emotion[indices],
        sentiment=examples.sentiment[indices],
        speech=examples.speech[indices] if examples.speech is not None else None,
    )


def load_split(split: str, config: TrainConfig) -> ExampleSet | None:
    sets = [s for s in (load_source(name, split, config) for name in config.sources) if s is not None]
    return ExampleSet.concat(sets) if sets else None


def data_hash(config: TrainConfig) -> str:
    """sha256 over the label files used and the feature spec (identifies the training data)."""
    digest = hashlib.sha256(config.spec.canonical_json().encode())
    for split, directory in sorted(split_dirs(config).items()):
        path = directory / f"{split}_sent_emo.csv"
        if path.is_file():
            digest.update(path.read_bytes())
    corrections = os.environ.get("SM_CHANNEL_CORRECTIONS", config.corrections_dir)
    if "corrections" in config.sources and corrections is not None:
        from services.model.training.data.corrections import MANIFEST, export_dirs

        for export in export_dirs(Path(corrections)):
            digest.update(json.loads((export / MANIFEST).read_text())["sha256"].encode())
    return digest.hexdigest()[:16]
