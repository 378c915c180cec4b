"""Calibration: temperatures that make a checkpoint's confidences mean what they say.

Each head's logits are divided by a temperature fitted on dev rows by minimising the negative
log-likelihood (Guo et al., 2017): the fused heads get one temperature per combination of
modalities used (a fusion is as sure as the evidence it had: text alone, speech alone and both
together are three different kinds of data), each modality's own heads one each. Temperatures
change no label, only confidences; a combination with fewer than ``MIN_ROWS`` dev rows keeps 1,
and so does one whose fitted temperature would raise the ECE of its own dev rows.

The result is stored in the checkpoint's meta (``calibration``) and applied by
``load_checkpoint``, so serving, evaluation and benchmarks all read calibrated probabilities.
``moodreel calibrate CHECKPOINT`` fits it (``services.model.training.calibration``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from shared.contract.labels import MODALITIES

HEADS = ("emotion", "sentiment")


def pattern_name(index: int) -> str:
    """``"text+audio"`` for the combination index the network uses (text 1 + audio 2 + visual 4)."""
    names = [name for bit, name in enumerate(MODALITIES) if index & (1 << bit)]
    return "+".join(names) or "none"


PATTERNS = tuple(pattern_name(index) for index in range(2 ** len(MODALITIES)))


def reset(model: torch.nn.Module) -> None:
    model.fused_temperature.fill_(1.0)
    model.modality_temperature.fill_(1.0)


def apply(model: torch.nn.Module, calibration: Mapping[str, Any] | None) -> None:
    """Set the network's temperatures from a stored calibration (identity where it has none)."""
    reset(model)
    if not calibration:
        return
    for row, head in enumerate(HEADS):
        for index, pattern in enumerate(PATTERNS):
            model.fused_temperature[row, index] = float(calibration["fused"][head].get(pattern, 1.0))
        for index, modality in enumerate(MODALITIES):
            model.modality_temperature[row, index] = float(calibration["modality"][head].get(modality, 1.0))
