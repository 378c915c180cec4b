"""Random model batches shaped by a FeatureSpec."""

from __future__ import annotations

import torch

from services.model.core.network import ModelInputs
from shared.contract.features.spec import FeatureSpec


def random_inputs(spec: FeatureSpec, modality_mask: list[list[bool]], seed: int = 0) -> ModelInputs:
    generator = torch.Generator().manual_seed(seed)
    batch, length = len(modality_mask), spec.max_tokens
    attention = torch.zeros(batch, length, dtype=torch.int64)
    attention[:, : length // 2] = 1
    token_types = torch.zeros(batch, length, dtype=torch.int64)
    token_types[:, length // 4 : length // 2] = 1
    audio_mask = torch.zeros(batch, spec.max_audio_frames, dtype=torch.bool)
    audio_mask[:, : spec.max_audio_frames // 2] = True
    return ModelInputs(
        modality_mask=torch.tensor(modality_mask, dtype=torch.bool),
        input_ids=torch.randint(1000, 2000, (batch, length), generator=generator) * attention,
        attention_mask=attention,
        token_type_ids=token_types,
        log_mel=torch.randn(batch, spec.n_mels, spec.max_audio_frames, generator=generator).half(),
        audio_mask=audio_mask,
        frames=torch.randint(
            0,
            256,
            (batch, spec.frames_per_utterance, 3, spec.frame_size, spec.frame_size),
            dtype=torch.uint8,
            generator=generator,
        ),
    )
