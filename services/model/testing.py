"""Tiny random-weight checkpoints for tests in every area (no hub, no training, a few hundred KB).

The text encoder is a 2-layer BERT with hidden size 8 that reuses the MiniLM tokenizer's vocabulary,
the visual encoder a 2-stage ResNet, the audio encoder a 2-layer CNN; every modality is marked
trained so tests see all three in ``modalities_used`` when their bundle carries them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from services.model.core.checkpoint import save_checkpoint
from services.model.core.config import ModelConfig
from services.model.core.network import MoodreelModel
from shared.contract.features.spec import FeatureSpec
from shared.contract.features.text import load_tokenizer

# Small enough for fast CPU tests; other areas may pass their own spec.
# The generated test clips carry sine tones, which the speech gate masks: tests of the gate set
# speech_gate themselves (tests/features/test_speech_gate.py).
TINY_SPEC = FeatureSpec(
    frames_per_utterance=2, frame_size=32, max_audio_frames=64, max_tokens=32, speech_gate=False
)


def tiny_text_config(vocab_size: int) -> dict:
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    }


TINY_VISUAL_CONFIG = {
    "model_type": "resnet",
    "num_channels": 3,
    "embedding_size": 8,
    "hidden_sizes": [8, 16],
    "depths": [1, 1],
    "layer_type": "basic",
}


def tiny_speech_encoder_config(spec: FeatureSpec) -> dict:
    """A Whisper-shaped speech encoder (random weights) that reads ``spec``'s log-mels whole."""
    return {
        "model_type": "whisper",
        "num_mel_bins": spec.n_mels,
        "max_source_positions": spec.max_audio_frames // 2,
        "d_model": 16,
        "encoder_layers": 1,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 32,
        "max_target_positions": 8,
        "vocab_size": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
    }


def tiny_model_config(spec: FeatureSpec, **changes) -> ModelConfig:
    config = ModelConfig(
        text_encoder="",
        text_encoder_config=tiny_text_config(len(load_tokenizer(spec.tokenizer))),
        text_train_mode="full",
        audio_channels=(8, 16),
        visual_backbone="transformers",
        visual_encoder_config=TINY_VISUAL_CONFIG,
        embed_dim=16,
        fusion_hidden=16,
        dropout=0.1,
    )
    return config.replace(**changes)


def save_tiny_pretrained(inline_config: dict, directory: Path, *, seed: int = 0) -> Path:
    """A pretrained-style model directory (``save_pretrained``, random weights) from an inline
    config: what a hub name or local path gives, without the hub."""
    from transformers import AutoConfig, AutoModel

    config = dict(inline_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    model.save_pretrained(directory)
    return Path(directory)


def build_tiny_checkpoint(directory: Path, spec: FeatureSpec | None = None, *, seed: int = 0) -> Path:
    """Write a deterministic random-weight checkpoint (same seed, same weights) and return its path."""
    spec = spec or TINY_SPEC
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MoodreelModel(tiny_model_config(spec))
    meta = {"name": "moodreel-tiny-test", "version": "test", "metrics": {}, "data_hash": None}
    return save_checkpoint(Path(directory), model, spec, meta, weights_dtype=torch.float16)
