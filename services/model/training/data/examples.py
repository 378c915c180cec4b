"""ExampleSet: training rows from any source, as in-memory tensors with modality masks.

Every source (MELD text-only, MELD clips, speech corpora) becomes an ExampleSet whose tensors use
the bundle's names and shapes for one FeatureSpec. Sets with different modalities concatenate:
a tensor one set lacks is zero-filled and its modality is marked absent, so the model's masking
(never the zeros) decides. A label a source does not have is -1 and is ignored by the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from services.model.core.network import ModelInputs

TEXT_TENSORS = ("input_ids", "attention_mask", "token_type_ids")
AUDIO_TENSORS = ("log_mel", "audio_mask")
VISUAL_TENSORS = ("frames",)
FEATURE_TENSORS = TEXT_TENSORS + AUDIO_TENSORS + VISUAL_TENSORS
IGNORE = -1


@dataclass
class Batch:
    inputs: ModelInputs
    emotion: torch.Tensor  # [B] int64, -1 = unknown
    sentiment: torch.Tensor  # [B] int64, -1 = unknown
    speech: torch.Tensor | None = None  # [B] int64 speech-head label (config.speech_labels), -1 = unknown


@dataclass
class ExampleSet:
    tensors: dict[str, torch.Tensor]
    modality_mask: torch.Tensor  # [N, 3] bool
    emotion: torch.Tensor  # [N] int64
    sentiment: torch.Tensor  # [N] int64
    speech: torch.Tensor | None = None  # [N] int64: acted-speech label (speech head), -1 = unknown

    def __post_init__(self) -> None:
        count = len(self.emotion)
        for name, tensor in self.tensors.items():
            if tensor.shape[0] != count:
                raise ValueError(f"{name} has {tensor.shape[0]} rows for {count} labels")

    def __len__(self) -> int:
        return len(self.emotion)

    @classmethod
    def concat(cls, sets: list[ExampleSet]) -> ExampleSet:
        names = sorted({name for s in sets for name in s.tensors})
        tensors = {}
        for name in names:
            template = next(s.tensors[name] for s in sets if name in s.tensors)
            parts = [
                s.tensors[name] if name in s.tensors else template.new_zeros((len(s), *template.shape[1:]))
                for s in sets
            ]
            tensors[name] = torch.cat(parts)
        return cls(
            tensors=tensors,
            modality_mask=torch.cat([s.modality_mask for s in sets]),
            emotion=torch.cat([s.emotion for s in sets]),
            sentiment=torch.cat([s.sentiment for s in sets]),
            speech=(
                torch.cat([s.speech if s.speech is not None else torch.full((len(s),), IGNORE) for s in sets])
                if any(s.speech is not None for s in sets)
                else None
            ),
        )

    def batch(self, indices: torch.Tensor) -> Batch:
        """Rows ``indices`` as model inputs; text is cut to the batch's longest sequence and a
        modality no row has is left out (its encoder never runs)."""
        mask = self.modality_mask[indices]
        picked = {name: tensor[indices] for name, tensor in self.tensors.items()}
        if "attention_mask" in picked:
            length = max(int(picked["attention_mask"].sum(1).max()), 1)
            for name in (*TEXT_TENSORS, "text_hidden"):
                if name in picked:
                    picked[name] = picked[name][:, :length]
        present = mask.any(0).tolist()
        groups = (
            TEXT_TENSORS + ("text_hidden",),
            AUDIO_TENSORS + ("audio_states",),
            VISUAL_TENSORS + ("visual_embedding",),
        )
        for has, group in zip(present, groups, strict=True):
            if not has:
                for name in group:
                    picked.pop(name, None)
        if "text_hidden" in picked:
            picked.pop("input_ids", None)
        if "visual_embedding" in picked:
            picked.pop("frames", None)
        if "audio_mask" in picked:
            picked["audio_mask"] = picked["audio_mask"].bool()
        return Batch(
            inputs=ModelInputs(modality_mask=mask, **picked),
            emotion=self.emotion[indices],
            sentiment=self.sentiment[indices],
            speech=self.speech[indices] if self.speech is not None else None,
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"feature.{name}": t.contiguous() for name, t in self.tensors.items()}
        tensors |= {"modality_mask": self.modality_mask, "emotion": self.emotion, "sentiment": self.sentiment}
        if self.speech is not None:
            tensors["speech"] = self.speech
        save_file(tensors, path)

    @classmethod
    def load(cls, path: Path) -> ExampleSet:
        stored = load_file(path)
        return cls(
            tensors={k.removeprefix("feature."): v for k, v in stored.items() if k.startswith("feature.")},
            modality_mask=stored["modality_mask"],
            emotion=stored["emotion"],
            sentiment=stored["sentiment"],
            speech=stored.get("speech"),
        )
