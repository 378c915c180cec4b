"""Freezing, the optimiser and its schedule, all by the parts table (``services.model.core.parts``)."""

from __future__ import annotations

import math

import torch

from services.model.core.network import MoodreelModel
from services.model.core.parts import group_parts, part_of
from services.model.training.config import TrainConfig


def frozen_parameters(model: MoodreelModel, parts: tuple[str, ...]) -> set[int]:
    """ids of the parameters of the named groups of parts (``services.model.core.parts.GROUPS``):
    left out of the optimiser (they keep requires_grad, so the checkpoint still stores them as
    trained weights)."""
    frozen = group_parts(parts, "parts to freeze")
    return {id(p) for name, p in model.named_parameters() if part_of(name).name in frozen}


def keep_frozen_statistics(model: MoodreelModel, frozen: set[int]) -> None:
    """Batch norms whose weights are frozen stay in eval mode while the rest trains: their running
    statistics are part of the frozen branch and must not move either."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and all(
            id(p) in frozen for p in module.parameters()
        ):
            module.eval()


def build_optimizer(model: MoodreelModel, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with one group per learning-rate field of the parts table (frozen parts left out)."""
    frozen = frozen_parameters(model, config.freeze)
    groups = [
        {"params": params, "lr": getattr(config, rate), "name": rate.removeprefix("lr_")}
        for rate, params in model.parameter_groups().items()
        for params in [[p for p in params if id(p) not in frozen]]
        if params
    ]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


class WarmupCosine:
    """Linear warm-up, then cosine decay to zero at ``total_steps``; ``total_steps`` may shrink
    during training when a time budget allows fewer epochs than asked for."""

    def __init__(self, total_steps: int, warmup_ratio: float):
        self.total_steps = total_steps
        self.warmup = max(1, int(total_steps * warmup_ratio))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def planned_epochs(config: TrainConfig, epoch: int, elapsed_seconds: float, epoch_seconds: float) -> int:
    """How many epochs fit the time budget, judged after ``epoch`` epochs."""
    if not config.max_minutes:
        return config.epochs
    remaining = config.max_minutes * 60 - elapsed_seconds
    return max(epoch, min(config.epochs, epoch + int(remaining // max(epoch_seconds, 1e-9))))
