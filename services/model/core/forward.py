"""The one forward path of a trained model: evaluation, the fusion stage's scoring and serving all
run batches through ``forward_batches``, in the precision ``autocast`` chooses.

Precision: float32 on CPU. On a GPU, bfloat16 autocast where the GPU computes in bfloat16
(Ampere and later: A10G, A100, H100, L4), float16 autocast on older ones (T4, V100); training
under float16 scales its loss (``loss_scaler``). Training's forward passes and its dev and test
scoring run the trained layers under the same autocast as serving. What frozen encoders compute,
where it is cached (``services.model.training.caches``: frozen text layers, speech-encoder
statistics, a frozen visual encoder's embedding), is computed once without autocast, in float32,
and text and speech states are stored as float16; the scores read those caches, so they match the
served model's arithmetic only up to that difference (on CPU: the float16 storage alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from services.model.core.network import ModelInputs, ModelOutput


def compute_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype matrix products run in on ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast(device: torch.device | str) -> torch.autocast:
    """Mixed precision for ``device`` (none on CPU)."""
    device = torch.device(device)
    dtype = compute_dtype(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def loss_scaler(device: torch.device | str) -> torch.amp.GradScaler:
    """Loss scaling for training on ``device``: enabled under float16 autocast only. Small
    gradients underflow float16's five exponent bits, so the loss is scaled up before backward
    and the gradients unscaled before clipping and the step (a step whose gradients overflowed
    is skipped and the scale lowered). bfloat16 has float32's exponent range and float32 needs
    none: there the scaler passes everything through unchanged."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=compute_dtype(device) == torch.float16)


def forward_batches(
    model: torch.nn.Module,
    count: int,
    batch_size: int,
    inputs_for: Callable[[slice], ModelInputs],
    device: torch.device | str,
    before_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[slice, ModelOutput]]:
    """``(rows, output)`` for ``count`` rows, ``batch_size`` at a time, in eval mode without
    gradients. ``inputs_for(rows)`` builds a batch; ``before_batch(start)`` runs before each one
    (a deadline check may raise there)."""
    device = torch.device(device)
    model.eval()
    for start in range(0, count, batch_size):
        if before_batch is not None:
            before_batch(start)
        rows = slice(start, min(start + batch_size, count))
        with torch.inference_mode(), autocast(device):
            output = model(inputs_for(rows).to(device))
        yield rows, output
