"""Losses: cross-entropy or focal loss over the rows whose label is known, class weights, and the
criterion that sums the fused, per-modality and speech heads' terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.model.core.network import ModelOutput
from services.model.training.config import TrainConfig
from services.model.training.data.examples import ExampleSet
from shared.contract.labels import EMOTIONS, MODALITIES, SENTIMENTS


def class_weights(labels: torch.Tensor, count: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    frequency = torch.bincount(labels[labels >= 0], minlength=count).float().clamp(min=1.0)
    weights = (frequency.sum() / frequency) ** (0.5 if mode == "sqrt" else 1.0)
    return weights / (weights * frequency).sum() * frequency.sum()


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    smoothing: float,
    focal_gamma: float | None,
) -> torch.Tensor:
    """Cross-entropy (or focal loss) over rows whose label is known (>= 0)."""
    known = targets >= 0
    if not known.any():
        return logits.sum() * 0.0
    logits, targets = logits[known].float(), targets[known]
    if focal_gamma is None:
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing)
    loss = F.cross_entropy(logits, targets, weight=weight, label_smoothing=smoothing, reduction="none")
    probability = torch.exp(-F.cross_entropy(logits, targets, reduction="none"))
    return ((1.0 - probability) ** focal_gamma * loss).mean()


@dataclass
class LossTerms:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class Criterion:
    def __init__(self, config: TrainConfig, train: ExampleSet, device: torch.device):
        self.config = config
        weights = {
            "emotion": class_weights(train.emotion, len(EMOTIONS), config.class_weighting),
            "sentiment": class_weights(train.sentiment, len(SENTIMENTS), config.class_weighting),
        }
        if train.speech is not None:
            weights["speech"] = class_weights(
                train.speech, int(train.speech.max()) + 1, config.class_weighting
            )
        self.weights = {k: (v.to(device) if v is not None else None) for k, v in weights.items()}
        self.gamma = config.focal_gamma if config.loss == "focal" else None

    def _loss(self, head: str, logits, targets) -> torch.Tensor:
        return classification_loss(
            logits, targets, self.weights[head], self.config.label_smoothing, self.gamma
        )

    def __call__(
        self,
        output: ModelOutput,
        emotion: torch.Tensor,
        sentiment: torch.Tensor,
        speech: torch.Tensor | None = None,
    ) -> LossTerms:
        parts = {
            "emotion": self._loss("emotion", output.emotion_logits, emotion),
            "sentiment": self._loss("sentiment", output.sentiment_logits, sentiment),
        }
        total = parts["emotion"] + self.config.sentiment_loss_weight * parts["sentiment"]
        for index, modality in enumerate(MODALITIES):
            used = output.modalities_used[:, index]
            if not used.any():
                continue
            term = self._loss(
                "emotion", output.modality_emotion_logits[used, index], emotion[used]
            ) + self._loss("sentiment", output.modality_sentiment_logits[used, index], sentiment[used])
            parts[f"{modality}_head"] = term
            total = total + self.config.modality_loss_weight * term
        if output.speech_logits is not None and speech is not None:
            audio_used = output.modalities_used[:, MODALITIES.index("audio")]
            speech = torch.where(audio_used, speech, torch.full_like(speech, -1))
            parts["speech_head"] = self._loss("speech", output.speech_logits, speech)
            total = total + self.config.speech_loss_weight * parts["speech_head"]
        return LossTerms(total=total, parts=parts)
